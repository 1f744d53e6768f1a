"""The feature pipeline: reading transforms, the whole job on the DirectRunner, Dataflow offline."""
import concurrent.futures
import csv
import dataclasses
import glob
import json
import os
import shutil

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
import pytest
import tensorflow as tf
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from msd import hdf5_reader
from pipelines import config as config_lib
from pipelines import features
from transforms import read_msd
from tests.dataflow_dry_run import build_dataflow_job
from tests.test_hdf5_reader import RICK_ASTLEY, write_aggregate
from tests.test_timbre import independent_statistics

REAL_TRACK_IDS = ["TRAAABD128F429CF47", "TRAXLZU12903D05F94", "TRBDBKZ128F425D023",
                  "TRBDETQ128F14B0CDD", "TRBDMAU128F935960B", "TRBDSDF12903CAF042",
                  "TRBDZVP12903CC0089"]


def test_read_msd_songs_on_real_files(real_msd_dir, invalid_msd_dir):
    with TestPipeline() as pipeline:
        parsed = pipeline | read_msd.ReadMsdSongs(
            [read_msd.expand_input(str(real_msd_dir)), read_msd.expand_input(str(invalid_msd_dir)),
             str(real_msd_dir / "A" / "**.h5")])  # overlaps the first pattern: read once
        assert_that(parsed[read_msd.SONGS] | beam.Map(lambda song: song.track_id),
                    equal_to(REAL_TRACK_IDS), label="songs")
        assert_that(parsed[read_msd.REJECTED] | beam.Map(lambda r: (r.track_id, r.reason, r.level)),
                    equal_to([("TRBDXOD128F422C47B", "too_few_segments", "song"),
                              ("TRAXLZU12903D05F94", "not_msd_file", "file"),
                              ("TRAAAAW128F429D538", "not_msd_file", "file")]), label="rejected")


def test_files_over_the_size_limit_are_rejected_unread(real_msd_dir):
    with TestPipeline() as pipeline:
        parsed = pipeline | read_msd.ReadMsdSongs([str(real_msd_dir / "A/**.h5")],
                                                  max_file_bytes=100)
        assert_that(parsed[read_msd.SONGS], equal_to([]), label="songs")
        assert_that(parsed[read_msd.REJECTED] | beam.Map(lambda r: r.reason),
                    equal_to(["file_too_large", "file_too_large"]), label="rejected")


def test_expand_input_turns_folders_into_recursive_patterns(tmp_path):
    assert read_msd.expand_input(str(tmp_path)) == f"{tmp_path}/**.h5"
    assert read_msd.expand_input("gs://bucket/msd/data/") == "gs://bucket/msd/data/**.h5"
    assert read_msd.expand_input("gs://bucket/msd/*/A/*.h5") == "gs://bucket/msd/*/A/*.h5"
    assert read_msd.expand_input("/x/TRA.h5") == "/x/TRA.h5"


def read_outputs(output_dir):
    examples = []
    for path in sorted(glob.glob(f"{output_dir}/features/part-*.tfrecord.gz")):
        for record in tf.data.TFRecordDataset(path, compression_type="GZIP"):
            examples.append(tf.train.Example.FromString(record.numpy()))
    csv_rows = []
    for path in sorted(glob.glob(f"{output_dir}/csv/part-*.csv")):
        with open(path) as handle:
            reader = csv.reader(handle)
            header = next(reader)
            csv_rows.extend(reader)
    songs = pq.read_table(f"{output_dir}/songs").to_pylist()
    rejected = [json.loads(line) for path in glob.glob(f"{output_dir}/rejected/part-*.jsonl")
                for line in open(path)]
    with open(f"{output_dir}/run_summary.json") as handle:
        summary = json.load(handle)
    return examples, header, csv_rows, songs, rejected, summary


def feature(example, name):
    value = example.features.feature[name]
    kind = value.WhichOneof("kind")
    values = list(getattr(value, kind).value)
    return values[0].decode() if kind == "bytes_list" else values


