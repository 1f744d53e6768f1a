"""ALS (recommend/models/als.py, pipelines.train --model als): the fold-in against a direct
float64 solve and implicit's own recalculate_user for users seen and unseen, seeded
determinism, model directory errors, and the whole path train → recommend → evaluate."""
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp

from msd import listening
from pipelines import evaluate, recommend, train
from recommend import models
from recommend.models import als, base

RUN_DATE = "2026-11-30"


def song(i: int) -> str:
    return f"SO{i:016d}"


def play_counts(seed=0, users=150, songs=60, density=0.12) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    dense = (rng.random((users, songs)) < density) * rng.integers(1, 30, (users, songs))
    dense[np.arange(users), rng.integers(0, songs, users)] += 1  # everyone listened once
    return sp.csr_matrix(dense.astype(np.int64))


def direct_user_factors(item_factors, history, counts, regularization, alpha, variant):
    """x_u = (YᵀY + Yᵀ(Cᵘ − I)Y + λI)⁻¹ YᵀCᵘp(u), plainly in float64 numpy."""
    y = item_factors.astype(np.float64)
    c = als.confidence(counts, alpha, variant)
    system = y.T @ y + regularization * np.eye(y.shape[1]) + (y[history].T * (c - 1)) @ y[history]
    return np.linalg.solve(system, y[history].T @ c)


@pytest.fixture(scope="module")
def trained():
    matrix = play_counts()
    parameters = als.ALSParameters(factors=6, regularization=0.5, alpha=3.0, confidence="log",
                                   iterations=4, seed=7, validation_fraction=0.2)
    item_factors, metrics = als.fit_als(matrix, parameters, log=lambda line: None)
    model = als.ALSModel(np.array([song(i) for i in range(matrix.shape[1])], dtype=object),
                         item_factors, np.bincount(matrix.indices, minlength=matrix.shape[1]),
                         regularization=0.5, alpha=3.0, confidence_variant="log")
    return matrix, parameters, item_factors, metrics, model


@pytest.mark.parametrize("variant, alpha", [("linear", 2.0), ("log", 5.0)])
def test_confidence_is_one_plus_alpha_times_the_play_count_or_its_log(variant, alpha):
    counts = np.array([1, 2, 10])
    expected = 1 + alpha * (counts if variant == "linear" else np.log(1 + counts))
    np.testing.assert_allclose(als.confidence(counts, alpha, variant), expected, rtol=1e-15)
    with pytest.raises(models.ModelError, match="unknown confidence 'sqrt'"):
        als.confidence(counts, alpha, "sqrt")


def test_fold_in_equals_a_direct_solve_and_implicits_recalculate_user(trained):
    """Users of the training matrix (seen) and new histories (unseen): our float64 fold-in is
    the direct solve to rounding, and implicit's recalculate_user (float32) on the same
    confidences to its float32 precision."""
    from implicit.cpu.als import AlternatingLeastSquares

    matrix, p, item_factors, _, model = trained
    rng = np.random.default_rng(3)
    seen = [(matrix.indices[matrix.indptr[u]:matrix.indptr[u + 1]].astype(np.int64),
             matrix.data[matrix.indptr[u]:matrix.indptr[u + 1]]) for u in range(0, 150, 10)]
    unseen = [(np.sort(rng.choice(60, size=size, replace=False)).astype(np.int64),
               rng.integers(1, 50, size)) for size in (1, 2, 7, 25, 59)]
    histories = [h for h, _ in seen + unseen]
    counts = [c for _, c in seen + unseen]
    ours = model.user_factors(histories, counts)

    direct = np.stack([direct_user_factors(item_factors, h, c, 0.5, 3.0, "log")
                       for h, c in zip(histories, counts)])
    np.testing.assert_allclose(ours, direct, rtol=1e-9, atol=1e-12)

    reference = AlternatingLeastSquares(factors=6, regularization=0.5, alpha=1.0)
    reference.item_factors = item_factors
    rows = np.repeat(np.arange(len(histories)), [len(h) for h in histories])
    user_items = sp.csr_matrix(
        (np.concatenate([als.confidence(c, 3.0, "log") for c in counts]).astype(np.float32),
         (rows, np.concatenate(histories))), shape=(len(histories), 60))
    theirs = reference.recalculate_user(np.arange(len(histories)), user_items)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4 * np.abs(theirs).max())
    # A seen user is served exactly as a new user with the same history (no stored user state).
    again = model.user_factors([histories[0]], [counts[0]])
    assert again[0].tolist() == ours[0].tolist()


