"""Parses MSD HDF5 files (single-song and aggregate) held in memory into songs with their
90 timbre statistics, or into rejections that say why a file or song could not be used.

The whole file is read in one request by the caller and opened here from bytes: h5py on a
remote file object issues many small reads, which is far slower on GCS.
"""
import dataclasses
import io
import logging
import math
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
    row: int = 0  # its row in the file's songs tables (aggregate files hold several)
    # The analysis fields of ``analysis/songs`` carried to the outputs. A value that makes no
    # sense in the file (see ``song_fields``) is stored as that field's UNKNOWN value and
    # named in ``replaced_fields``; the defaults are the unknown values.
    loudness: float = 0.0  # dB
    tempo: float = 0.0  # BPM; 0 = unknown (the MSD's own convention)
    key: int = -1  # 0..11 (C..B); -1 = unknown (the Echo Nest's "no key detected")
    mode: int = -1  # 0 minor, 1 major; -1 = unknown
    time_signature: int = 0  # beats per bar: 1 (complex/changing) or 3..7; 0 = unknown
    replaced_fields: tuple[str, ...] = ()


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


def _read_all(dataset: h5py.h5d.DatasetID, dtype: np.dtype,
              memory_type: Optional[h5py.h5t.TypeID] = None) -> np.ndarray:
    """The whole dataset as ``dtype`` (for a compound table, only the fields of ``dtype``:
    HDF5 converts member by member, by name, so each field reads as in a full read)."""
    values = np.empty(dataset.shape, dtype=dtype)
    if values.size:
        dataset.read(h5py.h5s.ALL, h5py.h5s.ALL, values, memory_type)
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


def _open_datasets_inside(h5: h5py.File) -> Optional[dict[str, h5py.h5d.DatasetID]]:
    """The datasets we read, opened with HDF5's low-level calls, when every link on their
    paths is a hard link and each is a dataset with neither virtual nor external storage;
    None otherwise (then ``_outside_data`` and the table checks say what is wrong).

    The same checks as ``_outside_data`` without building h5py's high-level objects: a
    ``Dataset`` costs its creation property list and filters, and its ``dtype`` rebuilds the
    compound type (~0.2 ms for ``metadata/songs``) every time.
    """
    root = h5.id
    opened = {}
    try:
        # Parents before children, each link itself (not what it points to): nothing
        # outside the file is opened.
        for prefix in _LINK_PREFIXES:
            if root.links.get_info(prefix).type != h5py.h5l.TYPE_HARD:
                return None
        for name in _USED_DATASETS:
            dataset = h5py.h5o.open(root, name.encode())
            if not isinstance(dataset, h5py.h5d.DatasetID):
                return None
            create = dataset.get_create_plist()
            if create.get_layout() == h5py.h5d.VIRTUAL or create.get_external_count():
                return None
            opened[name] = dataset
    except Exception:  # a missing link, an odd object: the slow path words it
        return None
    return opened


_LINK_PREFIXES = tuple(dict.fromkeys(
    "/".join(name.split("/")[:depth]).encode()
    for name in _USED_DATASETS for depth in range(1, name.count("/") + 2)))


@dataclasses.dataclass(frozen=True)
class _TableType:
    dtype: np.dtype  # the whole declared type
    missing: tuple[str, ...]  # requested fields it lacks
    fields_dtype: Optional[np.dtype]  # only the requested fields (None if some are missing)
    memory_type: Optional[h5py.h5t.TypeID]  # their HDF5 memory type


# Declared types seen, by their binary HDF5 description (H5Tencode: equal descriptions are
# equal types): every MSD file has the same three compound types, built once per process.
_TABLE_TYPES: dict = {}
_MAX_TABLE_TYPES = 64


def _table_type(dataset: h5py.h5d.DatasetID, fields: tuple[str, ...]) -> _TableType:
    file_type = dataset.get_type()
    try:
        key = (file_type.encode(), fields)
    except Exception:  # a type HDF5 cannot describe: built, not cached
        key = None
    cached = _TABLE_TYPES.get(key) if key is not None else None
    if cached is not None:
        return cached
    dtype = file_type.dtype
    missing = tuple(field for field in fields if field not in (dtype.names or ()))
    fields_dtype = memory_type = None
    if not missing and fields:
        fields_dtype = np.dtype({"names": list(fields),
                                 "formats": [dtype.fields[field][0] for field in fields]})
        memory_type = h5py.h5t.py_create(fields_dtype)
    table_type = _TableType(dtype, missing, fields_dtype, memory_type)
    if key is not None:
        if len(_TABLE_TYPES) >= _MAX_TABLE_TYPES:
            _TABLE_TYPES.clear()
        _TABLE_TYPES[key] = table_type
    return table_type


def _compound_table(dataset: Optional[h5py.h5d.DatasetID], name: str, fields: tuple[str, ...]
                    ) -> Union[tuple[h5py.h5d.DatasetID, np.dtype, h5py.h5t.TypeID], str]:
    """A compound ``songs`` table checked from its declaration (nothing read yet), with the
    type that reads only ``fields``, or what is wrong with it."""
    if dataset is None:
        return f"the dataset '{name}' is missing"
    table_type = _table_type(dataset, fields)
    if table_type.missing:
        return f"'{name}' lacks the field(s) {', '.join(table_type.missing)}"
    shape = dataset.shape
    if len(shape) != 1 or shape[0] == 0:
        return f"'{name}' has shape {shape}, expected one row per song"
    return dataset, table_type.fields_dtype, table_type.memory_type


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


