"""Beam transforms from listening files to per-user histories of catalogue songs.

Listens are read as bytes (a bad UTF-8 byte rejects one line, not the run), parsed by
``msd.listening``, checked against the model's catalogue of songs, and grouped
per user with duplicate user–song lines adding their play counts. Every listen not used goes to
the dead-letter output with a reason.
"""
import dataclasses
import io
from typing import Iterable, Iterator, Optional, Sequence

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.fileio import EmptyMatchTreatment
from apache_beam.io.restriction_trackers import OffsetRange
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from msd import listening

METRICS_NAMESPACE = "msd_recommend"
LISTENS = "listens"
REJECTED = "rejected"


def counter(name: str):
    """A counter in the job's namespace (``msd_recommend``)."""
    return beam.metrics.Metrics.counter(METRICS_NAMESPACE, name)


@dataclasses.dataclass(frozen=True)
class UserHistory:
    """A user's known listens: catalogue songs (sorted) with summed play counts, and how many
    listens (input lines) each song's count came from."""
    user_id: str
    song_ids: tuple[str, ...]
    play_counts: tuple[int, ...]
    unknown_listens: int = 0
    listen_lines: tuple[int, ...] = ()  # parallel to song_ids (empty: one line each)

    @property
    def size(self) -> int:
        return len(self.song_ids)


def listen_rejection(listen: listening.Listen, reason: str, detail: str) -> listening.Rejection:
    return listening.Rejection(reason=reason, detail=detail, source=listen.source,
                               raw=f"{listen.user_id}\t{listen.song_id}\t{listen.play_count}")


class ParseListensFn(beam.DoFn):
    """(file, line bytes) → Listen, or a Rejection on the ``REJECTED`` output."""

    def __init__(self, max_play_count: int = listening.DEFAULT_MAX_PLAY_COUNT):
        self._max_play_count = max_play_count
        self._lines = counter("listen_lines_read")
        self._parsed = counter("listens_parsed")

    def process(self, file_and_line: tuple[str, bytes]) -> Iterator:
        source, line = file_and_line
        self._lines.inc()
        record = listening.parse_listen_line(line, source=source,
                                             max_play_count=self._max_play_count)
        if record is None:
            counter("listen_lines_not_data").inc()
        elif isinstance(record, listening.Rejection):
            counter(f"listens_rejected_{record.reason}").inc()
            yield beam.pvalue.TaggedOutput(REJECTED, record)
        else:
            self._parsed.inc()
            yield record


class ListensFileRangesFn(beam.DoFn):
    """A matched file → what to read of it: (path, (start, stop)) byte ranges of a plain text
    file (read in parallel after a reshuffle, as Beam's ``ReadFromText`` would), or (path,
    None) for a file read whole (a compressed file: not splittable, and checked to its end)."""

    def __init__(self, range_bytes: int = 64 << 20):
        self._range_bytes = range_bytes

    def process(self, metadata) -> Iterator:
        counter("listen_files_matched").inc()
        path = metadata.path
        if listening.compression_of(path) != "uncompressed":
            yield path, None
            return
        counter("listen_files_read").inc()
        for part in OffsetRange(0, metadata.size_in_bytes).split(self._range_bytes):
            yield path, (part.start, part.stop)


