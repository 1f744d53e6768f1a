"""Beam transforms that find MSD HDF5 files and turn them into songs and rejections."""
import collections
import concurrent.futures
import glob
import logging
import os
import re
import time
from typing import Iterable, Iterator, Optional, Sequence, Union

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes, FileSystem
from apache_beam.io.filesystems import FileSystems

from msd import hdf5_reader

METRICS_NAMESPACE = "msd_features"
SONGS = "songs"
REJECTED = "rejected"
DEFAULT_MAX_FILE_BYTES = 64 * 1024 * 1024  # real per-track files are under 1 MB
# Files read ahead (in threads) while the current one is parsed, and the bytes they may hold.
READ_AHEAD_FILES = 4
READ_AHEAD_BYTES = 64 * 1024 * 1024
_WILDCARDS = "*?["


def expand_input(path_or_pattern: str) -> str:
    """A folder means every ``*.h5`` below it; a pattern or file is used as given. A local file
    whose name holds glob characters (``glob[1].h5``) is that file, not a pattern: its special
    characters are escaped."""
    if "://" not in path_or_pattern and os.path.isfile(path_or_pattern):
        return glob.escape(path_or_pattern)
    if any(char in path_or_pattern for char in _WILDCARDS) or path_or_pattern.endswith(".h5"):
        return path_or_pattern
    is_folder = path_or_pattern.endswith("/") or (
        "://" not in path_or_pattern and os.path.isdir(path_or_pattern))
    if is_folder:
        return FileSystems.join(path_or_pattern.rstrip("/"), "**.h5")
    return path_or_pattern


# --------------------------------------------------------------------------------------------
# Matching, with symlinked folders followed
# --------------------------------------------------------------------------------------------
# Beam's local file system lists a pattern's folder with os.walk, which does not enter symlinked
# folders: a folder ``data/B -> /elsewhere/B`` under --input was skipped without a word. Local
# patterns are matched here instead, with Beam's pattern syntax, following symlinked folders.


class SymlinkReport:
    """What matching did with the symlinked folders it met: ``followed`` (path, target, and how
    many matched files were found through it) and ``skipped`` (path, target, reason: a loop, a
    folder already read through another path, a link to nothing, a folder that cannot be
    listed)."""

    def __init__(self) -> None:
        self.followed: dict[str, dict] = {}
        self.skipped: list[dict] = []

    def skip(self, path: str, reason: str) -> None:
        if not any(item["path"] == path for item in self.skipped):
            self.skipped.append({"path": path, "target": os.path.realpath(path),
                                 "reason": reason})

    def as_dict(self) -> dict:
        return {"followed": [item for item in self.followed.values() if item["files"]],
                "skipped": self.skipped}


def _local_listing_root(pattern: str) -> Optional[str]:
    """The folder Beam's local file system lists for ``pattern`` (the folder part before the
    first wildcard); None for a remote pattern, a plain path, or no folder part."""
    if "://" in pattern:
        return None
    if pattern.endswith("/"):
        pattern += "*"
    if not any(char in pattern for char in _WILDCARDS):
        return None
    return os.path.dirname(re.match(r"^[^[*?]*", pattern).group(0)) or None


def _is_below(path: str, folder: str) -> bool:
    return path.startswith(folder.rstrip(os.sep) + os.sep)


def _files_below(root: str, report: Optional[SymlinkReport] = None
                 ) -> Iterator[tuple[str, Optional[str]]]:
    """(path, the symlinked folder it was reached through, or None) of every file below
    ``root``, symlinked folders followed. Every real folder is listed once, so a file reachable
    by two paths is read once: first its path without links, then the links in name order. A
    link to a folder already listed, or to a folder holding ``root`` (a loop), is not followed;
    ``report`` says why."""
    real_root = os.path.realpath(root)
    listed: dict[str, str] = {}  # real folder → the path it was listed as
    plain = collections.deque([(root, None)])  # folders reached without a link: first
    linked: collections.deque = collections.deque()
    while plain or linked:
        folder, via = plain.popleft() if plain else linked.popleft()
        real = os.path.realpath(folder)
        if real in listed:
            first = listed[real]
            reason = (f"a loop: it leads back to {first}"
                      if _is_below(folder, first) else
                      f"the same folder as {first}, read once through that path")
        elif via == folder and (real == real_root or _is_below(real_root, real)):
            reason = f"a loop: it leads to {real}, which holds the input"
        else:
            reason = None
        if reason:
            if report is not None:
                report.skip(folder, reason)
            continue
        listed[real] = folder
        try:
            entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
        except OSError as error:
            if report is not None and via is not None:
                report.skip(folder, f"cannot be listed: {error.strerror or error}")
            continue
        for entry in entries:
            path = os.path.join(folder, entry.name)
            try:
                is_folder = entry.is_dir()  # follows a link
            except OSError:
                is_folder = False
            if is_folder and entry.is_symlink():
                linked.append((path, path))
            elif is_folder:
                plain.append((path, via))
            elif entry.is_symlink() and not os.path.exists(path):
                if report is not None:
                    report.skip(path, "a symbolic link to nothing")
            else:
                yield path, via


