"""What the job entry points share: option parsing with validation, counters, the summary."""
import fcntl
import glob
import json
import logging
import os
import shutil
import socket
import stat
import sys
import time
import uuid
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


def after_commit(what: str, action: Callable[[], object]) -> bool:
    """Runs a clean-up step that follows a publication's commit point (deleting a previous
    version, the staging folder, an empty folder). The new output is already complete and
    current, so a failure here is logged, not raised: what is left over is not read by anyone,
    and the next run removes it. Returns whether the step succeeded."""
    try:
        action()
        return True
    except Exception as error:  # noqa: BLE001 - the output is published: report and go on
        logging.warning("%s failed after the output was published (%s); the next run removes "
                        "what is left", what, error)
        return False


def _undo(what: str, action: Callable[[], object]) -> None:
    """One step of putting things back after a failed publication; its own failure is logged
    (the error that made the publication fail is the one raised)."""
    try:
        action()
    except Exception as error:  # noqa: BLE001
        logging.error("putting back %s after a failed publication failed: %s", what, error)


def _has_objects_below(prefix: str) -> bool:
    """GCS has no folders: a folder exists while some object lies below its prefix."""
    return bool(FileSystems.match([prefix.rstrip("/") + "/**"], limits=[1])[0].metadata_list)


def folder_exists(folder: str) -> bool:
    """A local folder, or a gs:// prefix with at least one object below it."""
    if "://" not in folder:
        return os.path.isdir(folder)
    return _has_objects_below(folder)


def path_exists(path: str) -> bool:
    """A file or folder at ``path`` (``FileSystems.exists`` only sees a gs:// object of that
    exact name, not a folder)."""
    return FileSystems.exists(path) or ("://" in path and _has_objects_below(path))


def move_folder(source: str, destination: str) -> None:
    """Moves a folder to ``destination`` (which must not exist): one rename locally (parent
    folders created); on GCS, every object below it, one by one (copy + delete)."""
    if "://" not in destination:
        os.makedirs(os.path.dirname(os.path.abspath(destination)), exist_ok=True)
        os.rename(source, destination)
        return
    source = source.rstrip("/")
    paths = [m.path for m in FileSystems.match([source + "/**"])[0].metadata_list]
    if paths:
        FileSystems.rename(paths, [destination.rstrip("/") + path[len(source):]
                                   for path in paths])


def replace_folders(pairs: Sequence[tuple[str, str]],
                    commit: Optional[Callable[[], None]] = None,
                    retire: Sequence[tuple[str, str]] = (),
                    committed: Optional[Callable[[], bool]] = None) -> None:
    """Moves each finished folder ``source`` to its ``destination``, replacing what was there,
    then runs ``commit`` (the one write that makes a publication current, if any): all or
    nothing. A previous ``destination`` is first moved aside to ``<source>.replaced`` (in the
    run's staging); each ``(folder, aside)`` of ``retire`` (a folder of the previous output
    that the new one no longer has) is moved aside to ``aside`` (in the run's staging) before
    the commit too. If a move or ``commit`` fails, every folder is put back (the new ones to
    staging, the previous and retired ones in place) and the error raised. The previous and
    retired folders are deleted only after everything succeeded.

    ``committed`` says whether the commit took effect (e.g. the published file holds what the
    commit wrote). An error raised once the commit has taken effect (an interrupt arriving
    just after the write, a GCS upload stored but reported as failed) must not put the
    previous folders back under the new commit: the publication is finished (the previous
    folders deleted), then KeyboardInterrupt / SystemExit (a SIGTERM) is raised again (the
    user asked to stop; the output is the new one, whole), and any other error is logged as a
    warning (the output is published). Without ``committed``, a failed ``commit`` rolls back.

    Locally each move is one rename: ``destination`` is absent for an instant, never partial.
    On GCS a move is object by object: a reader racing it can see part of a folder (reports,
    whose run_summary.json says whether they are whole; data readers must never see in part is
    published with ``publish_version``)."""
    moves = []  # [source, destination, backup or None, phase]: 1 backing up, 2 moving in
    stopped: Optional[BaseException] = None  # an interrupt that came after the commit
    committing = False
    try:
        for source, destination in pairs:
            backup = f"{source.rstrip('/')}.replaced" if folder_exists(destination) else None
            move = [source, destination, backup, 0]
            moves.append(move)
            if backup:
                move[3] = 1
                move_folder(destination, backup)
            move[3] = 2
            move_folder(source, destination)
        for folder, aside in retire:
            if folder_exists(folder):
                moves.append([None, folder, aside, 1])
                move_folder(folder, aside)
        if commit:
            committing = True
            commit()
    except BaseException as error:
        took_effect = False
        if committing and committed is not None:
            try:
                took_effect = bool(committed())
            except Exception as check:  # noqa: BLE001 - unknown: treated as not committed
                logging.error("could not tell whether the commit took effect (%s); putting the "
                              "previous output back", check)
        if not took_effect:
            for source, destination, backup, phase in reversed(moves):
                if phase >= 2 and source and folder_exists(destination):
                    _undo(destination, lambda s=source, d=destination: move_folder(d, s))
                if backup and folder_exists(backup):
                    _undo(destination, lambda d=destination, b=backup: move_folder(b, d))
            raise
        where = ", ".join(destination for _, destination in pairs) or "the output"
        if isinstance(error, Exception):
            logging.warning("publishing %s: the commit reported an error (%s) although it took "
                            "effect; the new output is published", where, error)
        else:
            logging.warning("publishing %s: %s after the commit; the new output is published "
                            "whole", where, "interrupted" if isinstance(error, KeyboardInterrupt)
                            else "stopped")
            stopped = error
    for _, _, backup, _ in moves:
        if backup:
            after_commit(f"deleting the replaced {backup}", lambda b=backup: delete_tree(b))
    if stopped is not None:
        raise stopped


