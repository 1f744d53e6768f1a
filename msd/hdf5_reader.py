"""Parses MSD HDF5 files (single-song and aggregate) held in memory into songs with their
90 timbre statistics, or into rejections that say why a file or song could not be used.

The whole file is read in one request by the caller and opened here from bytes: h5py on a
remote file object issues many small reads, which is far slower on GCS.
"""
import dataclasses
import io
import os
import re
from typing import Iterator, Optional, Union

import h5py
import numpy as np

from msd import timbre as timbre_lib
from msd.listening import SONG_ID, TRACK_ID

DEFAULT_MIN_SEGMENTS = 10
# Real songs have at most ~3,300 segments; the cap stops a dataset declared huge but
# compressed from being inflated into memory.
DEFAULT_MAX_SEGMENTS = 50_000
# Aggregate files of the MSD's own tools hold up to a few thousand songs with their segments;
# the cap stops a file declaring 10^9 rows (5 TB of metadata) from being allocated.
DEFAULT_MAX_SONGS = 100_000

_TRACK_ID_IN_NAME = re.compile(r"(TR[A-Z0-9]{16})")


@dataclasses.dataclass(frozen=True)
class Song:
    """One usable song: its ids, the metadata carried to the outputs, and raw statistics."""
    track_id: str
    song_id: str
    artist_name: str
    title: str
    release: str
    year: int
    duration: float
    num_segments: int
    raw_features: np.ndarray  # float64 (90,)
    path: str


@dataclasses.dataclass(frozen=True)
class Rejection:
    """A file or song that produced no output, with a reason code and a sentence for a person."""
    path: str
    track_id: Optional[str]
    reason: str
    detail: str
    level: str = "song"  # "file": the whole file was unusable; "song": one song in it

    def to_json_dict(self) -> dict:
        return dataclasses.asdict(self)


def track_id_from_path(path: str) -> Optional[str]:
    """The track id in an MSD file name (``TRAXLZU12903D05F94.h5``), if there is one."""
    match = _TRACK_ID_IN_NAME.search(os.path.basename(path))
    return match.group(1) if match else None


def _file_rejection(path: str, reason: str, detail: str) -> Rejection:
    return Rejection(path=path, track_id=track_id_from_path(path), reason=reason, detail=detail,
                     level="file")


def _text(value) -> str:
    if isinstance(value, bytes):
        return value.rstrip(b"\x00").decode("utf-8", errors="replace")
    return str(value)


def _read_all(dataset: h5py.Dataset, dtype: np.dtype) -> np.ndarray:
    # h5py's dataset[()] rebuilds the dtype (~70 µs) on every access; the low-level read does not.
    values = np.empty(dataset.shape, dtype=dtype)
    if values.size:
        dataset.id.read(h5py.h5s.ALL, h5py.h5s.ALL, values)
    return values


_USED_DATASETS = ("analysis/songs", "metadata/songs", "musicbrainz/songs",
                  "analysis/segments_timbre")


def _outside_data(h5: h5py.File) -> Optional[str]:
    """Why the datasets we read would make HDF5 read outside this file, if they would.

    External links, external raw storage and virtual datasets can point at any local file (and
    a virtual dataset read from memory has crashed HDF5 1.14 with SIGSEGV): none is followed.
    """
    for name in _USED_DATASETS:
        parts = name.split("/")
        for depth in range(1, len(parts) + 1):
            prefix = "/".join(parts[:depth])
            link = h5.get(prefix, getlink=True)
            if link is None:
                break  # missing: reported as such later
            if not isinstance(link, h5py.HardLink):
                return f"'{prefix}' is a {type(link).__name__} to data outside the file"
        dataset = h5.get(name)
        if isinstance(dataset, h5py.Dataset):
            if dataset.is_virtual:
                return f"'{name}' is a virtual dataset mapping data from other files"
            if dataset.external:
                return f"'{name}' keeps its data in external raw files"
    return None


def _compound_table(h5: h5py.File, name: str, fields: tuple[str, ...]
                    ) -> Union[tuple[h5py.Dataset, np.dtype], str]:
    """A compound ``songs`` table checked from its declaration (nothing read yet), or what is
    wrong with it."""
    dataset = h5.get(name)
    if not isinstance(dataset, h5py.Dataset):
        return f"the dataset '{name}' is missing"
    dtype = dataset.dtype
    missing = [field for field in fields if field not in (dtype.names or ())]
    if missing:
        return f"'{name}' lacks the field(s) {', '.join(missing)}"
    shape = dataset.shape
    if len(shape) != 1 or shape[0] == 0:
        return f"'{name}' has shape {shape}, expected one row per song"
    return dataset, dtype


def bad_segment_bounds(starts: np.ndarray, total_segments: int) -> np.ndarray:
    """Per song, whether its segment range is untrustworthy: a boundary outside the timbre
    rows, or, among the boundaries inside them, one taking part in a decrease (then both
    songs around it are suspect)."""
    bounds = np.append(starts.astype(np.int64), total_segments)
    bad = (bounds < 0) | (bounds > total_segments)
    inside = np.flatnonzero(~bad)
    decreasing = bounds[inside[:-1]] > bounds[inside[1:]]
    bad[inside[:-1][decreasing]] = True
    bad[inside[1:][decreasing]] = True
    return bad[:-1] | bad[1:]


