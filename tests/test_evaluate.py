"""The offline evaluation: baselines and metrics by hand on tiny data, the same numbers from
Parquet, a Kaggle submission and BigQuery, and the content model against a random ranking on
synthetic data with planted styles."""
import hashlib
import json
import math
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import evaluate
from transforms.write_recommendations import PARQUET_SCHEMA

RUN_DATE = "2024-06-01"


def user(name: str) -> str:
    return hashlib.sha1(name.encode()).hexdigest()


def song(letter: str) -> str:
    return f"SO{letter * 16}"


U1, U2, U3 = user("u1"), user("u2"), user("u3")
VISIBLE = {U1: "AB", U2: "AC", U3: "ABD"}
HIDDEN = {U1: "CE", U2: "B", U3: "E"}
# The content model's lists (best first) and who the job served by its fallback.
CONTENT = {U1: "EFC", U2: "DBG", U3: "CAB"}


def write_triplets(path, listens):
    with open(path, "w") as handle:
        for user_id, letters in listens.items():
            for letter in letters:
                handle.write(f"{user_id}\t{song(letter)}\t2\n")
    return str(path)


def write_run(folder, lists, fallback=(), history_sizes=None, model="timbre_cosine"):
    """A run of the job's Parquet output with scores that fall with the rank; users in
    ``fallback`` are marked as served by the popularity fallback."""
    rows = []
    for user_id, letters in lists.items():
        rows.append({
            "user_id": user_id,
            "popularity_filled": len(letters) if user_id in fallback else 0,
            "history_size": (history_sizes or {}).get(user_id, len(VISIBLE.get(user_id, ""))),
            "recommendations": [{"rank": rank, "song_id": song(letter),
                                 "track_id": f"TR{letter * 16}", "score": 1.0 - 0.1 * rank}
                                for rank, letter in enumerate(letters, 1)]})
    partition = folder / f"run_date={RUN_DATE}" / f"model={model}"
    partition.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=PARQUET_SCHEMA),
                   partition / "part-00000-of-00001.parquet")
    return str(folder)


@pytest.fixture()
def tiny(tmp_path):
    return {"visible": write_triplets(tmp_path / "visible.txt", VISIBLE),
            "hidden": write_triplets(tmp_path / "hidden.txt", HIDDEN),
            "recommendations": write_run(
                tmp_path / "recommendations", CONTENT,
                fallback={U3}, history_sizes={U2: 5}),
            "out": tmp_path / "out", "tmp": tmp_path}


def run_main(capsys, *args):
    code = evaluate.main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def read_report(out_dir):
    data = json.loads((out_dir / evaluate.METRICS_FILE).read_text())
    page = (out_dir / evaluate.REPORT_FILE).read_text()
    return data, page


# --- baselines ------------------------------------------------------------------------------

def test_popularity_baseline_by_hand():
    songs = evaluate.SongCodes()
    visible = {user_id: {songs.code(song(letter)): 1 for letter in letters}
               for user_id, letters in VISIBLE.items()}
    popularity = evaluate.listener_counts(visible, len(songs))
    ranking = evaluate.popularity_ranking(popularity, songs)
    # listeners: A 3, B 2, C 1, D 1 (C before D: ties go by song id)
    assert [songs.ids[c] for c in ranking] == [song("A"), song("B"), song("C"), song("D")]

    def baseline(user_id, length):
        return [songs.ids[c] for c in evaluate.popularity_list(ranking, visible[user_id], length)]
    assert baseline(U1, 2) == [song("C"), song("D")]       # minus their own A and B
    assert baseline(U2, 5) == [song("B"), song("D")]       # only listened songs are ranked
    assert baseline(U3, 1) == [song("C")]