# The analysis fields carried to the outputs beside year and duration, and the UNKNOWN value
# each is stored as when the file's value is missing or makes no sense. tempo 0 and
# time_signature 0 are what the MSD itself holds when the analysis found none (the real
# 5-segment file TRBDXOD128F422C47B has tempo 0); key and mode -1 are the Echo Nest's "none
# detected" (the MSD itself writes key 0 / mode with confidence 0, kept as they are); loudness
# has no such convention and gets 0.0, as the MSD's unknown year, tempo and time signature.
SONG_FIELDS = ("loudness", "tempo", "key", "mode", "time_signature")
UNKNOWN = {"loudness": 0.0, "tempo": 0.0, "key": -1, "mode": -1, "time_signature": 0}
# What makes sense. Generous bounds for the floats: loudness is dB relative to full scale (the
# real sample files hold -29.1..-1.8; MSD songs stay below a few dB above 0) and tempo BPM (the
# sample: 0..202.4). key 0..11 (C..B), mode 0 minor / 1 major; time signature 3..7 (3/4..7/4),
# 1 (complex or changing) or 0 (none found), as the Echo Nest documents it (the MSD holds 0, 1,
# 3, 4, 5, 7).
LOUDNESS_RANGE = (-100.0, 20.0)
TEMPO_RANGE = (0.0, 500.0)
TIME_SIGNATURES = (0, 1, 3, 4, 5, 6, 7)


def _number(value) -> Optional[float]:
    """A real numeric scalar as a float (None for text, arrays, booleans, complex numbers)."""
    value = np.asarray(value)
    if value.shape != () or value.dtype.kind not in "iuf":
        return None
    return float(value)


def song_fields(stored: dict) -> tuple[dict, tuple[str, ...]]:
    """The analysis fields as written to the outputs, from ``stored`` (the file's values by
    name), and the names of the fields stored as UNKNOWN because the file's value is missing or
    makes no sense: not a number, non-finite, not a whole number (key, mode, time_signature) or
    outside the ranges above (key and mode -1 are the documented unknown, kept as they are)."""
    numbers = {name: _number(stored[name]) if name in stored else None for name in SONG_FIELDS}
    sane = {name: number is not None and math.isfinite(number)
            for name, number in numbers.items()}
    for name, (low, high) in (("loudness", LOUDNESS_RANGE), ("tempo", TEMPO_RANGE)):
        sane[name] = sane[name] and low <= numbers[name] <= high
    for name, allowed in (("key", range(-1, 12)), ("mode", (-1, 0, 1)),
                          ("time_signature", TIME_SIGNATURES)):
        sane[name] = sane[name] and numbers[name] in allowed
    replaced = tuple(name for name in SONG_FIELDS if not sane[name])
    values = {name: UNKNOWN[name] if name in replaced else type(UNKNOWN[name])(numbers[name])
              for name in SONG_FIELDS}
    return values, replaced


# The fields of the songs tables the outputs use (only these are read; a file lacking one is
# not an MSD file). The SONG_FIELDS of analysis/songs are read too when the table has them: a
# song is not lost for a missing or nonsensical side field (it is stored as unknown).
_TABLE_FIELDS = (("analysis/songs", ("track_id", "duration", "idx_segments_timbre")),
                 ("metadata/songs", ("song_id", "artist_name", "title", "release")),
                 ("musicbrainz/songs", ("year",)))
_OPTIONAL_FIELDS = {"analysis/songs": SONG_FIELDS}


def _parse_open_file(h5: h5py.File, path: str, min_segments: int, max_segments: int,
                     max_songs: int) -> Iterator[Union[Song, Rejection]]:
    datasets = _open_datasets_inside(h5)
    if datasets is None:  # something unusual: the complete checks, with h5py's objects
        outside = _outside_data(h5)
        if outside:
            yield _file_rejection(path, "external_data", outside + "; such files are not read")
            return
        datasets = {}
        for name in _USED_DATASETS:
            dataset = h5.get(name)
            datasets[name] = dataset.id if isinstance(dataset, h5py.Dataset) else None
    tables = {}
    for name, fields in _TABLE_FIELDS:
        if datasets[name] is not None and name in _OPTIONAL_FIELDS:
            declared = _table_type(datasets[name], ()).dtype.names or ()
            fields += tuple(field for field in _OPTIONAL_FIELDS[name] if field in declared)
        table = _compound_table(datasets[name], name, fields)
        if isinstance(table, str):
            yield _file_rejection(path, "not_msd_file", table)
            return
        tables[name] = table
    counts = {name: dataset.shape[0] for name, (dataset, _, _) in tables.items()}
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
    timbre_dataset = datasets["analysis/segments_timbre"]
    if timbre_dataset is None:
        yield _file_rejection(path, "not_msd_file", "the dataset 'analysis/segments_timbre' is missing")
        return
    timbre_shape = timbre_dataset.shape
    timbre_dtype = _table_type(timbre_dataset, ()).dtype
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
        stored = {name: analysis[name][row] for name in SONG_FIELDS
                  if name in analysis.dtype.names}
        fields, replaced = song_fields(stored)
        if replaced:
            logging.warning(
                "%s: song %d (%s): analysis/songs holds %s; stored as unknown (%s)", path, row,
                track_id, ", ".join(f"{name}={np.asarray(stored[name]).tolist()!r}"
                                    if name in stored else f"no {name}" for name in replaced),
                ", ".join(f"{name}={UNKNOWN[name]!r}" for name in replaced))
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
            row=row,
            replaced_fields=replaced,
            **fields,
        )
