"""Writes ranked recommendations: a BigQuery day partition, or its local Parquet twin.

Schema (DESIGN.md): user_id STRING, run_date DATE, model STRING, history_size INT64,
popularity_filled INT64, recommendations ARRAY<STRUCT<rank INT64, song_id STRING,
track_id STRING (NULL when the model knows no track of the song), score FLOAT64>>.

One partition per (run_date, model): several models run each day, and a run of one model never
touches another's rows; a rerun of (run_date, model) replaces exactly those rows.

BigQuery: the table is day-partitioned on run_date and clustered on (model, user_id). A
partition decorator cannot hold two models apart (WRITE_TRUNCATE on ``TABLE$YYYYMMDD`` would
erase every model of the day), so the job loads its rows into a staging table of its own
(one FILE_LOADS load, WRITE_TRUNCATE) and the launcher publishes them afterwards in one
multi-statement transaction: DELETE the (run_date, model) rows, INSERT the staged rows, COMMIT
(``bigquery_publish_script``); a failed run publishes nothing. Beam's known problems with
the load, and how this design avoids them:
- copy jobs cannot target a partition decorator (apache/beam#21757): Beam only copies from temp
  tables when one load job is not enough (over 10,000 files or 4 TB per load); a run writes far
  fewer files (one per worker bundle) and ~30 GB for 1M users × 500, so it loads directly;
- temp tables lose the destination's partitioning (apache/beam#38017): no temp tables, as above;
- writing a partition of a clustered table needs the clustering spec (apache/beam#34571): the
  load always carries ``timePartitioning`` and ``clustering``, which also creates the table
  right on the first run (CREATE_IF_NEEDED).

Parquet: files under ``<output>/run_date=YYYY-MM-DD/model=NAME/`` (Hive layout: run_date and
model live in the folder names, not in the files, so readers that merge hive partitions with
file columns, pyarrow among them, see each once). The job writes into a staging folder; the launcher
(``pipelines.recommend.publish_parquet_partition``) swaps it in after the job succeeded, so a
rerun replaces the partition and a failed run never leaves a
half-written one where readers look.
"""
import dataclasses
import datetime
import re
import uuid
from typing import Iterator, Optional, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.utils import shared

from recommend.models import ModelSource
from transforms.scoring import ScoredUser

RECOMMENDATION_TYPE = pa.struct([("rank", pa.int64()), ("song_id", pa.string()),
                                 ("track_id", pa.string()), ("score", pa.float64())])
PARQUET_SCHEMA = pa.schema([
    pa.field("user_id", pa.string(), nullable=False),
    pa.field("history_size", pa.int64(), nullable=False),
    pa.field("popularity_filled", pa.int64(), nullable=False),
    pa.field("recommendations", pa.list_(RECOMMENDATION_TYPE), nullable=False),
])
BIGQUERY_SCHEMA = {"fields": [
    {"name": "user_id", "type": "STRING", "mode": "REQUIRED"},
    {"name": "run_date", "type": "DATE", "mode": "REQUIRED"},
    {"name": "model", "type": "STRING", "mode": "REQUIRED"},
    {"name": "history_size", "type": "INT64", "mode": "REQUIRED"},
    {"name": "popularity_filled", "type": "INT64", "mode": "REQUIRED"},
    {"name": "recommendations", "type": "RECORD", "mode": "REPEATED", "fields": [
        {"name": "rank", "type": "INT64", "mode": "REQUIRED"},
        {"name": "song_id", "type": "STRING", "mode": "REQUIRED"},
        {"name": "track_id", "type": "STRING", "mode": "NULLABLE"},
        {"name": "score", "type": "FLOAT64", "mode": "REQUIRED"},
    ]},
]}
BIGQUERY_TABLE_OPTIONS = {"timePartitioning": {"type": "DAY", "field": "run_date"},
                          "clustering": {"fields": ["model", "user_id"]}}

_PROJECT = r"(?:[a-z][a-z0-9.-]{0,61}[a-z0-9]:)?[a-z][a-z0-9-]{4,28}[a-z0-9]"
_DATASET = r"[A-Za-z0-9_]{1,1024}"
_TABLE = r"[\w-]{1,1024}"
_BQ_COLON = re.compile(rf"^(?P<project>{_PROJECT}):(?P<dataset>{_DATASET})\.(?P<table>{_TABLE})$")
_BQ_URI = re.compile(rf"^bq://(?P<project>{_PROJECT})\.(?P<dataset>{_DATASET})\.(?P<table>{_TABLE})$")


@dataclasses.dataclass(frozen=True)
class BigQueryTable:
    project: str
    dataset: str
    table: str

    def spec(self) -> str:
        return f"{self.project}:{self.dataset}.{self.table}"

    def sql_name(self) -> str:
        return f"`{self.project}.{self.dataset}.{self.table}`"

    def staging(self, run_date: datetime.date, model: str) -> "BigQueryTable":
        """The staging table of the (run_date, model) run, beside the destination. Its name is
        a function of the run, so the daily workflow can publish a templated run it launched;
        a rerun of the same (run_date, model) reuses (truncates) it."""
        return self.staging_for_day(f"{run_date:%Y%m%d}", model)

    def staging_for_day(self, day: str, model: str) -> "BigQueryTable":
        """``staging`` with the day as text (YYYYMMDD, or a placeholder the workflow fills)."""
        return BigQueryTable(self.project, self.dataset, f"{self.table}__staging_{model}_{day}")


