"""What the job entry points share: option parsing with validation, counters, the summary."""
import glob
import json
import os
import shutil
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