def test_recommendations_rank_songs_by_the_folded_in_scores(trained):
    _, _, item_factors, _, model = trained
    history, counts = np.array([3, 17, 40]), np.array([1, 4, 2])
    result = model.recommend([history], [counts], k=10)
    scores = item_factors.astype(np.float64) @ direct_user_factors(item_factors, history, counts,
                                                                   0.5, 3.0, "log")
    scores[history] = -np.inf
    expected = np.lexsort((np.arange(60), -scores))[:10]
    assert result.rows[0].tolist() == expected.tolist() and result.filled[0] == 0
    np.testing.assert_allclose(result.scores[0], scores[expected], rtol=1e-9)


def test_a_user_with_no_known_song_gets_the_most_popular_songs(trained):
    _, _, _, _, model = trained
    result = model.recommend([np.zeros(0, np.int64), np.array([0])], [None, None], k=5)
    assert result.rows[0].tolist() == model.popularity.top(np.zeros(0, np.int64), 5).tolist()
    assert result.filled.tolist() == [5, 0]


def test_training_with_a_seed_is_repeatable_and_reports_its_progress(trained):
    matrix, p, item_factors, metrics, _ = trained
    again, metrics_again = als.fit_als(matrix, p, log=lambda line: None)
    assert again.dtype == np.float32 and again.shape == (60, 6)
    assert np.array_equal(again, item_factors)
    assert metrics_again["validation_map"] == metrics["validation_map"]
    other, _ = als.fit_als(matrix, als.ALSParameters(**{**p.__dict__, "seed": 8}),
                           log=lambda line: None)
    assert not np.array_equal(other, item_factors)
    assert len(metrics["training_loss"]) == p.iterations == len(metrics["iteration_seconds"])
    assert metrics["validation_iterations"] == metrics["loss_iterations"] == [1, 2, 3, 4]  # ≤ 5: all
    long_fit = als.ALSParameters(**{**p.__dict__, "iterations": 12})
    _, spaced = als.fit_als(matrix, long_fit, log=lambda line: None)
    assert spaced["loss_iterations"] == spaced["validation_iterations"] == [3, 6, 9, 12]
    assert len(metrics["validation_map"]) == 4
    assert metrics["training_loss"][-1] < metrics["training_loss"][0]
    assert metrics["validation_users"] == 30 and metrics["validation_hidden_listens"] > 0


