"""The named queries: each one run locally (sqlglot → DuckDB over Parquet) against an answer
computed in Python from the same rows; the BigQuery path built as far as it goes offline."""
import collections
import datetime
import hashlib
import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlglot

from recommend import query as query_lib
from transforms.write_recommendations import PARQUET_SCHEMA

RUN_A, RUN_B, RUN_C = "2024-05-01", "2024-05-02", "2024-05-03"
K = 6
NUM_TRACKS = 30
MODEL = "timbre_cosine"


def user_id(i: int) -> str:
    return hashlib.sha1(f"user{i}".encode()).hexdigest()


def track_id(i: int) -> str:
    return f"TR{i:016d}"


def song_id(i: int) -> str:
    return f"SO{i:016d}"


def entry(rank: int, track: int, score: float) -> dict:
    return {"rank": rank, "song_id": song_id(track), "track_id": track_id(track), "score": score}


def ranked_rows(tracks, start_score=1.0):
    return [entry(rank, track, start_score - 0.1 * rank) for rank, track in enumerate(tracks, 1)]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A demo-shaped output: three runs of Parquet in run_date= folders (the first in two part
    files), an unfinished run in _staging/ that readers must not see, the songs table and a
    listens file. Run A is clean, run B changes some users' lists, run C has one defect per
    data-quality check."""
    root = tmp_path_factory.mktemp("demo")
    rng = random.Random(4)
    listened = {u: rng.sample(range(NUM_TRACKS), 3) for u in range(12)}

    def fresh(u, avoid=()):
        pool = [t for t in range(NUM_TRACKS) if t not in listened[u] and t not in avoid]
        return rng.sample(pool, K)

    run_a = {}
    for u in range(10):
        model = MODEL if u != 9 else f"{MODEL}:popularity_fallback"
        run_a[u] = {"user_id": user_id(u), "model": model, "history_size": 3,
                    "recommendations": ranked_rows(fresh(u))}
    run_b = {}
    for u in range(8):
        tracks = [r["track_id"] for r in run_a[u]["recommendations"]]
        numbers = [int(t[2:]) for t in tracks]
        if u == 0:
            new = numbers                                         # unchanged
        elif u == 1:
            new = [numbers[1], numbers[0]] + numbers[2:]          # same songs, two swapped
        elif u == 2:
            new = fresh(u, avoid=numbers) if NUM_TRACKS - 3 - K >= K else numbers[::-1]
        else:
            new = numbers[:3] + fresh(u, avoid=numbers)[:3]       # half replaced
        run_b[u] = {"user_id": user_id(u), "model": MODEL, "history_size": 4,
                    "recommendations": ranked_rows(new, 2.0)}
    run_b[10] = {"user_id": user_id(10), "model": MODEL, "history_size": 3,
                 "recommendations": ranked_rows(fresh(10))}
    # Run C: one defect per check.
    run_c = [
        {"user_id": user_id(0), "model": MODEL, "history_size": 3,
         "recommendations": ranked_rows(fresh(0))},                            # fine
        {"user_id": user_id(3), "model": MODEL, "history_size": 3,
         "recommendations": ranked_rows(fresh(3)[:5])},                        # 5, not k
        {"user_id": user_id(4), "model": MODEL, "history_size": 3,
         "recommendations": ranked_rows((lambda t: t[:5] + t[:1])(fresh(4)))},  # repeated song
        {"user_id": user_id(5), "model": MODEL, "history_size": 3,
         "recommendations": [dict(e, rank=7) if e["rank"] == 6 else e
                             for e in ranked_rows(fresh(5))]},                 # ranks 1..5, 7
        {"user_id": user_id(6), "model": MODEL, "history_size": 3,
         "recommendations": ranked_rows(fresh(6)[:5] + [listened[6][0]])},    # a listened song
        {"user_id": user_id(7), "model": MODEL, "history_size": 3,
         "recommendations": ranked_rows(fresh(7))},
        {"user_id": user_id(7), "model": MODEL, "history_size": 3,
         "recommendations": ranked_rows(fresh(7))},                            # a second row
        {"user_id": user_id(8), "model": MODEL, "history_size": 3,
         "recommendations": ranked_rows(fresh(8)[:5] + [NUM_TRACKS + 5])},     # unknown track
    ]
    runs = {RUN_A: list(run_a.values()), RUN_B: list(run_b.values()), RUN_C: run_c}
    recommendations = root / "recommendations"
    for run_date, rows in runs.items():
        folder = recommendations / f"run_date={run_date}"
        folder.mkdir(parents=True)
        chunks = [rows[:4], rows[4:]] if run_date == RUN_A else [rows]
        for index, chunk in enumerate(chunks):
            pq.write_table(pa.Table.from_pylist(chunk, schema=PARQUET_SCHEMA),
                           folder / f"part-{index:05d}-of-{len(chunks):05d}.parquet")
    staging = recommendations / "_staging" / "run_date=2024-05-09-abc"
    staging.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(run_c, schema=PARQUET_SCHEMA), staging / "part-0.parquet")

    songs = [{"track_id": track_id(t), "song_id": song_id(t), "artist_name": f"Artist {t % 7}",
              "title": f"Title {t}", "release": f"Release {t % 3}",
              "year": 0 if t % 4 == 0 else 1960 + t, "duration": 180.0 + t}
             for t in range(NUM_TRACKS)]
    songs_dir = root / "features" / "songs"
    songs_dir.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(songs), songs_dir / "part-00000-of-00001.parquet")
    listens_path = root / "listens.txt"
    with open(listens_path, "w") as handle:
        for u, tracks in listened.items():
            for t in tracks:
                handle.write(f"{user_id(u)}\t{song_id(t)}\t{rng.randint(1, 9)}\n")
    return {"root": root, "recommendations": str(recommendations), "songs": str(songs_dir),
            "listens": str(listens_path), "runs": runs,
            "songs_by_track": {s["track_id"]: s for s in songs},
            "listened": {user_id(u): {song_id(t) for t in tracks}
                         for u, tracks in listened.items()}}


def run_cli(capsys, *args):
    code = query_lib.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_json(capsys, demo, name, **params):
    args = [name, "--recommendations", demo["recommendations"], "--songs", demo["songs"],
            "--format", "json"]
    if params.pop("_listens", False):
        args += ["--listens", demo["listens"]]
    for key, value in params.items():
        args += ["--param", f"{key}={value}"]
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    return json.loads(out)


def assert_rows_equal(actual, expected):
    assert len(actual) == len(expected), (actual, expected)
    for got, want in zip(actual, expected):
        assert set(got) == set(want), (got, want)
        for key, value in want.items():
            if isinstance(value, float):
                assert got[key] == pytest.approx(value), (key, got, want)
            else:
                assert got[key] == value, (key, got, want)


# --- the expected answers, computed in Python -----------------------------------------------

def expected_runs(demo, **_):
    out = []
    for run_date in sorted(demo["runs"]):
        rows = demo["runs"][run_date]
        out.append({"run_date": run_date, "row_count": len(rows),
                    "users": len({r["user_id"] for r in rows}),
                    "models": ",".join(sorted({r["model"] for r in rows})),
                    "mean_history_size": sum(r["history_size"] for r in rows) / len(rows)})
    return out


def expected_user_recommendations(demo, run_date, user_id, top_n=10):
    out = []
    for row in demo["runs"][run_date]:
        if row["user_id"] != user_id:
            continue
        for rec in sorted(row["recommendations"], key=lambda r: (r["rank"], r["track_id"])):
            if rec["rank"] > top_n:
                continue
            song = demo["songs_by_track"].get(rec["track_id"], {})
            out.append({"user_id": user_id, "model": row["model"],
                        "history_size": row["history_size"], "rank": rec["rank"],
                        "song_id": rec["song_id"], "track_id": rec["track_id"],
                        "artist_name": song.get("artist_name"), "title": song.get("title"),
                        "year": song.get("year") or None, "score": rec["score"]})
    return out


def expected_top_songs(demo, run_date, top_n=10, limit=20):
    rows = demo["runs"][run_date]
    users = len({r["user_id"] for r in rows})
    ranks = collections.defaultdict(list)
    for row in rows:
        for rec in row["recommendations"]:
            if rec["rank"] <= top_n:
                ranks[rec["track_id"]].append(rec["rank"])
    ordered = sorted(ranks, key=lambda t: (-len(ranks[t]), t))[:limit]
    out = []
    for track in ordered:
        song = demo["songs_by_track"].get(track, {})
        out.append({"track_id": track, "song_id": "SO" + track[2:],
                    "artist_name": song.get("artist_name"), "title": song.get("title"),
                    "year": song.get("year") or None, "times_recommended": len(ranks[track]),
                    "share_of_users": len(ranks[track]) / users,
                    "mean_rank": sum(ranks[track]) / len(ranks[track])})
    return out


def expected_coverage(demo, run_date, top_n=500):
    from recommend.metrics import gini

    rows = demo["runs"][run_date]
    counts = collections.Counter(rec["track_id"] for row in rows
                                 for rec in row["recommendations"] if rec["rank"] <= top_n)
    catalogue = set(demo["songs_by_track"])
    per_track = [counts.get(track, 0) for track in catalogue]
    return [{"users": len({r["user_id"] for r in rows}),
             "catalogue_tracks": len(catalogue),
             "recommended_tracks": sum(1 for c in per_track if c > 0),
             "coverage": sum(1 for c in per_track if c > 0) / len(catalogue),
             "gini": gini(per_track),
             "recommendations_in_catalogue": sum(per_track),
             "recommended_outside_catalogue": len(set(counts) - catalogue)}]


def expected_run_over_run(demo, run_date, previous_run_date, top_n=10, limit=100):
    def tops(run):
        return {row["user_id"]: {r["track_id"]: r["rank"] for r in row["recommendations"]
                                 if r["rank"] <= top_n} for row in demo["runs"][run]}
    new, old = tops(run_date), tops(previous_run_date)
    both = sorted(new.keys() & old.keys())
    changed = []
    for user in both:
        kept = new[user].keys() & old[user].keys()
        entered = len(new[user].keys() - old[user].keys())
        left = len(old[user].keys() - new[user].keys())
        moved = sum(1 for t in kept if new[user][t] != old[user][t])
        if entered or left or moved:
            changed.append({
                "user_id": user, "songs_entered": entered, "songs_left": left,
                "songs_kept": len(kept), "songs_moved": moved,
                "jaccard": len(kept) / (len(kept) + entered + left),
                "mean_rank_shift": (sum(abs(new[user][t] - old[user][t]) for t in kept)
                                    / len(kept)) if kept else None,
                "users_compared": len(both)})
    changed.sort(key=lambda r: (-r["songs_entered"], -r["songs_moved"], r["user_id"]))
    for row in changed:
        row["users_changed"] = len(changed)
    return changed[:limit]


def expected_data_quality(demo, run_date, k=500, with_listens=False):
    rows = demo["runs"].get(run_date, [])
    users = len({r["user_id"] for r in rows})

    def check(name, failing):
        failing = sorted(failing)
        return {"check_name": name, "failing_users": len(failing),
                "example_user_id": failing[0] if failing else None,
                "passed": not failing, "users": users}

    per_user_rows = collections.Counter(r["user_id"] for r in rows)

    def fails(predicate):
        return [r["user_id"] for r in rows if predicate(r["recommendations"])]

    out = [{"check_name": "run_not_empty", "failing_users": 0 if rows else 1,
            "example_user_id": None, "passed": bool(rows), "users": users},
           check("one_row_per_user", [u for u, n in per_user_rows.items() if n > 1]),
           check("exactly_k", fails(lambda recs: len(recs) != k)),
           check("distinct_songs", fails(lambda recs: len({r["song_id"] for r in recs})
                                         != len(recs))),
           check("distinct_tracks", fails(lambda recs: len({r["track_id"] for r in recs})
                                          != len(recs))),
           check("ranks_1_to_n", fails(lambda recs: bool(recs) and sorted(r["rank"] for r in recs)
                                       != list(range(1, len(recs) + 1))))]
    if with_listens:
        out.append(check("no_listened_song", {
            r["user_id"] for r in rows for rec in r["recommendations"]
            if rec["song_id"] in demo["listened"].get(r["user_id"], set())}))
    else:
        out.append({"check_name": "no_listened_song", "failing_users": None,
                    "example_user_id": None, "passed": None, "users": users})
    return out


CASES = {
    "runs": [{}],
    "user_recommendations": [{"run_date": RUN_A, "user_id": user_id(2)},
                             {"run_date": RUN_C, "user_id": user_id(8), "top_n": 6},
                             {"run_date": RUN_B, "user_id": user_id(9)}],      # not in run B
    "top_songs": [{"run_date": RUN_A}, {"run_date": RUN_B, "top_n": 3, "limit": 5}],
    "coverage": [{"run_date": RUN_A}, {"run_date": RUN_C, "top_n": 2}],
    "run_over_run": [{"run_date": RUN_B, "previous_run_date": RUN_A},
                     {"run_date": RUN_B, "previous_run_date": RUN_A, "top_n": 2, "limit": 2}],
    "data_quality": [{"run_date": RUN_A, "k": K}, {"run_date": RUN_A, "k": K, "_listens": True},
                     {"run_date": RUN_C, "k": K, "_listens": True},
                     {"run_date": "2030-01-01", "k": K}],
}
EXPECTED = {"runs": expected_runs, "user_recommendations": expected_user_recommendations,
            "top_songs": expected_top_songs, "coverage": expected_coverage,
            "run_over_run": expected_run_over_run, "data_quality": expected_data_quality}


def test_every_named_query_has_a_python_check():
    assert set(EXPECTED) == set(CASES) == set(query_lib.available_queries())


@pytest.mark.parametrize("name,params", [(name, params) for name, cases in CASES.items()
                                         for params in cases])
def test_query_runs_locally_and_matches_python(capsys, demo, name, params):
    params = dict(params)
    with_listens = params.get("_listens", False)
    actual = run_json(capsys, demo, name, **params)
    params.pop("_listens", None)
    if name == "data_quality":
        expected = expected_data_quality(demo, with_listens=with_listens, **params)
    else:
        expected = EXPECTED[name](demo, **params)
    assert_rows_equal(actual, expected)


def test_the_fixture_exercises_the_interesting_cases(capsys, demo):
    """Guards the test data: the checks above compare non-trivial answers."""
    quality_c = {row["check_name"]: row for row in run_json(
        capsys, demo, "data_quality", run_date=RUN_C, k=K, _listens=True)}
    assert [name for name, row in quality_c.items() if row["passed"] is False] == [
        "one_row_per_user", "exactly_k", "distinct_songs", "distinct_tracks", "ranks_1_to_n",
        "no_listened_song"]
    changes = run_json(capsys, demo, "run_over_run", run_date=RUN_B, previous_run_date=RUN_A)
    assert {row["user_id"] for row in changes} == {user_id(u) for u in range(1, 8)}
    assert run_json(capsys, demo, "coverage", run_date=RUN_C)[0][
        "recommended_outside_catalogue"] == 1
    dates = [row["run_date"] for row in run_json(capsys, demo, "runs")]
    assert dates == [RUN_A, RUN_B, RUN_C]  # not the unfinished run in _staging/


# --- the command line --------------------------------------------------------------------------

def test_table_and_csv_formats(capsys, demo):
    code, out, _ = run_cli(capsys, "top_songs", "--param", f"run_date={RUN_A}", "--param",
                           "limit=3", "--recommendations", demo["recommendations"], "--songs",
                           demo["songs"])
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["track_id", "song_id", "artist_name"]
    assert lines[-1] == "(3 rows)"
    code, out, _ = run_cli(capsys, "top_songs", "--param", f"run_date={RUN_A}", "--param",
                           "limit=3", "--recommendations", demo["recommendations"], "--songs",
                           demo["songs"], "--format", "csv")
    assert code == 0
    assert len(out.strip().splitlines()) == 4
    assert out.startswith("track_id,song_id,artist_name,title,year,times_recommended")


def test_list_describes_every_query(capsys):
    code, out, _ = run_cli(capsys, "--list")
    assert code == 0
    for name in query_lib.available_queries():
        assert f"\n{name}\n" in f"\n{out}\n"
    assert "--param run_date=<DATE>" in out


@pytest.mark.parametrize("args,message", [
    (["no_such_query"], "unknown query 'no_such_query'; known queries: coverage"),
    (["../etc/passwd"], "unknown query"),
    (["coverage"], "needs --param run_date="),
    (["coverage", "--param", "run_date=yesterday"], "is not a date YYYY-MM-DD"),
    (["coverage", "--param", "run_date=2024-05-01", "--param", "top_n=ten"],
     "is not a whole number"),
    (["coverage", "--param", "run_date=2024-05-01", "--param", "colour=red"],
     "has no parameter 'colour'"),
    (["coverage", "--param", "run_date"], "expected key=value"),
    (["coverage", "--param", "run_date=2024-05-01"], "pass --recommendations DIR"),
    (["coverage", "--param", "run_date=2024-05-01", "--recommendations", "/nonexistent/recs"],
     "no such folder"),
    (["coverage", "--param", "run_date=2024-05-01", "--project", "my-project"],
     "both --project and --dataset"),
])
def test_errors_are_one_line_and_exit_non_zero(capsys, args, message):
    code, out, err = run_cli(capsys, *args)
    assert code == 1
    assert out == ""
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_missing_songs_table_and_listens_file(capsys, demo):
    code, _, err = run_cli(capsys, "coverage", "--param", f"run_date={RUN_A}",
                           "--recommendations", demo["recommendations"], "--songs",
                           str(demo["root"] / "nowhere"))
    assert code == 1 and "no such file or folder" in err
    code, _, err = run_cli(capsys, "data_quality", "--param", f"run_date={RUN_A}",
                           "--recommendations", demo["recommendations"], "--listens",
                           str(demo["root"] / "missing.txt"))
    assert code == 1 and "missing.txt: no such file" in err


# --- query files -------------------------------------------------------------------------------

def test_query_files_parse_and_declare_what_they_use():
    for name in query_lib.available_queries():
        query = query_lib.load_query(name)   # checks placeholders and parameters
        assert query.description
        assert "WITH OFFSET" not in query.sql.upper(), (
            "sqlglot 30.30 turns BigQuery's 0-based WITH OFFSET into DuckDB's 1-based WITH "
            "ORDINALITY without adjusting it; the queries avoid it")


def test_a_query_file_whose_header_disagrees_with_its_sql_is_refused():
    with pytest.raises(query_lib.QueryError, match="parameters"):
        query_lib.parse_query_file("bad", "-- A query.\n-- param x INT64: x\n-- tables: songs\n"
                                          "SELECT * FROM {{songs}} WHERE year = @y")
    with pytest.raises(query_lib.QueryError, match="tables"):
        query_lib.parse_query_file("bad", "-- A query.\n-- tables: songs\n"
                                          "SELECT * FROM {{listens}}")
    with pytest.raises(query_lib.QueryError, match="not a whole number"):
        query_lib.parse_query_file("bad", "-- A query.\n-- param x INT64 = many: x\n"
                                          "-- tables: songs\nSELECT * FROM {{songs}} LIMIT @x")


# --- BigQuery, as far as it goes without a network ----------------------------------------------

@pytest.mark.parametrize("name", query_lib.available_queries())
def test_bigquery_job_for_every_query(name):
    from google.cloud import bigquery

    query = query_lib.load_query(name)
    params = {p.name: {"DATE": "2024-05-01", "STRING": "abc", "INT64": "7"}[p.type]
              for p in query.parameters if p.default is None}
    sql, config = query_lib.bigquery_job(query, params, "my-project", "music_recs",
                                         {"recommendations": "recs_v2"})
    assert isinstance(config, bigquery.QueryJobConfig)
    assert config.use_legacy_sql is False
    tree = sqlglot.parse_one(sql, read="bigquery")        # valid BigQuery SQL
    tables = {".".join(part for part in (t.catalog, t.db, t.name) if part)
              for t in tree.find_all(sqlglot.exp.Table) if t.name in
              {"recs_v2", "songs", "listens"}}
    assert "my-project.music_recs.recs_v2" in tables
    if "songs" in query.tables:
        assert "my-project.music_recs.songs" in tables
    assert "{{" not in sql and "listens`" not in sql   # no listens table given: empty relation
    bound = {p.name: (p.type_, p.value) for p in config.query_parameters}
    assert set(bound) == query_lib.sql_parameters(sql)
    for parameter in query.parameters:
        expected_type = parameter.type
        assert bound[parameter.name][0] == expected_type
    if "run_date" in bound:
        assert bound["run_date"] == ("DATE", datetime.date(2024, 5, 1))
    if query.optional_tables:
        assert bound["has_listens"] == ("BOOL", False)


def test_bigquery_user_input_travels_only_as_parameters():
    hostile = "x' OR TRUE; DROP TABLE songs; --"
    sql, config = query_lib.bigquery_job(
        query_lib.load_query("user_recommendations"),
        {"run_date": "2024-05-01", "user_id": hostile, "top_n": "3"}, "my-project", "music", {})
    assert hostile not in sql
    assert ("user_id", "STRING", hostile) in [(p.name, p.type_, p.value)
                                               for p in config.query_parameters]
    assert ("top_n", "INT64", 3) in [(p.name, p.type_, p.value) for p in config.query_parameters]


@pytest.mark.parametrize("project,dataset,tables,message", [
    ("My_Project", "music", {}, "--project"),
    ("my-project", "music-recs", {}, "--dataset"),
    ("my-project", "music", {"recommendations": "recs`; DROP"}, "--recommendations_table"),
    ("my-project", "music", {"listens": "a.b"}, "--listens_table"),
])
def test_bigquery_names_are_validated(project, dataset, tables, message):
    with pytest.raises(query_lib.QueryError, match=message):
        query_lib.bigquery_job(query_lib.load_query("data_quality"), {"run_date": "2024-05-01"},
                               project, dataset, tables)


def test_bigquery_listens_table_switches_the_check_on():
    sql, config = query_lib.bigquery_job(query_lib.load_query("data_quality"),
                                         {"run_date": "2024-05-01"}, "my-project", "music",
                                         {"listens": "taste_profile"})
    assert "`my-project.music.taste_profile`" in sql
    assert ("has_listens", "BOOL", True) in [(p.name, p.type_, p.value)
                                             for p in config.query_parameters]


class FakeRow(dict):
    def values(self):
        return list(super().values())


class FakeClient:
    """Stands in for bigquery.Client: records the call, answers like a finished job."""

    def __init__(self, rows):
        self.rows = rows
        self.calls = []

    def query(self, sql, job_config=None, location=None):
        self.calls.append((sql, job_config, location))
        client = self

        class Job:
            total_bytes_processed = 12345

            def result(self):
                class Result(list):
                    schema = [type("Field", (), {"name": n}) for n in client.rows[0]]
                return Result(FakeRow(r) for r in client.rows)
        return Job()


def test_run_bigquery_with_a_client(capsys):
    client = FakeClient([{"run_date": datetime.date(2024, 5, 1), "row_count": 3, "users": 3,
                          "models": MODEL, "mean_history_size": 2.5}])
    result = query_lib.run_bigquery(query_lib.load_query("runs"), {}, "my-project", "music", {},
                                    location="EU", client=client)
    sql, config, location = client.calls[0]
    assert "`my-project.music.recommendations`" in sql and location == "EU"
    assert result.columns == ["run_date", "row_count", "users", "models", "mean_history_size"]
    assert json.loads(query_lib.format_result(result, "json"))[0]["run_date"] == "2024-05-01"
    dry = query_lib.run_bigquery(query_lib.load_query("runs"), {}, "my-project", "music", {},
                                 dry_run=True, client=client)
    assert client.calls[1][1].dry_run is True
    assert dry.rows == [(12345,)]


def test_print_sql_offline_for_bigquery_and_duckdb(capsys):
    code, out, _ = run_cli(capsys, "coverage", "--param", "run_date=2024-05-01", "--project",
                           "my-project", "--dataset", "music", "--print_sql")
    assert code == 0
    assert "`my-project.music.recommendations`" in out and "@run_date" in out
    assert "-- @run_date DATE = datetime.date(2024, 5, 1)" in out
    code, out, _ = run_cli(capsys, "coverage", "--param", "run_date=2024-05-01", "--print_sql")
    assert code == 0 and "$run_date" in out and "@run_date" not in out
