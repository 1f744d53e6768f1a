"""The named queries: each one run locally (sqlglot → DuckDB over Parquet) against an answer
computed in Python from the same rows; the BigQuery path built as far as it goes offline."""
import collections
import datetime
import hashlib
import json
import os
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlglot

from recommend import query as query_lib

RUN_A, RUN_B, RUN_C = "2024-05-01", "2024-05-02", "2024-05-03"
K = 6
NUM_TRACKS = 30
MODEL = "timbre_cosine"
OTHER = "itemcf"
ALT_TRACK_SONGS = (1, 2)  # songs with a second track in the songs table

# What the recommendation job writes in each model=NAME/ folder (DESIGN.md; run_date and the
# partition's model are also folder names). Spelled out here so that the fixture does not move
# with the writer; test_the_fixture_writes_the_job_schema compares the two.
RECOMMENDATION_TYPE = pa.struct([("rank", pa.int64()), ("song_id", pa.string()),
                                 ("track_id", pa.string()), ("score", pa.float64())])
FIXTURE_SCHEMA = pa.schema([
    pa.field("user_id", pa.string(), nullable=False),
    pa.field("model", pa.string(), nullable=False),
    pa.field("history_size", pa.int64(), nullable=False),
    pa.field("popularity_filled", pa.int64(), nullable=False),
    pa.field("recommendations", pa.list_(RECOMMENDATION_TYPE), nullable=False),
])


def user_id(i: int) -> str:
    return hashlib.sha1(f"user{i}".encode()).hexdigest()


def track_id(i: int) -> str:
    return f"TR{i:016d}"


def song_id(i: int) -> str:
    return f"SO{i:016d}"


def song_number(entry_: dict) -> int:
    return int(entry_["song_id"][2:])


def content_track(song: int):
    return track_id(song)


def itemcf_track(song: int):
    """The collaborative model's track for a song: none for every third song, the second track
    for the songs that have one, else the song's own track."""
    if song % 3 == 0:
        return None
    if song in ALT_TRACK_SONGS:
        return track_id(100 + song)
    return track_id(song)


def entry(rank: int, song: int, score: float, track_of=content_track) -> dict:
    return {"rank": rank, "song_id": song_id(song), "track_id": track_of(song), "score": score}


def ranked_rows(songs, start_score=1.0, track_of=content_track):
    return [entry(rank, song, start_score - 0.1 * rank, track_of)
            for rank, song in enumerate(songs, 1)]