def test_blend_order_trades_content_for_popularity():
    scores = np.array([3.0, 2.0, 1.0])
    popular = np.array([-1.0, 0.0, 2.0])
    assert evaluate.blend_order(scores, popular, 0.0).tolist() == [0, 1, 2]
    assert evaluate.blend_order(scores, popular, 1.0).tolist() == [2, 1, 0]
    # equal blended scores keep the content order
    assert evaluate.blend_order(np.zeros(3), np.zeros(3), 0.5).tolist() == [0, 1, 2]


def test_random_list_is_uniform_and_skips_own_songs():
    rng = np.random.default_rng(0)
    catalogue = np.arange(100)
    firsts = [evaluate.random_list(rng, catalogue, [3, 4], 5) for _ in range(2000)]
    assert all(len(set(x.tolist())) == 5 and not {3, 4} & set(x.tolist()) for x in firsts)
    counts = np.bincount(np.concatenate(firsts), minlength=100)
    assert counts[[3, 4]].sum() == 0
    others = np.delete(counts, [3, 4])
    assert others.min() > 0.5 * others.mean() and others.max() < 1.5 * others.mean()
    big = np.arange(10_000)
    scratch = np.zeros(10_000, dtype=bool)       # the fast exclusion path leaves it clean
    drawn = evaluate.random_list(rng, big, range(50), 500, scratch)
    assert len(set(drawn.tolist())) == 500 and drawn.min() >= 50 and not scratch.any()
    candidates = rng.permutation(big)[:700]
    assert (evaluate.without_own(candidates, np.arange(0, 10_000, 3), scratch).tolist()
            == evaluate.without_own(candidates, np.arange(0, 10_000, 3)).tolist()
            == [c for c in candidates.tolist() if c % 3])


# --- the holdout split ------------------------------------------------------------------------

def test_holdout_split_sizes_and_determinism():
    songs = evaluate.SongCodes()
    listens = {user(f"h{n}"): {songs.code(f"SO{n:04d}{i:012d}"): 1 for i in range(n)}
               for n in range(1, 12)}
    visible, hidden = evaluate.holdout_split(listens, songs, 0.5, seed=3)
    for user_id, history in listens.items():
        n = len(history)
        seen, held = visible[user_id].keys(), hidden.get(user_id, {}).keys()
        assert not seen & held and seen | held == history.keys()
        assert len(held) == (0 if n == 1 else max(1, math.floor(0.5 * n)))
    again_visible, _ = evaluate.holdout_split(listens, songs, 0.5, seed=3)
    assert again_visible == visible
    # a user's split does not depend on the other users
    one = {user("h7"): listens[user("h7")]}
    assert evaluate.holdout_split(one, songs, 0.5, seed=3)[0] == {user("h7"): visible[user("h7")]}
    other_seed, _ = evaluate.holdout_split(listens, songs, 0.5, seed=4)
    assert other_seed != visible


def test_write_split_round_trips(tmp_path, capsys):
    listens = write_triplets(tmp_path / "all.txt",
                             {U1: "ABCDEF", U2: "ABCD", U3: "EFGH"})
    code, _, err = run_main(capsys, "--listens", listens, "--holdout_fraction", 0.5, "--seed", 9,
                            "--write_split", tmp_path / "split", "--recommendations",
                            write_run(tmp_path / "recs", {U1: "GH"}), "--output_dir",
                            tmp_path / "out", "--blend", "none")
    assert code == 0, err
    visible = (tmp_path / "split" / "visible.txt").read_text().splitlines()
    hidden = (tmp_path / "split" / "hidden.txt").read_text().splitlines()
    assert len(visible) == 3 + 2 + 2 and len(hidden) == 3 + 2 + 2
    assert sorted(visible + hidden) == sorted((tmp_path / "all.txt").read_text().splitlines())
    # the split alone (to run the job on visible.txt first): same files, no report
    code, _, err = run_main(capsys, "--listens", listens, "--holdout_fraction", 0.5, "--seed", 9,
                            "--write_split", tmp_path / "split_only")
    assert code == 0, err
    assert (tmp_path / "split_only" / "visible.txt").read_text().splitlines() == visible


