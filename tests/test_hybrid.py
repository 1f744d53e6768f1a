"""The hybrid model (recommend/models/hybrid.py): content → ALS factor directions for songs
without listens, its fold-in against ALS's, its model directory, and the whole path
train --model hybrid → recommend --model_dir → evaluate --cold_songs on synthetic data."""
import json
import pathlib

import numpy as np
import pyarrow.parquet as pq
import pytest

from msd import listening
from pipelines import evaluate, recommend, train
from recommend import models
from recommend.models import base
from recommend.models.als import ALSModel
from recommend.models.hybrid import HybridModel, HybridParameters, hybrid_factors, unit_rows


def song(i: int) -> str:
    return f"SO{i:016d}"


def clustered_songs(seed=0, clusters=4, per_cluster=60, dims=20, factors=8):
    """Songs in ``clusters`` content clusters whose ALS factors point along one direction per
    cluster (plus noise, norms spread like popularity): what a style does to real factors."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dims)) * 3
    directions = unit_rows(rng.normal(size=(clusters, factors)))
    cluster = np.repeat(np.arange(clusters), per_cluster)
    inputs = (centres[cluster] + rng.normal(size=(len(cluster), dims))).astype(np.float32)
    factors_ = unit_rows(directions[cluster] + 0.3 * rng.normal(size=(len(cluster), factors)))
    factors_ *= rng.uniform(0.2, 2.0, size=(len(cluster), 1))
    return inputs, factors_.astype(np.float32), cluster


FAST = HybridParameters(target_min_listeners=2, hidden_units=32, epochs=80, holdout=0.2, seed=3)


def test_a_held_out_song_gets_factors_close_to_its_warm_neighbours():
    inputs, factors, cluster = clustered_songs()
    held = np.arange(len(cluster)) % 10 == 0  # a tenth of every cluster: no listens
    als_rows = np.flatnonzero(~held)
    listeners = np.where(held, 0, 5)
    out, trained, metrics = hybrid_factors(inputs, als_rows, factors[als_rows], listeners, FAST,
                                           log=lambda _: None)
    assert trained.tolist() == (~held).tolist()
    np.testing.assert_array_equal(out[als_rows], factors[als_rows])  # warm songs keep ALS's
    centroids = unit_rows(np.stack([factors[als_rows][cluster[als_rows] == c].mean(0)
                                    for c in range(4)]))
    predicted = unit_rows(out[held].astype(np.float64))
    similarity = predicted @ centroids.T  # [held songs, clusters]
    own = similarity[np.arange(held.sum()), cluster[held]]
    assert (similarity.argmax(axis=1) == cluster[held]).all()
    assert own.mean() > 0.8
    norms = np.linalg.norm(out[held], axis=1)
    np.testing.assert_allclose(norms, metrics["predicted_norm"], rtol=1e-5)
    assert metrics["predicted_norm"] == pytest.approx(
        np.median(np.linalg.norm(factors[als_rows], axis=1)), rel=1e-5)
    # The held-out validation songs of the network: far better than one mean direction.
    assert metrics["validation_cosine"] > metrics["validation_cosine_mean_direction"] + 0.3
    assert len(metrics["validation_loss"]) == FAST.epochs


def test_training_with_a_seed_is_deterministic():
    inputs, factors, cluster = clustered_songs(seed=1)
    held = np.arange(len(cluster)) % 7 == 0
    rows = np.flatnonzero(~held)
    runs = [hybrid_factors(inputs, rows, factors[rows], np.where(held, 0, 5), FAST,
                           log=lambda _: None) for _ in range(2)]
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    assert runs[0][2]["training_loss"] == runs[1][2]["training_loss"]
    other = hybrid_factors(inputs, rows, factors[rows], np.where(held, 0, 5),
                           HybridParameters(**{**FAST.__dict__, "seed": 4}), log=lambda _: None)
    assert not np.array_equal(other[0][held], runs[0][0][held])


def hybrid_with_cold_songs(songs=30, warm=24, factors=4, seed=2):
    rng = np.random.default_rng(seed)
    trained = np.arange(songs) < warm
    return HybridModel(np.array([song(i) for i in range(songs)], dtype=object),
                       rng.normal(size=(songs, factors)).astype(np.float32),
                       np.where(trained, rng.integers(1, 9, size=songs), 0), trained,
                       regularization=0.5, alpha=3.0)


def test_a_history_of_trained_songs_gets_exactly_its_als_user_vector():
    """The fold-in's Gram is over the ALS songs only: the hybrid and the ALS model of those
    songs give a user the same factors, so warm songs are scored exactly as by ALS."""
    hybrid = hybrid_with_cold_songs()
    warm = np.flatnonzero(hybrid.trained)
    als = ALSModel(hybrid.song_ids[warm], hybrid.item_factors[warm],
                   hybrid.popularity.listeners[warm], regularization=0.5, alpha=3.0)
    histories = [np.array([0, 3, 7]), np.array([5]), np.arange(2, 20, 3)]
    counts = [np.arange(1, len(h) + 1) for h in histories]
    np.testing.assert_array_equal(hybrid.user_factors(histories, counts),
                                  als.user_factors(histories, counts))
    ranked = hybrid.recommend(histories, counts, k=10)
    scores = hybrid.user_factors(histories, counts) @ hybrid.item_factors.T.astype(np.float64)
    for user, history in enumerate(histories):
        scores[user, history] = -np.inf
        assert ranked.rows[user].tolist() == np.lexsort((np.arange(30), -scores[user]))[:10].tolist()


def test_the_model_directory_round_trips_and_refuses_a_missing_or_misshapen_array(tmp_path):
    model = hybrid_with_cold_songs()
    base.save_model(model, str(tmp_path / "m"))
    loaded = models.load_model(str(tmp_path / "m"))
    assert loaded.kind == "hybrid" and loaded.trained.tolist() == model.trained.tolist()
    np.testing.assert_array_equal(loaded.item_factors, model.item_factors)

    (tmp_path / "m" / "trained.npy").unlink()
    with pytest.raises(models.ModelError, match="trained.npy"):
        models.load_model(str(tmp_path / "m"))

    base.save_model(model, str(tmp_path / "n"))
    np.save(tmp_path / "n" / "trained.npy", model.trained[:-1])
    manifest = json.loads((tmp_path / "n" / "model.json").read_text())
    manifest["arrays"]["trained"]["shape"] = [29]
    (tmp_path / "n" / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(models.ModelError, match=r"hybrid: trained must be one bool per song"):
        models.load_model(str(tmp_path / "n"))
    np.save(tmp_path / "n" / "trained.npy", model.trained.astype(np.int8))
    manifest["arrays"]["trained"]["shape"] = [30]
    (tmp_path / "n" / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(models.ModelError, match=r"trained.npy: shape \(30,\) dtype int8"):
        models.load_model(str(tmp_path / "n"))
    with pytest.raises(models.ModelError, match="no song has ALS factors"):
        HybridModel(model.song_ids, model.item_factors, model.popularity.listeners,
                    np.zeros(30, bool))


def test_train_recommend_and_evaluate_cold_start(tmp_path, synthetic_sample, synthetic_features,
                                                 capsys):
    """The whole path: a split with cold songs, the hybrid trained on its visible half with the
    features, the batch job serving it, and the cold-start evaluation."""
    features_dir, _ = synthetic_features
    listens = pathlib.Path(synthetic_sample.output_dir) / "train_triplets.txt"
    split = tmp_path / "split"
    common = ["--listens", str(listens), "--holdout_fraction", "0.5", "--seed", "2",
              "--cold_songs", "0.2"]
    assert evaluate.main(common + ["--write_split", str(split)]) == 0
    cold = set((split / "cold_songs.txt").read_text().split())
    visible_songs = {r.song_id for r in listening.read_listens(str(split / "visible.txt"))}
    hidden_songs = {r.song_id for r in listening.read_listens(str(split / "hidden.txt"))}
    all_songs = {r.song_id for r in listening.read_listens(str(listens))}
    assert len(cold) == round(0.2 * len(all_songs)) and not cold & visible_songs
    assert cold <= hidden_songs

    summary = train.run(["--model", "hybrid", "--features", str(features_dir), "--listens",
                         str(split / "visible.txt"), "--output_dir", str(tmp_path / "hybrid"),
                         "--epochs", "10", "--iterations", "5", "--factors", "16"])
    assert summary["listens_reconcile"]
    manifest = base.read_manifest(str(tmp_path / "hybrid"))
    network = manifest["metrics"]["content_network"]
    assert manifest["kind"] == "hybrid" and network["validation_songs"] > 0
    assert network["songs_with_predicted_factors"] >= len(cold)
    model = models.load_model(str(tmp_path / "hybrid"))
    assert cold <= set(model.song_ids.tolist())  # every song with features is in the catalogue
    assert not model.trained[np.isin(model.song_ids, sorted(cold))].any()

    output = tmp_path / "recommendations"
    recommend.run(["--model_dir", str(tmp_path / "hybrid"), "--features", str(features_dir),
                   "--listens", str(split / "visible.txt"), "--output", str(output),
                   "--k", "20", "--run_date", "2026-11-30"])
    rows = pq.read_table(output / "run_date=2026-11-30" / "model=hybrid").to_pylist()
    recommended = {r["song_id"] for row in rows for r in row["recommendations"]}
    assert recommended & cold  # songs nobody listened to are recommended

    assert evaluate.main(common + ["--features", str(features_dir), "--model_dir",
                                   str(tmp_path / "hybrid"), "--k", "50", "--blend", "",
                                   "--output_dir", str(tmp_path / "eval")]) == 0
    assert "cold songs: recall@50" in capsys.readouterr().out
    report = json.loads((tmp_path / "eval" / evaluate.METRICS_FILE).read_text())
    assert report["inputs"]["cold_songs"]["songs"] == len(cold)
    by_model = {name: m["cold_start"] for name, m in report["models"].items()}
    assert by_model["hybrid"]["cold"]["recall"] > 0 and by_model["hybrid"]["cold_share"] > 0
    assert by_model["popularity"]["cold"]["recall"] == 0 == by_model["popularity"]["cold_share"]
    assert by_model["hybrid"]["warm"]["users"] > 0