def row(u: int, model: str, recommendations, history_size=3, popularity_filled=0) -> dict:
    return {"user_id": user_id(u), "model": model, "history_size": history_size,
            "popularity_filled": popularity_filled, "recommendations": recommendations}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A demo-shaped output: (run_date, model) partitions of Parquet in
    run_date=…/model=…/ folders (one in two part files), two models on each day, an unfinished
    run in _staging/ and a _reports/ folder that readers must not see, the songs table (songs 1
    and 2 with a second track) and a listens file. timbre_cosine: run A is clean (one user on the
    popularity fallback, one partly filled), run B changes some users' lists, run C has one
    defect per data-quality check. itemcf: the same users as timbre_cosine and one more, other
    lists, NULL track ids (every third song) and second tracks; runs A, B and C are clean."""
    root = tmp_path_factory.mktemp("demo")
    rng = random.Random(4)
    listened = {u: rng.sample(range(NUM_TRACKS), 3) for u in range(12)}

    def fresh(u, avoid=()):
        pool = [t for t in range(NUM_TRACKS) if t not in listened[u] and t not in avoid]
        return rng.sample(pool, K)

    def unlistened(u, offset=0):
        pool = [t for t in range(NUM_TRACKS) if t not in listened[u]]
        return (pool[offset:] + pool[:offset])[:K]

    # timbre_cosine
    run_a = {}
    for u in range(10):
        filled = K if u == 9 else 2 if u == 8 else 0   # 9: the fallback; 8: its last two
        run_a[u] = row(u, MODEL, ranked_rows(fresh(u)), popularity_filled=filled)
    run_b = {}
    for u in range(8):
        numbers = [song_number(r) for r in run_a[u]["recommendations"]]
        if u == 0:
            new = numbers                                         # unchanged
        elif u == 1:
            new = [numbers[1], numbers[0]] + numbers[2:]          # same songs, two swapped
        elif u == 2:
            new = fresh(u, avoid=numbers) if NUM_TRACKS - 3 - K >= K else numbers[::-1]
        else:
            new = numbers[:3] + fresh(u, avoid=numbers)[:3]       # half replaced
        run_b[u] = row(u, MODEL, ranked_rows(new, 2.0), history_size=4)
    run_b[10] = row(10, MODEL, ranked_rows(fresh(10)))
    # Run C: one defect per check.
    songs_1 = fresh(1)
    run_c = [
        row(0, MODEL, ranked_rows(fresh(0))),                                        # fine
        row(1, MODEL, [dict(e, track_id=track_id(songs_1[0])) if e["rank"] == 2 else e
                       for e in ranked_rows(songs_1)]),                 # a track twice
        row(3, MODEL, ranked_rows(fresh(3)[:5])),                                    # 5, not k
        row(4, MODEL, ranked_rows((lambda t: t[:5] + t[:1])(fresh(4)))),    # repeated song
        row(5, MODEL, [dict(e, rank=7) if e["rank"] == 6 else e
                       for e in ranked_rows(fresh(5))]),                       # ranks 1..5, 7
        row(6, MODEL, ranked_rows(fresh(6)[:5] + [listened[6][0]])),          # a listened song
        row(7, MODEL, ranked_rows(fresh(7))),
        row(7, MODEL, ranked_rows(fresh(7))),                                  # a second row
        row(8, MODEL, ranked_rows(fresh(8)[:5] + [NUM_TRACKS + 5])),           # unknown song
        row(10, MODEL, ranked_rows(fresh(10)), popularity_filled=K + 1),       # fill > length
        row(11, MODEL, ranked_rows(fresh(11)), popularity_filled=-1),          # fill < 0
    ]
    # itemcf: users 0-5 as in timbre_cosine (other lists), and user 11 only here.
    itemcf = lambda songs, score=1.0: ranked_rows(songs, score, itemcf_track)
    itemcf_a = {u: row(u, OTHER, itemcf(unlistened(u, offset=u)), history_size=5,
                       popularity_filled=1 if u == 3 else 0) for u in range(6)}
    itemcf_a[11] = row(11, OTHER, itemcf(unlistened(11)), history_size=0, popularity_filled=K)
    itemcf_b = dict(itemcf_a)
    swapped = [song_number(e) for e in itemcf_a[1]["recommendations"]]
    itemcf_b[1] = row(1, OTHER, itemcf([swapped[1], swapped[0]] + swapped[2:]), history_size=5)
    itemcf_b[2] = row(2, OTHER, itemcf(unlistened(2, offset=K + 2)), history_size=5)
    itemcf_c = [row(u, OTHER, itemcf(unlistened(u)), history_size=5) for u in range(4)]
    runs = {(RUN_A, MODEL): list(run_a.values()), (RUN_B, MODEL): list(run_b.values()),
            (RUN_C, MODEL): run_c, (RUN_A, OTHER): list(itemcf_a.values()),
            (RUN_B, OTHER): list(itemcf_b.values()), (RUN_C, OTHER): itemcf_c}
    recommendations = root / "recommendations"
    for (run_date, model), rows in runs.items():
        folder = recommendations / f"run_date={run_date}" / f"model={model}"
        folder.mkdir(parents=True)
        chunks = [rows[:4], rows[4:]] if (run_date, model) == (RUN_A, MODEL) else [rows]
        for index, chunk in enumerate(chunks):
            pq.write_table(pa.Table.from_pylist(chunk, schema=FIXTURE_SCHEMA),
                           folder / f"part-{index:05d}-of-{len(chunks):05d}.parquet")
    (recommendations / f"run_date={RUN_A}" / "_SUCCESS").write_text("")
    staging = recommendations / "_staging" / f"run_date=2024-05-09-{MODEL}-abc" / "rows"
    staging.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(run_c, schema=FIXTURE_SCHEMA), staging / "part-0.parquet")
    reports = recommendations / "_reports" / f"run_date={RUN_A}" / f"model={MODEL}"
    reports.mkdir(parents=True)
    (reports / "run_summary.json").write_text("{}")

    songs = [{"track_id": track_id(t), "song_id": song_id(t), "artist_name": f"Artist {t % 7}",
              "title": f"Title {t}", "release": f"Release {t % 3}",
              "year": 0 if t % 4 == 0 else 1960 + t, "duration": 180.0 + t}
             for t in range(NUM_TRACKS)]
    songs += [{"track_id": track_id(100 + t), "song_id": song_id(t), "artist_name": f"Artist {t}",
               "title": f"Title {t} (live)", "release": "Live", "year": 2001, "duration": 200.0}
              for t in ALT_TRACK_SONGS]
    songs_dir = root / "features" / "songs"
    songs_dir.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(songs), songs_dir / "part-00000-of-00001.parquet")
    listens_path = root / "listens.txt"
    with open(listens_path, "w") as handle:
        for u, tracks in listened.items():
            for t in tracks:
                handle.write(f"{user_id(u)}\t{song_id(t)}\t{rng.randint(1, 9)}\n")
    first_track = {}
    for song in sorted(songs, key=lambda s: s["track_id"]):
        first_track.setdefault(song["song_id"], song)
    return {"root": root, "recommendations": str(recommendations), "songs": str(songs_dir),
            "listens": str(listens_path), "runs": runs,
            "songs_by_track": {s["track_id"]: s for s in songs},
            "first_track_of_song": first_track,
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

def song_metadata(demo, rec):
    """The songs-table row the queries show for an entry: its track's, else the song's first
    track's (by track id), else nothing."""
    return (demo["songs_by_track"].get(rec["track_id"])
            or demo["first_track_of_song"].get(rec["song_id"]) or {})