# --- the metrics by hand, end to end ------------------------------------------------------------

def test_evaluation_by_hand(capsys, tiny):
    code, out, err = run_main(capsys, "--visible", tiny["visible"], "--hidden", tiny["hidden"],
                              "--recommendations", tiny["recommendations"], "--k", 3,
                              "--precision_k", 2, "--blend", "0,1", "--output_dir", tiny["out"])
    assert code == 0, err
    data, page = read_report(tiny["out"])
    models = data["models"]
    # content: U1 [E F C] vs {C, E}: (1/1 + 2/3)/2; U2 [D B G] vs {B}: (1/2)/1; U3 is marked as
    # the job's fallback → popularity minus A, B, D = [C] vs {E}: 0
    assert models["content"]["map"] == pytest.approx(((1 + 2 / 3) / 2 + 0.5 + 0) / 3)
    assert models["content"]["precision"] == pytest.approx((1 / 2 + 1 / 2 + 0) / 3)
    assert models["content"]["recall"] == pytest.approx((2 / 2 + 1 + 0) / 3)
    assert models["content"]["fallback_share"] == pytest.approx(1 / 3)
    assert models["content"]["name"] == "timbre_cosine"
    # catalogue = songs seen anywhere (A–G); recommended within k: B C D E F G
    assert models["content"]["coverage"] == pytest.approx(6 / 7)
    # popularity: U1 [C D] vs {C, E}: 1/2; U2 [B D] vs {B}: 1; U3 [C]: 0
    assert models["popularity"]["map"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert models["popularity"]["fallback_share"] == 0
    # mean popularity of the content slots: E0 F0 C1 | D1 B2 G0 | C1 → 5/7
    assert models["content"]["mean_popularity"] == pytest.approx(5 / 7)
    # blends re-rank the job's own lists: α = 0 is the content order, α = 1 sorts the same
    # candidates by popularity: U1 [C E F] → 1, U2 [B D G] → 1, U3 fallback → 0
    assert models["blend_0"]["map"] == pytest.approx(models["content"]["map"])
    assert models["blend_1"]["map"] == pytest.approx(2 / 3)
    assert data["blend"]["best_alpha"] == 1 and data["best_model"] == "blend_1"
    assert "re-order" in data["blend"]["candidates"]
    # U2's history_size (5) is larger than its 2 visible songs: the job saw more than visible
    assert any("history_size" in warning for warning in data["warnings"])
    assert data["data"]["users_evaluated"] == 3
    assert data["protocol"]["list_length"] == 3
    by_history = {b["bucket"]: b for b in models["content"]["by_history"]}
    assert by_history["1–4"]["users"] == 3
    assert "timbre_cosine" in out and "wrote" in out
    assert "<svg" in page and "0.4444" in page


def test_parquet_submission_and_bigquery_agree(capsys, tmp_path):
    lists = {U1: "EFC", U2: "DBG", U3: "FGH"}
    visible = write_triplets(tmp_path / "visible.txt", VISIBLE)
    hidden = write_triplets(tmp_path / "hidden.txt", HIDDEN)
    recommendations = write_run(tmp_path / "recs", lists)
    letters = "ABCDEFGH"
    (tmp_path / "kaggle_songs.txt").write_text(
        "".join(f"{song(letter)} {index}\n" for index, letter in enumerate(letters, 1)))
    (tmp_path / "kaggle_users.txt").write_text(f"{U2}\n{U1}\n{U3}")
    (tmp_path / "submission.txt").write_text("".join(
        " ".join(str(letters.index(x) + 1) for x in lists[u]) + "\n" for u in (U2, U1, U3)))
    common = ["--visible", visible, "--hidden", hidden, "--k", 3, "--blend", "none"]
    assert run_main(capsys, *common, "--recommendations", recommendations,
                    "--output_dir", tmp_path / "a")[0] == 0
    assert run_main(capsys, *common, "--submission", tmp_path / "submission.txt",
                    "--kaggle_users", tmp_path / "kaggle_users.txt", "--kaggle_songs",
                    tmp_path / "kaggle_songs.txt", "--output_dir", tmp_path / "b")[0] == 0
    from_parquet = read_report(tmp_path / "a")[0]["models"]["content"]
    from_submission = read_report(tmp_path / "b")[0]["models"]["content"]
    numbers = ("map", "precision", "recall", "ndcg", "mean_popularity", "fallback_share",
               "mean_list_length", "gini", "coverage")
    assert {k: from_parquet[k] for k in numbers} == {k: from_submission[k] for k in numbers}
    assert from_parquet["map"] > 0
    # two sources of the catalogue (songs seen; kaggle_songs) that hold the same 8 songs
    sources = [read_report(tmp_path / d)[0]["data"] for d in "ab"]
    assert [s["catalogue_songs"] for s in sources] == [8, 8]
    assert sources[1]["catalogue_source"].startswith("--kaggle_songs")

    # BigQuery: the same rows, answered by a stand-in client
    table = pq.read_table(str(tmp_path / "recs" / f"run_date={RUN_DATE}" / "model=timbre_cosine"))

    class Client:
        def query(self, sql, job_config=None):
            self.sql, self.config = sql, job_config
            return type("Job", (), {"result": lambda _self: type(
                "Rows", (), {"to_arrow": lambda _r: table})()})()
    client = Client()
    songs = evaluate.SongCodes()
    from_bigquery = evaluate.read_bigquery_recommendations("bq://my-project.music.recs",
                                                           RUN_DATE, songs, client=client,
                                                           model="timbre_cosine")
    assert "`my-project.music.recs`" in client.sql and "@run_date" in client.sql
    assert "@model" in client.sql
    assert [(p.name, p.type_, str(p.value)) for p in client.config.query_parameters] == [
        ("run_date", "DATE", RUN_DATE), ("model", "STRING", "timbre_cosine")]
    from_disk = evaluate.read_parquet_recommendations(recommendations, None, songs)
    assert from_disk.run_date == RUN_DATE
    assert {u: x.tolist() for u, x in from_bigquery.lists.items()} == {
        u: x.tolist() for u, x in from_disk.lists.items()}
    with pytest.raises(evaluate.EvaluationError, match="not a BigQuery table"):
        evaluate.bigquery_recommendations_job("bq://x.y", RUN_DATE, "timbre_cosine")


def test_parquet_reader_orders_by_rank_and_drops_repeats(tmp_path):
    row = {"user_id": U1, "history_size": 2, "popularity_filled": 0, "recommendations": [
        {"rank": 3, "song_id": song("C"), "track_id": "TR" + "C" * 16, "score": 0.1},
        {"rank": 1, "song_id": song("A"), "track_id": "TR" + "A" * 16, "score": 0.9},
        {"rank": 2, "song_id": song("A"), "track_id": "TR" + "Z" * 16, "score": 0.5},
        {"rank": 4, "song_id": None, "track_id": "TR" + "Y" * 16, "score": 0.0}]}
    folder = tmp_path / f"run_date={RUN_DATE}" / "model=m"
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([row, dict(row, history_size=3)], schema=PARQUET_SCHEMA),
                   folder / "part-0.parquet")
    songs = evaluate.SongCodes()
    result = evaluate.read_parquet_recommendations(str(tmp_path), None, songs)
    assert [songs.ids[c] for c in result.lists[U1]] == [song("A"), song("C")]
    assert result.scores[U1].tolist() == [0.9, 0.1]
    assert result.entries_dropped == 2 and result.rows_dropped == 1
    assert result.model_of_user[U1] == "m"


