import datetime
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import recommend
from transforms import write_recommendations as writers
from transforms.scoring import ScoredUser

DAY = datetime.date(2026, 11, 23)


@pytest.mark.parametrize("output, expected", [
    ("my-project:music.recommendations", ("my-project", "music", "recommendations")),
    ("bq://my-project.music.recs_v2", ("my-project", "music", "recs_v2")),
    ("example.com:my-project:music.recs", ("example.com:my-project", "music", "recs")),
])
def test_bigquery_tables_are_parsed(output, expected):
    assert writers.looks_like_bigquery(output)
    table = writers.parse_bigquery_table(output)
    assert (table.project, table.dataset, table.table) == expected
    assert table.spec() == f"{expected[0]}:{expected[1]}.{expected[2]}"
    assert table.staging(DAY, "itemcf").spec() == (
        f"{expected[0]}:{expected[1]}.{expected[2]}__staging_itemcf_20261123")


@pytest.mark.parametrize("output", [
    "My-Project:music.recs",           # upper case project
    "proj:music.recs",                 # project shorter than 6 characters
    "my-project:mu-sic.recs",          # hyphen in a dataset
    "my-project:music.recs; DROP x",   # not an identifier
    "bq://my-project.music",           # no table
])
def test_invalid_bigquery_names_are_refused_with_the_rules(output):
    with pytest.raises(ValueError, match="PROJECT:DATASET.TABLE"):
        writers.parse_bigquery_table(output)


def test_local_and_gcs_folders_are_not_bigquery():
    assert not writers.looks_like_bigquery("/tmp/recs")
    assert not writers.looks_like_bigquery("gs://bucket/recs")
    assert not writers.looks_like_bigquery("recs")


def test_bigquery_schema_matches_the_parquet_twin():
    bq_names = [field["name"] for field in writers.BIGQUERY_SCHEMA["fields"]]
    assert bq_names == ["user_id", "run_date", "model", "history_size", "popularity_filled",
                        "recommendations"]
    # Parquet keeps run_date and model in the partition folders (run_date=D/model=M).
    assert [n for n in bq_names if n not in ("run_date", "model")] == writers.PARQUET_SCHEMA.names
    nested = writers.BIGQUERY_SCHEMA["fields"][-1]
    assert nested["mode"] == "REPEATED" and [f["name"] for f in nested["fields"]] == [
        f.name for f in writers.RECOMMENDATION_TYPE]
    assert writers.BIGQUERY_TABLE_OPTIONS == {
        "timePartitioning": {"type": "DAY", "field": "run_date"},
        "clustering": {"fields": ["model", "user_id"]}}
    songs = {f["name"]: f["mode"] for f in nested["fields"]}
    assert songs["song_id"] == "REQUIRED" and songs["track_id"] == "NULLABLE"


def test_publishing_a_bigquery_run_replaces_only_its_run_date_and_model():
    """The staged rows move in with one transaction (DELETE + INSERT of this (run_date,
    model)) after a count check; the DML is valid BigQuery SQL and the run's values travel as
    parameters. (Offline: the script has not run against BigQuery.)"""
    import sqlglot

    table = writers.parse_bigquery_table("my-project:music.recs")
    staging = table.staging(DAY, "itemcf")
    script = writers.bigquery_publish_script(table, staging)
    stage, dest = "`my-project.music.recs__staging_itemcf_20261123`", "`my-project.music.recs`"
    statements = [line for line in script.split(";\n")]
    assert statements[0].startswith(f"IF (SELECT COUNT(*) FROM {stage}) != @expected_rows THEN")
    assert f"CREATE TABLE IF NOT EXISTS {dest} LIKE {stage}" in statements
    begin = statements.index("BEGIN TRANSACTION")
    assert statements[begin + 1] == f"DELETE FROM {dest} WHERE run_date = @run_date AND model = @model"
    assert statements[begin + 3:] == ["COMMIT TRANSACTION", f"DROP TABLE IF EXISTS {stage};"]
    for statement in statements[begin + 1:begin + 3]:
        sqlglot.parse_one(statement, read="bigquery")

    class Client:
        queries = []

        def query(self, sql, job_config=None):
            self.queries.append((sql, {(p.name, p.type_, str(p.value))
                                       for p in job_config.query_parameters}))
            return type("Job", (), {"result": lambda _self: None})()

    client = Client()
    recommend.publish_bigquery_run(table, staging, DAY, "itemcf", 7, client=client)
    assert client.queries == [(script, {("run_date", "DATE", "2026-11-23"),
                                        ("model", "STRING", "itemcf"),
                                        ("expected_rows", "INT64", "7")})]