def expected_runs(demo, **_):
    out = []
    for run_date, model in sorted(demo["runs"]):
        rows = demo["runs"][run_date, model]
        out.append({"run_date": run_date, "model": model, "row_count": len(rows),
                    "users": len({r["user_id"] for r in rows}),
                    "popularity_fill_users": sum(1 for r in rows if r["popularity_filled"] > 0),
                    "mean_history_size": sum(r["history_size"] for r in rows) / len(rows)})
    return out


def expected_user_recommendations(demo, run_date, model, user_id, top_n=10):
    out = []
    for row_ in demo["runs"].get((run_date, model), []):
        if row_["user_id"] != user_id:
            continue
        length = len(row_["recommendations"])
        for rec in sorted(row_["recommendations"], key=lambda r: (r["rank"], r["song_id"])):
            if rec["rank"] > top_n:
                continue
            song = song_metadata(demo, rec)
            out.append({"user_id": user_id, "model": row_["model"],
                        "history_size": row_["history_size"], "rank": rec["rank"],
                        "song_id": rec["song_id"], "track_id": rec["track_id"],
                        "artist_name": song.get("artist_name"), "title": song.get("title"),
                        "year": song.get("year") or None, "score": rec["score"],
                        "from_popularity": rec["rank"] > length - row_["popularity_filled"]})
    return out


def expected_top_songs(demo, run_date, model, top_n=10, limit=20):
    rows = demo["runs"][run_date, model]
    users = len({r["user_id"] for r in rows})
    ranks = collections.defaultdict(list)
    tracks = collections.defaultdict(set)
    for row_ in rows:
        for rec in row_["recommendations"]:
            if rec["rank"] <= top_n:
                ranks[rec["song_id"]].append(rec["rank"])
                if rec["track_id"] is not None:
                    tracks[rec["song_id"]].add(rec["track_id"])
    ordered = sorted(ranks, key=lambda s: (-len(ranks[s]), s))[:limit]
    out = []
    for song_ in ordered:
        track = min(tracks[song_]) if tracks[song_] else None
        song = song_metadata(demo, {"song_id": song_, "track_id": track})
        out.append({"song_id": song_, "track_id": track,
                    "artist_name": song.get("artist_name"), "title": song.get("title"),
                    "year": song.get("year") or None, "times_recommended": len(ranks[song_]),
                    "share_of_users": len(ranks[song_]) / users,
                    "mean_rank": sum(ranks[song_]) / len(ranks[song_])})
    return out


