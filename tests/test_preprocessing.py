"""The TFT step, with the expected transformed rows stated literally."""
import numpy as np
import pytest
import tensorflow_transform.beam as tft_beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that
import apache_beam as beam
import tensorflow as tf
from apache_beam.metrics.metric import MetricsFilter

from msd import hdf5_reader
from transforms import preprocessing
from transforms.read_msd import METRICS_NAMESPACE


def song(track_id: str, raw: list[float], **fields) -> hdf5_reader.Song:
    fields = {"loudness": -7.75, "tempo": 113.359, "key": 1, "mode": 1, "time_signature": 4,
              **fields}
    return hdf5_reader.Song(track_id=track_id, song_id="SO" + track_id[2:], artist_name="Ärtist",
                            title="T", release="R", year=1999, duration=200.5, num_segments=100,
                            raw_features=np.array(raw + [0.0] * (90 - len(raw))), path="p.h5",
                            **fields)


def transform(songs, normalization, tmp_path, check):
    with TestPipeline() as pipeline, tft_beam.Context(temp_dir=str(tmp_path)):
        batches = pipeline | beam.Create([preprocessing.songs_to_record_batch(songs)])
        (rows, _), _ = ((batches, preprocessing.tensor_adapter_config())
                        | tft_beam.AnalyzeAndTransformDataset(
                            preprocessing.PREPROCESSING_FNS[normalization]))
        assert_that(rows, check)


def test_l2_rows_are_scaled_to_unit_length(tmp_path):
    def check(rows):
        by_id = {row["track_id"]: row for row in rows}
        assert sorted(by_id) == [b"TRA", b"TRB"]
        np.testing.assert_allclose(by_id[b"TRA"]["features"][:3], [0.6, 0.8, 0.0], rtol=1e-6)
        np.testing.assert_allclose(by_id[b"TRB"]["features"][:3], [0.0, 0.0, 1.0], rtol=1e-6)
        np.testing.assert_allclose(by_id[b"TRA"]["raw_features"][:3], [3.0, 4.0, 0.0])
        assert by_id[b"TRA"]["artist_name"] == "Ärtist".encode() and by_id[b"TRA"]["year"] == 1999
        assert by_id[b"TRB"]["song_id"] == b"SOB" and by_id[b"TRB"]["duration"] == 200.5
        assert (by_id[b"TRA"]["loudness"], by_id[b"TRA"]["tempo"], by_id[b"TRA"]["key"],
                by_id[b"TRA"]["mode"], by_id[b"TRA"]["time_signature"]) == (
            np.float32(-7.75), np.float32(113.359), 1, 1, 4)
        assert (by_id[b"TRB"]["loudness"], by_id[b"TRB"]["tempo"], by_id[b"TRB"]["key"],
                by_id[b"TRB"]["mode"], by_id[b"TRB"]["time_signature"]) == (0.0, 0.0, -1, -1, 0)
    transform([song("TRA", [3.0, 4.0]),
               song("TRB", [0.0, 0.0, 250.0], **hdf5_reader.UNKNOWN)], "l2", tmp_path, check)


def test_zscore_l2_standardises_each_dimension_before_scaling(tmp_path):
    # Dimension 0: values 1, 3 (mean 2, std 1); dimension 1: 10, 30 (mean 20, std 10).
    # z-scores: TRA = (-1, -1), TRB = (1, 1); other dimensions are constant (z = 0).
    # After L2: (-1/√2, -1/√2) and (1/√2, 1/√2).
    def check(rows):
        by_id = {row["track_id"]: row["features"] for row in rows}
        h = 1 / np.sqrt(2)
        np.testing.assert_allclose(by_id[b"TRA"][:3], [-h, -h, 0.0], atol=1e-6)
        np.testing.assert_allclose(by_id[b"TRB"][:3], [h, h, 0.0], atol=1e-6)
    transform([song("TRA", [1.0, 10.0]), song("TRB", [3.0, 30.0])], "zscore_l2", tmp_path, check)


