"""The tensorflow-transform step: raw timbre statistics → normalised feature vectors.

``l2`` scales each song's 90 statistics to unit length, so cosine similarity is a dot product
(the seed service's normalisation). ``zscore_l2`` first standardises each of the 90 dimensions
with TFT's full-pass analyzers (mean and variance over the whole catalogue) and then scales to
unit length: raw statistics are dominated by a few large covariance entries.

Songs reach TFT as Arrow RecordBatches (the TFXIO path): ``songs_to_record_batch`` builds them.
"""
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa
import tensorflow as tf
import tensorflow_transform as tft
from tensorflow_transform.tf_metadata import schema_utils
from tfx_bsl.public import tfxio
from tfx_bsl.tfxio import tensor_representation_util

from msd import hdf5_reader
from msd.timbre import NUM_FEATURES

STRING_COLUMNS = ("track_id", "song_id", "artist_name", "title", "release")
METADATA_COLUMNS = STRING_COLUMNS + ("year", "duration")

RAW_FEATURE_SPEC = {
    **{name: tf.io.FixedLenFeature([], tf.string) for name in STRING_COLUMNS},
    "year": tf.io.FixedLenFeature([], tf.int64),
    "duration": tf.io.FixedLenFeature([], tf.float32),
    "raw_features": tf.io.FixedLenFeature([NUM_FEATURES], tf.float32),
}
RAW_SCHEMA = schema_utils.schema_from_feature_spec(RAW_FEATURE_SPEC)

ARROW_SCHEMA = pa.schema(
    [pa.field(name, pa.large_list(pa.large_binary())) for name in STRING_COLUMNS]
    + [pa.field("year", pa.large_list(pa.int64())),
       pa.field("duration", pa.large_list(pa.float32())),
       pa.field("raw_features", pa.large_list(pa.float32()))])


def tensor_adapter_config() -> tfxio.TensorAdapterConfig:
    """How TFT turns the RecordBatches of ``songs_to_record_batch`` into tensors."""
    return tfxio.TensorAdapterConfig(
        ARROW_SCHEMA, tensor_representation_util.InferTensorRepresentationsFromSchema(RAW_SCHEMA))


def _fixed_list(values: np.ndarray, width: int, value_type: pa.DataType) -> pa.LargeListArray:
    offsets = np.arange(0, len(values) + 1, width, dtype=np.int64)
    return pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values, type=value_type))


def songs_to_record_batch(songs: Sequence[hdf5_reader.Song]) -> pa.RecordBatch:
    """Packs songs into one RecordBatch in ``ARROW_SCHEMA`` (one list value per scalar)."""
    columns = []
    for name in STRING_COLUMNS:
        encoded = [getattr(song, name).encode("utf-8") for song in songs]
        columns.append(_fixed_list(np.array(encoded, dtype=object), 1, pa.large_binary()))
    columns.append(_fixed_list(np.array([song.year for song in songs], np.int64), 1, pa.int64()))
    columns.append(_fixed_list(np.array([song.duration for song in songs], np.float32), 1,
                               pa.float32()))
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