def expected_coverage(demo, run_date, model, top_n=500):
    from recommend.metrics import gini

    rows = demo["runs"][run_date, model]
    counts = collections.Counter(rec["song_id"] for row_ in rows
                                 for rec in row_["recommendations"] if rec["rank"] <= top_n)
    catalogue = {s["song_id"] for s in demo["songs_by_track"].values()}
    per_song = [counts.get(song, 0) for song in catalogue]
    return [{"users": len({r["user_id"] for r in rows}),
             "catalogue_songs": len(catalogue),
             "recommended_songs": sum(1 for c in per_song if c > 0),
             "coverage": sum(1 for c in per_song if c > 0) / len(catalogue),
             "gini": gini(per_song),
             "recommendations_in_catalogue": sum(per_song),
             "recommended_outside_catalogue": len(set(counts) - catalogue)}]


def expected_run_over_run(demo, run_date, previous_run_date, model, top_n=10, limit=100):
    def tops(run):
        return {row_["user_id"]: {r["song_id"]: r["rank"] for r in row_["recommendations"]
                                  if r["rank"] <= top_n}
                for row_ in demo["runs"].get((run, model), [])}
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
    for row_ in changed:
        row_["users_changed"] = len(changed)
    return changed[:limit]


def expected_data_quality(demo, run_date, model, k=500, with_listens=False):
    rows = demo["runs"].get((run_date, model), [])
    users = len({r["user_id"] for r in rows})

    def check(name, failing):
        failing = sorted(failing)
        return {"check_name": name, "failing_users": len(failing),
                "example_user_id": failing[0] if failing else None,
                "passed": not failing, "users": users}

    per_user_rows = collections.Counter(r["user_id"] for r in rows)

    def fails(predicate):
        return [r["user_id"] for r in rows if predicate(r["recommendations"])]

    def repeats(values):
        return len(set(values)) != len(values)

    out = [{"check_name": "run_not_empty", "failing_users": 0 if rows else 1,
            "example_user_id": None, "passed": bool(rows), "users": users},
           check("one_row_per_user", [u for u, n in per_user_rows.items() if n > 1]),
           check("exactly_k", fails(lambda recs: len(recs) != k)),
           check("distinct_songs", fails(lambda recs: repeats([r["song_id"] for r in recs]))),
           check("distinct_tracks", fails(lambda recs: repeats(
               [r["track_id"] for r in recs if r["track_id"] is not None]))),
           check("ranks_1_to_n", fails(lambda recs: bool(recs) and sorted(r["rank"] for r in recs)
                                       != list(range(1, len(recs) + 1)))),
           check("popularity_filled_in_range",
                 [r["user_id"] for r in rows
                  if not 0 <= r["popularity_filled"] <= len(r["recommendations"])])]
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
    "user_recommendations": [
        {"run_date": RUN_A, "model": MODEL, "user_id": user_id(2)},
        {"run_date": RUN_A, "model": OTHER, "user_id": user_id(2)},     # same user, other model
        {"run_date": RUN_A, "model": MODEL, "user_id": user_id(8)},     # partly filled
        {"run_date": RUN_A, "model": MODEL, "user_id": user_id(9)},     # the fallback
        {"run_date": RUN_A, "model": OTHER, "user_id": user_id(3), "top_n": 3},
        {"run_date": RUN_A, "model": MODEL, "user_id": user_id(11)},    # only in itemcf
        {"run_date": RUN_C, "model": MODEL, "user_id": user_id(8), "top_n": 6},
        {"run_date": RUN_B, "model": MODEL, "user_id": user_id(9)}],    # not in run B
    "top_songs": [{"run_date": RUN_A, "model": MODEL}, {"run_date": RUN_A, "model": OTHER},
                  {"run_date": RUN_B, "model": MODEL, "top_n": 3, "limit": 5},
                  {"run_date": RUN_C, "model": OTHER, "top_n": 2, "limit": 50}],
    "coverage": [{"run_date": RUN_A, "model": MODEL}, {"run_date": RUN_A, "model": OTHER},
                 {"run_date": RUN_C, "model": MODEL, "top_n": 2}],
    "run_over_run": [{"run_date": RUN_B, "previous_run_date": RUN_A, "model": MODEL},
                     {"run_date": RUN_B, "previous_run_date": RUN_A, "model": MODEL,
                      "top_n": 2, "limit": 2},
                     {"run_date": RUN_B, "previous_run_date": RUN_A, "model": OTHER}],
    "data_quality": [{"run_date": RUN_A, "model": MODEL, "k": K},
                     {"run_date": RUN_A, "model": MODEL, "k": K, "_listens": True},
                     {"run_date": RUN_A, "model": OTHER, "k": K, "_listens": True},
                     {"run_date": RUN_C, "model": MODEL, "k": K, "_listens": True},
                     {"run_date": RUN_C, "model": OTHER, "k": K, "_listens": True},
                     {"run_date": RUN_A, "model": "als", "k": K},        # no such partition
                     {"run_date": "2030-01-01", "model": MODEL, "k": K}],
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
    quality_c = {row_["check_name"]: row_ for row_ in run_json(
        capsys, demo, "data_quality", run_date=RUN_C, model=MODEL, k=K, _listens=True)}
    assert [name for name, row_ in quality_c.items() if row_["passed"] is False] == [
        "one_row_per_user", "exactly_k", "distinct_songs", "distinct_tracks", "ranks_1_to_n",
        "popularity_filled_in_range", "no_listened_song"]
    assert quality_c["distinct_tracks"]["failing_users"] == 2   # a repeated song; a repeated track
    assert quality_c["popularity_filled_in_range"]["failing_users"] == 2
    changes = run_json(capsys, demo, "run_over_run", run_date=RUN_B, previous_run_date=RUN_A,
                       model=MODEL)
    assert {row_["user_id"] for row_ in changes} == {user_id(u) for u in range(1, 8)}
    # itemcf: only users 1 and 2 changed, although every list holds NULL track ids (songs are
    # compared by song id, so a NULL track is no change).
    changes = run_json(capsys, demo, "run_over_run", run_date=RUN_B, previous_run_date=RUN_A,
                       model=OTHER)
    assert {row_["user_id"] for row_ in changes} == {user_id(1), user_id(2)}
    assert changes[0]["users_compared"] == 7
    assert run_json(capsys, demo, "coverage", run_date=RUN_C, model=MODEL)[0][
        "recommended_outside_catalogue"] == 1
    runs = [(row_["run_date"], row_["model"]) for row_ in run_json(capsys, demo, "runs")]
    # not the unfinished run in _staging/, nor _reports/
    assert runs == [(RUN_A, OTHER), (RUN_A, MODEL), (RUN_B, OTHER), (RUN_B, MODEL),
                    (RUN_C, OTHER), (RUN_C, MODEL)]
    # NULL track ids: several in one list (distinct_tracks still passes), and shown as NULL.
    for run_date in (RUN_A, RUN_B, RUN_C):
        nulls = [sum(r["track_id"] is None for r in row_["recommendations"])
                 for row_ in demo["runs"][run_date, OTHER]]
        assert min(nulls) >= 1 and max(nulls) >= 2, nulls
    quality = run_json(capsys, demo, "data_quality", run_date=RUN_C, model=OTHER, k=K,
                       _listens=True)
    assert all(row_["passed"] for row_ in quality)
    songs = run_json(capsys, demo, "user_recommendations", run_date=RUN_A, model=OTHER,
                     user_id=user_id(2))
    assert any(r["track_id"] is None and r["title"] for r in songs)  # metadata via the song
    top = run_json(capsys, demo, "top_songs", run_date=RUN_A, model=OTHER, limit=50)
    assert any(r["track_id"] is None for r in top)
    assert any(r["track_id"] == track_id(101) and r["title"] == "Title 1 (live)" for r in top)
    fallback = run_json(capsys, demo, "user_recommendations", run_date=RUN_A, model=MODEL,
                        user_id=user_id(9))
    assert len(fallback) == K and all(r["from_popularity"] for r in fallback)
    partly = run_json(capsys, demo, "user_recommendations", run_date=RUN_A, model=MODEL,
                      user_id=user_id(8))
    assert [r["from_popularity"] for r in partly] == [False] * (K - 2) + [True] * 2


