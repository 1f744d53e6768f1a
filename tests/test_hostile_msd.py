"""Hostile MSD HDF5 inputs through the real feature pipeline, end to end on the DirectRunner.

One corpus of good and broken files is generated (nothing binary is committed) and the whole
job runs once over it (``pipelines.features.run``); every test below then checks one case in
that run's outputs. For each case: the run finishes, the bad file or song is in the dead-letter
output (``<output_dir>/rejected/*.jsonl``) exactly once with a reason a person understands, the
run summary reconciles (files matched = parsed + rejected; songs seen = written + rejected) and
the good songs are written exactly once with the same values a clean computation gives.

Parser-level variants of some cases (bytes in memory, no Beam) are in test_hdf5_reader.py; here
they go through matching, reading, de-duplication, TFT and the writers.
"""
import csv
import dataclasses
import glob
import gzip
import json
import os
import pathlib
import shutil
import subprocess
import sys
from typing import Optional

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

from msd import synthetic
from pipelines import features
from tests.conftest import sample_data_path
from tests.test_timbre import independent_statistics

SEED = 5
REPO = pathlib.Path(__file__).resolve().parents[1]
MAX_FILE_BYTES = 2_000_000  # synthetic single-song files are ~0.3 MB, the 3-song aggregates ~1 MB
WRITTEN = "written"

# Reason codes the README documents for the feature pipeline (plus the duplicate rule).
DOCUMENTED_REASONS = {
    "empty_file", "not_hdf5", "corrupt_hdf5", "not_msd_file", "inconsistent_tables",
    "bad_timbre_shape", "bad_timbre_dtype", "too_many_segments", "file_too_large",
    "unreadable_file", "too_few_segments", "non_finite_timbre", "bad_segment_index",
    "zero_features", "duplicate_track_id",
}


@dataclasses.dataclass
class Case:
    """One hostile (or good) input file and what the job must do with it.

    ``file_reason``: the whole file is one dead letter with this reason (level "file");
    otherwise ``songs`` maps each track id in the file to WRITTEN or a song-level reason.
    """
    name: str
    path: str
    file_reason: Optional[str] = None
    songs: dict = dataclasses.field(default_factory=dict)
    note: str = ""
    accept: frozenset = frozenset()  # other file-level reasons that are also right


