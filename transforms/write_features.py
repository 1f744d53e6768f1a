"""Beam transforms that write the transformed songs: TFRecord, CSV, the songs table, rejects."""
import io
import json
from typing import Iterator

import apache_beam as beam
import numpy as np
import pyarrow as pa
from tensorflow_metadata.proto.v0 import schema_pb2
from tfx_bsl.coders import example_coder

from msd.timbre import NUM_FEATURES
from transforms.read_msd import METRICS_NAMESPACE

# The CSV holds the ids and the normalised vector only, as its readers expect: the catalogue
# (recommend/catalogue.py) takes every column after song_id as a vector dimension. The song
# fields are in the TFRecord examples and the songs table.
CSV_HEADER = ",".join(["track_id", "song_id"] + [f"f{i:02d}" for i in range(NUM_FEATURES)])
# New columns go at the end: readers select columns by name, and an older folder lacks them.
SONGS_TABLE_SCHEMA = pa.schema([
    ("track_id", pa.string()), ("song_id", pa.string()), ("artist_name", pa.string()),
    ("title", pa.string()), ("release", pa.string()), ("year", pa.int64()),
    ("duration", pa.float64()), ("loudness", pa.float64()), ("tempo", pa.float64()),
    ("key", pa.int64()), ("mode", pa.int64()), ("time_signature", pa.int64()),
])


def _scalar_column(batch: pa.RecordBatch, name: str) -> pa.Array:
    """A column TFT produced as one-value lists, flattened to one value per row."""
    return batch.column(name).flatten()


def _matrix_column(batch: pa.RecordBatch, name: str) -> np.ndarray:
    return batch.column(name).flatten().to_numpy(zero_copy_only=False).reshape(
        batch.num_rows, NUM_FEATURES)


def csv_lines(batch: pa.RecordBatch) -> list[str]:
    """``track_id,song_id,f00..f89`` lines; '%.9g' keeps every float32 bit (round-trips)."""
    features = _matrix_column(batch, "features")
    ids = zip(_scalar_column(batch, "track_id").to_pylist(),
              _scalar_column(batch, "song_id").to_pylist())
    buffer = io.StringIO()
    np.savetxt(buffer, features, fmt="%.9g", delimiter=",")
    return [f"{track_id.decode()},{song_id.decode()},{values}"
            for (track_id, song_id), values in zip(ids, buffer.getvalue().splitlines())]


def songs_table(batch: pa.RecordBatch) -> pa.Table:
    """The metadata of the written songs, for joins (one row per song)."""
    columns = {}
    for field in SONGS_TABLE_SCHEMA:
        values = _scalar_column(batch, field.name)
        columns[field.name] = values.cast(field.type)
    return pa.Table.from_pydict(columns, schema=SONGS_TABLE_SCHEMA)


class EncodeExamplesFn(beam.DoFn):
    """RecordBatch → serialized ``tf.train.Example`` per row (tfx_bsl's C++ encoder)."""

    def __init__(self, schema: schema_pb2.Schema):
        self._serialized_schema = schema.SerializeToString()
        self._encoder = None

    def setup(self):
        schema = schema_pb2.Schema.FromString(self._serialized_schema)
        self._encoder = example_coder.RecordBatchToExamplesEncoder(schema)

    def process(self, batch: pa.RecordBatch) -> Iterator[bytes]:
        yield from self._encoder.encode(batch)


class CountSongsWrittenFn(beam.DoFn):
    """Passes batches through, counting the songs that reach the writers."""

    def __init__(self):
        self._songs_written = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "songs_written")

    def process(self, batch: pa.RecordBatch) -> Iterator[pa.RecordBatch]:
        self._songs_written.inc(batch.num_rows)
        yield batch


class WriteFeatures(beam.PTransform):
    """Transformed RecordBatches → sharded GZIP TFRecord, CSV and the Parquet songs table."""

    def __init__(self, output_dir: str, schema: schema_pb2.Schema, num_shards: int = 0):
        super().__init__()
        self._output_dir = output_dir.rstrip("/")
        self._schema = schema
        self._num_shards = num_shards

    def expand(self, batches):
        batches = batches | "CountWritten" >> beam.ParDo(CountSongsWrittenFn())
        out = self._output_dir
        tfrecords = (
            batches
            | "EncodeExamples" >> beam.ParDo(EncodeExamplesFn(self._schema))
            | "WriteTFRecord" >> beam.io.WriteToTFRecord(
                f"{out}/features/part", file_name_suffix=".tfrecord.gz",
                num_shards=self._num_shards, compression_type=beam.io.filesystem.CompressionTypes.GZIP))
        csv = (
            batches
            | "CsvLines" >> beam.FlatMap(csv_lines)
            | "WriteCsv" >> beam.io.WriteToText(
                f"{out}/csv/part", file_name_suffix=".csv", header=CSV_HEADER,
                num_shards=self._num_shards))
        songs = (
            batches
            | "SongsTable" >> beam.Map(songs_table)
            | "WriteSongs" >> beam.io.WriteToParquetBatched(
                f"{out}/songs/part", schema=SONGS_TABLE_SCHEMA, file_name_suffix=".parquet",
                num_shards=self._num_shards))
        return {"tfrecord": tfrecords, "csv": csv, "songs": songs}


def rejection_json(rejection) -> str:
    """One dead-letter line: path, track_id (if known), reason, detail, level."""
    return json.dumps(rejection.to_json_dict(), ensure_ascii=False, sort_keys=True)


class WriteRejections(beam.PTransform):
    """The dead-letter output: JSON lines, one per file or song not used."""

    def __init__(self, output_dir: str):
        super().__init__()
        self._prefix = f"{output_dir.rstrip('/')}/rejected/part"

    def expand(self, rejections):
        return (rejections
                | "ToJson" >> beam.Map(rejection_json)
                | "WriteRejected" >> beam.io.WriteToText(self._prefix, file_name_suffix=".jsonl"))