def replace_folder(source: str, destination: str) -> None:
    """Moves a finished folder to ``destination``, replacing what was there; a failure puts the
    previous folder back (``replace_folders``)."""
    replace_folders([(source, destination)])


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
    """Inputs that cannot be read whole, each with what it is: local inputs that are not
    regular files (a pipe, device or socket has no size to split into ranges: Beam would read
    it as empty, or a device without end; a folder is not a listening file), and compressed
    files, local or gs://, that do not decompress to their end (``damaged_compressed_inputs``).
    Patterns (glob characters) and gs:// paths are checked by matching instead."""
    patterns = list(patterns)
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
    return problems + damaged_compressed_inputs(patterns)


def damaged_compressed_inputs(patterns: Iterable[str]) -> list[str]:
    """The compressed files (.gz, .bz2, .xz, by name) matched by ``patterns``, local or gs://,
    that are cut or corrupt, each as ``<path>: <cause>``. Each is decompressed once to its end
    before the job (``msd.listening.verify_compressed``, the reader the jobs use): Beam's own
    reader stops without a word where a cut .gz ends, and the job's reader, which notices, can
    only dead-letter the file once the job runs (the run would then publish an output without
    its lines). The cost is one decompression pass (≈ 10 ms for the 2.6 MB sample of
    train_triplets, ≈ 280 MB of text a second: ≈ 11 s for the whole 3 GB file)."""
    from msd import listening

    problems, seen = [], set()
    for pattern in patterns:
        if "://" not in pattern and not any(char in pattern for char in "*?["):
            paths = [pattern] if os.path.isfile(pattern) else []
        else:
            try:
                paths = sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
            except Exception:  # noqa: BLE001 - matches nothing: patterns_matching_nothing says so
                paths = []
        for path in paths:
            compression = listening.compression_of(path)
            if compression not in listening.VERIFIED_COMPRESSIONS or path in seen:
                continue
            seen.add(path)
            try:
                listening.verify_compressed(path, compression)
            except listening.CompressedFileError as error:
                problems.append(f"{path}: cannot be read to its end: "
                                f"{error.cause} ({error.lines:,} complete "
                                "lines before that); nothing was read")
            except OSError as error:
                problems.append(f"{path}: cannot be read: {error.strerror or error}")
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