def test_zscore_l2_equals_numpy_standardisation_on_realistic_statistics(tmp_path):
    rng = np.random.default_rng(7)
    raw = np.abs(rng.normal(0, 1, size=(200, 90))) * np.logspace(0, 5, 90)  # very unequal scales
    songs = [song(f"TR{i:03d}", list(row)) for i, row in enumerate(raw)]
    raw32 = raw.astype(np.float32).astype(np.float64)
    z = (raw32 - raw32.mean(axis=0)) / raw32.std(axis=0)
    expected = z / np.linalg.norm(z, axis=1, keepdims=True)

    def check(rows):
        got = {row["track_id"].decode(): row["features"] for row in rows}
        assert len(got) == 200
        for i in range(200):
            np.testing.assert_allclose(got[f"TR{i:03d}"], expected[i], atol=2e-6)
        # every dimension contributes: none is dominated away (unlike plain l2 on raw values)
        assert np.std([got[f"TR{i:03d}"] for i in range(200)], axis=0).min() > 0.01
    transform(songs, "zscore_l2", tmp_path, check)


def test_record_batch_round_trips_every_column():
    batch = preprocessing.songs_to_record_batch([song("TRA", [1.5, 2.5]), song("TRB", [7.0])])
    assert batch.schema == preprocessing.ARROW_SCHEMA and batch.num_rows == 2
    assert batch.column("track_id").to_pylist() == [[b"TRA"], [b"TRB"]]
    assert batch.column("raw_features").to_pylist()[1][:2] == [7.0, 0.0]
    assert len(batch.column("raw_features").to_pylist()[0]) == 90


def test_record_batch_carries_the_song_fields_with_the_example_types():
    batch = preprocessing.songs_to_record_batch([
        song("TRA", [1.0]),
        song("TRB", [2.0], loudness=-29.106, tempo=0.0, key=0, mode=0, time_signature=7)])
    assert batch.column("loudness").to_pylist() == [[np.float32(-7.75)], [np.float32(-29.106)]]
    assert batch.column("tempo").to_pylist() == [[np.float32(113.359)], [0.0]]
    assert batch.column("key").to_pylist() == [[1], [0]]
    assert batch.column("mode").to_pylist() == [[1], [0]]
    assert batch.column("time_signature").to_pylist() == [[4], [7]]
    # The types recommend/models/hybrid.py parses them with.
    from recommend.models import hybrid
    kinds = {"int": tf.int64, "float": tf.float32}
    for name, kind in hybrid.SONG_FIELDS:
        assert preprocessing.RAW_FEATURE_SPEC[name].dtype == kinds[kind], name


def test_songs_with_replaced_fields_are_counted_once_each():
    songs = [song("TRA", [1.0]),
             song("TRB", [1.0], tempo=0.0, replaced_fields=("tempo",)),
             song("TRC", [1.0], key=-1, tempo=0.0, replaced_fields=("tempo", "key"))]
    pipeline = TestPipeline()
    _ = (pipeline | beam.Create([songs[:2], songs[2:]])
         | beam.Map(preprocessing.songs_to_record_batch))
    result = pipeline.run()
    result.wait_until_finish()
    counters = {c.key.metric.name: c.committed for c in result.metrics().query(
        MetricsFilter().with_namespace(METRICS_NAMESPACE))["counters"]}
    assert counters == {"song_field_replaced_tempo": 2, "song_field_replaced_key": 1}


def test_l2_features_do_not_depend_on_how_songs_are_batched(tmp_path):
    # float32 l2_normalize differs in the last bit with the batch size; batch sizes depend on
    # timing, so the features are computed in float64 and rounded once.
    rng = np.random.default_rng(5)
    raw = rng.normal(size=(150, 90)) * rng.lognormal(3, 2, size=90)
    songs = [song(f"TR{i:03d}", list(row)) for i, row in enumerate(raw)]
    raw32 = raw.astype(np.float32).astype(np.float64)
    expected = (raw32 / np.linalg.norm(raw32, axis=1, keepdims=True)).astype(np.float32)
    for size in (150, 7, 1):
        def check(rows):
            got = {row["track_id"].decode(): row["features"] for row in rows}
            for i in range(len(songs)):
                np.testing.assert_array_equal(got[f"TR{i:03d}"], expected[i])

        with TestPipeline() as pipeline, tft_beam.Context(temp_dir=str(tmp_path / str(size))):
            batches = pipeline | beam.Create([preprocessing.songs_to_record_batch(songs[i:i + size])
                                              for i in range(0, len(songs), size)])
            (rows, _), _ = ((batches, preprocessing.tensor_adapter_config())
                            | tft_beam.AnalyzeAndTransformDataset(
                                preprocessing.PREPROCESSING_FNS["l2"]))
            assert_that(rows, check)