def test_a_query_for_one_model_never_sees_another_models_rows(capsys, demo):
    """Users 0-5 have rows of both models on each day: a query that mixed the models would
    count them twice, or answer with the other model's songs."""
    both = {row_["user_id"] for row_ in demo["runs"][RUN_A, MODEL]} & {
        row_["user_id"] for row_ in demo["runs"][RUN_A, OTHER]}
    assert len(both) == 6
    for model in (MODEL, OTHER):
        quality = {row_["check_name"]: row_ for row_ in run_json(
            capsys, demo, "data_quality", run_date=RUN_A, model=model, k=K)}
        assert quality["one_row_per_user"]["passed"] is True
        assert quality["run_not_empty"]["users"] == len(demo["runs"][RUN_A, model])
        listed = run_json(capsys, demo, "user_recommendations", run_date=RUN_A, model=model,
                          user_id=user_id(2))
        assert {r["model"] for r in listed} == {model}
        assert [r["song_id"] for r in listed] == [
            r["song_id"] for r in demo["runs"][RUN_A, model][2]["recommendations"]]
        coverage = run_json(capsys, demo, "coverage", run_date=RUN_A, model=model)[0]
        assert coverage["recommendations_in_catalogue"] == K * len(demo["runs"][RUN_A, model])
        top = run_json(capsys, demo, "top_songs", run_date=RUN_A, model=model, limit=100)
        assert sum(r["times_recommended"] for r in top) == K * len(demo["runs"][RUN_A, model])
    assert run_json(capsys, demo, "user_recommendations", run_date=RUN_A, model=MODEL,
                    user_id=user_id(11)) == []
    assert run_json(capsys, demo, "run_over_run", run_date=RUN_B, previous_run_date=RUN_A,
                    model="als") == []


