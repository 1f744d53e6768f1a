"""Loads the song catalogue (ids + normalised feature rows) from the feature pipeline's output.

Accepted ``--features`` values: the feature pipeline's ``--output_dir`` (its TFRecord shards are
used), or a file pattern of its TFRecord (``*.tfrecord.gz``) or CSV (``*.csv``) shards, local or
gs://. Rows are sorted by track id so that row numbers are the same in every process.

Every file is read through Beam's file systems (so a gs:// catalogue is read with Beam's GCS
client and its credentials, and a local GCS emulator serves it too); TFRecord framing is decoded
here, each record's CRC32C checked, and the ``tf.train.Example`` protos parsed by TensorFlow.
"""
import dataclasses
import io
import json
import re
import struct
import zlib
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems


class CatalogueError(ValueError):
    """The feature files cannot be used as a catalogue; the message says which and why."""


@dataclasses.dataclass(frozen=True)
class Catalogue:
    """Songs as rows: ``features[i]`` is the L2-normalised vector of ``track_ids[i]``."""
    track_ids: np.ndarray  # str objects, sorted
    song_ids: np.ndarray   # str objects, parallel to track_ids
    features: np.ndarray   # float32 [N, d]

    def __len__(self) -> int:
        return len(self.track_ids)

    def row_of_track(self) -> dict[str, int]:
        return {track_id: row for row, track_id in enumerate(self.track_ids)}

    def rows_of_song(self) -> dict[str, int]:
        """song_id → row of its first track (track ids sorted), for joins on song id."""
        rows: dict[str, int] = {}
        for row, song_id in enumerate(self.song_ids):
            rows.setdefault(song_id, row)
        return rows


def feature_files(features: str) -> tuple[list[str], str]:
    """The shard paths behind ``--features`` and their format ("tfrecord" or "csv")."""
    base = features.rstrip("/")
    if not any(char in base for char in "*?[") and not base.endswith((".gz", ".csv")):
        if not FileSystems.exists(FileSystems.join(base, "run_summary.json")):
            raise CatalogueError(
                f"{base} has no run_summary.json: the feature run there did not finish (or this "
                "is not a feature output folder); pass a shard pattern to use the files anyway")
        base = FileSystems.join(base, "features", "part-*.tfrecord.gz")
    paths = sorted(m.path for m in FileSystems.match([base])[0].metadata_list)
    if not paths:
        raise CatalogueError(f"no feature files match {base}")
    formats = {"csv" if path.endswith(".csv") else "tfrecord" for path in paths}
    if len(formats) > 1:
        raise CatalogueError(f"{base} matches both CSV and TFRecord files; pick one format")
    return paths, formats.pop()


_TFRECORD_READ_BYTES = 8 << 20  # decompressed bytes read at a time
_TFRECORD_BATCH = 8192          # records parsed by one tf.io.parse_example call