def test_whole_job_on_real_and_invalid_files(real_msd_dir, invalid_msd_dir, tmp_path):
    output_dir = tmp_path / "out"
    summary = features.run(["--input", str(real_msd_dir), "--input", str(invalid_msd_dir),
                            "--output_dir", str(output_dir)])
    examples, header, csv_rows, songs, rejected, on_disk = read_outputs(output_dir)
    assert on_disk == summary
    assert (summary["files_matched"], summary["files_parsed"], summary["files_rejected"]) == (10, 8, 2)
    assert (summary["songs_seen"], summary["songs_written"], summary["songs_rejected"]) == (8, 7, 1)
    assert summary["rejected_by_reason"] == {"not_msd_file": 2, "too_few_segments": 1}
    assert summary["files_reconcile"] and summary["songs_reconcile"]

    assert sorted(feature(e, "track_id") for e in examples) == REAL_TRACK_IDS
    assert header == ["track_id", "song_id"] + [f"f{i:02d}" for i in range(90)]
    assert sorted(row[0] for row in csv_rows) == REAL_TRACK_IDS
    assert sorted(song["track_id"] for song in songs) == REAL_TRACK_IDS
    assert sorted(r["path"].rsplit("/", 1)[1] for r in rejected) == [
        "TRBDXOD128F422C47B.h5", "empty_hdf5_TRAXLZU12903D05F94.h5",
        "random_floats_TRAAAAW128F429D538.h5"]
    assert all(r["reason"] and r["detail"] for r in rejected)

    rick = next(e for e in examples if feature(e, "track_id") == "TRAXLZU12903D05F94")
    assert (feature(rick, "song_id"), feature(rick, "artist_name"), feature(rick, "title"),
            feature(rick, "year")) == ("SOCWJDB12A58A776AF", "Rick Astley",
                                       "Never Gonna Give You Up", [1987])
    import h5py
    with h5py.File(real_msd_dir / "A/X/L/TRAXLZU12903D05F94.h5") as h5:
        expected_raw = independent_statistics(h5["analysis/segments_timbre"][()])
    np.testing.assert_allclose(feature(rick, "raw_features"), expected_raw, rtol=1e-6)
    np.testing.assert_allclose(feature(rick, "features"),
                               expected_raw / np.linalg.norm(expected_raw), rtol=1e-5, atol=1e-7)

    by_track = {feature(e, "track_id"): np.array(feature(e, "features"), np.float32)
                for e in examples}
    for row in csv_rows:  # the CSV holds the very same float32 values
        np.testing.assert_array_equal(np.array(row[2:], np.float32), by_track[row[0]])
        assert by_track[row[0]].dtype == np.float32
    norms = np.linalg.norm(np.stack(list(by_track.values())), axis=1)
    np.testing.assert_allclose(norms, 1.0, rtol=1e-6)
    assert os.path.exists(output_dir / "transform_fn" / "saved_model.pb")
    assert os.path.exists(output_dir / "transformed_metadata" / "schema.pbtxt")
    assert not os.path.exists(output_dir / "tft_tmp")