def parse_msd_file(data: bytes, path: str, min_segments: int = DEFAULT_MIN_SEGMENTS,
                   max_segments: int = DEFAULT_MAX_SEGMENTS,
                   max_songs: int = DEFAULT_MAX_SONGS) -> Iterator[Union[Song, Rejection]]:
    """Yields a Song or a Rejection for every song in an MSD HDF5 file given as bytes.

    A file that cannot be used at all yields exactly one Rejection with ``level="file"``.
    """
    if not data:
        yield _file_rejection(path, "empty_file", "the file is empty (0 bytes)")
        return
    try:
        h5 = h5py.File(io.BytesIO(data), "r")
    except Exception as error:  # h5py raises OSError subclasses with HDF5's own wording
        yield _file_rejection(path, "not_hdf5",
                              f"not a readable HDF5 file ({type(error).__name__}: {error})")
        return
    try:
        yield from _parse_open_file(h5, path, min_segments, max_segments, max_songs)
    except Exception as error:  # a corrupt chunk deep in the file surfaces only when read
        yield _file_rejection(path, "corrupt_hdf5",
                              f"HDF5 data could not be read ({type(error).__name__}: {error})")
    finally:
        h5.close()


def _parse_open_file(h5: h5py.File, path: str, min_segments: int, max_segments: int,
                     max_songs: int) -> Iterator[Union[Song, Rejection]]:
    outside = _outside_data(h5)
    if outside:
        yield _file_rejection(path, "external_data", outside + "; such files are not read")
        return
    tables = {}
    for name, fields in (("analysis/songs", ("track_id", "duration", "idx_segments_timbre")),
                         ("metadata/songs", ("song_id", "artist_name", "title", "release")),
                         ("musicbrainz/songs", ("year",))):
        table = _compound_table(h5, name, fields)
        if isinstance(table, str):
            yield _file_rejection(path, "not_msd_file", table)
            return
        tables[name] = table
    counts = {name: dataset.shape[0] for name, (dataset, _) in tables.items()}
    num_songs = counts["analysis/songs"]
    if len(set(counts.values())) > 1:
        yield _file_rejection(
            path, "inconsistent_tables",
            "the songs tables disagree on the number of songs (" +
            ", ".join(f"{name} {count}" for name, count in counts.items()) + ")")
        return
    if num_songs > max_songs:
        yield _file_rejection(path, "too_many_songs",
                              f"the songs tables declare {num_songs} songs; the limit is "
                              f"{max_songs} per file")
        return
    timbre_dataset = h5.get("analysis/segments_timbre")
    if not isinstance(timbre_dataset, h5py.Dataset):
        yield _file_rejection(path, "not_msd_file", "the dataset 'analysis/segments_timbre' is missing")
        return
    timbre_shape, timbre_dtype = timbre_dataset.shape, timbre_dataset.dtype
    if len(timbre_shape) != 2 or timbre_shape[1] != timbre_lib.TIMBRE_DIMS:
        yield _file_rejection(path, "bad_timbre_shape",
                              f"segments_timbre has shape {timbre_shape}, expected (n, 12)")
        return
    if not np.issubdtype(timbre_dtype, np.floating):
        yield _file_rejection(path, "bad_timbre_dtype",
                              f"segments_timbre has dtype {timbre_dtype}, expected float")
        return
    total_segments = timbre_shape[0]
    if total_segments > max_segments * num_songs:
        yield _file_rejection(
            path, "too_many_segments",
            f"segments_timbre declares {total_segments} segments for {num_songs} song(s); "
            f"the limit is {max_segments} per song")
        return
    analysis, metadata, musicbrainz = (_read_all(*tables[name]) for name in tables)
    all_timbre = _read_all(timbre_dataset, timbre_dtype)

    starts = analysis["idx_segments_timbre"].astype(np.int64)
    ends = np.append(starts[1:], total_segments)
    untrusted = bad_segment_bounds(starts, total_segments)
    for row in range(num_songs):
        track_id = _text(analysis["track_id"][row]) or track_id_from_path(path)
        song_id = _text(metadata["song_id"][row])
        if not track_id or not TRACK_ID.fullmatch(track_id):
            yield Rejection(path, track_id, "bad_track_id",
                            f"song {row}: track id {track_id!r} is not 'TR' + 16 characters A-Z/0-9")
            continue
        if not SONG_ID.fullmatch(song_id):
            yield Rejection(path, track_id, "bad_song_id",
                            f"song {row}: song id {song_id!r} is not 'SO' + 16 characters A-Z/0-9")
            continue
        start, end = int(starts[row]), int(ends[row])
        if untrusted[row]:
            yield Rejection(path, track_id, "bad_segment_index",
                            f"song {row}: segments {start}..{end}: a boundary is outside "
                            f"0..{total_segments} or out of order "
                            "(analysis/songs.idx_segments_timbre)")
            continue
        song_timbre = all_timbre[start:end]
        problem = timbre_lib.timbre_problem(song_timbre, min_segments)
        if problem:
            yield Rejection(path, track_id, *problem)
            continue
        statistics = timbre_lib.timbre_statistics(song_timbre)
        if not statistics.any():
            yield Rejection(path, track_id, "zero_features",
                            "all 90 timbre statistics are zero: the song cannot be normalised")
            continue
        yield Song(
            track_id=track_id,
            song_id=song_id,
            artist_name=_text(metadata["artist_name"][row]),
            title=_text(metadata["title"][row]),
            release=_text(metadata["release"][row]),
            year=int(musicbrainz["year"][row]),
            duration=float(analysis["duration"][row]),
            num_segments=end - start,
            raw_features=statistics,
            path=path,
        )
