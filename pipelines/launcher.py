"""What the job entry points share: option parsing with validation, counters, the summary."""
import glob
import json
import os
import shutil
import stat
import sys
from typing import Callable, Iterable, Optional, Sequence, TypeVar

from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines import config as config_lib

JobOptions = TypeVar("JobOptions", bound=PipelineOptions)


def parse_job_options(job: str, argv: Optional[Sequence[str]], options_class: type[JobOptions],
                      problems: Callable[[JobOptions], list[str]],
                      ) -> tuple[PipelineOptions, JobOptions]:
    """``--config`` expanded, options parsed and validated; bad options stop the launcher with
    one message naming every problem (no traceback)."""
    try:
        argv = config_lib.expand_config(sys.argv[1:] if argv is None else argv)
    except config_lib.ConfigError as error:
        raise SystemExit(f"{job}: {error}")
    options = PipelineOptions(argv)
    job_options = options.view_as(options_class)
    found = problems(job_options)
    if found:
        raise SystemExit(f"{job}: " + "; ".join(found))
    return options, job_options


def counter_totals(result, namespace: str) -> dict[str, int]:
    """The job's counters in ``namespace`` by name (committed values where the runner has them)."""
    query = result.metrics().query(MetricsFilter().with_namespace(namespace))
    totals: dict[str, int] = {}
    for counter in query["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[counter.key.metric.name] = totals.get(counter.key.metric.name, 0) + value
    return totals


def write_summary(summary: dict, folder: str, name: str = "run_summary.json") -> str:
    """Writes the run summary JSON (local or gs://) and returns its path."""
    path = FileSystems.join(folder, name)
    with FileSystems.create(path) as handle:
        handle.write(json.dumps(summary, indent=2, sort_keys=True).encode("utf-8"))
    return path


def replace_folder(source: str, destination: str) -> None:
    """Moves a finished folder to ``destination``, replacing what was there.

    Locally: two directory renames (``destination`` is absent for an instant, never partial).
    On GCS there are no directories: the old objects are deleted, then the new ones renamed in;
    a reader racing the swap can see nothing, never a mix of two runs or half a run.
    """
    if "://" not in destination:
        os.makedirs(os.path.dirname(os.path.abspath(destination)), exist_ok=True)
        old = None
        if os.path.exists(destination):
            old = f"{source}.replaced"
            os.rename(destination, old)
        os.rename(source, destination)
        if old:
            shutil.rmtree(old)
        return
    if FileSystems.exists(destination):
        FileSystems.delete([destination])
    sources = [m.path for m in FileSystems.match([FileSystems.join(source, "**")])[0].metadata_list]
    FileSystems.rename(sources, [destination + path[len(source):] for path in sources])
    FileSystems.delete([source])


def remove_if_empty(folder: str) -> None:
    """Removes a local staging root once nothing is left in it (GCS has no empty folders)."""
    if "://" not in folder and os.path.isdir(folder) and not os.listdir(folder):
        os.rmdir(folder)


def delete_matching(pattern: str) -> None:
    """Deletes every folder or file matching ``pattern`` (leftovers of a killed run)."""
    if "://" not in pattern:
        for path in glob.glob(pattern):
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        return
    files = FileSystems.match([pattern + "/**", pattern])
    paths = [m.path for result in files for m in result.metadata_list]
    if paths:
        FileSystems.delete(paths)


def patterns_matching_nothing(patterns: Iterable[str]) -> list[str]:
    """The patterns among ``patterns`` that match no file (checked before the job starts)."""
    empty = []
    for pattern in patterns:
        try:
            result = FileSystems.match([pattern], limits=[1])[0]
        except Exception:  # Beam raises BeamIOError when nothing matches on some filesystems
            empty.append(pattern)
            continue
        if not result.metadata_list:
            empty.append(pattern)
    return empty


def unreadable_inputs(patterns: Iterable[str]) -> list[str]:
    """Local inputs that are not regular files, each with what it is: a pipe, device or socket
    has no size to split into ranges (Beam would read it as empty, or a device without end),
    and a folder is not a listening file. Patterns (glob characters) and gs:// paths are
    checked by matching instead."""
    problems = []
    for pattern in patterns:
        if "://" in pattern or any(char in pattern for char in "*?["):
            continue
        try:
            mode = os.stat(pattern).st_mode
        except OSError:
            continue  # missing: reported by patterns_matching_nothing
        if stat.S_ISDIR(mode):
            problems.append(f"{pattern} is a folder; give a file, or a pattern such as "
                            f"{pattern.rstrip('/')}/*.txt")
        elif not stat.S_ISREG(mode):
            kind = ("a pipe" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode)
                    or stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else "not a file")
            problems.append(f"{pattern} is {kind}, not a regular file: its size is unknown, so it "
                            "cannot be read in parallel or checked; write it to a file first "
                            "(e.g. zcat x.gz > x.txt, or pass the .gz itself)")
    return problems


def _normalised(path: str) -> str:
    return path.rstrip("/") if "://" in path else os.path.abspath(path)


def is_inside(path: str, folder: str) -> bool:
    """``path`` is ``folder`` or below it (local paths made absolute; gs:// as text)."""
    path, folder = _normalised(path), _normalised(folder)
    return path == folder or path.startswith(folder + "/")


def paths_overlap(first: str, second: str) -> bool:
    """One path is the other or below it (a pattern counts from its fixed prefix)."""
    cut = lambda p: p[:min([p.index(c) for c in "*?[" if c in p] or [len(p)])]
    first, second = cut(first), cut(second)
    return bool(first and second) and (is_inside(first, second) or is_inside(second, first))


def foreign_entries(folder: str, own_names: Sequence[str], job: str) -> list[str]:
    """The entries of ``folder`` the product did not write: anything but ``own_names``, or
    everything when its run_summary.json is missing or not ``job``'s (an empty or absent folder
    has none). The product replaces only folders for which this is empty."""
    if "://" not in folder:
        if not os.path.exists(folder):
            return []
        if not os.path.isdir(folder):
            return [folder]
        names = sorted(os.listdir(folder))
    else:
        prefix = folder.rstrip("/") + "/"
        matched = FileSystems.match([prefix + "**"])[0].metadata_list
        names = sorted({m.path[len(prefix):].split("/", 1)[0] for m in matched})
    if not names:
        return []
    summary = FileSystems.join(folder, "run_summary.json")
    try:
        with FileSystems.open(summary) as handle:
            ours = json.loads(handle.read().decode("utf-8")).get("job") == job
    except Exception:  # noqa: BLE001 - missing or unreadable: not ours
        ours = False
    if not ours:
        return names
    return [name for name in names if name not in own_names]