def test_a_pattern_matching_nothing_stops_the_job_naming_it(real_msd_dir, tmp_path):
    missing = str(tmp_path / "nowhere" / "*.h5")
    with pytest.raises(SystemExit, match="no file matches .*nowhere"):
        features.run(["--input", str(real_msd_dir), "--input", missing,
                      "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_an_earlier_run_is_only_replaced_with_overwrite(real_msd_dir, tmp_path):
    args = ["--input", str(real_msd_dir / "A"), "--output_dir", str(tmp_path / "out")]
    assert features.run(args)["songs_written"] == 2
    with pytest.raises(SystemExit, match="--overwrite"):
        features.run(args)
    assert features.run(args + ["--overwrite"])["songs_written"] == 2
    assert len(read_outputs(tmp_path / "out")[0]) == 2


@pytest.mark.parametrize("args, message", [
    ([], "--input is required"),
    (["--input", "x", "--min_segments", "1"], "--min_segments must be at least 2"),
])
def test_bad_options_are_explained(args, message):
    with pytest.raises(SystemExit, match=message):
        features.run(args + ["--output_dir", "/tmp/unused"])


def test_config_file_values_are_overridden_by_explicit_flags(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("runner: DirectRunner\nmin_segments: 20\ninput: [a, b]\nno_auth: true\n")
    argv = config_lib.expand_config(["--config", str(config), "--min_segments=30"])
    options = features.PipelineOptions(argv).view_as(features.FeaturesOptions)
    assert (options.min_segments, options.input) == (30, ["a", "b"])
    assert "--no_auth" in argv and "--runner=DirectRunner" in argv
    with pytest.raises(config_lib.ConfigError, match="cannot read --config"):
        config_lib.expand_config(["--config", str(tmp_path / "missing.yaml")])


def test_dataflow_job_graph_builds_offline():
    job = build_dataflow_job(features.run, ["--config", "configs/dataflow_cpu.yaml",
                              "--input", "gs://my-bucket/msd/data/", "--output_dir",
                              "gs://my-bucket/features", "--normalization", "zscore_l2"])
    names = {t.unique_name for t in job.proto_pipeline.components.transforms.values()}
    for expected in ["ReadMsd/Match", "ReadMsd/DistinctFiles", "ReadMsd/Parse", "Normalise",
                     "WriteTransformFn", "Write/WriteTFRecord", "Write/WriteCsv",
                     "Write/WriteSongs", "DeadLetter/WriteRejected"]:
        assert expected in names
    patterns = [t for t in job.proto_pipeline.components.transforms.values()
                if t.unique_name == "ReadMsd/Patterns"]
    assert patterns
    assert job.proto.type == 1  # JOB_TYPE_BATCH
    options = job.options.get_all_options()
    assert options["setup_file"] == "./setup.py" and options["project"] == "my-project"


def test_whole_job_on_a_few_hundred_synthetic_files(synthetic_sample, synthetic_features):
    output_dir, summary = synthetic_features
    examples, _, csv_rows, songs, rejected, _ = read_outputs(output_dir)
    assert summary["files_matched"] == synthetic_sample.num_files == 300
    assert summary["songs_written"] + summary["songs_rejected"] == summary["songs_seen"] == 300
    assert summary["files_reconcile"] and summary["songs_reconcile"]
    assert len(examples) == len(csv_rows) == len(songs) == summary["songs_written"]
    assert len(rejected) == summary["songs_rejected"] + summary["files_rejected"]
    import h5py
    path = synthetic_sample.h5_paths[17]
    with h5py.File(path) as h5:
        track_id = h5["analysis/songs"]["track_id"][0].decode()
        expected = independent_statistics(h5["analysis/segments_timbre"][()])
    example = next(e for e in examples if feature(e, "track_id") == track_id)
    np.testing.assert_allclose(feature(example, "raw_features"), expected, rtol=1e-6)


def test_a_track_in_two_files_is_written_once_and_the_other_reported(real_msd_dir, tmp_path):
    copy_dir = tmp_path / "copy" / "Z"
    copy_dir.mkdir(parents=True)
    original = real_msd_dir / "A/X/L/TRAXLZU12903D05F94.h5"
    (copy_dir / "TRAXLZU12903D05F94.h5").write_bytes(original.read_bytes())
    summary = features.run(["--input", str(real_msd_dir / "A"), "--input", str(tmp_path / "copy"),
                            "--output_dir", str(tmp_path / "out")])
    examples, _, _, _, rejected, _ = read_outputs(tmp_path / "out")
    assert sorted(feature(e, "track_id") for e in examples) == [
        "TRAAABD128F429CF47", "TRAXLZU12903D05F94"]
    (duplicate,) = rejected
    assert duplicate["reason"] == "duplicate_track_id"
    winner, loser = sorted([str(original), str(copy_dir / "TRAXLZU12903D05F94.h5")])
    assert duplicate["path"] == loser and winner in duplicate["detail"]
    assert (summary["songs_seen"], summary["songs_written"], summary["songs_rejected"]) == (3, 2, 1)
    assert summary["rejected_by_reason"] == {"duplicate_track_id": 1}


def test_a_track_twice_in_one_aggregate_file_keeps_its_first_row(real_msd_dir, tmp_path):
    """B12: both copies have the same path, so the path alone cannot pick the winner; the row
    in the file does, whatever order GroupByKey hands the songs over in."""
    paths = [real_msd_dir / RICK_ASTLEY, real_msd_dir / "A/A/A/TRAAABD128F429CF47.h5",
             real_msd_dir / "B/D/B/TRBDBKZ128F425D023.h5"]
    twice = "TRAXLZU12903D05F94"
    data = write_aggregate(paths, track_ids_override=[twice, "TRAAABD128F429CF47", twice])
    aggregate = str(tmp_path / "aggregate.h5")
    songs = list(hdf5_reader.parse_msd_file(data, aggregate))
    assert [(s.track_id, s.row) for s in songs] == [
        (twice, 0), ("TRAAABD128F429CF47", 1), (twice, 2)]
    copies = [s for s in songs if s.track_id == twice]
    # A copy of the same track in a file whose path sorts later, and one that sorts earlier.
    later, earlier = (dataclasses.replace(copies[1], path=str(tmp_path / name), row=0)
                      for name in ("b.h5", "0.h5"))
    for group in (copies, copies[::-1]):
        outputs = list(read_msd.KeepFirstOfDuplicateTracksFn().process((twice, group)))
        kept, (rejection,) = outputs[0], [o.value for o in outputs[1:]]
        assert (kept.path, kept.row) == (aggregate, 0)
        np.testing.assert_array_equal(kept.raw_features, copies[0].raw_features)
        assert (rejection.path, rejection.track_id, rejection.reason, rejection.level) == (
            aggregate, twice, "duplicate_track_id", "song")
        assert rejection.detail == (f"song 2: track {twice} is a duplicate of row 0 of the "
                                    "same file, which comes first and is kept")
    outputs = list(read_msd.KeepFirstOfDuplicateTracksFn().process(
        (twice, [later, copies[1], earlier, copies[0]])))
    assert (outputs[0].path, outputs[0].row) == (earlier.path, 0)
    assert [(o.value.path, o.value.detail) for o in outputs[1:]] == [
        (aggregate, f"song {row}: track {twice} is a duplicate of {earlier.path} row 0, whose "
                    "path sorts first and is kept") for row in (0, 2)] + [
        (later.path, f"song 0: track {twice} is a duplicate of {earlier.path} row 0, whose "
                     "path sorts first and is kept")]
    # Through the job: row 0 written (Rick Astley's statistics), row 2 the dead letter.
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "aggregate.h5").write_bytes(data)
    features.run(["--input", str(tmp_path / "in"), "--output_dir", str(tmp_path / "out")])
    examples, _, _, _, rejected, _ = read_outputs(tmp_path / "out")
    assert sorted(feature(e, "track_id") for e in examples) == ["TRAAABD128F429CF47", twice]
    (written,) = [e for e in examples if feature(e, "track_id") == twice]
    np.testing.assert_allclose(written.features.feature["raw_features"].float_list.value,
                               copies[0].raw_features.astype(np.float32), rtol=1e-6)
    assert [(r["reason"], r["detail"]) for r in rejected] == [
        ("duplicate_track_id", f"song 2: track {twice} is a duplicate of row 0 of the same "
                               "file, which comes first and is kept")]


def test_files_are_read_ahead_in_order_within_the_file_and_byte_limits(monkeypatch):
    monkeypatch.setattr(read_msd, "READ_AHEAD_FILES", 2)
    monkeypatch.setattr(read_msd, "READ_AHEAD_BYTES", 650)
    fn = read_msd.ParseMsdFilesFn(10, 100, max_file_bytes=1000)
    consumed, submitted_after = [], {}

    class RecordingExecutor:  # runs reads at once, noting how many files were handed out then
        def submit(self, read, path, size):
            submitted_after[path] = len(consumed)
            future = concurrent.futures.Future()
            future.set_result(read(path, size))
            return future

    fn._readers = RecordingExecutor()
    monkeypatch.setattr(fn, "_read", lambda path, size: "unread" if size > 1000 else b"x" * size)
    files = [("a", 100), ("b", 100), ("c", 100), ("d", 5000), ("e", 600), ("f", 100)]
    for path, data in fn._read_ahead(files):
        consumed.append(path)
        assert data == ("unread" if path == "d" else b"x" * dict(files)[path])
    assert consumed == [path for path, _ in files]
    # At most READ_AHEAD_FILES (2) beyond the file being parsed ("d" waits for "a"); "d" is
    # over --max_file_bytes, rejected unread, so it holds no bytes; "e" (600) and then "f" wait
    # until what is read ahead fits in READ_AHEAD_BYTES (650) with them.
    assert submitted_after == {"a": 0, "b": 0, "c": 0, "d": 1, "e": 3, "f": 5}


# --- hostile inputs and concurrent runs (issue 14) ----------------------------------------

def test_a_file_named_like_a_pattern_is_read_as_that_file(real_msd_dir, tmp_path):
    """``glob[1].h5`` was taken for a pattern and reported as matching nothing."""
    import shutil

    literal = tmp_path / "in" / "glob[1].h5"
    literal.parent.mkdir()
    shutil.copy(real_msd_dir / "A" / "X" / "L" / "TRAXLZU12903D05F94.h5", literal)
    summary = features.run(["--input", str(literal), "--output_dir", str(tmp_path / "out")])
    assert summary["files_matched"] == 1 and summary["songs_written"] == 1


def test_a_device_or_pipe_as_input_is_refused_not_read_without_bound(tmp_path):
    fifo = tmp_path / "songs.h5"
    os.mkfifo(fifo)
    for source, kind in (("/dev/zero", "a device"), (str(fifo), "a pipe")):
        with pytest.raises(SystemExit, match=f"--input: {source} is {kind}, not a regular file"):
            features.run(["--input", source, "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_a_second_run_on_one_output_dir_is_refused_while_the_first_runs(real_msd_dir, tmp_path):
    """The second run would delete the first's live staging (it died inside TFT); now it is
    refused naming the first, whose lock (an flock it holds for its whole life) is let go when
    it ends; the lock file it leaves, held by nobody, is taken over."""
    import socket

    from tests.test_train_pipeline import hold_flock

    output = tmp_path / "out"
    output.mkdir()
    lock = output / features.LOCK_FILE
    lock.write_text(json.dumps({"job": "features", "host": socket.gethostname(),
                                "pid": 4242, "started": "2026-11-30T08:00:00Z"}))
    holder = hold_flock(lock)
    try:
        with pytest.raises(SystemExit, match=rf"another run holds .*{features.LOCK_FILE} "
                                             r"\(pid 4242 on "):
            features.run(["--input", str(real_msd_dir), "--output_dir", str(output)])
        assert lock.exists()
    finally:
        holder.kill()
        holder.wait()
    assert features.run(["--input", str(real_msd_dir), "--output_dir", str(output)])[
        "files_reconcile"]
    assert not lock.exists()


def test_zscore_over_one_song_is_refused_not_published_as_a_zero_vector(real_msd_dir, tmp_path):
    one = str(real_msd_dir / "A" / "X" / "L" / "TRAXLZU12903D05F94.h5")
    with pytest.raises(SystemExit, match="zscore_l2 standardises every dimension .* over 1 "
                                         "song\\(s\\) every vector is zero"):
        features.run(["--input", one, "--output_dir", str(tmp_path / "out"),
                      "--normalization", "zscore_l2"])
    assert not (tmp_path / "out" / "run_summary.json").exists()
    assert not (tmp_path / "out" / "features").exists()


# --- song fields beside year and duration (issue 12) ----------------------------------------

NEW_SONG_FIELDS = hdf5_reader.SONG_FIELDS  # loudness, tempo, key, mode, time_signature
EDITED_TRACK = "TRZZZZZ12903D05F94"


def write_old_format_copy(new_dir, old_dir):
    """``new_dir`` as a feature run made before the song fields were added wrote it: TFRecord
    examples and the songs table without them; CSV and the run summary as they are."""
    import shutil

    import pyarrow.parquet as pq_

    (old_dir / "features").mkdir(parents=True)
    (old_dir / "songs").mkdir()
    shutil.copytree(new_dir / "csv", old_dir / "csv")
    shutil.copy(new_dir / "run_summary.json", old_dir / "run_summary.json")
    for path in sorted((new_dir / "features").glob("part-*.tfrecord.gz")):
        with tf.io.TFRecordWriter(str(old_dir / "features" / path.name), "GZIP") as writer:
            for record in tf.data.TFRecordDataset(str(path), compression_type="GZIP"):
                example = tf.train.Example.FromString(record.numpy())
                for name in NEW_SONG_FIELDS:
                    del example.features.feature[name]
                writer.write(example.SerializeToString())
    for path in sorted((new_dir / "songs").glob("part-*.parquet")):
        table = pq_.read_table(path)
        pq_.write_table(table.drop_columns(list(NEW_SONG_FIELDS)), old_dir / "songs" / path.name)


def edited_rick_astley(real_msd_dir, folder, **analysis_fields):
    """A copy of Rick Astley's file in ``folder``, under ``EDITED_TRACK`` and another song id,
    with the analysis fields given."""
    import h5py

    edited = folder / f"{EDITED_TRACK}.h5"
    folder.mkdir(parents=True, exist_ok=True)
    edited.write_bytes((real_msd_dir / RICK_ASTLEY).read_bytes())
    with h5py.File(edited, "r+") as h5:
        analysis = h5["analysis/songs"][()]
        analysis["track_id"] = EDITED_TRACK.encode()
        for name, value in analysis_fields.items():
            analysis[name] = value
        h5["analysis/songs"][...] = analysis
        metadata = h5["metadata/songs"][()]
        metadata["song_id"] = b"SOZZZZZ12A58A776AF"
        h5["metadata/songs"][...] = metadata
    return edited


def test_replaced_song_fields_are_counted_in_the_run_summary(real_msd_dir, tmp_path):
    """A file whose tempo makes no sense (-120 BPM): the song is written with its tempo stored
    as unknown, and the run summary counts it (``song_fields_replaced``, from the counters
    ``song_field_replaced_<field>``). The MSD's own tempo 0 ("none found") is not counted."""
    edited = edited_rick_astley(real_msd_dir, tmp_path / "in", tempo=-120.0)
    shutil.copy(real_msd_dir / "B/D/X/TRBDXOD128F422C47B.h5", edited.parent)  # tempo 0
    shutil.copy(real_msd_dir / RICK_ASTLEY, edited.parent)  # tempo 113.359
    summary = features.run(["--input", str(edited.parent), "--output_dir", str(tmp_path / "out"),
                            "--min_segments", "2"])
    assert summary["songs_written"] == 3
    assert summary["song_fields_replaced"] == {"tempo": 1}
    with open(tmp_path / "out" / "run_summary.json") as handle:
        assert json.load(handle)["song_fields_replaced"] == {"tempo": 1}


def test_song_fields_reach_every_output_and_old_folders_still_read(real_msd_dir, tmp_path):
    import h5py

    from pipelines import evaluate
    from recommend import catalogue as catalogue_lib
    from recommend.models import hybrid
    from transforms import write_features

    # A copy of Rick Astley's file under another track and song id whose analysis fields make
    # no sense: its song is written (its timbre is fine) with the fields stored as unknown.
    edited = edited_rick_astley(real_msd_dir, tmp_path / "edited", loudness=np.nan,
                                tempo=-120.0, key=12, mode=2, time_signature=-1)
    output_dir = tmp_path / "out"
    summary = features.run(["--input", str(real_msd_dir), "--input", str(edited.parent),
                            "--output_dir", str(output_dir)])
    assert (summary["songs_seen"], summary["songs_written"], summary["songs_rejected"]) == (9, 8, 1)
    assert summary["song_fields_replaced"] == {name: 1 for name in NEW_SONG_FIELDS}
    examples, header, csv_rows, songs, _, _ = read_outputs(output_dir)

    expected = {}  # track id → the analysis row read directly with h5py
    for path in sorted(real_msd_dir.rglob("*.h5")):
        if path.stem in REAL_TRACK_IDS:
            with h5py.File(path) as h5:
                row = h5["analysis/songs"][0]
            expected[path.stem] = {name: row[name].item() for name in NEW_SONG_FIELDS}
    expected[EDITED_TRACK] = dict(hdf5_reader.UNKNOWN)
    assert expected[EDITED_TRACK] == {"loudness": 0.0, "tempo": 0.0, "key": -1, "mode": -1,
                                      "time_signature": 0}

    def as_written(values):  # floats pass through the job as float32
        return {name: float(np.float32(value)) if isinstance(value, float) else value
                for name, value in values.items()}

    by_track = {feature(e, "track_id"): e for e in examples}
    assert sorted(by_track) == sorted(expected)
    for track_id, values in expected.items():
        example = by_track[track_id]
        assert {name: feature(example, name)[0] for name in NEW_SONG_FIELDS} == \
            as_written(values), track_id
        kinds = {name: example.features.feature[name].WhichOneof("kind")
                 for name in NEW_SONG_FIELDS}
        assert kinds == {"loudness": "float_list", "tempo": "float_list", "key": "int64_list",
                         "mode": "int64_list", "time_signature": "int64_list"}
    songs_by_track = {song["track_id"]: song for song in songs}
    for track_id, values in expected.items():
        assert {name: songs_by_track[track_id][name] for name in NEW_SONG_FIELDS} == \
            as_written(values), track_id
    assert pq.read_schema(next((output_dir / "songs").glob("part-*.parquet"))).equals(
        write_features.SONGS_TABLE_SCHEMA)
    # The CSV keeps its columns: the catalogue reads every column after song_id as the vector.
    assert header == write_features.CSV_HEADER.split(",") and len(header) == 92
    assert sorted(row[0] for row in csv_rows) == sorted(expected)

    # The hybrid model reads them (hybrid.SONG_FIELDS, when present).
    order = sorted(expected)
    content = hybrid.load_song_content(str(output_dir), order)
    assert set(content) == {"raw_features"} | {name for name, _ in hybrid.SONG_FIELDS}
    for name in NEW_SONG_FIELDS:
        np.testing.assert_array_equal(content[name],
                                      [as_written(expected[t])[name] for t in order])
    assert np.isfinite(hybrid.content_inputs(content)[0]).all()

    # A folder written before the change (no song fields) reads as before everywhere.
    old_dir = tmp_path / "old"
    write_old_format_copy(output_dir, old_dir)
    new_catalogue = catalogue_lib.load_catalogue(str(output_dir))
    for source in (str(old_dir), str(old_dir / "csv" / "part-*.csv")):
        old_catalogue = catalogue_lib.load_catalogue(source)
        np.testing.assert_array_equal(old_catalogue.track_ids, new_catalogue.track_ids)
        np.testing.assert_array_equal(old_catalogue.features, new_catalogue.features)
    old_content = hybrid.load_song_content(str(old_dir), order)
    assert set(old_content) == {"raw_features", "year", "duration"}
    np.testing.assert_array_equal(old_content["raw_features"], content["raw_features"])
    _, names = hybrid.content_inputs(old_content)
    assert not any(name.startswith(("loudness", "tempo", "key", "mode", "time_signature"))
                   for name in names)
    assert sorted(evaluate._song_ids_from_parquet(str(old_dir))) == sorted(
        evaluate._song_ids_from_parquet(str(output_dir)))
    old_songs = pq.read_table(old_dir / "songs").to_pylist()
    assert sorted(old_songs, key=lambda s: s["track_id"]) == [
        {k: v for k, v in s.items() if k not in NEW_SONG_FIELDS}
        for s in sorted(songs, key=lambda s: s["track_id"])]


# --- the feature job deletes only what it created (issue 14, F3) ----------------------------

def test_an_output_dir_holding_the_users_files_is_refused_and_left_as_it_was(real_msd_dir,
                                                                             tmp_path):
    """``<output_dir>/_staging`` used to be deleted wholesale, without --overwrite: a user's
    ``_staging/thesis.txt`` was gone. Anything that is not the feature job's own is refused,
    named, and left as it was."""
    output = tmp_path / "proj"
    (output / "_staging").mkdir(parents=True)
    (output / "_staging" / "thesis.txt").write_text("draft")
    (output / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match=r"holds files this job did not write "
                                         r"\(_staging/thesis.txt, notes.txt\)"):
        features.run(["--input", str(real_msd_dir / "A"), "--output_dir", str(output)])
    assert (output / "_staging" / "thesis.txt").read_text() == "draft"
    assert (output / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in output.iterdir()) == ["_staging", "notes.txt"]


def test_a_recommendation_output_or_another_jobs_staging_is_refused_untouched(real_msd_dir,
                                                                              tmp_path):
    """The recommendation and training jobs stage in ``<output>/_staging/`` too (their locks
    and staged rows): a feature run there used to wipe a live run's staging."""
    recs = tmp_path / "recs"
    partition = recs / "run_date=2026-11-30" / "model=itemcf"
    partition.mkdir(parents=True)
    (partition / "part-0.parquet").write_text("rows")
    live = recs / "_staging" / "run_date=2026-11-30-itemcf-0123456789ab" / "rows"
    live.mkdir(parents=True)
    (live / "part-0.parquet").write_text("staged rows")
    (recs / "_staging" / "run_date=2026-11-30-itemcf.lock").write_text("{}")
    model = tmp_path / "model"
    (model / "_staging").mkdir(parents=True)
    (model / "_staging" / "_train.lock").write_text("{}")
    before = {path: sorted(str(p) for p in path.rglob("*")) for path in (recs, model)}
    with pytest.raises(SystemExit, match=r"did not write \(_staging/run_date=2026-11-30-itemcf-"
                                         r"0123456789ab, _staging/run_date=2026-11-30-itemcf"
                                         r"\.lock, run_date=2026-11-30\)"):
        features.run(["--input", str(real_msd_dir / "A"), "--output_dir", str(recs)])
    with pytest.raises(SystemExit, match=r"did not write \(_staging/_train.lock\)"):
        features.run(["--input", str(real_msd_dir / "A"), "--output_dir", str(model)])
    assert {path: sorted(str(p) for p in path.rglob("*")) for path in (recs, model)} == before
    assert (live / "part-0.parquet").read_text() == "staged rows"


def test_a_killed_runs_own_staging_is_cleared_by_the_next_run(real_msd_dir, tmp_path):
    """A killed feature run leaves ``_staging/features-<run id>/`` and the temporary file of
    the summary's atomic write: the next run (holding the feature lock, so none of it is live)
    deletes them, and leaves only its outputs."""
    output = tmp_path / "out"
    killed = output / features.STAGING / "features-0123456789ab" / "features"
    killed.mkdir(parents=True)
    (killed / "part-00000-of-00001.tfrecord.gz").write_bytes(b"half")
    (output / ".run_summary.json.4242.tmp").write_text("{")
    summary = features.run(["--input", str(real_msd_dir / "A"), "--output_dir", str(output)])
    assert summary["songs_written"] == 2
    assert sorted(p.name for p in output.iterdir()) == sorted(
        features.OUTPUT_SUBDIRS + (features.SUMMARY_FILE,))
    # A rerun's staging is named as the feature job's own.
    assert features.own_patterns()[-1] == f"{features.STAGING}/{features.STAGED_RUN_PATTERN}"