def looks_like_bigquery(output: str) -> bool:
    return output.startswith("bq://") or (":" in output and "://" not in output
                                          and "/" not in output)


def parse_bigquery_table(output: str) -> BigQueryTable:
    """``PROJECT:DATASET.TABLE`` or ``bq://PROJECT.DATASET.TABLE``, checked against BigQuery's
    naming rules before any job is built."""
    match = _BQ_URI.match(output) or _BQ_COLON.match(output)
    if not match:
        raise ValueError(
            f"--output {output!r} is not a BigQuery table: use PROJECT:DATASET.TABLE or "
            "bq://PROJECT.DATASET.TABLE (project: 6–30 lowercase letters, digits, hyphens; "
            "dataset: letters, digits, underscores; table: letters, digits, _ or -)")
    return BigQueryTable(match["project"], match["dataset"], match["table"])


class CatalogueIds:
    """The catalogue's song and track ids by row (the order the model uses), loaded once per
    worker process and shared by the writers' threads."""

    _shared = shared.Shared()

    def __init__(self, track_ids: np.ndarray, song_ids: np.ndarray):
        self.track_ids = track_ids  # str objects, for row-at-a-time output
        self.song_ids = song_ids
        self.track_id_array = pa.array(track_ids, pa.string())  # for Arrow batches (take)
        self.song_id_array = pa.array(song_ids, pa.string())

    @classmethod
    def load(cls, source: ModelSource) -> "CatalogueIds":
        def read() -> CatalogueIds:
            catalogue, _ = source.catalogue()
            return cls(catalogue.track_ids, catalogue.song_ids)
        return cls._shared.acquire(read, tag=repr(source))


def recommendation_row(user: ScoredUser, ids: CatalogueIds, run_date: datetime.date) -> dict:
    """One output row (DESIGN.md schema), rank 1 the best; ``run_date`` as ISO text (what
    BigQuery's JSON load format wants)."""
    return {
        "user_id": user.user_id,
        "run_date": run_date.isoformat(),
        "model": user.model,
        "history_size": user.history_size,
        "popularity_filled": user.filled,
        "recommendations": [
            {"rank": rank, "song_id": ids.song_ids[row], "track_id": ids.track_ids[row],
             "score": score}
            for rank, (row, score) in enumerate(zip(user.rows.tolist(), user.scores.tolist()), 1)],
    }


def recommendations_batch(users: Sequence[ScoredUser], ids: CatalogueIds) -> pa.RecordBatch:
    """Users as one Arrow record batch of ``PARQUET_SCHEMA`` (columnar, no per-song objects)."""
    lengths = np.array([len(user.rows) for user in users], np.int32)
    offsets = np.zeros(len(users) + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    rows = np.concatenate([user.rows for user in users]) if users else np.zeros(0, np.int32)
    ranks = np.arange(offsets[-1], dtype=np.int64) - np.repeat(offsets[:-1], lengths) + 1
    songs = pa.StructArray.from_arrays(
        [pa.array(ranks, pa.int64()), ids.song_id_array.take(pa.array(rows, pa.int32())),
         ids.track_id_array.take(pa.array(rows, pa.int32())),
         pa.array(np.concatenate([user.scores for user in users]) if users else [], pa.float64())],
        fields=list(RECOMMENDATION_TYPE))
    return pa.RecordBatch.from_arrays([
        pa.array([user.user_id for user in users], pa.string()),
        pa.array([user.history_size for user in users], pa.int64()),
        pa.array([user.filled for user in users], pa.int64()),
        pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), songs,
                                 type=pa.list_(RECOMMENDATION_TYPE)),
    ], schema=PARQUET_SCHEMA)


class ToBigQueryRowsFn(beam.DoFn):
    """ScoredUser → a BigQuery row dict (built one at a time, right before the load files)."""

    def __init__(self, source: ModelSource, run_date: datetime.date):
        self._source = source
        self._run_date = run_date

    def setup(self):
        self._ids = CatalogueIds.load(self._source)

    def process(self, user: ScoredUser) -> Iterator[dict]:
        yield recommendation_row(user, self._ids, self._run_date)


class ToParquetTablesFn(beam.DoFn):
    """Batches of ScoredUsers → Arrow tables for ``WriteToParquetBatched``."""

    def __init__(self, source: ModelSource):
        self._source = source

    def setup(self):
        self._ids = CatalogueIds.load(self._source)

    def process(self, users: list[ScoredUser]) -> Iterator[pa.Table]:
        yield pa.Table.from_batches([recommendations_batch(users, self._ids)])