def _masked_crc32c(data: bytes) -> int:
    """TFRecord's checksum: CRC32C, rotated right by 15 bits, plus a constant."""
    import google_crc32c  # a dependency of google-cloud-storage (apache-beam[gcp])

    crc = google_crc32c.value(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord_records(path: str, compression_type: str = CompressionTypes.GZIP
                     ) -> Iterator[bytes]:
    """The records of one TFRecord file (local or gs://, through Beam's file systems), each
    checked against its length and data checksums. Framing per record: uint64 length, uint32
    masked CRC32C of the length, the data, uint32 masked CRC32C of the data (little-endian).
    A damaged, truncated or undecompressable file is a CatalogueError naming the file."""
    buffer = bytearray()
    start = 0
    number = 0
    try:
        with FileSystems.open(path, compression_type=compression_type) as handle:
            at_end = False

            def have(count: int) -> bool:
                nonlocal start, at_end
                while len(buffer) - start < count and not at_end:
                    if start:
                        del buffer[:start]
                        start = 0
                    chunk = handle.read(max(_TFRECORD_READ_BYTES, count))
                    if chunk:
                        buffer.extend(chunk)
                    else:
                        at_end = True
                return len(buffer) - start >= count

            while have(1):
                if not have(12):
                    raise CatalogueError(f"{path}: the file ends inside the header of record "
                                         f"{number + 1} (truncated TFRecord file)")
                header = bytes(buffer[start:start + 12])
                length, length_crc = struct.unpack("<QI", header)
                if _masked_crc32c(header[:8]) != length_crc:
                    raise CatalogueError(f"{path}: record {number + 1} has a bad length checksum "
                                         "(not a TFRecord file, or a damaged one)")
                if not have(12 + length + 4):
                    raise CatalogueError(f"{path}: the file ends inside record {number + 1} "
                                         "(truncated TFRecord file)")
                data = bytes(buffer[start + 12:start + 12 + length])
                (data_crc,) = struct.unpack("<I", buffer[start + 12 + length:start + 16 + length])
                if _masked_crc32c(data) != data_crc:
                    raise CatalogueError(f"{path}: record {number + 1} has a bad data checksum "
                                         "(damaged TFRecord file)")
                start += 16 + length
                number += 1
                yield data
    except (OSError, EOFError, zlib.error) as error:
        raise CatalogueError(f"{path}: cannot read the TFRecord file ({error})") from error


def _read_tfrecords(paths: Sequence[str], with_features: bool = True
                    ) -> tuple[list[str], list[str], np.ndarray]:
    import tensorflow as tf  # only this format needs TensorFlow (to parse tf.train.Example)

    spec = {"track_id": tf.io.FixedLenFeature([], tf.string),
            "song_id": tf.io.FixedLenFeature([], tf.string)}
    if with_features:
        spec["features"] = tf.io.RaggedFeature(tf.float32)
    track_ids, song_ids, rows = [], [], []

    def parse(path: str, serialized: list[bytes]) -> None:
        try:
            parsed = tf.io.parse_example(tf.constant(serialized, dtype=tf.string), spec)
        except tf.errors.OpError as error:
            raise CatalogueError(f"{path}: cannot parse the feature records: "
                                 f"{error.message.splitlines()[0]}") from error
        track_ids.extend(t.decode() for t in parsed["track_id"].numpy())
        song_ids.extend(s.decode() for s in parsed["song_id"].numpy())
        if not with_features:
            return
        widths = set(parsed["features"].row_lengths().numpy().tolist())
        if len(widths) != 1:
            raise CatalogueError(f"feature vectors of different lengths {sorted(widths)} in "
                                 f"the files starting with {paths[0]}")
        rows.append(parsed["features"].to_tensor().numpy())

    for path in paths:
        batch: list[bytes] = []
        for record in tfrecord_records(path):
            batch.append(record)
            if len(batch) == _TFRECORD_BATCH:
                parse(path, batch)
                batch = []
        if batch:
            parse(path, batch)
    if with_features and len({row.shape[1] for row in rows}) > 1:
        raise CatalogueError(f"feature vectors of different lengths "
                             f"{sorted({row.shape[1] for row in rows})} in the files starting "
                             f"with {paths[0]}")
    return track_ids, song_ids, np.concatenate(rows) if rows else np.zeros((0, 0), np.float32)


def _read_csvs(paths: Sequence[str], with_features: bool = True
               ) -> tuple[list[str], list[str], np.ndarray]:
    track_ids, song_ids, rows = [], [], []
    for path in paths:
        with FileSystems.open(path) as handle:
            data = handle.read()
        names = data.split(b"\n", 1)[0].decode("utf-8", "replace").strip().lstrip("\ufeff").split(",")
        if names[:2] != ["track_id", "song_id"] or len(names) < 3:
            raise CatalogueError(f"{path}: header must be track_id,song_id,f00,…; got {names[:3]}")
        try:
            table = pa_csv.read_csv(io.BytesIO(data), convert_options=pa_csv.ConvertOptions(
                column_types={"track_id": pa.string(), "song_id": pa.string()},
                include_columns=None if with_features else ["track_id", "song_id"]))
        except pa.ArrowInvalid as error:
            raise CatalogueError(f"{path}: not a feature CSV ({error})") from error
        track_ids.extend(table.column("track_id").to_pylist())
        song_ids.extend(table.column("song_id").to_pylist())
        if with_features:
            rows.append(np.stack([table.column(name).to_numpy().astype(np.float32)
                                  for name in table.column_names[2:]], axis=1))
    return track_ids, song_ids, np.concatenate(rows) if rows else np.zeros((0, 0), np.float32)


# How far a row's length may be from 1: the features are L2-normalised in float32 (CSV keeps 9
# significant digits, which round-trip float32 exactly), so a correct row is within ~1e-6.
UNIT_LENGTH_TOLERANCE = 1e-4
_TRACK_ID = re.compile(r"TR[A-Z0-9]{16}")
_SONG_ID = re.compile(r"SO[A-Z0-9]{16}")


def _summary_songs(features: str) -> Optional[int]:
    """songs_written of the feature run whose output folder ``features`` is (None for a shard
    pattern, which has no summary)."""
    base = features.rstrip("/")
    if any(char in base for char in "*?[") or base.endswith((".gz", ".csv")):
        return None
    try:
        with FileSystems.open(FileSystems.join(base, "run_summary.json")) as handle:
            return int(json.loads(handle.read().decode("utf-8"))["songs_written"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CatalogueError(f"{base}/run_summary.json cannot be read: {error}") from error


def check_rows(features: str, track_ids: Sequence[str], song_ids: Sequence[str],
               matrix: Optional[np.ndarray]) -> None:
    """The catalogue's rows are what the feature job writes, or the run stops naming what is
    wrong: ids of MSD shape, no track twice, vectors finite and of unit length (a row scaled
    by hand would outrank every song), and as many rows as the feature run's summary says."""
    def first_bad(values, pattern):
        return next(((i, v) for i, v in enumerate(values) if not pattern.fullmatch(v or "")),
                    None)

    for name, values, pattern in (("track id", track_ids, _TRACK_ID),
                                  ("song id", song_ids, _SONG_ID)):
        bad = first_bad(values, pattern)
        if bad is not None:
            raise CatalogueError(f"the feature files under {features} hold a {name} that is not "
                                 f"of the MSD shape: {bad[1]!r} (row {bad[0] + 1})")
    unique, counts = np.unique(np.asarray(track_ids, dtype=object), return_counts=True)
    if (counts > 1).any():
        raise CatalogueError(f"the feature files under {features} hold {int((counts > 1).sum())} "
                             f"track ids more than once (e.g. {unique[counts > 1][0]}): shards of "
                             "two runs mixed?")
    if matrix is not None:
        if not np.isfinite(matrix).all():
            raise CatalogueError(f"the feature files under {features} hold NaN/Inf values")
        norms = np.linalg.norm(matrix.astype(np.float64), axis=1)
        off = np.flatnonzero(np.abs(norms - 1.0) > UNIT_LENGTH_TOLERANCE)
        if off.size:
            raise CatalogueError(
                f"the feature files under {features} hold {off.size} vectors that are not of unit "
                f"length (e.g. track {track_ids[off[0]]}: length {norms[off[0]]:.6g}); the feature "
                "job writes L2-normalised vectors: the files were changed after it")
    expected = _summary_songs(features)
    if expected is not None and expected != len(track_ids):
        raise CatalogueError(f"the feature files under {features} hold {len(track_ids)} songs "
                             f"but its run_summary.json says {expected}: the folder changed "
                             "after its run (rerun the feature job)")


def load_catalogue(features: str, with_features: bool = True) -> Catalogue:
    """Reads every shard, checks the rows (``check_rows``) and returns them sorted by track id.

    ``with_features=False`` reads only the ids (same rows, ``features`` empty [N, 0]): what
    the join and the writers need, without parsing 90 numbers per song.
    """
    paths, file_format = feature_files(features)
    reader = _read_tfrecords if file_format == "tfrecord" else _read_csvs
    track_ids, song_ids, matrix = reader(paths, with_features)
    if not track_ids:
        raise CatalogueError(f"the feature files under {features} hold no songs")
    check_rows(features, track_ids, song_ids, matrix if with_features else None)
    if not with_features:
        matrix = np.zeros((len(track_ids), 0), np.float32)
    track_array = np.array(track_ids, dtype=object)
    order = np.argsort(track_array, kind="stable")
    return Catalogue(track_ids=track_array[order],
                     song_ids=np.array(song_ids, dtype=object)[order],
                     features=np.ascontiguousarray(matrix[order], dtype=np.float32))


def catalogue_song_tracks(catalogue_pairs: Iterable[tuple[str, str]],
                          song_to_tracks: Optional[dict[str, list[str]]],
                          mismatches: set[tuple[str, str]]) -> tuple[dict[str, str], set[str]]:
    """song_id → the catalogue track that stands for it, and the songs lost to mismatches.

    ``catalogue_pairs`` are the feature catalogue's (track_id, song_id). Without
    ``song_to_tracks`` a song is joined on the song id the features carry; with it, on the
    listed tracks. Pairs in ``mismatches`` are dropped. When a song has several catalogue
    tracks the lowest track id stands for it (deterministic).
    """
    catalogue_tracks = dict(catalogue_pairs)
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


@dataclasses.dataclass(frozen=True)
class SongCatalogue:
    """What a model recommends from, keyed by song: row i is ``song_ids[i]`` (sorted), shown
    with the track ``track_ids[i]`` (None when no track is known). ``mismatched``: songs whose
    every track is listed in sid_mismatches (the content model cannot use their listens)."""
    song_ids: np.ndarray   # str objects, sorted, distinct
    track_ids: np.ndarray  # str or None objects, parallel
    mismatched: frozenset = frozenset()

    def __len__(self) -> int:
        return len(self.song_ids)

    def row_of_song(self) -> dict[str, int]:
        return {song_id: row for row, song_id in enumerate(self.song_ids.tolist())}


def song_catalogue(track_pairs: Optional[Iterable[tuple[str, str]]],
                   song_to_tracks: Optional[dict[str, list[str]]],
                   mismatches: set[tuple[str, str]],
                   model_songs: Optional[Sequence[str]] = None) -> SongCatalogue:
    """The catalogue by song, with one track per song: the lowest track id not listed in
    sid_mismatches (among the feature tracks when features are given).

    Content catalogue (``model_songs`` None): the songs that have a feature track
    (``track_pairs``, joined through ``song_to_tracks`` when given). A collaborative model's
    catalogue (``model_songs``: the songs it was trained on): all of them, whatever tracks are
    known; the track comes from ``song_to_tracks`` (restricted to feature tracks when
    ``track_pairs`` is given too) or from ``track_pairs``, else None.
    """
    if model_songs is None:
        track_of_song, mismatched = catalogue_song_tracks(track_pairs or (), song_to_tracks,
                                                          mismatches)
        songs = sorted(track_of_song)
        return SongCatalogue(np.array(songs, dtype=object),
                             np.array([track_of_song[s] for s in songs], dtype=object),
                             frozenset(mismatched))
    if track_pairs is None and song_to_tracks is None:
        track_of_song = {}
    elif track_pairs is None:
        track_of_song = {}
        for song_id, tracks in song_to_tracks.items():
            kept = sorted(t for t in tracks if (song_id, t) not in mismatches)
            if kept:
                track_of_song[song_id] = kept[0]
    else:
        track_of_song, _ = catalogue_song_tracks(track_pairs, song_to_tracks, mismatches)
    songs = np.asarray(model_songs, dtype=object)
    return SongCatalogue(songs, np.array([track_of_song.get(s) for s in songs.tolist()],
                                         dtype=object))