def match_pattern(pattern: str, report: Optional[SymlinkReport] = None
                  ) -> Iterator[tuple[str, int]]:
    """(path, size in bytes) of the files ``pattern`` matches. A local pattern is matched here
    with Beam's syntax (``*``, ``**``, ``?``, ``[...]``), symlinked folders followed
    (``_files_below``); anything else by Beam's file systems."""
    root = _local_listing_root(pattern)
    if root is None:
        for metadata in FileSystems.match([pattern])[0].metadata_list:
            yield metadata.path, metadata.size_in_bytes
        return
    matches = re.compile(FileSystem.translate_pattern(
        pattern + "*" if pattern.endswith("/") else pattern)).match
    for path, via in _files_below(root, report):
        if not matches(path):
            continue
        try:
            size = os.path.getsize(path)
        except OSError:  # gone since it was listed (as Beam does)
            continue
        if report is not None and via is not None:
            report.followed.setdefault(via, {"path": via, "target": os.path.realpath(via),
                                             "files": 0})["files"] += 1
        yield path, size


def symlinked_folders(patterns: Iterable[str]) -> dict:
    """What matching ``patterns`` does with symlinked folders (``SymlinkReport.as_dict``), for
    the run summary and the console: checked before the job, with the same walk."""
    report = SymlinkReport()
    for pattern in patterns:
        for _ in match_pattern(pattern, report):
            pass
    return report.as_dict()


class _ProgressLog:
    """Logs a throughput line at most every ``interval`` seconds (one per worker process)."""

    def __init__(self, interval: float = 10.0):
        self._interval = interval
        self._start = self._last = time.monotonic()
        self.files = self.songs = 0

    def update(self, songs: int) -> None:
        self.files += 1
        self.songs += songs
        now = time.monotonic()
        if now - self._last >= self._interval:
            self._last = now
            elapsed = now - self._start
            logging.info("features: this worker parsed %d files, %d songs (%.0f songs/s)",
                         self.files, self.songs, self.songs / elapsed)


class ParseMsdFilesFn(beam.DoFn):
    """Reads each matched file's bytes in one request and parses every song in it.

    Input: a batch of (path, size in bytes). While one file is parsed, up to
    ``READ_AHEAD_FILES`` of the next (at most ``READ_AHEAD_BYTES`` beyond the file being parsed)
    are read in threads, so waiting for storage overlaps parsing. Main output:
    ``hdf5_reader.Song``; tagged output ``REJECTED``: ``hdf5_reader.Rejection``.
    """

    def __init__(self, min_segments: int, max_segments: int, max_file_bytes: int):
        self._min_segments = min_segments
        self._max_segments = max_segments
        self._max_file_bytes = max_file_bytes
        counter = lambda name: beam.metrics.Metrics.counter(METRICS_NAMESPACE, name)
        self._files_matched = counter("files_matched")
        self._files_parsed = counter("files_parsed")
        self._files_rejected = counter("files_rejected")
        self._bytes_read = counter("bytes_read")
        self._songs_seen = counter("songs_seen")
        self._songs_rejected = counter("songs_rejected")
        self._progress = None
        self._readers = None

    def setup(self):
        self._progress = _ProgressLog()
        self._readers = concurrent.futures.ThreadPoolExecutor(
            READ_AHEAD_FILES, thread_name_prefix="msd-read")

    def teardown(self):
        if self._readers is not None:
            self._readers.shutdown(wait=False, cancel_futures=True)

    def _reject(self, rejection: hdf5_reader.Rejection):
        beam.metrics.Metrics.counter(METRICS_NAMESPACE, f"rejected_{rejection.reason}").inc()
        return beam.pvalue.TaggedOutput(REJECTED, rejection)

    def _read(self, path: str, size_in_bytes: int) -> Union[bytes, hdf5_reader.Rejection]:
        if size_in_bytes > self._max_file_bytes:
            return hdf5_reader.Rejection(
                path, hdf5_reader.track_id_from_path(path), "file_too_large",
                f"{size_in_bytes} bytes is over --max_file_bytes={self._max_file_bytes}",
                level="file")
        try:
            with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
                return handle.read()
        except Exception as error:  # a file deleted or unreadable since it was matched
            return hdf5_reader.Rejection(
                path, hdf5_reader.track_id_from_path(path), "unreadable_file",
                f"could not read the file ({type(error).__name__}: {error})", level="file")

    def _read_ahead(self, matched_files: Iterable[tuple[str, int]]
                    ) -> Iterator[tuple[str, Union[bytes, hdf5_reader.Rejection]]]:
        """(path, bytes or rejection) of every file, in order, reading ahead in threads."""
        pending = collections.deque()
        pending_bytes = 0
        for path, size_in_bytes in matched_files:
            # Files over the limit are rejected unread, so they hold no memory here.
            size = size_in_bytes if size_in_bytes <= self._max_file_bytes else 0
            while pending and (len(pending) >= READ_AHEAD_FILES + 1
                               or pending_bytes + size > READ_AHEAD_BYTES):
                done_path, done_size, future = pending.popleft()
                pending_bytes -= done_size
                yield done_path, future.result()
            pending.append((path, size, self._readers.submit(self._read, path, size_in_bytes)))
            pending_bytes += size
        while pending:
            done_path, _, future = pending.popleft()
            yield done_path, future.result()

    def process(self, matched_files: Sequence[tuple[str, int]]) -> Iterator:
        for path, data in self._read_ahead(matched_files):
            yield from self._parse(path, data)

    def _parse(self, path: str, data: Union[bytes, hdf5_reader.Rejection]) -> Iterator:
        self._files_matched.inc()
        if isinstance(data, hdf5_reader.Rejection):
            self._files_rejected.inc()
            yield self._reject(data)
            return
        self._bytes_read.inc(len(data))
        songs = 0
        file_parsed = True
        for record in hdf5_reader.parse_msd_file(data, path, self._min_segments,
                                                 self._max_segments):
            if isinstance(record, hdf5_reader.Song):
                songs += 1
                self._songs_seen.inc()
                yield record
            elif record.level == "file":
                file_parsed = False
                yield self._reject(record)
            else:
                self._songs_seen.inc()
                self._songs_rejected.inc()
                yield self._reject(record)
        (self._files_parsed if file_parsed else self._files_rejected).inc()
        self._progress.update(songs)