class ReadListensFileFn(beam.DoFn):
    """(path, byte range) → (path, line bytes) as Beam's text source gives them (line ends
    ``\\n``/``\\r\\n`` removed); (path, None) → the whole file's lines, or one file-level
    Rejection on the ``REJECTED`` output.

    A compressed file is used only if it decompresses to its end: a file cut in transfer
    (``truncated_file``) or corrupt (``corrupt_compressed_file``) is rejected as a whole, none
    of its lines are parsed, and the rejection says how many lines were readable. Half a file
    would silently bias the users in it (their histories cut at an arbitrary line), and lines
    emitted downstream cannot be taken back, so no line leaves before the end is reached.
    The launchers (``launcher.unreadable_inputs``) decompress every compressed input to its end
    before the job and refuse the run when one is damaged, so this dead letter is only met by a
    file damaged after that check (or by a job started without the launcher).

    Memory stays bounded: a file of up to ``buffer_bytes`` decompressed is read once and kept
    while it is checked; a larger one is read twice, a first streaming pass that only counts
    lines to the end-of-stream marker, then a second that emits them. The second pass costs one
    more decompression and read of the compressed bytes (a 50 MB .gz, 212 MB of text: ≈ 2 s,
    next to ≈ 25 s to parse its 3.4M lines); buffering a 3 GB Taste Profile file instead would
    not fit a worker. If the second pass does not give the first pass's line count (the file
    changed in between), the bundle fails loudly rather than emit a different file.

    ``.deflate`` and ``.zst`` files are refused (``unsupported_compression``): no reader at
    hand notices a cut in them. Plain ranges are read with ``listening.range_lines`` (Beam's
    rule: a range owns the lines that start in it), on the path itself, so a name with glob
    characters is not matched again.
    """

    def __init__(self, buffer_bytes: int = 64 << 20):
        self._buffer_bytes = buffer_bytes

    def process(self, path_and_range) -> Iterator:
        path, byte_range = path_and_range
        if byte_range is not None:
            with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as raw:
                stream = raw if hasattr(raw, "peek") else io.BufferedReader(raw, 1 << 20)
                yield from ((path, line) for line in listening.range_lines(stream, *byte_range))
            return
        compression = listening.compression_of(path)
        if compression in listening.UNVERIFIED_COMPRESSIONS:
            yield self._rejected(listening.Rejection(
                reason="unsupported_compression", source=path,
                detail=f"{compression} files are not read: a cut in them cannot be detected; "
                "recompress as .gz or .bz2"))
            return
        try:
            verified = listening.verify_compressed(path, compression, self._buffer_bytes)
        except listening.CompressedFileError as error:
            counter("listen_lines_in_rejected_files").inc(error.lines)
            yield self._rejected(error.rejection())
            return
        counter("listen_files_read").inc()
        emitted = 0
        if verified.data is not None:
            for emitted, line in enumerate(listening.split_lines(io.BytesIO(verified.data)), 1):
                yield path, line
        else:
            with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as raw:
                stream = listening.VERIFIED_COMPRESSIONS[compression](raw)
                for emitted, line in enumerate(listening.split_lines(stream), 1):
                    yield path, line
        if emitted != verified.lines:
            raise RuntimeError(f"{path}: {verified.lines:,} lines when checked, {emitted:,} "
                               "when read: the file changed during the read")

    @staticmethod
    def _rejected(rejection: listening.Rejection):
        counter(f"listen_files_rejected_{rejection.reason}").inc()
        return beam.pvalue.TaggedOutput(REJECTED, rejection)


class ReadListens(beam.PTransform):
    """Listening files (patterns, local or gs://) → {``LISTENS``: Listens, ``REJECTED``:
    Rejections}. Plain text files are read in parallel byte ranges; compressed ones whole, and
    only if they decompress to their end (see ``ReadListensFileFn``). A pattern that matches
    nothing reads nothing (the launchers refuse such patterns before the job).

    One reading step serves both kinds, with parsing fused into it: a Flatten of two readers
    before the parser makes the DirectRunner hold every line in memory (measured: 2 GB for a
    50 MB .gz)."""

    def __init__(self, patterns: Sequence[str],
                 max_play_count: int = listening.DEFAULT_MAX_PLAY_COUNT):
        super().__init__()
        self._patterns = list(patterns)
        self._max_play_count = max_play_count

    def expand(self, pbegin):
        read = (pbegin
                | "Patterns" >> beam.Create(self._patterns)
                | "Match" >> fileio.MatchAll(EmptyMatchTreatment.ALLOW)
                | "Ranges" >> beam.ParDo(ListensFileRangesFn())
                | "SpreadRanges" >> beam.Reshuffle()
                | "Read" >> beam.ParDo(ReadListensFileFn()).with_outputs(REJECTED, main="lines"))
        parsed = read["lines"] | "Parse" >> beam.ParDo(
            ParseListensFn(self._max_play_count)).with_outputs(REJECTED, main=LISTENS)
        rejected = (parsed[REJECTED], read[REJECTED]) | "AllRejected" >> beam.Flatten()
        return {LISTENS: parsed[LISTENS], REJECTED: rejected}


