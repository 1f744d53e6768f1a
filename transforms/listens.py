"""Beam transforms from listening files to per-user histories of catalogue tracks.

Listens are read as bytes (a bad UTF-8 byte rejects one line, not the run), parsed by
``msd.listening``, resolved from song ids to catalogue tracks by a join on song id, and grouped
per user with duplicate user–song lines adding their play counts. Every listen not used goes to
the dead-letter output with a reason.
"""
import dataclasses
from typing import Iterable, Iterator, Optional, Sequence

import apache_beam as beam
from apache_beam.coders import coders

from msd import listening

METRICS_NAMESPACE = "msd_recommend"
LISTENS = "listens"
REJECTED = "rejected"


def counter(name: str):
    """A counter in the job's namespace (``msd_recommend``)."""
    return beam.metrics.Metrics.counter(METRICS_NAMESPACE, name)


@dataclasses.dataclass(frozen=True)
class UserHistory:
    """A user's known listens: catalogue tracks (sorted) with summed play counts."""
    user_id: str
    track_ids: tuple[str, ...]
    play_counts: tuple[int, ...]
    unknown_listens: int = 0

    @property
    def size(self) -> int:
        return len(self.track_ids)


def listen_rejection(listen: listening.Listen, reason: str, detail: str) -> listening.Rejection:
    return listening.Rejection(reason=reason, detail=detail,
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


class ReadListens(beam.PTransform):
    """Listening files (patterns, local or gs://) → (Listens, Rejections)."""

    def __init__(self, patterns: Sequence[str],
                 max_play_count: int = listening.DEFAULT_MAX_PLAY_COUNT):
        super().__init__()
        self._patterns = list(patterns)
        self._max_play_count = max_play_count

    def expand(self, pbegin):
        lines = [pbegin | f"Read{i}" >> beam.io.ReadFromTextWithFilename(
                     pattern, coder=coders.BytesCoder(), validate=False)
                 for i, pattern in enumerate(self._patterns)]
        return (lines | "AllLines" >> beam.Flatten()
                | "Parse" >> beam.ParDo(ParseListensFn(self._max_play_count)).with_outputs(
                    REJECTED, main=LISTENS))


def catalogue_song_tracks(catalogue_pairs: Iterable[tuple[str, str]],
                          song_to_tracks: Optional[dict[str, list[str]]],
                          mismatches: set[tuple[str, str]]) -> tuple[dict[str, str], set[str]]:
    """song_id → the catalogue track that stands for it, and the songs lost to mismatches.

    ``catalogue_pairs`` are the catalogue's (track_id, song_id). Without ``song_to_tracks`` a
    song is joined on the song id the features carry; with it, on the listed tracks. Pairs in
    ``mismatches`` are dropped. When a song has several catalogue tracks the lowest track id
    stands for it (deterministic).
    """
    catalogue_tracks = {}
    for track_id, song_id in catalogue_pairs:
        catalogue_tracks[track_id] = song_id
    if song_to_tracks is None:
        candidates: dict[str, list[str]] = {}
        for track_id, song_id in catalogue_tracks.items():
            candidates.setdefault(song_id, []).append(track_id)
    else:
        candidates = {song_id: [t for t in tracks if t in catalogue_tracks]
                      for song_id, tracks in song_to_tracks.items()}
    track_of_song, mismatched = {}, set()
    for song_id, tracks in candidates.items():
        kept = sorted(t for t in tracks if (song_id, t) not in mismatches)
        if kept:
            track_of_song[song_id] = kept[0]
        elif tracks:
            mismatched.add(song_id)
    return track_of_song, mismatched


class ResolveListenFn(beam.DoFn):
    """Listen → (user_id, (track_id, play_count)) for known songs; else a dead-letter entry.

    Side inputs: the song → track map and the set of songs lost to mismatches.
    """

    def process(self, listen: listening.Listen, track_of_song: dict[str, str],
                mismatched: set[str]) -> Iterator:
        track_id = track_of_song.get(listen.song_id)
        if track_id is not None:
            counter("listens_used").inc()
            yield listen.user_id, (track_id, listen.play_count)
            return
        if listen.song_id in mismatched:
            counter("listens_mismatched").inc()
            reason, detail = "mismatched_song", (
                f"song {listen.song_id} maps only to tracks listed in sid_mismatches.txt")
        else:
            counter("listens_unknown_song").inc()
            reason, detail = "unknown_song", f"song {listen.song_id} is not in the catalogue"
        # The user still needs a history entry (maybe empty: the fallback decides).
        yield listen.user_id, (None, listen.play_count)
        yield beam.pvalue.TaggedOutput(REJECTED, listen_rejection(listen, reason, detail))


def user_history(user_id: str, listens: Iterable[tuple[Optional[str], int]]) -> UserHistory:
    """Sums duplicate listens of a track; counts the listens of unknown songs."""
    counts: dict[str, int] = {}
    unknown = 0
    for track_id, play_count in listens:
        if track_id is None:
            unknown += 1
        else:
            counts[track_id] = counts.get(track_id, 0) + play_count
    tracks = tuple(sorted(counts))
    return UserHistory(user_id, tracks, tuple(counts[t] for t in tracks), unknown)


class GroupHistories(beam.PTransform):
    """Listens → (UserHistory per user, rejected listens), using the song → track side inputs."""

    def __init__(self, track_of_song, mismatched):
        super().__init__()
        self._track_of_song = track_of_song
        self._mismatched = mismatched

    def expand(self, listens):
        resolved = listens | "Resolve" >> beam.ParDo(
            ResolveListenFn(), beam.pvalue.AsSingleton(self._track_of_song),
            beam.pvalue.AsSingleton(self._mismatched)).with_outputs(REJECTED, main="resolved")
        histories = (resolved["resolved"]
                     | "ByUser" >> beam.GroupByKey()
                     | "History" >> beam.MapTuple(user_history))
        return histories, resolved[REJECTED]