# --- planted styles: the content model against chance ----------------------------------------

@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Songs of the synthetic generator's styles as 90 timbre statistics (standardised, then
    L2-normalised, as --normalization zscore_l2 does), and its users' listens."""
    from msd import synthetic, timbre

    root = tmp_path_factory.mktemp("planted")
    catalogue = synthetic.build_catalogue(400, seed=11, num_styles=8)
    rng = np.random.default_rng(11)
    features = np.array([timbre.timbre_statistics(synthetic.sample_song_timbre(
        rng, catalogue.styles, int(catalogue.style[i]), 300)) for i in range(len(catalogue))])
    features = (features - features.mean(0)) / features.std(0)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    csv_path = root / "features.csv"
    with open(csv_path, "w") as handle:
        handle.write("track_id,song_id," + ",".join(f"f{j:02d}" for j in range(90)) + "\n")
        for i in range(len(catalogue)):
            handle.write(f"{catalogue.track_ids[i]},{catalogue.song_ids[i]},"
                         + ",".join(f"{v:.9g}" for v in features[i]) + "\n")
    listens = root / "listens.txt"
    with open(listens, "w") as handle:
        for history in synthetic.iter_user_histories(catalogue, 250):
            for index, count in zip(history.songs, history.play_counts):
                handle.write(f"{history.user_id}\t{catalogue.song_ids[index]}\t{count}\n")
    return {"features": str(csv_path), "listens": str(listens), "root": root}