def test_the_fixture_writes_the_job_schema():
    """The fixture's Parquet columns are the recommendation job's (names and types); whether
    the files also carry ``model`` does not matter to the reader (the folder gives it)."""
    from transforms.write_recommendations import PARQUET_SCHEMA

    assert [(f.name, f.type) for f in FIXTURE_SCHEMA if f.name != "model"] == [
        (f.name, f.type) for f in PARQUET_SCHEMA if f.name != "model"]


def write_partition(folder, rows=None, schema=FIXTURE_SCHEMA):
    folder.mkdir(parents=True, exist_ok=True)
    rows = rows or [row(0, MODEL, ranked_rows(range(K)))]
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), folder / "part-0.parquet")


@pytest.mark.parametrize("layout,message", [
    (f"run_date={RUN_A}", "a Parquet file straight in a run_date folder (the one-model layout)"),
    (f"run_date={RUN_A}/{MODEL}", "not a model=NAME folder"),
    (f"run_date={RUN_A}/model=Timbre", "not a model=NAME folder"),
    (f"run_date={RUN_A}/model=", "not a model=NAME folder"),
    ("run_date=2024-13-01/model=m", "not a run_date=YYYY-MM-DD folder"),
    ("run_date=2024-5-1/model=m", "not a run_date=YYYY-MM-DD folder"),
    ("_staging/run_date=2024-05-01/model=m", "no Parquet files in run_date=YYYY-MM-DD/model=NAME"),
])
def test_a_wrong_layout_is_a_one_line_error(capsys, tmp_path, layout, message):
    write_partition(tmp_path / layout)
    code, out, err = run_cli(capsys, "runs", "--recommendations", str(tmp_path))
    assert code == 1 and out == ""
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert "run_date=YYYY-MM-DD/model=NAME/*.parquet" in err


@pytest.mark.parametrize("with_model_column", [True, False])
def test_the_model_column_comes_from_the_folder(capsys, tmp_path, with_model_column):
    """DuckDB puts the partition folder's model in place of the files' own column (here
    deliberately another name), or adds it when the files have none."""
    schema = FIXTURE_SCHEMA if with_model_column else pa.schema(
        [f for f in FIXTURE_SCHEMA if f.name != "model"])
    write_partition(tmp_path / f"run_date={RUN_A}" / f"model={OTHER}", schema=schema)
    write_partition(tmp_path / f"run_date={RUN_A}" / f"model={MODEL}", schema=schema)
    code, out, err = run_cli(capsys, "runs", "--recommendations", str(tmp_path), "--format",
                             "json")
    assert code == 0, err
    assert [(r["run_date"], r["model"]) for r in json.loads(out)] == [(RUN_A, OTHER),
                                                                      (RUN_A, MODEL)]
    songs = tmp_path / "songs.parquet"
    pq.write_table(pa.table({"track_id": [track_id(0)], "song_id": [song_id(0)],
                             "artist_name": ["A"], "title": ["T"], "year": [1999]}), songs)
    code, out, err = run_cli(capsys, "user_recommendations", "--param", f"run_date={RUN_A}",
                             "--param", f"model={OTHER}", "--param", f"user_id={user_id(0)}",
                             "--recommendations", str(tmp_path), "--songs", str(songs),
                             "--format", "json")
    assert code == 0, err
    listed = json.loads(out)
    assert len(listed) == K and {r["model"] for r in listed} == {OTHER}
    assert listed[0]["title"] == "T"


