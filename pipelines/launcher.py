"""What the job entry points share: option parsing with validation, counters, the summary."""
import glob
import json
import os
import shutil
import socket
import stat
import sys
import time
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
    On GCS there are no directories: the old objects are deleted, then the new ones copied in,
    one by one: a reader racing the swap can see nothing or part of the new folder. Used for
    reports (whose run_summary.json, moved with them, says whether they are whole); data that
    readers must never see in part is published with ``publish_version``.
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
    delete_tree(destination)  # GCS: a folder is a prefix; FileSystems.exists(prefix) is False
    sources = [m.path for m in FileSystems.match([FileSystems.join(source, "**")])[0].metadata_list]
    FileSystems.rename(sources, [destination + path[len(source):] for path in sources])


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


def unreadable_inputs(patterns: Iterable[str], allow_folders: bool = False) -> list[str]:
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
            if allow_folders:
                continue
            problems.append(f"{pattern} is a folder; give a file, or a pattern such as "
                            f"{pattern.rstrip('/')}/*.txt")
        elif not stat.S_ISREG(mode):
            kind = ("a pipe" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode)
                    or stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else "not a file")
            problems.append(f"{pattern} is {kind}, not a regular file: its size is unknown, so it "
                            "cannot be read in parallel, bounded or checked; write it to a file "
                            "first")
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


def child_names(folder: str) -> list[str]:
    """The names directly below ``folder`` (files and folders; on GCS, the first path part of
    every object under the prefix). Empty when it does not exist."""
    if "://" not in folder:
        return sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    prefix = folder.rstrip("/") + "/"
    matched = FileSystems.match([prefix + "**"])[0].metadata_list
    return sorted({m.path[len(prefix):].split("/", 1)[0] for m in matched})


def delete_tree(folder: str) -> None:
    """Deletes ``folder`` and everything below it, locally and on GCS (where a folder is only
    a prefix: ``FileSystems.delete`` of the prefix itself deletes nothing)."""
    if "://" not in folder:
        if os.path.isdir(folder):
            shutil.rmtree(folder)
        return
    paths = [m.path for m in FileSystems.match([folder.rstrip("/") + "/**"])[0].metadata_list]
    if paths:
        FileSystems.delete(paths)


def move_file(source: str, destination: str) -> None:
    """Moves one file (a rename locally; copy + delete on GCS), creating local parent folders."""
    if "://" not in destination:
        os.makedirs(os.path.dirname(os.path.abspath(destination)), exist_ok=True)
    FileSystems.rename([source], [destination])


def write_atomically(path: str, data: bytes) -> None:
    """Writes a small file so that a reader sees the old content or the new, never a part:
    locally a temporary file renamed over it (os.replace is atomic); on GCS one object upload,
    which is atomic by itself."""
    if "://" in path:
        with FileSystems.create(path) as handle:
            handle.write(data)
        return
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    temporary = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


PUBLISHED_MARKER = "_SUCCESS.json"


def published_files(folder: str) -> Optional[list[str]]:
    """The files of ``folder``'s published version, as its marker lists them (full paths), or
    None when the folder has no marker (nothing published, or an output of the first layout).
    Readers that follow the marker never see a half-published or superseded version."""
    marker = FileSystems.join(folder, PUBLISHED_MARKER)
    try:
        with FileSystems.open(marker) as handle:
            listed = json.loads(handle.read().decode("utf-8"))["files"]
    except (OSError, ValueError, KeyError):
        if FileSystems.exists(marker):
            raise
        return None
    return [FileSystems.join(folder, name) for name in listed]


def partition_files(partition: str) -> list[str]:
    """The Parquet files of one (run_date, model) partition that readers use: those its
    ``_SUCCESS.json`` marker names (the published version), or, in a partition written before
    markers existed, every ``*.parquet`` file in it. Every reader of the local/GCS output (the
    query tool, the evaluation) goes through here."""
    listed = published_files(partition)
    if listed is not None:
        return listed
    return sorted(m.path for m in FileSystems.match(
        [FileSystems.join(partition, "*.parquet")])[0].metadata_list)