IDS = writers.CatalogueIds(np.array(["TRA", "TRB", "TRC"], dtype=object),
                           np.array(["SOA", "SOB", "SOC"], dtype=object))
USERS = [ScoredUser("u1", "m", 4, np.array([2, 0], np.int32), np.array([0.75, 0.5])),
         ScoredUser("u2", "m", 0, np.array([1, 2], np.int32), np.array([3.0, 1.0]), filled=2)]


def test_a_scored_user_becomes_the_design_row_with_the_date_as_iso_text():
    assert writers.recommendation_row(USERS[0], IDS, DAY) == {
        "user_id": "u1", "run_date": "2026-11-23", "model": "m", "history_size": 4,
        "popularity_filled": 0, "recommendations": [
            {"rank": 1, "song_id": "SOC", "track_id": "TRC", "score": 0.75},
            {"rank": 2, "song_id": "SOA", "track_id": "TRA", "score": 0.5}]}


def test_scored_users_become_one_arrow_batch_of_the_parquet_schema():
    batch = writers.recommendations_batch(USERS, IDS)
    assert batch.schema == writers.PARQUET_SCHEMA
    assert batch.to_pylist() == [
        {"user_id": "u1", "history_size": 4, "popularity_filled": 0, "recommendations": [
            {"rank": 1, "song_id": "SOC", "track_id": "TRC", "score": 0.75},
            {"rank": 2, "song_id": "SOA", "track_id": "TRA", "score": 0.5}]},
        {"user_id": "u2", "history_size": 0, "popularity_filled": 2,
         "recommendations": [
             {"rank": 1, "song_id": "SOB", "track_id": "TRB", "score": 3.0},
             {"rank": 2, "song_id": "SOC", "track_id": "TRC", "score": 1.0}]}]


def write_staging(output, rows, day=DAY, report_line=None, model="m"):
    staging = writers.staging_dir(str(output), day, model)
    os.makedirs(f"{staging}/rows")
    pq.write_table(pa.Table.from_pylist(rows, schema=writers.PARQUET_SCHEMA),
                   f"{staging}/rows/part-00000-of-00001.parquet")
    if report_line:
        os.makedirs(f"{staging}/report/rejected")
        with open(f"{staging}/report/rejected/part-0.jsonl", "w") as handle:
            handle.write(report_line)
    return staging


def row(user_id):
    return {"user_id": user_id, "history_size": 1, "popularity_filled": 0,
            "recommendations": [{"rank": 1, "song_id": "S", "track_id": "T", "score": 0.5}]}


def test_a_rerun_replaces_the_partition_and_a_new_date_adds_one(tmp_path):
    output = tmp_path / "recs"
    reports = tmp_path / "reports"
    first = write_staging(output, [row("a"), row("b")], report_line="first")
    assert recommend.publish_parquet_partition(first, str(output), str(reports), DAY,
                                               "m", "run1").endswith("run_date=2026-11-23/model=m")
    second = write_staging(output, [row("c")], report_line="second")
    recommend.publish_parquet_partition(second, str(output), str(reports), DAY, "m", "run2")
    table = pq.read_table(output / "run_date=2026-11-23" / "model=m")
    assert table.column("user_id").to_pylist() == ["c"]
    assert (reports / "rejected" / "part-0.jsonl").read_text() == "second"
    next_day = DAY + datetime.timedelta(days=1)
    other_day = write_staging(output, [row("d")], day=next_day)
    recommend.publish_parquet_partition(other_day, str(output), str(tmp_path / "r2"), next_day,
                                        "m", "run3")
    assert sorted(p.name for p in output.iterdir()) == ["run_date=2026-11-23", "run_date=2026-11-24"]