def foreign_entries(folder: str, own_names: Sequence[str], job: str,
                    own_patterns: Sequence[str] = ()) -> list[str]:
    """The entries of ``folder`` the product did not write: anything but ``own_names``, or
    everything when its run_summary.json is missing or not ``job``'s (an empty or absent folder
    has none). The product replaces only folders for which this is empty.

    ``own_patterns`` (regular expressions, matched whole) name what is the job's whatever the
    summary says, i.e. what a run leaves before it publishes (its lock, its staging): ``expr``
    for an entry of ``folder``; ``name/expr`` for an entry of its sub-folder ``name`` (a
    literal name), which is then looked into: each of its entries that no such pattern matches
    is foreign, reported as ``name/entry`` (the sub-folder itself is not: it holds only the
    job's own, or nothing)."""
    import re

    top = [re.compile(pattern) for pattern in own_patterns if "/" not in pattern]
    nested: dict[str, list] = {}
    for pattern in own_patterns:
        if "/" in pattern:
            parent, child = pattern.split("/", 1)
            nested.setdefault(parent, []).append(re.compile(child))
    if own_patterns:
        if "://" not in folder and os.path.exists(folder) and not os.path.isdir(folder):
            return [folder]
        names = child_names(folder)
        if not names:
            return []
        claimed = [name for name in names if name not in nested
                   and not any(p.fullmatch(name) for p in top)]
        foreign = foreign_entries(folder, own_names, job) if claimed else []
        found = []
        for name in names:
            if name in nested:
                sub = FileSystems.join(folder, name)
                if "://" not in folder and not os.path.isdir(sub):
                    found.append(name)
                    continue
                found += [f"{name}/{entry}" for entry in child_names(sub)
                          if not any(p.fullmatch(entry) for p in nested[name])]
            elif name in claimed and name in foreign:
                found.append(name)
        return found
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
    locally a temporary file renamed over it (os.replace is atomic; the temporary file is
    removed when any step fails); on GCS one object upload, which is atomic by itself."""
    if "://" in path:
        with FileSystems.create(path) as handle:
            handle.write(data)
        return
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    temporary = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.lexists(temporary):
            _undo(temporary, lambda: os.remove(temporary))
        raise


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


def _marker_run_id(folder: str) -> Optional[str]:
    try:
        with FileSystems.open(FileSystems.join(folder, PUBLISHED_MARKER)) as handle:
            return json.loads(handle.read().decode("utf-8")).get("run_id")
    except Exception:  # noqa: BLE001 - no marker, or unreadable
        return None


def publish_version(staged: str, folder: str, run_id: str, summary: Optional[dict] = None,
                    with_folders: Sequence[tuple[str, str]] = ()) -> list[str]:
    """Publishes the files of ``staged`` into ``folder`` as one version, the same way on a local
    disk and on GCS (where renames are copies, object by object):

    1. every staged file moves in under a name carrying ``run_id`` (``part-…`` becomes
       ``part-<run_id>-…``): the previous version's files and marker are untouched, so a reader
       that follows the marker still reads the previous version, whole;
    2. the folders of ``with_folders`` (source, destination: the run's report) replace their
       destinations (``replace_folders``), then the marker ``_SUCCESS.json`` naming exactly the
       new files is written in one write: the commit point;
    3. the files no marker names any more (the previous version, and leftovers of a run that
       crashed between 1 and 2) are deleted.
    A failure in 1 or 2 puts everything back (the new files are deleted, the previous folders
    of ``with_folders`` restored) and is raised: the previous version stays current and
    nothing of the new one is left beside it. A crash (no chance to put back) before the
    marker leaves the previous version current; the next publish removes what was left. An
    error once the marker names this run (an interrupt just after its write, a GCS upload
    stored but reported as failed) puts nothing back: 3 runs, then KeyboardInterrupt /
    SystemExit is raised again (the new version and its report are published, whole) and any
    other error is logged. A failure in 3 is logged: the new version is published. Returns the
    published files."""
    staged = staged.rstrip("/")
    planned = []
    for path in sorted(m.path for m in FileSystems.match([staged + "/**"])[0].metadata_list):
        relative = path[len(staged) + 1:]
        base = os.path.basename(relative)
        named = f"part-{run_id}-{base[len('part-'):]}" if base.startswith("part-") else \
            f"{run_id}-{base}"
        planned.append((path, relative[:len(relative) - len(base)] + named))
    names = [name for _, name in planned]
    marker = FileSystems.join(folder, PUBLISHED_MARKER)
    record = json.dumps({"run_id": run_id, "files": names, **(summary or {})}, indent=2,
                        sort_keys=True).encode("utf-8")
    moved = []
    stopped: Optional[BaseException] = None  # an interrupt that came after the commit
    try:
        for path, name in planned:
            moved.append(FileSystems.join(folder, name))
            move_file(path, moved[-1])
        # The marker naming this run is the commit: once it is there, an error (an interrupt
        # just after the write, a GCS upload stored but reported as failed) leaves the new
        # report in place (replace_folders does not roll back a commit that took effect).
        replace_folders(with_folders, commit=lambda: write_atomically(marker, record),
                        committed=lambda: _marker_run_id(folder) == run_id)
    except BaseException as error:
        if _marker_run_id(folder) != run_id:  # not committed (e.g. not a lost GCS response)
            present = [path for path in moved if FileSystems.exists(path)]
            if present:
                _undo(f"the new files in {folder}", lambda: FileSystems.delete(present))
            _undo(f"empty folders of {folder}", lambda: _remove_empty_folders(folder))
            raise
        if not isinstance(error, Exception):  # Ctrl-C, SIGTERM: finish, then stop
            stopped = error  # (replace_folders said so when it came in its commit)
        else:
            logging.warning("publishing %s: the marker was written although the write reported "
                            "an error (%s); the new version is published", folder, error)
    keep = set(names) | {PUBLISHED_MARKER}
    prefix = folder.rstrip("/") + "/"

    def delete_stale() -> None:
        stale = [m.path for m in FileSystems.match([prefix + "**"])[0].metadata_list
                 if m.path[len(prefix):] not in keep]
        if stale:
            FileSystems.delete(stale)
        _remove_empty_folders(folder, keep_top=True)

    after_commit(f"deleting the previous version in {folder}", delete_stale)
    if stopped is not None:
        raise stopped
    return [FileSystems.join(folder, name) for name in names]


def _remove_empty_folders(folder: str, keep_top: bool = False) -> None:
    """Local folders below ``folder`` (and ``folder`` itself unless ``keep_top``) left empty."""
    if "://" in folder or not os.path.isdir(folder):
        return
    for root, dirs, _ in os.walk(folder, topdown=False):
        for name in dirs:
            remove_if_empty(os.path.join(root, name))
    if not keep_top:
        remove_if_empty(folder)


# Tokens of the RunLocks this process holds: a lock file naming this process but none of these
# was left by a release that failed, and is taken over.
_HELD_TOKENS: set[str] = set()


def _pid_running(pid) -> bool:
    """Whether a process of that pid runs on this host (one we may not signal counts)."""
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError, OverflowError):
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """A lock file that keeps two runs off one output (a second run would delete the first's
    live staging and publish over it).

    Locally, the run holds an exclusive ``flock`` on the lock file for its whole life (as the
    run's temporary folder is held, ``cli.use_run_temp_dir``): the kernel lets it go when the
    process ends in any way (SIGKILL, a crash, out of memory). A lock file nobody holds (left by
    a dead run, or empty: killed before it wrote its record) is simply taken over; a held one is
    refused, whatever the holder's PID namespace or host name (a container sharing the volume
    and the host name): no pid is judged. The record in the file (job, host, pid, started,
    token) only names the holder in the refusal. A run that locked a file deleted or replaced
    meanwhile (its inode is not the path's any more) starts over. Releasing deletes the file
    while still holding it, and only if the path still is that file, then lets it go.

    On GCS, creating it is atomic with the precondition ``ifGenerationMatch=0`` (the object is
    created only if absent; of two runs racing, the storage service lets exactly one create
    it, the other gets 412). A lock whose process is gone (same host, pid not running, or this
    process and not held) is taken over; releasing deletes the lock only while it is still ours
    (its generation: ``ifGenerationMatch=<ours>``)."""

    def __init__(self, path: str, job: str, options: Optional[PipelineOptions] = None):
        self.path = path
        self.job = job
        self.token = uuid.uuid4().hex
        self._options = options
        self._held = False
        self._generation: Optional[int] = None  # GCS: the generation our create made
        self._file = None  # local: the open lock file we hold the flock of

    # -- local (flock) -------------------------------------------------------------------------
    # The open lock files of the locks this process holds, by token: held until release() (or
    # the process's end) even if the RunLock object itself is dropped.
    _open_files: dict = {}
    # How often a run starts over because the file it locked was deleted or replaced meanwhile
    # (each time another run released or took the lock in between) before it gives up.
    _LOCAL_ATTEMPTS = 50

    def _is_locked_file(self, handle) -> bool:
        """Whether the path still names the file ``handle`` has open (not deleted, not
        replaced by another lock file)."""
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            return False
        mine = os.fstat(handle.fileno())
        return (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino)

    def _local_holder(self, handle) -> Optional[dict]:
        """The record of the live run holding ``handle``'s file; None if empty or unreadable.
        The holder writes it just after it locks the file, so for a moment the file can be
        empty or still hold the record of the dead run it took over: read again (up to ≈ 1 s)
        while it is unreadable or names a process not running on this host."""
        holder = None
        for attempt in range(20):
            try:
                record = json.loads(os.pread(handle.fileno(), 1 << 16, 0).decode("utf-8"))
                if isinstance(record, dict):
                    holder = record
                    if record.get("host") != socket.gethostname() or _pid_running(
                            record.get("pid")):
                        return holder
            except (OSError, ValueError):
                pass
            if attempt < 19:
                time.sleep(0.05)
        return holder

    def _let_go(self, handle, delete: bool) -> None:
        """Deletes the lock file if ``delete`` and the path still is it (while still holding
        it: no other run can hold that file now), then lets the flock go."""
        try:
            if delete and self._is_locked_file(handle):
                os.unlink(self.path)
        finally:
            try:  # explicitly: a forked child sharing the descriptor must not keep it held
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            except OSError:
                pass
            handle.close()

    def _acquire_local(self, record: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        for _ in range(self._LOCAL_ATTEMPTS):
            descriptor = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                handle = os.fdopen(descriptor, "r+b", buffering=0)
            except BaseException:
                os.close(descriptor)
                raise
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # a live process holds it
                holder = self._local_holder(handle)
                handle.close()
                if holder is None:
                    raise SystemExit(
                        f"{self.job}: another run holds {self.path} (a live process holds its "
                        "lock; its record is empty or unreadable); wait for it to end") from None
                raise SystemExit(
                    f"{self.job}: another run holds {self.path} (pid {holder.get('pid', '?')} "
                    f"on {holder.get('host', '?')}, started {holder.get('started', '?')}); "
                    "wait for it to end (its lock is let go when its process ends)") from None
            except BaseException:
                handle.close()
                raise
            try:
                if not self._is_locked_file(handle):  # deleted or replaced since: again
                    self._let_go(handle, delete=False)
                    continue
                handle.seek(0)
                handle.truncate()
                data = record.encode("utf-8")
                while data:
                    data = data[handle.write(data):]
            except BaseException:
                # A lock file left here would not block the next run (nobody holds it), but
                # is not left: deleted while still ours.
                try:
                    self._let_go(handle, delete=True)
                except Exception as error:  # noqa: BLE001 - the first error is the one raised
                    logging.warning("%s: could not delete the lock %s (%s); the next run takes "
                                    "it over", self.job, self.path, error)
                raise
            self._file = RunLock._open_files[self.token] = handle
            return
        raise SystemExit(f"{self.job}: {self.path} was deleted or replaced {self._LOCAL_ATTEMPTS} "
                         "times while taking it (other runs taking and releasing it); try again")

    # -- GCS (google-cloud-storage, configured as Beam's GcsIO configures it) ----------------
    def _gcs(self):
        """(bucket, object name, retry policy) of a gs:// lock: the storage client of Beam's
        GcsIO for these options (credentials, project, STORAGE_EMULATOR_HOST)."""
        from apache_beam.io.gcp import gcsio, gcsio_retry

        options = self._options or FileSystems._pipeline_options or PipelineOptions()
        bucket, name = gcsio.parse_gcs_path(self.path)
        client = gcsio.GcsIO(pipeline_options=options).client
        return client.bucket(bucket), name, gcsio_retry.get_retry(options)

    def _create(self, record: str) -> bool:
        """Creates the lock object holding ``record`` if it does not exist; False if it does."""
        from google.api_core import exceptions as api_exceptions

        bucket, name, retry = self._gcs()
        blob = bucket.blob(name)
        # Not needed on GCS (the precondition decides), but a store that ignores it (the
        # local emulator does) then still refuses a run that comes after the holder.
        if blob.exists(retry=retry):
            return False
        try:
            blob.upload_from_string(record.encode("utf-8"), content_type="application/json",
                                    if_generation_match=0, retry=retry)
        except api_exceptions.PreconditionFailed:
            return False
        self._generation = blob.generation
        return True

    def _holder(self) -> dict:
        """The record in the lock object, with ``_generation``; empty if unreadable."""
        try:
            bucket, name, retry = self._gcs()
            blob = bucket.get_blob(name, retry=retry)
            if blob is None:
                return {}
            holder = json.loads(blob.download_as_bytes(
                if_generation_match=blob.generation, retry=retry).decode("utf-8"))
            return {**holder, "_generation": blob.generation}
        except Exception:  # noqa: BLE001 - unreadable: treat as held by an unknown run
            return {}

    def _stale(self, holder: dict) -> bool:
        if holder.get("host") != socket.gethostname() or not holder.get("pid"):
            return False
        try:
            pid = int(holder["pid"])
        except ValueError:
            return False
        if pid == os.getpid():  # this process: stale unless one of its locks still holds it
            return holder.get("token") not in _HELD_TOKENS
        return not _pid_running(pid)

    def _delete(self, generation: Optional[int]) -> None:
        """Deletes the lock object of the generation given (NotFound and 412: it is not that
        lock any more, and is left alone)."""
        from google.api_core import exceptions as api_exceptions

        bucket, name, retry = self._gcs()
        try:
            bucket.delete_blob(name, if_generation_match=generation, retry=retry)
        except (api_exceptions.NotFound, api_exceptions.PreconditionFailed):
            logging.warning("%s changed hands before it was deleted; left alone", self.path)

    def acquire(self) -> "RunLock":
        record = json.dumps({"job": self.job, "host": socket.gethostname(), "pid": os.getpid(),
                             "token": self.token,
                             "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        if "://" not in self.path:
            self._acquire_local(record)
            self._held = True
            return self
        holder: dict = {}
        # Held from before the create: a run of this process reading the lock meanwhile must
        # not take it for one a failed release left.
        _HELD_TOKENS.add(self.token)
        try:
            for _ in range(2):
                created = self._create(record)
                holder = {} if created else self._holder()
                if created or holder.get("token") == self.token:  # ours (a retried create)
                    if not created:
                        self._generation = holder.get("_generation")
                    self._held = True
                    return self
                if self._stale(holder):
                    self._delete(holder.get("_generation"))
                    continue
                break
        finally:
            if not self._held:
                _HELD_TOKENS.discard(self.token)
        raise SystemExit(
            f"{self.job}: another run holds {self.path} (pid {holder.get('pid', '?')} on "
            f"{holder.get('host', '?')}, started {holder.get('started', '?')}); wait for it, or "
            "delete that file if that run is gone")

    def release(self) -> None:
        """Deletes the lock if it is still ours (locally: the path still is the file we hold;
        on GCS: our generation), then, locally, lets the flock go. A failure is logged, not
        raised (it must not hide the run's own outcome): a local lock file left is held by
        nobody once closed and is taken over by the next run; a GCS lock left names this
        process, and is taken over once this process is gone, or at once by a run in it."""
        if not self._held:
            return
        self._held = False
        _HELD_TOKENS.discard(self.token)
        try:
            if "://" in self.path:
                self._delete(self._generation)
            else:
                handle, self._file = self._file, None
                RunLock._open_files.pop(self.token, None)
                self._let_go(handle, delete=True)
        except Exception as error:  # noqa: BLE001
            logging.warning("%s: could not delete the lock %s (%s); the next run takes it over",
                            self.job, self.path, error)

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