# --- the command line --------------------------------------------------------------------------

def test_table_and_csv_formats(capsys, demo):
    code, out, _ = run_cli(capsys, "top_songs", "--param", f"run_date={RUN_A}", "--param",
                           f"model={MODEL}", "--param", "limit=3", "--recommendations",
                           demo["recommendations"], "--songs", demo["songs"])
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["song_id", "track_id", "artist_name"]
    assert lines[-1] == "(3 rows)"
    code, out, _ = run_cli(capsys, "top_songs", "--param", f"run_date={RUN_A}", "--param",
                           f"model={OTHER}", "--param", "limit=30", "--recommendations",
                           demo["recommendations"], "--songs", demo["songs"], "--format", "csv")
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0] == ("song_id,track_id,artist_name,title,year,times_recommended,"
                        "share_of_users,mean_rank")
    assert any(line.split(",")[1] == "" for line in lines[1:])   # a NULL track: an empty cell


def test_list_describes_every_query(capsys):
    code, out, _ = run_cli(capsys, "--list")
    assert code == 0
    for name in query_lib.available_queries():
        assert f"\n{name}\n" in f"\n{out}\n"
    assert "--param run_date=<DATE>" in out
    assert "--param model=<STRING>" in out


@pytest.mark.parametrize("args,message", [
    (["no_such_query"], "unknown query 'no_such_query'; known queries: coverage"),
    (["../etc/passwd"], "unknown query"),
    (["coverage"], "needs --param run_date="),
    (["coverage", "--param", "run_date=2024-05-01"], "needs --param model="),
    (["coverage", "--param", "run_date=yesterday"], "is not a date YYYY-MM-DD"),
    (["coverage", "--param", "run_date=2024-05-01", "--param", "model=m", "--param",
      "top_n=ten"], "is not a whole number"),
    (["coverage", "--param", "run_date=2024-05-01", "--param", "colour=red"],
     "has no parameter 'colour'"),
    (["coverage", "--param", "run_date"], "expected key=value"),
    (["coverage", "--param", "run_date=2024-05-01", "--param", "model=m"],
     "pass --recommendations DIR"),
    (["coverage", "--param", "run_date=2024-05-01", "--param", "model=m", "--recommendations",
      "/nonexistent/recs"], "no such folder"),
    (["coverage", "--param", "run_date=2024-05-01", "--param", "model=m", "--project",
      "my-project"], "both --project and --dataset"),
])
def test_errors_are_one_line_and_exit_non_zero(capsys, args, message):
    code, out, err = run_cli(capsys, *args)
    assert code == 1
    assert out == ""
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_missing_songs_table_and_listens_file(capsys, demo):
    code, _, err = run_cli(capsys, "coverage", "--param", f"run_date={RUN_A}", "--param",
                           f"model={MODEL}", "--recommendations", demo["recommendations"],
                           "--songs", str(demo["root"] / "nowhere"))
    assert code == 1 and "no such file or folder" in err
    code, _, err = run_cli(capsys, "data_quality", "--param", f"run_date={RUN_A}", "--param",
                           f"model={MODEL}", "--recommendations", demo["recommendations"],
                           "--listens", str(demo["root"] / "missing.txt"))
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
        # every query that reads one run reads one model's rows of it
        assert bound["model"] == ("STRING", "abc")
        assert query.parameters[[p.name for p in query.parameters].index("model")].default is None
        assert "model = @model" in sql
    if query.optional_tables:
        assert bound["has_listens"] == ("BOOL", False)