class ResolveListenFn(beam.DoFn):
    """Listen → (user_id, [(song_id, play_count), …]) for catalogue songs (None for a song not
    in the catalogue, which also goes to the dead-letter output with its reason).

    Consecutive listens of one user are sent as one element: Taste Profile files are sorted by
    user, so the GroupByKey after this sees about one element per user and file range instead
    of one per listen (it was most of the grouping's cost on the DirectRunner).
    Side inputs: the catalogue's songs (any container answering ``in``) and the songs lost to
    mismatches.
    """

    def setup(self):
        self._used = counter("listens_used")
        self._mismatched = counter("listens_mismatched")
        self._unknown = counter("listens_unknown_song")

    def start_bundle(self):
        self._user: Optional[str] = None
        self._run: list[tuple[Optional[str], int]] = []

    def process(self, listen: listening.Listen, catalogue_songs, mismatched) -> Iterator:
        if listen.user_id != self._user:
            if self._run:
                yield self._user, self._run
            self._user, self._run = listen.user_id, []
        if listen.song_id in catalogue_songs:
            self._used.inc()
            self._run.append((listen.song_id, listen.play_count))
            return
        if listen.song_id in mismatched:
            self._mismatched.inc()
            reason, detail = "mismatched_song", (
                f"song {listen.song_id} maps only to tracks listed in sid_mismatches.txt")
        else:
            self._unknown.inc()
            reason, detail = "unknown_song", f"song {listen.song_id} is not in the catalogue"
        # The user still needs a history entry (maybe empty: the fallback decides).
        self._run.append((None, listen.play_count))
        yield beam.pvalue.TaggedOutput(REJECTED, listen_rejection(listen, reason, detail))

    def finish_bundle(self):
        if self._run:
            yield WindowedValue((self._user, self._run), GlobalWindow().max_timestamp(),
                                [GlobalWindow()])
        self._user, self._run = None, []


def user_history(user_id: str, runs: Iterable[Sequence[tuple[Optional[str], int]]]) -> UserHistory:
    """Sums duplicate listens of a song over the user's runs of listens; counts the listens
    of unknown songs."""
    counts: dict[str, int] = {}
    lines: dict[str, int] = {}
    unknown = 0
    for run in runs:
        for song_id, play_count in run:
            if song_id is None:
                unknown += 1
            else:
                counts[song_id] = counts.get(song_id, 0) + play_count
                lines[song_id] = lines.get(song_id, 0) + 1
    songs = tuple(sorted(counts))
    return UserHistory(user_id, songs, tuple(counts[s] for s in songs), unknown,
                       tuple(lines[s] for s in songs))


class GroupHistories(beam.PTransform):
    """Listens → (UserHistory per user, rejected listens), given the catalogue's songs and the
    songs lost to mismatches (singleton side inputs)."""

    def __init__(self, catalogue_songs, mismatched):
        super().__init__()
        self._catalogue_songs = catalogue_songs
        self._mismatched = mismatched

    def expand(self, listens):
        resolved = listens | "Resolve" >> beam.ParDo(
            ResolveListenFn(), beam.pvalue.AsSingleton(self._catalogue_songs),
            beam.pvalue.AsSingleton(self._mismatched)).with_outputs(REJECTED, main="resolved")
        histories = (resolved["resolved"]
                     | "ByUser" >> beam.GroupByKey()
                     | "History" >> beam.MapTuple(user_history))
        return histories, resolved[REJECTED]


def counters_by_prefix(counters: dict[str, int], prefix: str) -> dict[str, int]:
    """{rest of the name: value} of the counters whose name starts with ``prefix``."""
    return {n[len(prefix):]: v for n, v in sorted(counters.items()) if n.startswith(prefix)}


def listens_summary(counters: dict[str, int]) -> dict:
    """The run summary's listening counts (every job that reads listens), and whether they
    reconcile: files matched = read + rejected; lines read = not data + parsed + rejected;
    listens parsed = used + of unknown songs + mismatched."""
    get = lambda name: counters.get(name, 0)
    listens_rejected = counters_by_prefix(counters, "listens_rejected_")
    listen_files_rejected = counters_by_prefix(counters, "listen_files_rejected_")
    listens_parsed = get("listens_parsed")
    return {
        "listen_files_matched": get("listen_files_matched"),
        "listen_files_read": get("listen_files_read"),
        "listen_files_rejected": sum(listen_files_rejected.values()),
        "listen_files_rejected_by_reason": listen_files_rejected,
        # Lines readable in files rejected whole (cut or corrupt compressed files): not parsed.
        "listen_lines_in_rejected_files": get("listen_lines_in_rejected_files"),
        "listen_lines_read": get("listen_lines_read"),
        "listen_lines_not_data": get("listen_lines_not_data"),
        "listens_parsed": listens_parsed,
        "listens_rejected": sum(listens_rejected.values()),
        "listens_rejected_by_reason": listens_rejected,
        "listens_used": get("listens_used"),
        "listens_unknown_song": get("listens_unknown_song"),
        "listens_mismatched": get("listens_mismatched"),
        "listens_reconcile": get("listen_files_matched") == (
            get("listen_files_read") + sum(listen_files_rejected.values()))
            and get("listen_lines_read") == (
            get("listen_lines_not_data") + listens_parsed + sum(listens_rejected.values()))
            and listens_parsed == (get("listens_used") + get("listens_unknown_song")
                                   + get("listens_mismatched")),
    }