class SongIdsOfUserFn(beam.DoFn):
    """ScoredUser → (user_id, recommended song ids best first), for the Kaggle submission."""

    def __init__(self, source: ModelSource):
        self._source = source

    def setup(self):
        self._ids = CatalogueIds.load(self._source)

    def process(self, user: ScoredUser) -> Iterator[tuple[str, list[str]]]:
        yield user.user_id, self._ids.song_ids[user.rows].tolist()


class WriteRecommendationsToBigQuery(beam.PTransform):
    """Loads these users' rows into the run's own staging table (batch FILE_LOADS,
    WRITE_TRUNCATE); ``bigquery_publish_statements`` moves them into the destination after the
    job succeeded."""

    def __init__(self, staging_table: BigQueryTable, run_date: datetime.date,
                 source: ModelSource, gcs_temp_location: Optional[str] = None):
        super().__init__()
        self._staging_table = staging_table
        self._run_date = run_date
        self._source = source
        self._gcs_temp_location = gcs_temp_location

    def expand(self, users):
        return (users
                | "ToBigQueryRow" >> beam.ParDo(ToBigQueryRowsFn(self._source, self._run_date))
                | "WriteToBigQuery" >> beam.io.WriteToBigQuery(
                    self._staging_table.spec(),
                    schema=BIGQUERY_SCHEMA,
                    method=beam.io.WriteToBigQuery.Method.FILE_LOADS,
                    create_disposition=beam.io.BigQueryDisposition.CREATE_IF_NEEDED,
                    write_disposition=beam.io.BigQueryDisposition.WRITE_TRUNCATE,
                    additional_bq_parameters=BIGQUERY_TABLE_OPTIONS,
                    custom_gcs_temp_location=self._gcs_temp_location))


def bigquery_publish_script(destination: BigQueryTable, staging: BigQueryTable) -> str:
    """The BigQuery script that publishes a staged run (parameters ``@run_date`` DATE,
    ``@model`` STRING, ``@expected_rows`` INT64: the users the job wrote, from its counters).

    It refuses (RAISE, nothing changed) when the staging table does not hold exactly the
    expected rows; creates the destination like the staging table on the first run (DDL cannot
    run inside a transaction); replaces exactly the (run_date, model) rows in one transaction,
    so a reader sees the old rows or the new ones, never both or neither; and drops the
    staging table. The launcher runs it after a local or Dataflow run, the daily workflow after
    a templated one (``orchestration.deploy`` renders it with ``{{run_day}}`` for the day)."""
    columns = ", ".join(field["name"] for field in BIGQUERY_SCHEMA["fields"])
    dest, stage = destination.sql_name(), staging.sql_name()
    return (
        f"IF (SELECT COUNT(*) FROM {stage}) != @expected_rows THEN\n"
        f"  RAISE USING MESSAGE = FORMAT('%t holds %d rows but the job wrote %d: nothing was "
        f"published', '{stage.strip('`')}', (SELECT COUNT(*) FROM {stage}), @expected_rows);\n"
        "END IF;\n"
        f"CREATE TABLE IF NOT EXISTS {dest} LIKE {stage};\n"
        "BEGIN TRANSACTION;\n"
        f"DELETE FROM {dest} WHERE run_date = @run_date AND model = @model;\n"
        f"INSERT INTO {dest} ({columns})\n"
        f"  SELECT {columns} FROM {stage}\n"
        "  WHERE run_date = @run_date AND model = @model;\n"
        "COMMIT TRANSACTION;\n"
        f"DROP TABLE IF EXISTS {stage};")


def partition_dir(output: str, run_date: datetime.date, model: str) -> str:
    return FileSystems.join(output.rstrip("/"), f"run_date={run_date.isoformat()}",
                            f"model={model}")


STAGING = "_staging"


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def staging_dir(output: str, run_date: datetime.date, model: str,
                run_id: Optional[str] = None) -> str:
    """A fresh folder, outside the Hive layout, that readers never look into."""
    return FileSystems.join(output.rstrip("/"), STAGING,
                            f"run_date={run_date.isoformat()}-{model}-{run_id or new_run_id()}")


class WriteRecommendationsToParquet(beam.PTransform):
    """Writes the users' rows as Parquet into ``staging`` (the launcher publishes it
    afterwards), ``batch_users`` users per Arrow record batch."""

    def __init__(self, staging: str, source: ModelSource, num_shards: int = 0,
                 batch_users: int = 512):
        super().__init__()
        self._staging = staging
        self._source = source
        self._num_shards = num_shards
        self._batch_users = batch_users

    def expand(self, users):
        return (users
                | "BatchUsers" >> beam.BatchElements(min_batch_size=self._batch_users,
                                                     max_batch_size=self._batch_users)
                | "ToArrow" >> beam.ParDo(ToParquetTablesFn(self._source))
                | "WriteParquet" >> beam.io.WriteToParquetBatched(
                    FileSystems.join(self._staging, "part"), PARQUET_SCHEMA,
                    file_name_suffix=".parquet", num_shards=self._num_shards))