def test_bigquery_user_input_travels_only_as_parameters():
    hostile = "x' OR TRUE; DROP TABLE songs; --"
    sql, config = query_lib.bigquery_job(
        query_lib.load_query("user_recommendations"),
        {"run_date": "2024-05-01", "model": hostile + "m", "user_id": hostile, "top_n": "3"},
        "my-project", "music", {})
    assert hostile not in sql
    assert ("user_id", "STRING", hostile) in [(p.name, p.type_, p.value)
                                               for p in config.query_parameters]
    assert ("model", "STRING", hostile + "m") in [(p.name, p.type_, p.value)
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
        query_lib.bigquery_job(query_lib.load_query("data_quality"),
                               {"run_date": "2024-05-01", "model": MODEL}, project, dataset,
                               tables)


def test_bigquery_listens_table_switches_the_check_on():
    sql, config = query_lib.bigquery_job(query_lib.load_query("data_quality"),
                                         {"run_date": "2024-05-01", "model": OTHER},
                                         "my-project", "music", {"listens": "taste_profile"})
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
    client = FakeClient([{"run_date": datetime.date(2024, 5, 1), "model": MODEL, "row_count": 3,
                          "users": 3, "popularity_fill_users": 1, "mean_history_size": 2.5}])
    result = query_lib.run_bigquery(query_lib.load_query("runs"), {}, "my-project", "music", {},
                                    location="EU", client=client)
    sql, config, location = client.calls[0]
    assert "`my-project.music.recommendations`" in sql and location == "EU"
    assert result.columns == ["run_date", "model", "row_count", "users", "popularity_fill_users",
                              "mean_history_size"]
    assert json.loads(query_lib.format_result(result, "json"))[0]["run_date"] == "2024-05-01"
    dry = query_lib.run_bigquery(query_lib.load_query("runs"), {}, "my-project", "music", {},
                                 dry_run=True, client=client)
    assert client.calls[1][1].dry_run is True
    assert dry.rows == [(12345,)]


def test_print_sql_offline_for_bigquery_and_duckdb(capsys):
    code, out, _ = run_cli(capsys, "coverage", "--param", "run_date=2024-05-01", "--param",
                           f"model={OTHER}", "--project", "my-project", "--dataset", "music",
                           "--print_sql")
    assert code == 0
    assert "`my-project.music.recommendations`" in out and "@run_date" in out
    assert "-- @run_date DATE = datetime.date(2024, 5, 1)" in out
    assert "-- @model STRING = 'itemcf'" in out
    code, out, _ = run_cli(capsys, "coverage", "--param", "run_date=2024-05-01", "--param",
                           f"model={OTHER}", "--print_sql")
    assert code == 0 and "$run_date" in out and "$model" in out and "@run_date" not in out


def test_a_corrupt_parquet_file_is_one_line_not_a_duckdb_traceback(tmp_path, capsys):
    partition = tmp_path / "run_date=2026-01-01" / "model=m"
    partition.mkdir(parents=True)
    (partition / "part-0.parquet").write_bytes(b"not parquet")
    assert query_lib.main(["runs", "--recommendations", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("query: error: DuckDB: ") and "part-0.parquet" in err
    assert len(err.strip().splitlines()) == 1


def test_the_cli_goes_through_run_main_one_line_own_temp_folder_and_debug(tmp_path):
    """``python -m recommend.query`` starts like every other CLI (``cli.run_main``): an
    expected failure is one line and exit status 1, ``--debug`` shows the traceback, success
    is 0 and bad usage 2, and the run's own temporary folder is gone at exit (``--debug``
    keeps it and says where)."""
    import subprocess
    import sys

    from tests import conftest

    partition = tmp_path / "out" / "run_date=2026-01-01" / "model=m"
    partition.mkdir(parents=True)
    (partition / "part-0.parquet").write_bytes(b"not parquet")
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {**os.environ, "TMPDIR": str(temp)}

    def cli(*args):
        done = subprocess.run([sys.executable, "-m", "recommend.query", *args], env=env,
                              capture_output=True, text=True, cwd=str(conftest.REPO), timeout=120)
        return done.returncode, done.stdout, done.stderr

    code, out, err = cli("runs", "--recommendations", str(tmp_path / "out"))
    assert code == 1 and out == "" and len(err.strip().splitlines()) == 1, err
    assert err.startswith("query: error: DuckDB: ") and "part-0.parquet" in err
    assert os.listdir(temp) == []
    code, out, _ = cli("--list")
    assert code == 0 and "top_songs" in out and os.listdir(temp) == []
    code, _, err = cli("runs", "--no_such_flag")
    assert code == 2 and "unrecognized arguments: --no_such_flag" in err
    code, _, err = cli("runs", "--recommendations", str(tmp_path / "out"), "--debug")
    assert code == 1 and "Traceback" in err and "part-0.parquet" in err
    assert "--debug: temporary files kept in" in err