def test_content_beats_random_on_planted_styles_and_the_report_shows_it(capsys, planted):
    out = planted["root"] / "report"
    code, stdout, err = run_main(capsys, "--listens", planted["listens"], "--holdout_fraction",
                                 0.5, "--seed", 2, "--features", planted["features"], "--k", 50,
                                 "--blend", "0.2,0.5,0.8", "--output_dir", out)
    assert code == 0, err
    data, page = read_report(out)
    models = data["models"]
    content, chance = models["content"], models["random"]
    # content is far above chance, and its 95 % interval (the plot's error bar) clear of it
    assert content["map"] > 2 * chance["map"] and content["map"] - chance["map"] > 0.05
    assert (content["map"] - 1.96 * content["map_standard_error"]
            > chance["map"] + 1.96 * chance["map_standard_error"])
    assert content["precision"] > 2 * chance["precision"]
    assert content["fallback_share"] == 0
    assert content["vs_popularity"]["map_difference"] == pytest.approx(
        content["map"] - models["popularity"]["map"])
    # the popularity baseline piles onto few songs, random spreads over the catalogue
    assert models["popularity"]["gini"] > content["gini"] > chance["gini"]
    assert models["popularity"]["coverage"] < content["coverage"]
    # every blend is reported and the best one is the best of them
    blends = [models[f"blend_{a:g}"]["map"] for a in (0.2, 0.5, 0.8)]
    assert data["blend"]["best_map"] == max(blends)
    assert "kernel" in data["blend"]["candidates"]
    # the page: the five plots inline, nothing fetched from the network
    assert page.count("<svg") == 5
    assert not re.search(r"""(?:src|href)\s*=\s*["'](?:https?:)?//""", page)
    assert "<script" not in page and "<link" not in page
    for label in ("mAP by history length", "Coverage and concentration",
                  "Popularity of recommended songs", "Blend of content score"):
        assert label in page
    assert f"{content['map']:.4f}" in page and f"{chance['map']:.4f}" in page


# --- errors -------------------------------------------------------------------------------------