def publish_version(staged: str, folder: str, run_id: str, summary: Optional[dict] = None
                    ) -> list[str]:
    """Publishes the files of ``staged`` into ``folder`` as one version, the same way on a local
    disk and on GCS (where renames are copies, object by object):

    1. every staged file moves in under a name carrying ``run_id`` (``part-…`` becomes
       ``part-<run_id>-…``): the previous version's files and marker are untouched, so a reader
       that follows the marker still reads the previous version, whole;
    2. the marker ``_SUCCESS.json`` naming exactly the new files is written in one write: the
       switch;
    3. the files no marker names any more (the previous version, and leftovers of a run that
       crashed between 1 and 2) are deleted.
    A crash before 2 leaves the previous version current; one after it, the new one; the next
    publish removes what was left. Returns the published files."""
    names = []
    for path in sorted(m.path for m in FileSystems.match(
            [staged.rstrip("/") + "/**"])[0].metadata_list):
        relative = path[len(staged.rstrip("/")) + 1:]
        base = os.path.basename(relative)
        named = f"part-{run_id}-{base[len('part-'):]}" if base.startswith("part-") else \
            f"{run_id}-{base}"
        name = relative[:len(relative) - len(base)] + named
        move_file(path, FileSystems.join(folder, name))
        names.append(name)
    marker = {"run_id": run_id, "files": names, **(summary or {})}
    write_atomically(FileSystems.join(folder, PUBLISHED_MARKER),
                     json.dumps(marker, indent=2, sort_keys=True).encode("utf-8"))
    keep = set(names) | {PUBLISHED_MARKER}
    prefix = folder.rstrip("/") + "/"
    stale = [m.path for m in FileSystems.match([prefix + "**"])[0].metadata_list
             if m.path[len(prefix):] not in keep]
    if stale:
        FileSystems.delete(stale)
    if "://" not in folder:  # local folders emptied by the deletions
        for root, dirs, _ in os.walk(folder, topdown=False):
            for name in dirs:
                remove_if_empty(os.path.join(root, name))
    return [FileSystems.join(folder, name) for name in names]


class RunLock:
    """A lock file that keeps two runs off one output (a second run would delete the first's
    live staging and publish over it). Locally it is created atomically (O_EXCL); a lock whose
    process is gone (same host, pid not running) is taken over. On GCS there is no atomic
    create through Beam's file systems: the lock is checked, then written, which narrows the
    window but does not close it."""

    def __init__(self, path: str, job: str):
        self.path = path
        self.job = job
        self._held = False

    def _holder(self) -> dict:
        try:
            with FileSystems.open(self.path) as handle:
                return json.loads(handle.read().decode("utf-8"))
        except Exception:  # noqa: BLE001 - unreadable: treat as held by an unknown run
            return {}

    def _stale(self, holder: dict) -> bool:
        if holder.get("host") != socket.gethostname() or not holder.get("pid"):
            return False
        try:
            os.kill(int(holder["pid"]), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, ValueError):
            return False
        return False

    def acquire(self) -> "RunLock":
        record = json.dumps({"job": self.job, "host": socket.gethostname(), "pid": os.getpid(),
                             "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        for _ in range(2):
            if "://" not in self.path:
                os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
                try:
                    descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError:
                    pass
                else:
                    with os.fdopen(descriptor, "w") as handle:
                        handle.write(record)
                    self._held = True
                    return self
            elif not FileSystems.exists(self.path):
                with FileSystems.create(self.path) as handle:
                    handle.write(record.encode("utf-8"))
                self._held = True
                return self
            holder = self._holder()
            if self._stale(holder):
                FileSystems.delete([self.path])
                continue
            break
        raise SystemExit(
            f"{self.job}: another run holds {self.path} (pid {holder.get('pid', '?')} on "
            f"{holder.get('host', '?')}, started {holder.get('started', '?')}); wait for it, or "
            "delete that file if that run is gone")

    def release(self) -> None:
        if self._held and FileSystems.exists(self.path):
            FileSystems.delete([self.path])
        self._held = False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def copy_local_folder(source: str, destination: str) -> int:
    """Copies every file below the local folder ``source`` to ``destination`` (local or gs://,
    through Beam's file systems): what a library wrote locally (TFT's artefacts, a SavedModel)
    reaching an output TensorFlow's own gs:// client cannot write. Returns the files copied."""
    copied = 0
    for root, _, names in os.walk(source):
        for name in sorted(names):
            path = os.path.join(root, name)
            relative = os.path.relpath(path, source).replace(os.sep, "/")
            with open(path, "rb") as handle, \
                    FileSystems.create(FileSystems.join(destination, relative)) as out:
                shutil.copyfileobj(handle, out, 8 << 20)
            copied += 1
    return copied