class ReadMsdSongs(beam.PTransform):
    """File patterns → (songs, rejections): matches, de-duplicates and spreads files, parses."""

    def __init__(self, patterns: Sequence[str], min_segments: int = hdf5_reader.DEFAULT_MIN_SEGMENTS,
                 max_segments: int = hdf5_reader.DEFAULT_MAX_SEGMENTS,
                 max_file_bytes: int = DEFAULT_MAX_FILE_BYTES):
        super().__init__()
        self._patterns = list(patterns)
        self._parse_fn = ParseMsdFilesFn(min_segments, max_segments, max_file_bytes)

    def expand(self, pbegin):
        return (
            pbegin
            | "Patterns" >> beam.Create(self._patterns)
            # Local symlinked folders are followed (Beam's local listing skips them).
            | "Match" >> beam.FlatMap(match_pattern)
            # Overlapping patterns must not read a file twice; the grouping also spreads the
            # files over the workers.
            | "DistinctFiles" >> beam.Distinct()
            # Batches within a bundle (no shuffle), so that the parser can read ahead.
            | "BatchFiles" >> beam.BatchElements(min_batch_size=8, max_batch_size=64)
            | "Parse" >> beam.ParDo(self._parse_fn).with_outputs(REJECTED, main=SONGS))


class KeepFirstOfDuplicateTracksFn(beam.DoFn):
    """(track_id, songs) → the song that sorts first by (path, row in the file); the others
    are rejected as ``duplicate_track_id`` naming the song that won (deterministic on any
    runner, also for two copies inside one aggregate file)."""

    def __init__(self):
        self._songs_rejected = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "songs_rejected")
        self._duplicates = beam.metrics.Metrics.counter(METRICS_NAMESPACE,
                                                        "rejected_duplicate_track_id")

    def process(self, track_and_songs: tuple[str, Iterable[hdf5_reader.Song]]) -> Iterator:
        track_id, songs = track_and_songs
        first, *others = sorted(songs, key=lambda song: (song.path, song.row))
        yield first
        for song in others:
            self._songs_rejected.inc()
            self._duplicates.inc()
            if song.path == first.path:
                kept = f"row {first.row} of the same file, which comes first and is kept"
            else:
                kept = f"{first.path} row {first.row}, whose path sorts first and is kept"
            yield beam.pvalue.TaggedOutput(REJECTED, hdf5_reader.Rejection(
                song.path, track_id, "duplicate_track_id",
                f"song {song.row}: track {track_id} is a duplicate of {kept}"))


class DropDuplicateTracks(beam.PTransform):
    """Songs → (one song per track id, rejections of the duplicates)."""

    def expand(self, songs):
        return (songs
                | "ByTrack" >> beam.Map(lambda song: (song.track_id, song))
                | "GroupByTrack" >> beam.GroupByKey()
                | "KeepFirst" >> beam.ParDo(KeepFirstOfDuplicateTracksFn()).with_outputs(
                    REJECTED, main=SONGS))