@pytest.mark.parametrize("make_args,message", [
    (lambda t: ["--visible", t["tmp"] / "nope.txt", "--hidden", t["hidden"],
                "--recommendations", t["recommendations"]], "--visible"),
    (lambda t: ["--visible", t["visible"], "--hidden", t["hidden"]], "no model: give --model_dir"),
    (lambda t: ["--listens", t["visible"], "--recommendations", t["recommendations"]],
     "--holdout_fraction"),
    (lambda t: ["--visible", t["visible"], "--recommendations", t["recommendations"]],
     "--visible and --hidden"),
    (lambda t: ["--visible", t["visible"], "--hidden", t["hidden"], "--recommendations",
                t["recommendations"], "--blend", "0.1,heavy"], "not a number"),
    (lambda t: ["--visible", t["visible"], "--hidden", t["hidden"], "--recommendations",
                t["recommendations"], "--run_date", "2020-01-01"], "no such run"),
    (lambda t: ["--visible", t["visible"], "--hidden", t["hidden"], "--recommendations",
                t["tmp"] / "missing"], "no such folder"),
    (lambda t: ["--visible", t["visible"], "--hidden", t["hidden"], "--submission",
                t["visible"]], "--kaggle_users"),
    (lambda t: ["--listens", t["visible"], "--holdout_fraction", 1.5, "--recommendations",
                t["recommendations"]], "between 0 and 1"),
])
def test_errors_are_one_line_and_exit_non_zero(capsys, tiny, make_args, message):
    code, out, err = run_main(capsys, *make_args(tiny), "--output_dir", tiny["out"])
    assert code == 1
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tiny["out"] / evaluate.METRICS_FILE).exists()


def test_a_submission_that_does_not_match_its_users_is_refused(capsys, tiny):
    tmp = tiny["tmp"]
    (tmp / "kaggle_songs.txt").write_text(f"{song('A')} 1\n{song('B')} 2\n")
    (tmp / "kaggle_users.txt").write_text(f"{U1}\n{U2}\n")
    (tmp / "submission.txt").write_text("1 2\n2 3\n")
    code, _, err = run_main(capsys, "--visible", tiny["visible"], "--hidden", tiny["hidden"],
                            "--submission", tmp / "submission.txt", "--kaggle_users",
                            tmp / "kaggle_users.txt", "--kaggle_songs", tmp / "kaggle_songs.txt",
                            "--output_dir", tiny["out"])
    assert code == 1 and "line 2: index outside 1..2" in err


# --- cold start ---------------------------------------------------------------------------------

def test_cold_songs_leave_the_visible_half_and_are_scored_alone():
    songs = evaluate.SongCodes()
    listens = {user(f"u{i}"): {songs.code(song(letter)): 1 for letter in "ABCDEFGHIJ"[i:i + 6]}
               for i in range(5)}
    visible, hidden = evaluate.holdout_split(listens, songs, 0.5, seed=3)
    cold = evaluate.choose_cold_songs(listens, songs, 0.2, seed=3)
    assert len(cold) == 2 and cold.tolist() == evaluate.choose_cold_songs(
        dict(reversed(list(listens.items()))), songs, 0.2, seed=3).tolist()
    visible2, hidden2 = evaluate.hide_cold_songs(visible, hidden, cold)
    for u, history in listens.items():
        assert not set(visible2[u]) & set(cold.tolist())                  # none visible
        assert set(visible2[u]) | set(hidden2.get(u, {})) == set(history)  # none lost
    # By hand: one user, hidden {A (cold), B, C}; the list [A, X, B]: cold recall 1, warm
    # recall 1/2, one recommended song of three is cold.
    codes = songs.codes([song(c) for c in "ABCX"])
    truth = evaluate.build_truth({"u": {int(codes[0]): 1, int(codes[1]): 1, int(codes[2]): 1}},
                                 {"u": {}})
    is_cold = np.zeros(len(songs), bool)
    is_cold[codes[0]] = True
    result = evaluate.cold_start_metrics([codes[[0, 3, 1]]], truth, is_cold, 3, 3)
    assert result["cold"] == {"users": 1, "map": 1.0, "recall": 1.0, "precision": 1 / 3}
    assert result["warm"]["recall"] == 0.5 and result["warm"]["map"] == pytest.approx(1 / 6)
    assert result["cold_share"] == pytest.approx(1 / 3)