class CorpusBuilder:
    """Writes the hostile corpus below ``corpus/`` (the job's --input) and the files that
    some cases point at below ``outside/`` (never an input)."""

    def __init__(self, root: pathlib.Path):
        self.corpus = root / "corpus"
        self.outside = root / "outside"
        self.corpus.mkdir()
        self.outside.mkdir()
        self.catalogue = synthetic.build_catalogue(60, seed=SEED)
        self._next = 0
        self.cases: list[Case] = []
        # track id -> the timbre matrix the written song must be computed from
        self.expected_timbre: dict[str, np.ndarray] = {}

    # -- helpers ---------------------------------------------------------------------------

    def _song(self, min_segments: int = 20) -> synthetic.SongData:
        while True:
            index = self._next
            self._next += 1
            if self.catalogue.num_segments[index] >= min_segments:
                spec = self.catalogue.song_spec(index)
                return synthetic.generate_song(spec, self.catalogue.styles, SEED)

    @staticmethod
    def track_id(song: synthetic.SongData) -> str:
        return song.analysis["track_id"].item().decode()

    def _path(self, name: str, track_id: Optional[str] = None, folder: str = "data") -> str:
        directory = self.corpus / folder
        directory.mkdir(parents=True, exist_ok=True)
        stem = f"{name}_{track_id}" if track_id else name
        return str(directory / f"{stem}.h5")

    def _write(self, name: str, songs, folder: str = "data") -> str:
        path = self._path(name, self.track_id(songs[0]), folder)
        synthetic.write_song_file(path, songs)
        return path

    def add(self, case: Case) -> Case:
        self.cases.append(case)
        return case

    @staticmethod
    def replace_dataset(path: str, name: str, **create_kwargs) -> None:
        with h5py.File(path, "r+") as h5:
            del h5[name]
            h5.create_dataset(name, **create_kwargs)

    # -- the corpus ------------------------------------------------------------------------

    def build(self) -> list[Case]:
        good_bytes = None
        for number in range(6):
            song = self._song()
            tid = self.track_id(song)
            path = self._write(f"good{number}", [song])
            self.expected_timbre[tid] = song.arrays["segments_timbre"]
            self.add(Case(f"good_{number}", path, songs={tid: WRITTEN}))
            good_bytes = good_bytes or pathlib.Path(path).read_bytes()

        # Bytes that are not a usable HDF5 file.
        song = self._song()
        tid = self.track_id(song)
        scratch = self.outside / "scratch.h5"
        synthetic.write_song_file(str(scratch), [song])
        whole = scratch.read_bytes()
        path = self._path("zero_bytes", tid)
        pathlib.Path(path).write_bytes(b"")
        self.add(Case("zero_byte_file", path, file_reason="empty_file"))
        for percent in (1, 50, 99):
            path = self._path(f"truncated{percent}", tid)
            pathlib.Path(path).write_bytes(whole[: len(whole) * percent // 100])
            # h5py cannot open a file whose end-of-file address lies beyond its size.
            self.add(Case(f"truncated_{percent}pct", path, file_reason="not_hdf5"))
        path = self._path("random_bytes", tid)
        pathlib.Path(path).write_bytes(np.random.default_rng(1).bytes(100_000))
        self.add(Case("random_bytes_named_h5", path, file_reason="not_hdf5"))
        path = self._path("hdf5_without_msd_groups", tid)
        with h5py.File(path, "w") as h5:
            h5["something/else"] = np.arange(10)
        self.add(Case("hdf5_without_msd_groups", path, file_reason="not_msd_file"))

        # Timbre datasets of the wrong shape or type (the whole file is unusable).
        for name, data, reason in [
            ("timbre_11_columns", np.ones((800, 11)), "bad_timbre_shape"),
            ("timbre_13_columns", np.ones((800, 13)), "bad_timbre_shape"),
            ("timbre_1d", np.ones(800 * 12), "bad_timbre_shape"),
            ("timbre_int32", np.ones((800, 12), dtype=np.int32), "bad_timbre_dtype"),
            ("timbre_strings", np.full((800, 12), b"1.0", dtype="S3"), "bad_timbre_dtype"),
        ]:
            song = self._song()
            path = self._write(name, [song])
            self.replace_dataset(path, "analysis/segments_timbre", data=data)
            self.add(Case(name, path, file_reason=reason))

        # Song-level problems of the timbre values.
        for name, edit, reason in [
            ("timbre_nan", lambda t: t.__setitem__((5, 3), np.nan), "non_finite_timbre"),
            ("timbre_inf", lambda t: t.__setitem__((7, 0), np.inf), "non_finite_timbre"),
            ("timbre_minus_inf", lambda t: t.__setitem__((0, 11), -np.inf), "non_finite_timbre"),
        ]:
            song = self._song()
            edit(song.arrays["segments_timbre"])
            self.add(Case(name, self._write(name, [song]), songs={self.track_id(song): reason}))
        for segments, reason in [(0, "too_few_segments"), (1, "too_few_segments"),
                                 (9, "too_few_segments"), (10, WRITTEN)]:
            song = self._song()
            tid = self.track_id(song)
            path = self._write(f"segments_{segments}", [song])
            timbre = song.arrays["segments_timbre"][:segments]
            self.replace_dataset(path, "analysis/segments_timbre", data=timbre,
                                 maxshape=(None, 12), chunks=(64, 12))
            if reason == WRITTEN:
                self.expected_timbre[tid] = timbre
            self.add(Case(f"{segments}_segments", path, songs={tid: reason}))
        song = self._song()
        song.arrays["segments_timbre"][:] = 7.5
        self.add(Case("constant_timbre", self._write("constant_timbre", [song]),
                      songs={self.track_id(song): WRITTEN},
                      note="means non-zero, covariance zero: usable"))
        self.expected_timbre[self.track_id(song)] = song.arrays["segments_timbre"]
        song = self._song()
        song.arrays["segments_timbre"][:] = 0.0
        self.add(Case("all_zero_timbre", self._write("all_zero_timbre", [song]),
                      songs={self.track_id(song): "zero_features"}))

        # Metadata text that is not UTF-8: the song is usable, the text is decoded with U+FFFD.
        song = self._song()
        for field in ("artist_name", "title", "release"):
            song.metadata[field] = b"Caf\xe9 \xff\xfe M\xfcller"  # Latin-1, not UTF-8
        self.add(Case("metadata_not_utf8", self._write("metadata_not_utf8", [song]),
                      songs={self.track_id(song): WRITTEN}))
        self.expected_timbre[self.track_id(song)] = song.arrays["segments_timbre"]

        # Ids of the wrong shape inside the file: a track id or song id that is not
        # TR/SO + 16 [A-Z0-9] cannot be joined and (with a comma or newline) breaks the CSV
        # the recommendation job reads. Right behaviour: a song-level dead letter.
        for name, field, table, value in [
            ("track_id_not_utf8", "track_id", "analysis", b"TR\xff\xfeBAD\x80ID000000000"),
            ("track_id_with_comma_newline", "track_id", "analysis", b"TRAB,CD\nEFGH12345678"),
            ("song_id_with_comma", "song_id", "metadata", b"SOAB,CDEFGH12345678"),
            ("song_id_empty", "song_id", "metadata", b""),
        ]:
            song = self._song()
            file_track_id = self.track_id(song)
            song.__getattribute__(table)[field] = value
            path = self._path(name, file_track_id)
            synthetic.write_song_file(path, [song])
            reported_as = file_track_id if field == "song_id" else None
            self.add(Case(name, path, songs={reported_as: "bad_id"},
                          note="expected: a song-level dead letter for the malformed id"))

        # The same track id in two files: the path that sorts first wins, the other file's
        # song is a duplicate_track_id dead letter. The copy has different timbre so the
        # output shows which one won.
        song = self._song()
        tid = self.track_id(song)
        first = self._write("duplicate_a", [song], folder="dup_a")
        self.expected_timbre[tid] = song.arrays["segments_timbre"].copy()
        song.arrays["segments_timbre"][:] += 3.0
        song.arrays["segments_timbre"][::2] *= 1.5
        second = self._write("duplicate_b", [song], folder="dup_b")
        self.add(Case("duplicate_track_first_path", first, songs={tid: WRITTEN}))
        self.add(Case("duplicate_track_second_path", second, songs={tid: "duplicate_track_id"}))
        # The same track id twice inside one aggregate file: both copies have the same path,
        # so "the path that sorts first" does not decide; expected: the first row wins.
        song = self._song()
        twin = self._song()
        tid = self.track_id(song)
        twin.analysis["track_id"] = tid.encode()
        path = self._write("duplicate_in_one_file", [song, twin])
        self.expected_timbre[tid] = song.arrays["segments_timbre"]
        self.duplicate_in_one_file = (path, tid)
        self.add(Case("duplicate_track_in_one_file", path, songs={tid: WRITTEN},
                      note="row 1 repeats row 0's track id"))

        # Aggregate files (3 songs) with a bad idx_segments_timbre.
        for name, make_starts, outcomes in [
            # song 1 starts past the end; song 2 then "starts" before song 1 → decreasing.
            # song 0 ends and song 1 starts past the end of segments_timbre; song 2's own
            # range is intact.
            ("aggregate_index_out_of_range", lambda n: [0, n[0] + n[1] + n[2] + 5, n[0] + n[1]],
             ["bad_segment_index", "bad_segment_index", WRITTEN]),
            # song 1 starts after song 2: song 1 is impossible, and songs 0 and 2 then claim
            # the same 40 segments (rows n0+10..n0+50), so at least one of them holds another
            # song's segments. Right: none of the three is written.
            ("aggregate_index_decreasing", lambda n: [0, n[0] + 50, n[0] + 10],
             ["bad_segment_index", "bad_segment_index", "bad_segment_index"]),
            ("aggregate_index_negative", lambda n: [0, -3, n[0] + n[1]],
             ["bad_segment_index", "bad_segment_index", WRITTEN]),
            ("aggregate_index_ok", lambda n: [0, n[0], n[0] + n[1]], [WRITTEN] * 3),
        ]:
            songs = [self._song() for _ in range(3)]
            lengths = [len(s.arrays["segments_timbre"]) for s in songs]
            path = self._write(name, songs)
            starts = make_starts(lengths)
            with h5py.File(path, "r+") as h5:
                table = h5["analysis/songs"][()]
                table["idx_segments_timbre"] = starts
                h5["analysis/songs"][...] = table
            all_timbre = np.concatenate([s.arrays["segments_timbre"] for s in songs])
            ends = starts[1:] + [len(all_timbre)]
            expected = {}
            for song, outcome, start, end in zip(songs, outcomes, starts, ends):
                expected[self.track_id(song)] = outcome
                if outcome == WRITTEN:
                    self.expected_timbre[self.track_id(song)] = all_timbre[start:end]
            self.add(Case(name, path, songs=expected))

        # Size limits: a file over --max_file_bytes, a timbre dataset declared huge (but
        # compressed / never written: 96 GB if inflated), and songs tables declared huge.
        song = self._song()
        path = self._write("over_max_file_bytes", [song])
        with h5py.File(path, "r+") as h5:
            h5["padding/noise"] = np.random.default_rng(2).integers(0, 255, 3_000_000, dtype=np.uint8)
        self.add(Case("file_over_max_file_bytes", path, file_reason="file_too_large"))
        song = self._song()
        path = self._write("timbre_declared_huge", [song])
        self.replace_dataset(path, "analysis/segments_timbre", shape=(10 ** 9, 12), dtype="<f8",
                             chunks=(4096, 12), compression="gzip", maxshape=(None, 12))
        self.add(Case("timbre_declared_1e9_segments", path, file_reason="too_many_segments"))
        song = self._song()
        path = self._write("metadata_table_declared_huge", [song])
        with h5py.File(path, "r+") as h5:
            h5["metadata/songs"].resize((10 ** 9,))  # 5.3 TB if read; chunks never written
        self.add(Case("metadata_table_declared_1e9_rows", path,
                      file_reason="inconsistent_tables",
                      note="must be refused from the declared shapes, before reading"))
        song = self._song()
        path = self._write("all_tables_declared_huge", [song])
        with h5py.File(path, "r+") as h5:
            for group in ("analysis", "metadata", "musicbrainz"):
                h5[f"{group}/songs"].resize((10 ** 9,))
        self.add(Case("all_tables_declared_1e9_rows", path, file_reason="too_many_songs",
                      note="needs a cap on songs per file, checked before reading"))

        # Data outside the file: an external link, and external raw storage. A worker must
        # not read local files an input names; right behaviour: a file-level dead letter.
        song = self._song()
        path = self._write("external_link", [song])
        target = self.outside / "target.h5"
        synthetic.write_song_file(str(target), [self._song()])
        with h5py.File(path, "r+") as h5:
            del h5["analysis/segments_timbre"]
            h5["analysis/segments_timbre"] = h5py.ExternalLink(str(target),
                                                               "/analysis/segments_timbre")
        self.add(Case("timbre_is_an_external_link", path, file_reason="external_data",
                      note=self.track_id(song), accept=frozenset({"not_msd_file"})))
        song = self._song()
        path = self._write("external_storage", [song])
        secret = self.outside / "secret.bin"
        secret.write_bytes(np.random.default_rng(3).normal(size=(800, 12)).tobytes())
        self.replace_dataset(path, "analysis/segments_timbre", shape=(800, 12), dtype="<f8",
                             external=[(str(secret), 0, h5py.h5f.UNLIMITED)])
        self.add(Case("timbre_in_external_raw_file", path, file_reason="external_data",
                      note=self.track_id(song)))

        # Not files: a folder named *.h5 is not matched as a file; its contents are.
        song = self._song()
        path = self._write("inside_folder_named_h5", [song], folder="folder.h5")
        self.expected_timbre[self.track_id(song)] = song.arrays["segments_timbre"]
        self.add(Case("file_inside_folder_named_h5", path, songs={self.track_id(song): WRITTEN}))
        return self.cases


def read_outputs(output_dir: pathlib.Path) -> dict:
    examples = {}
    for path in sorted(glob.glob(f"{output_dir}/features/part-*.tfrecord.gz")):
        for record in tf.data.TFRecordDataset(path, compression_type="GZIP"):
            example = tf.train.Example.FromString(record.numpy())
            track_id = example.features.feature["track_id"].bytes_list.value[0].decode()
            examples.setdefault(track_id, []).append(example)
    csv_rows = []
    for path in sorted(glob.glob(f"{output_dir}/csv/part-*.csv")):
        with open(path, newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader)
            assert header[:2] == ["track_id", "song_id"]
            csv_rows.extend(reader)
    songs = pq.read_table(f"{output_dir}/songs").to_pylist()
    rejected = [json.loads(line) for path in sorted(glob.glob(f"{output_dir}/rejected/*.jsonl"))
                for line in open(path, encoding="utf-8")]
    with open(output_dir / "run_summary.json") as handle:
        summary = json.load(handle)
    return {"examples": examples, "csv": csv_rows, "songs": songs, "rejected": rejected,
            "summary": summary}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile_msd")
    cases = CorpusBuilder(root)
    built = cases.build()
    output_dir = root / "out"
    summary = features.run(["--input", str(cases.corpus), "--output_dir", str(output_dir),
                            "--max_file_bytes", str(MAX_FILE_BYTES), "--num_shards", "2"])
    outputs = read_outputs(output_dir)
    outputs.update(cases=built, builder=cases, returned_summary=summary, root=root)
    return outputs


def rejections_of(run, path):
    return [r for r in run["rejected"] if r["path"] == path]


def case_named(run, name) -> Case:
    (case,) = [c for c in run["cases"] if c.name == name]
    return case


CASE_NAMES = [
    "zero_byte_file", "truncated_1pct", "truncated_50pct", "truncated_99pct",
    "random_bytes_named_h5", "hdf5_without_msd_groups", "timbre_11_columns", "timbre_13_columns",
    "timbre_1d", "timbre_int32", "timbre_strings", "timbre_nan", "timbre_inf",
    "timbre_minus_inf", "0_segments", "1_segments", "9_segments", "10_segments",
    "constant_timbre", "all_zero_timbre", "metadata_not_utf8", "duplicate_track_first_path",
    "duplicate_track_second_path", "aggregate_index_out_of_range", "aggregate_index_negative",
    "aggregate_index_ok", "aggregate_index_decreasing", "file_over_max_file_bytes", "timbre_declared_1e9_segments",
    "metadata_table_declared_1e9_rows", "file_inside_folder_named_h5",
] + [f"good_{n}" for n in range(6)]


# -- the run as a whole ----------------------------------------------------------------------

def test_the_run_finishes_and_its_summary_reconciles(run):
    summary = run["summary"]
    assert summary == run["returned_summary"]
    files = [c for c in run["cases"]]
    assert summary["files_matched"] == len(files)
    assert summary["files_matched"] == summary["files_parsed"] + summary["files_rejected"]
    assert summary["songs_seen"] == summary["songs_written"] + summary["songs_rejected"]
    assert summary["files_reconcile"] and summary["songs_reconcile"]


def test_every_output_holds_each_written_song_once(run):
    written = sorted(run["examples"])
    assert all(len(v) == 1 for v in run["examples"].values()), "a track written twice"
    assert sorted(row[0] for row in run["csv"]) == written
    assert sorted(song["track_id"] for song in run["songs"]) == written
    assert run["summary"]["songs_written"] == len(written)
    assert len(run["rejected"]) == run["summary"]["files_rejected"] + run["summary"]["songs_rejected"]


def test_dead_letters_are_for_people(run):
    for record in run["rejected"]:
        assert set(record) >= {"path", "track_id", "reason", "detail", "level"}
        assert record["level"] in ("file", "song")
        assert record["detail"] and len(record["detail"]) > 15
        assert "Traceback" not in record["detail"]
    by_reason = {}
    for record in run["rejected"]:
        by_reason[record["reason"]] = by_reason.get(record["reason"], 0) + 1
    assert run["summary"]["rejected_by_reason"] == by_reason


def test_the_good_songs_are_unaffected_by_their_neighbours(run):
    expected = run["builder"].expected_timbre
    for track_id, timbre in expected.items():
        assert track_id in run["examples"], f"{track_id} was not written"
        (example,) = run["examples"][track_id]
        raw = independent_statistics(np.asarray(timbre, np.float64))
        got_raw = np.array(example.features.feature["raw_features"].float_list.value)
        np.testing.assert_allclose(got_raw, raw.astype(np.float32), rtol=2e-6, atol=1e-4)
        got = np.array(example.features.feature["features"].float_list.value)
        np.testing.assert_allclose(got, raw / np.linalg.norm(raw), rtol=1e-5, atol=1e-6)


def test_csv_rows_have_90_values_and_round_trip(run):
    by_track = {t: np.array(e[0].features.feature["features"].float_list.value, np.float32)
                for t, e in run["examples"].items()}
    for row in run["csv"]:
        assert len(row) == 92, f"a CSV row with {len(row)} fields: {row[:3]}"
        np.testing.assert_array_equal(np.array(row[2:], np.float32), by_track[row[0]])


# -- case by case ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", CASE_NAMES)
def test_case(run, name):
    case = case_named(run, name)
    records = rejections_of(run, case.path)
    if case.file_reason:
        assert [(r["reason"], r["level"]) for r in records] == [(case.file_reason, "file")], (
            f"{name}: {records}")
        return
    rejected = {r["track_id"]: r for r in records}
    assert len(rejected) == len(records), f"{name}: a song rejected twice: {records}"
    for track_id, outcome in case.songs.items():
        if outcome == WRITTEN:
            assert track_id in run["examples"] and track_id not in rejected, (
                f"{name}: {track_id} should be written; dead letters: {records}")
        else:
            assert track_id in rejected, f"{name}: {track_id} should be rejected as {outcome}"
            assert (rejected[track_id]["reason"], rejected[track_id]["level"]) == (
                outcome, "song"), f"{name}: {rejected[track_id]}"


def test_duplicate_track_keeps_the_path_that_sorts_first_and_names_it(run):
    first = case_named(run, "duplicate_track_first_path")
    second = case_named(run, "duplicate_track_second_path")
    assert first.path < second.path
    (record,) = rejections_of(run, second.path)
    assert record["reason"] == "duplicate_track_id" and first.path in record["detail"]
    assert rejections_of(run, first.path) == []


def test_non_utf8_metadata_is_decoded_with_replacement_characters(run):
    (track_id,) = case_named(run, "metadata_not_utf8").songs
    (example,) = run["examples"][track_id]
    (song,) = [s for s in run["songs"] if s["track_id"] == track_id]
    for field in ("artist_name", "title", "release"):
        text = example.features.feature[field].bytes_list.value[0].decode("utf-8")
        assert text == song[field] == "Caf\ufffd \ufffd\ufffd M\ufffdller"


@pytest.mark.parametrize("name", ["track_id_not_utf8", "track_id_with_comma_newline",
                                  "song_id_with_comma", "song_id_empty"])
def test_a_malformed_id_inside_a_file_is_a_song_dead_letter(run, name):
    """A track id or song id that is not TR/SO + 16 characters [A-Z0-9] cannot be joined
    with the listening data, and one with a comma or newline corrupts the CSV shards the
    recommendation job reads. Expected: the song is dead-lettered (reason ``bad_track_id`` /
    ``bad_song_id``), nothing of it is written."""
    case = case_named(run, name)
    records = rejections_of(run, case.path)
    expected_reason = "bad_song_id" if name.startswith("song_id") else "bad_track_id"
    assert [(r["reason"], r["level"]) for r in records] == [(expected_reason, "song")], (
        f"{name}: dead letters {records}; written track ids "
        f"{[t for t in run['examples'] if not t.startswith('TR') or len(t) != 18]}")


@pytest.mark.parametrize("name", ["all_tables_declared_1e9_rows"])
def test_songs_tables_declared_huge_are_refused_before_reading(run, name):
    """A tiny file can declare its ``songs`` tables with 10^9 rows (5.3 TB of metadata if
    read). The reader reads these tables whole before any check, so the outcome depends on
    whether the allocation fails (MemoryError → "corrupt_hdf5") or succeeds and is filled
    (for ~4·10^6 rows: 21 GB, the worker is OOM-killed). Expected: refused from the declared
    shapes with its own reason."""
    case = case_named(run, name)
    records = rejections_of(run, case.path)
    assert [(r["reason"], r["level"]) for r in records] == [("too_many_songs", "file")], records
    assert "MemoryError" not in records[0]["detail"]


@pytest.mark.parametrize("name", ["timbre_is_an_external_link", "timbre_in_external_raw_file"])
def test_data_outside_the_input_file_is_never_read(run, name):
    """HDF5 lets a dataset live in another file (external link) or raw file (external
    storage). An input file must not make a worker read other local files: expected a
    file-level dead letter (reason ``external_data``), and nothing computed from the target."""
    case = case_named(run, name)
    records = rejections_of(run, case.path)
    assert case.note not in run["examples"], f"{name}: a song was computed from outside data"
    assert len(records) == 1, records
    assert records[0]["reason"] in {case.file_reason} | case.accept, records


def test_reasons_are_documented(run):
    reasons = {r["reason"] for r in run["rejected"]}
    assert reasons <= DOCUMENTED_REASONS | {"too_many_songs", "external_data", "bad_track_id",
                                            "bad_song_id"}, reasons - DOCUMENTED_REASONS


def test_a_virtual_dataset_pointing_outside_the_file_cannot_crash_the_worker(tmp_path):
    """A timbre dataset that is an HDF5 *virtual* dataset mapping 800 rows of a chunked,
    shuffled, gzip dataset of 464 rows in another local file: reading it from memory kills
    the process with SIGSEGV inside HDF5 1.14.6 (found by this corpus: the whole feature job
    died, no dead letter). Run in a subprocess so that a crash fails this test, not the whole
    session. Expected: a file-level dead letter, without reading the dataset."""
    catalogue = synthetic.build_catalogue(4, seed=SEED)
    songs = [synthetic.generate_song(catalogue.song_spec(i), catalogue.styles, SEED)
             for i in range(2)]
    target = tmp_path / "target.h5"
    synthetic.write_song_file(str(target), [songs[0]])
    rows = len(songs[0].arrays["segments_timbre"])
    path = tmp_path / "virtual_dataset.h5"
    synthetic.write_song_file(str(path), [songs[1]])
    with h5py.File(path, "r+") as h5:
        del h5["analysis/segments_timbre"]
        layout = h5py.VirtualLayout(shape=(rows + 336, 12), dtype="<f8")
        layout[:] = h5py.VirtualSource(str(target), "analysis/segments_timbre",
                                       shape=(rows + 336, 12))
        h5.create_virtual_dataset("analysis/segments_timbre", layout)
    script = ("import json, sys\n"
              "from msd import hdf5_reader\n"
              "path = sys.argv[1]\n"
              "records = list(hdf5_reader.parse_msd_file(open(path, 'rb').read(), path))\n"
              "print(json.dumps([[type(r).__name__, getattr(r, 'reason', None),"
              " getattr(r, 'level', None)] for r in records]))\n")
    result = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True,
                            text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, (
        f"parsing the file killed the process (return code {result.returncode}): "
        f"{result.stderr[-500:]}")
    records = json.loads(result.stdout.strip().splitlines()[-1])
    assert records == [["Rejection", "external_data", "file"]], records


def test_a_track_twice_in_one_aggregate_file_keeps_the_first_row(run):
    """Both copies come from the same path, so the path alone (the first rule) left the choice
    to the order in which GroupByKey hands the songs over (B12). Expected: row 0 is written
    (its statistics), row 1 is the duplicate_track_id dead letter naming row 0, on every
    runner."""
    path, track_id = run["builder"].duplicate_in_one_file
    records = rejections_of(run, path)
    assert [(r["reason"], r["track_id"], r["detail"]) for r in records] == [
        ("duplicate_track_id", track_id, f"song 1: track {track_id} is a duplicate of row 0 of "
                                         "the same file, which comes first and is kept")]
    assert track_id in run["examples"]  # values checked in test_the_good_songs_are_unaffected


# -- symlinked folders under --input (issue 14) -----------------------------------------------

@pytest.fixture()
def linked_input(tmp_path):
    """``data/`` holding 4 real sample files in ``A/`` and, through ``data/B -> elsewhere/B``,
    the other 4; plus a second link to the same folder, two loops and a link to nothing."""
    real = sorted(sample_data_path("msd", "data").rglob("*.h5"))
    assert len(real) == 8
    data, elsewhere = tmp_path / "data", tmp_path / "elsewhere" / "B"
    (data / "A").mkdir(parents=True)
    elsewhere.mkdir(parents=True)
    for index, path in enumerate(real):
        ((data / "A") if index < 4 else elsewhere).joinpath(path.name).symlink_to(path)
    (data / "B").symlink_to(elsewhere, target_is_directory=True)
    (data / "B_again").symlink_to(elsewhere, target_is_directory=True)
    (data / "loop").symlink_to(data, target_is_directory=True)
    (data / "up").symlink_to(tmp_path, target_is_directory=True)
    (data / "gone").symlink_to(tmp_path / "nothing_here")
    return data, elsewhere, {path.stem for path in real}


def test_a_symlinked_folder_under_the_input_is_followed_once_and_loops_are_reported(
        linked_input, tmp_path, caplog):
    """It was skipped without a word (Beam lists a local folder with os.walk, which does not
    enter symlinked folders): 4 of the 8 files were left out, exit 0. Expected: every file read
    once (not twice through ``B_again``, not again and again through the loops), and what was
    followed or skipped in the run summary and on the console."""
    data, elsewhere, tracks = linked_input
    output_dir = tmp_path / "out"
    caplog.set_level("INFO")
    summary = features.run(["--input", str(data), "--output_dir", str(output_dir)])
    outputs = read_outputs(output_dir)
    assert summary["files_matched"] == 8 and summary["songs_seen"] == 8
    assert summary["files_reconcile"] and summary["songs_reconcile"]
    seen = {song["track_id"] for song in outputs["songs"]} | {
        r["track_id"] for r in outputs["rejected"]}
    assert seen == tracks
    assert "duplicate_track_id" not in summary["rejected_by_reason"]
    assert summary["symlinked_folders"]["followed"] == [
        {"path": str(data / "B"), "target": str(elsewhere), "files": 4}]
    skipped = {item["path"]: item["reason"] for item in summary["symlinked_folders"]["skipped"]}
    assert skipped == {
        str(data / "B_again"): f"the same folder as {data / 'B'}, read once through that path",
        str(data / "loop"): f"a loop: it leads back to {data}",
        str(data / "up"): f"a loop: it leads to {tmp_path}, which holds the input",
        str(data / "gone"): "a symbolic link to nothing"}
    assert f"following the symlinked folder {data / 'B'} → {elsewhere} (4 files)" in caplog.text
    assert f"not following {data / 'loop'} → {data}: a loop" in caplog.text


def test_an_input_holding_only_a_symlinked_folder_is_not_refused_as_empty(linked_input,
                                                                          tmp_path):
    from pipelines import launcher
    from transforms import read_msd

    _, elsewhere, _ = linked_input
    (tmp_path / "only_links").mkdir()
    (tmp_path / "only_links" / "B").symlink_to(elsewhere, target_is_directory=True)
    pattern = read_msd.expand_input(str(tmp_path / "only_links"))
    assert launcher.patterns_matching_nothing([pattern]) == [pattern]  # Beam's listing
    assert features._matches_through_symlinks(pattern)
    assert len(list(read_msd.match_pattern(pattern))) == 4


@pytest.mark.parametrize("pattern", ["**.h5", "B/D/?/*.h5", "A/A/A/TRAAABD128F429CF47.h5",
                                     "*/*/[AB]/*", ""])
def test_matching_without_symlinks_finds_what_beam_finds(pattern):
    from apache_beam.io.filesystems import FileSystems
    from transforms import read_msd

    full = f"{sample_data_path('msd', 'data')}/{pattern}"
    beam = sorted((m.path, m.size_in_bytes) for m in FileSystems.match([full])[0].metadata_list)
    assert sorted(read_msd.match_pattern(full)) == beam