def test_the_validation_split_hides_half_of_each_chosen_users_songs():
    matrix = play_counts(seed=1)
    train_part, users, hidden = als.validation_split(matrix, 0.2, seed=4)
    assert len(users) == 30
    assert (train_part + hidden - matrix).nnz == 0  # nothing lost, nothing added
    lengths = np.diff(matrix.indptr)
    assert np.diff(hidden.indptr)[users].tolist() == (lengths[users] // 2).tolist()
    others = np.setdiff1d(np.arange(150), users)
    assert np.diff(hidden.indptr)[others].sum() == 0
    assert als.validation_split(matrix, 0.0, seed=4)[1].size == 0


def test_model_directory_errors_are_clear(trained, tmp_path):
    _, _, _, _, model = trained
    base.save_model(model, str(tmp_path / "m"))
    loaded = models.load_model(str(tmp_path / "m"))
    assert loaded.kind == "als" and loaded.parameters() == model.parameters()
    history = [np.array([1, 5])]
    assert (loaded.recommend(history, [None], 7).rows == model.recommend(history, [None], 7).rows
            ).all()

    (tmp_path / "m" / "item_factors.npy").unlink()
    with pytest.raises(models.ModelError, match="cannot read .*item_factors.npy"):
        models.load_model(str(tmp_path / "m"))

    base.save_model(model, str(tmp_path / "n"))
    manifest = json.loads((tmp_path / "n" / "model.json").read_text())
    del manifest["arrays"]["listeners"]
    (tmp_path / "n" / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(models.ModelError, match="lists no array 'listeners'"):
        models.load_model(str(tmp_path / "n"))

    # Factors for the wrong number of songs, consistently described in model.json.
    base.save_model(model, str(tmp_path / "o"))
    np.save(tmp_path / "o" / "item_factors.npy", model.item_factors[:-1])
    manifest = json.loads((tmp_path / "o" / "model.json").read_text())
    manifest["arrays"]["item_factors"]["shape"] = [59, 6]
    (tmp_path / "o" / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(models.ModelError, match=r"item factors of shape \(59, 6\) for 60 songs"):
        models.load_model(str(tmp_path / "o"))

    manifest["arrays"]["item_factors"]["shape"] = [60, 6]
    (tmp_path / "o" / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(models.ModelError, match=r"item_factors.npy: shape \(59, 6\)"):
        models.load_model(str(tmp_path / "o"))


def test_train_als_then_recommend_and_evaluate(synthetic_sample, tmp_path):
    """pipelines.train --model als → pipelines.recommend --model_dir and pipelines.evaluate."""
    triplets = synthetic_sample.triplets_path
    split = tmp_path / "split"
    assert evaluate.main(["--listens", triplets, "--holdout_fraction", "0.5", "--seed", "1",
                          "--write_split", str(split), "--output_dir", str(tmp_path / "e0")]) == 0
    summary = train.run(["--model", "als", "--listens", str(split / "visible.txt"),
                         "--output_dir", str(tmp_path / "als"), "--factors", "8",
                         "--iterations", "4", "--seed", "3"])
    assert summary["model"] == "als" and summary["parameters"]["factors"] == 8
    manifest = base.read_manifest(str(tmp_path / "als"))
    assert manifest["kind"] == "als" and manifest["parameters"]["seed"] == 3
    assert len(manifest["metrics"]["training_loss"]) == 4
    assert manifest["metrics"]["validation_iterations"] == [1, 2, 3, 4]
    assert manifest["training"]["user_song_pairs"] == summary["listens_used"]

    output = tmp_path / "recs"
    recommend.run(["--model_dir", str(tmp_path / "als"), "--listens", str(split / "visible.txt"),
                   "--output", str(output), "--k", "10", "--run_date", RUN_DATE])
    rows = pq.read_table(f"{output}/run_date={RUN_DATE}/model=als").to_pylist()
    listened = {}
    for record in listening.read_listens(str(split / "visible.txt")):
        listened.setdefault(record.user_id, set()).add(record.song_id)
    assert {row["user_id"] for row in rows} == set(listened)
    for row in rows:
        songs = [r["song_id"] for r in row["recommendations"]]
        assert len(songs) == 10 == len(set(songs)) and not set(songs) & listened[row["user_id"]]

    out = tmp_path / "evaluation"
    assert evaluate.main(["--listens", triplets, "--holdout_fraction", "0.5", "--seed", "1",
                          "--model_dir", str(tmp_path / "als"), "--k", "20",
                          "--output_dir", str(out)]) == 0
    report = json.loads((out / evaluate.METRICS_FILE).read_text())["models"]
    assert report["als"]["users"] == report["random"]["users"] > 0
    assert report["als"]["fallback_share"] == 0  # every user was scored by the model
    # Synthetic listening follows styles: the factors find them (seed 1: mAP@20 0.089 against
    # popularity's 0.062 and random's 0.033 over 200 users).
    assert report["als"]["map"] > report["popularity"]["map"] > report["random"]["map"]


@pytest.mark.parametrize("args, message", [
    (["--factors", "0"], "--factors must be at least 1"),
    (["--regularization", "0"], "--regularization must be positive"),
    (["--als_alpha", "-1"], "--als_alpha must be positive"),
    (["--confidence", "sqrt"], "--confidence must be one of linear, log"),
    (["--validation_fraction", "1"], r"--validation_fraction must be in \[0, 1\)"),
])
def test_bad_als_options_are_explained(args, message, tmp_path):
    with pytest.raises(SystemExit, match=message):
        train.run(["--model", "als", "--listens", "l.txt", "--output_dir",
                   str(tmp_path / "m")] + args)