# --- a careless user (issue 14): every expected failure is one line naming the path -------------

def _gzip_cut(path, keep):
    import gzip

    data = gzip.compress(open(path, "rb").read() * 20)
    with open(path + ".gz", "wb") as handle:
        handle.write(data[:keep] if keep else b"not gzip at all")
    return path + ".gz"


@pytest.mark.parametrize("make_args, message", [
    (lambda t: ["--listens", t["tmp"]],
     "--listens {tmp}: is a folder, not a file"),
    (lambda t: ["--listens", "/dev/zero"],
     "--listens /dev/zero: is a device or socket, not a file"),
    (lambda t: ["--listens", _gzip_cut(t["visible"], 0)],
     "--listens {tmp}/visible.txt.gz: cannot be read: not readable as gzip after 2 "
     "compressed bytes: Not a gzipped file"),
    (lambda t: ["--listens", _gzip_cut(t["visible"], 60)],  # Beam's reader stopped at the cut
     "--listens {tmp}/visible.txt.gz: cannot be read: the gzip stream ends before its "
     "end-of-stream marker after 60 compressed bytes"),
    (lambda t: ["--listens", t["visible"], "--features", t["tmp"] / "no_features"],
     "--features {tmp}/no_features: no such file or folder"),
    (lambda t: ["--listens", t["visible"], "--features", t["tmp"] / "recommendations"],
     "has no run_summary.json: the feature run there did not finish"),
    (lambda t: ["--listens", t["visible"], "--model_dir", t["tmp"] / "no_model"],
     "--model_dir {tmp}/no_model: no such file or folder"),
    (lambda t: ["--listens", t["visible"], "--model_dir", t["tmp"] / "recommendations"],
     "--model_dir {tmp}/recommendations: {tmp}/recommendations holds no model.json: not a "
     "model directory"),
    (lambda t: ["--listens", t["visible"], "--recommendations", t["recommendations"], "--k", 0],
     "--k, --precision_k and --blend_candidates must be at least 1"),
    (lambda t: ["--listens", t["visible"], "--recommendations", t["recommendations"], "--k",
                10 ** 12], "--k and --precision_k must be at most 1,000,000"),
    (lambda t: ["--listens", t["visible"], "--recommendations", t["recommendations"],
                "--holdout_fraction", 2], "--holdout_fraction 2.0 must be between 0 and 1"),
    (lambda t: ["--listens", t["visible"], "--recommendations", t["recommendations"],
                "--cold_songs", -1], "--cold_songs -1.0 must be between 0 and 1"),
    (lambda t: ["--listens", t["visible"], "--recommendations", t["recommendations"],
                "--cold_songs", 0.3, "--seed", -1], "--seed -1 must be 0 or more"),
])
def test_a_careless_user_gets_one_line_naming_the_path_and_cause(capsys, tiny, make_args,
                                                                 message):
    args = make_args(tiny)
    if "--holdout_fraction" not in args:
        args += ["--holdout_fraction", 0.5]
    if not any(flag in args for flag in ("--features", "--model_dir", "--recommendations")):
        args += ["--recommendations", tiny["recommendations"]]
    code, out, err = run_main(capsys, *args, "--output_dir", tiny["out"])
    assert code == 1, err
    assert err.startswith("evaluate: error: ") and message.format(tmp=tiny["tmp"]) in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not tiny["out"].exists()


