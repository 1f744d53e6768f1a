"""The tensorflow-transform step: raw timbre statistics → normalised feature vectors.

``l2`` scales each song's 90 statistics to unit length, so cosine similarity is a dot product
(the seed service's normalisation). ``zscore_l2`` first standardises each of the 90 dimensions
with TFT's full-pass analyzers (mean and variance over the whole catalogue) and then scales to
unit length: raw statistics are dominated by a few large covariance entries.

Songs reach TFT as Arrow RecordBatches (the TFXIO path): ``songs_to_record_batch`` builds them.
"""
from typing import Callable, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
import tensorflow as tf
import tensorflow_transform as tft
from tensorflow_transform.tf_metadata import schema_utils
from tfx_bsl.public import tfxio
from tfx_bsl.tfxio import tensor_representation_util

from msd import hdf5_reader
from msd.timbre import NUM_FEATURES
from transforms.read_msd import METRICS_NAMESPACE

STRING_COLUMNS = ("track_id", "song_id", "artist_name", "title", "release")
# Song fields beside the ids, with their tf.train.Example type (recommend/models/hybrid.py's
# SONG_FIELDS): year and duration, then the analysis fields of hdf5_reader.SONG_FIELDS.
INT_COLUMNS = ("year", "key", "mode", "time_signature")
FLOAT_COLUMNS = ("duration", "loudness", "tempo")
SONG_FIELD_COLUMNS = ("year", "duration") + hdf5_reader.SONG_FIELDS
METADATA_COLUMNS = STRING_COLUMNS + SONG_FIELD_COLUMNS


def _column_type(name: str) -> tuple[tf.dtypes.DType, pa.DataType]:
    if name in INT_COLUMNS:
        return tf.int64, pa.int64()
    if name in FLOAT_COLUMNS:
        return tf.float32, pa.float32()
    return tf.string, pa.large_binary()


RAW_FEATURE_SPEC = {
    **{name: tf.io.FixedLenFeature([], _column_type(name)[0]) for name in METADATA_COLUMNS},
    "raw_features": tf.io.FixedLenFeature([NUM_FEATURES], tf.float32),
}
RAW_SCHEMA = schema_utils.schema_from_feature_spec(RAW_FEATURE_SPEC)

ARROW_SCHEMA = pa.schema(
    [pa.field(name, pa.large_list(_column_type(name)[1])) for name in METADATA_COLUMNS]
    + [pa.field("raw_features", pa.large_list(pa.float32()))])


def tensor_adapter_config() -> tfxio.TensorAdapterConfig:
    """How TFT turns the RecordBatches of ``songs_to_record_batch`` into tensors."""
    return tfxio.TensorAdapterConfig(
        ARROW_SCHEMA, tensor_representation_util.InferTensorRepresentationsFromSchema(RAW_SCHEMA))


def _fixed_list(values: np.ndarray, width: int, value_type: pa.DataType) -> pa.LargeListArray:
    offsets = np.arange(0, len(values) + 1, width, dtype=np.int64)
    return pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values, type=value_type))


def songs_to_record_batch(songs: Sequence[hdf5_reader.Song]) -> pa.RecordBatch:
    """Packs songs into one RecordBatch in ``ARROW_SCHEMA`` (one list value per scalar).

    In a pipeline, counts the songs (each once: they come de-duplicated) whose file held a
    missing or nonsensical analysis field, stored as unknown: Beam counters
    ``song_field_replaced_<field>`` (hdf5_reader logs each with its file value)."""
    for song in songs:
        for name in song.replaced_fields:
            beam.metrics.Metrics.counter(METRICS_NAMESPACE, f"song_field_replaced_{name}").inc()
    columns = []
    for name in METADATA_COLUMNS:
        values = [getattr(song, name) for song in songs]
        value_type = _column_type(name)[1]
        if value_type == pa.large_binary():
            values = np.array([value.encode("utf-8") for value in values], dtype=object)
        else:
            values = np.array(values, value_type.to_pandas_dtype())
        columns.append(_fixed_list(values, 1, value_type))
    raw = np.stack([song.raw_features for song in songs]).astype(np.float32).ravel()
    columns.append(_fixed_list(raw, NUM_FEATURES, pa.float32()))
    return pa.RecordBatch.from_arrays(columns, schema=ARROW_SCHEMA)


def _passthrough(inputs: dict) -> dict:
    return {name: tf.identity(inputs[name]) for name in METADATA_COLUMNS + ("raw_features",)}


def l2_preprocessing_fn(inputs: dict) -> dict:
    """Metadata and raw statistics unchanged; ``features`` = raw statistics scaled to unit L2."""
    outputs = _passthrough(inputs)
    # In float64, rounded once to float32: float32 l2_normalize differs in the last bit with the
    # batch size (which depends on timing), so runs of the same input would not write the same
    # features.
    outputs["features"] = tf.cast(
        tf.math.l2_normalize(tf.cast(inputs["raw_features"], tf.float64), axis=1), tf.float32)
    return outputs


def zscore_l2_preprocessing_fn(inputs: dict) -> dict:
    """Like ``l2_preprocessing_fn``, after standardising each dimension over the catalogue."""
    outputs = _passthrough(inputs)
    # float64 statistics: covariance entries reach 1e5, so their squares need the precision.
    standardised = tft.scale_to_z_score(tf.cast(inputs["raw_features"], tf.float64),
                                        elementwise=True)
    outputs["features"] = tf.cast(tf.math.l2_normalize(standardised, axis=1), tf.float32)
    return outputs


PREPROCESSING_FNS: dict[str, Callable[[dict], dict]] = {
    "l2": l2_preprocessing_fn,
    "zscore_l2": zscore_l2_preprocessing_fn,
}