def test_a_damaged_model_dir_is_one_line_naming_the_file(capsys, tiny, monkeypatch):
    from recommend import models
    from recommend.models import base
    from tests.test_train_pipeline import ReverseIdModel

    monkeypatch.setitem(models.MODELS, ReverseIdModel.kind, ReverseIdModel)
    model_dir = tiny["tmp"] / "model"
    base.save_model(ReverseIdModel(np.array([song(c) for c in "ABCDE"], dtype=object)),
                    str(model_dir))
    args = ["--visible", tiny["visible"], "--hidden", tiny["hidden"], "--model_dir", model_dir,
            "--output_dir", tiny["out"]]
    assert run_main(capsys, *args)[0] == 0  # whole, it is used
    text = (model_dir / "model.json").read_text()
    (model_dir / "model.json").write_text(text[:len(text) // 2])
    code, _, err = run_main(capsys, *args)
    assert code == 1 and f"--model_dir {model_dir}: {model_dir}/model.json is not valid JSON" \
        in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("where, message", [
    ("a_file", "--output_dir {tmp}/a_file: is a file, not a folder"),
    ("a_file/sub", "--output_dir {tmp}/a_file/sub: cannot be made: {tmp}/a_file is a file, "
                   "not a folder"),
])
def test_an_output_dir_that_cannot_be_written_is_refused_before_the_work(capsys, tiny, where,
                                                                         message):
    (tiny["tmp"] / "a_file").write_text("mine")
    code, _, err = run_main(capsys, "--visible", tiny["visible"], "--hidden", tiny["hidden"],
                            "--recommendations", tiny["recommendations"], "--output_dir",
                            tiny["tmp"] / where)
    assert code == 1 and err.strip() == f"evaluate: error: {message.format(tmp=tiny['tmp'])}"
    assert (tiny["tmp"] / "a_file").read_text() == "mine"


def test_a_split_that_would_replace_its_own_input_is_refused(capsys, tiny):
    code, _, err = run_main(capsys, "--listens", tiny["visible"], "--holdout_fraction", 0.5,
                            "--write_split", tiny["tmp"])
    assert code == 1 and (f"--write_split: writing {tiny['tmp'] / 'visible.txt'} would replace "
                          f"--listens {tiny['visible']}") in err, err
    assert open(tiny["visible"]).read().count("\n") == sum(map(len, VISIBLE.values()))


def test_a_full_disk_while_writing_the_report_leaves_the_previous_one(capsys, tiny,
                                                                      monkeypatch):
    import errno
    import pathlib

    args = ["--visible", tiny["visible"], "--hidden", tiny["hidden"], "--recommendations",
            tiny["recommendations"], "--output_dir", tiny["out"]]
    assert run_main(capsys, *args)[0] == 0
    before = {path.name: path.read_bytes() for path in tiny["out"].iterdir()}
    real_write_text = pathlib.Path.write_text

    def disk_full(self, *a, **k):
        if self.name == f".{evaluate.REPORT_FILE}.partial":  # metrics.json is already staged
            real_write_text(self, "<html>half a pa", encoding="utf-8")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write_text(self, *a, **k)

    monkeypatch.setattr(pathlib.Path, "write_text", disk_full)
    code, _, err = run_main(capsys, *args, "--title", "a second run")
    assert code == 1 and err.strip() == (
        f"evaluate: error: --output_dir {tiny['out']}: cannot write metrics.json and "
        "report.html (No space left on device)")
    assert {path.name: path.read_bytes() for path in tiny["out"].iterdir()} == before


def test_the_cli_ends_a_damaged_input_with_one_line_and_leaves_no_temporary_files(tiny,
                                                                                   tmp_path):
    """As a user runs it (subprocess): exit status 1, one line, no traceback, no native
    noise, and nothing left in the temporary folder."""
    import os
    import subprocess
    import sys

    cut = _gzip_cut(tiny["visible"], 60)
    (tmp_path / "temp").mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.evaluate", "--listens", cut, "--holdout_fraction",
         "0.5", "--recommendations", tiny["recommendations"], "--output_dir", str(tiny["out"])],
        capture_output=True, text=True, timeout=300,
        env=dict(os.environ, TMPDIR=str(tmp_path / "temp")))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"evaluate: error: --listens {cut}: cannot be read: the gzip stream ends before its "
        "end-of-stream marker after 60 compressed bytes"], result.stderr
    assert os.listdir(tmp_path / "temp") == []
