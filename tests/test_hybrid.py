"""The hybrid model (recommend/models/hybrid.py): content → ALS factor directions for songs
without listens, its fold-in against ALS's, its model directory, and the whole path
train --model hybrid → recommend --model_dir → evaluate --cold_songs on synthetic data."""
import json
import pathlib

import numpy as np
import scipy.sparse as sp
import pyarrow.parquet as pq
import pytest

from msd import listening
from pipelines import evaluate, recommend, train
from recommend import models
from recommend.models import base
from recommend.models.als import ALSModel
from recommend import metrics as metrics_lib
from recommend.models import als as als_lib
from recommend.models import hybrid as hybrid_lib
from recommend.models.hybrid import HybridModel, HybridParameters, hybrid_factors, unit_rows
from transforms import training


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
    out, content, trained, metrics = hybrid_factors(inputs, als_rows, factors[als_rows],
                                                    listeners, FAST, log=lambda _: None)
    assert trained.tolist() == (~held).tolist()
    assert metrics["content_weight"] == 0 and not content.any()  # no validation users
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
    assert runs[0][3]["training_loss"] == runs[1][3]["training_loss"]
    other = hybrid_factors(inputs, rows, factors[rows], np.where(held, 0, 5),
                           HybridParameters(**{**FAST.__dict__, "seed": 4}), log=lambda _: None)
    assert not np.array_equal(other[0][held], runs[0][0][held])


def validation_case(seed=5, users=60, songs=80, cold=20, factors=6):
    """ALS-like factors for ``songs`` (the last ``cold`` predicted), and validation users whose
    visible and held-out songs follow their taste (so the lists have hits)."""
    rng = np.random.default_rng(seed)
    item_factors = rng.normal(size=(songs, factors)).astype(np.float32)
    trained = np.arange(songs) < songs - cold
    taste = rng.normal(size=(users, factors))
    histories, hidden = [], []
    for u in range(users):
        liked = np.argsort(-(item_factors[:songs - cold] @ taste[u]))[:12]
        liked = rng.permutation(liked)
        histories.append(np.sort(liked[:6]))
        hidden.append(np.sort(liked[6:]))
    validation = hybrid_lib.ValidationUsers(
        histories=histories, confidences=[np.full(6, 2.0) for _ in range(users)],
        hidden=hidden, regularization=0.5)
    return item_factors, trained, validation


def floor_list(scores, trained, k, floor):
    """A list as served with a cold floor, by brute force: the best k, then while it holds
    fewer than ``floor`` songs without ALS factors (and one is left), the worst song with
    ALS factors in it makes way for the best song without them not yet in it."""
    order = [int(i) for i in np.lexsort((np.arange(len(scores)), -scores))
             if np.isfinite(scores[i])]
    chosen = order[:k]
    while sum(not trained[i] for i in chosen) < floor:
        spare = [i for i in order if not trained[i] and i not in chosen]
        if not spare:
            break
        worst_warm = max((i for i in chosen if trained[i]), key=chosen.index)
        chosen.remove(worst_warm)
        chosen.append(spare[0])
    return np.array(sorted(chosen, key=order.index), np.int64)


def brute_force_maps(item_factors, content, trained, validation, weight, scale, k=500,
                     with_cold=True, share=0.0):
    """The validation users' AP, every catalogue song scored as served (kernel-free)."""
    fold = als_lib.ALSFoldIn(item_factors, validation.regularization, np.flatnonzero(trained))
    x = fold.user_factors(validation.histories, validation.confidences)
    profiles = hybrid_lib.content_profiles(content, validation.histories)
    y = item_factors.astype(np.float64).copy()
    y[~trained] *= scale
    lists = []
    for u, history in enumerate(validation.histories):
        scores = y @ x[u] + weight * (content.astype(np.float64) @ profiles[u])
        scores[history] = -np.inf
        if not with_cold:
            scores[~trained] = -np.inf
        floor = hybrid_lib.cold_floor(share, k, len(trained), [len(trained) - len(history)])[0]
        lists.append(floor_list(scores, trained, k, floor))
    offsets = np.concatenate([[0], np.cumsum([len(l) for l in lists])])
    hidden_offsets = np.concatenate([[0], np.cumsum([len(h) for h in validation.hidden])])
    relevant = metrics_lib.batch_relevance(offsets, np.concatenate(lists), hidden_offsets,
                                           np.concatenate(validation.hidden))
    return metrics_lib.batch_user_scores(relevant, offsets, np.diff(hidden_offsets),
                                         map_cutoff=k)["average_precision"]


def test_the_validation_maps_equal_ranking_the_whole_catalogue():
    item_factors, trained, validation = validation_case()
    content = unit_rows(np.random.default_rng(9).normal(size=(len(trained), 5)))
    weights, scales, shares = (0.0, 0.4), (0.3, 1.0, 1.7), (0.0, 0.2, 0.5)
    for k in (500, 10):
        alone, warm_only, mixed = hybrid_lib.validation_maps(
            item_factors, content, trained, validation, weights, scales, shares, k=k)
        np.testing.assert_allclose(alone, brute_force_maps(
            item_factors, content, trained, validation, 0.0, 1.0, k=k, with_cold=False),
            rtol=1e-9)
        for j, weight in enumerate(weights):
            np.testing.assert_allclose(warm_only[j], brute_force_maps(
                item_factors, content, trained, validation, weight, 1.0, k=k,
                with_cold=False), rtol=1e-9)
            for f, share in enumerate(shares):
                for row, scale in enumerate(scales):
                    np.testing.assert_allclose(mixed[j, f, row], brute_force_maps(
                        item_factors, content, trained, validation, weight, scale, k=k,
                        share=share), rtol=1e-9)
    assert mixed[0, 0, 0].mean() > mixed[0, 0, 2].mean()  # louder cold songs cost warm ones
    assert mixed[0, 0, 0].mean() > mixed[0, 2, 0].mean()  # and so does a larger floor


def test_the_weight_and_scale_come_from_the_validation_users_and_are_deterministic():
    item_factors, trained, validation = validation_case()
    # Content that knows the users' taste a little: the blend helps the warm songs.
    rng = np.random.default_rng(11)
    content = unit_rows(item_factors + 2.0 * rng.normal(size=item_factors.shape))
    weight, share, scale, metrics = hybrid_lib.choose_blend(item_factors, content, trained,
                                                            validation, 0.05)
    assert (weight, share, scale, metrics) == hybrid_lib.choose_blend(
        item_factors, content, trained, validation, 0.05)
    assert share == metrics["catalogue_cold_share"] == 20 / 80  # the default share
    alone, warm_only, mixed = hybrid_lib.validation_maps(
        item_factors, content, trained, validation, hybrid_lib.BLEND_GRID,
        hybrid_lib.SCALE_GRID, (share,))
    j = hybrid_lib.BLEND_GRID.index(weight)
    best = warm_only.mean(1).argmax()
    assert warm_only[j].mean() >= warm_only[0].mean() and j <= best
    # The budget is against the blend over the warm songs alone (its gain is not spent).
    ratio = mixed[j, 0].mean(1) / warm_only[j].mean()
    chosen = hybrid_lib.SCALE_GRID.index(scale)
    assert (ratio[:chosen + 1] >= 0.95).all()
    assert chosen == len(ratio) - 1 or ratio[chosen + 1] < 0.95
    assert metrics["validation_warm_map_ratio"] == pytest.approx(ratio[chosen], abs=1e-6)
    assert metrics["cold_scale_chosen_by"] == "validation"
    assert hybrid_lib.choose_blend(item_factors, content, trained, validation, 0.3)[2] > scale
    assert hybrid_lib.choose_blend(item_factors, content, trained, validation, 0.05,
                                   cold_share=0.1)[1] == 0.1
    assert hybrid_lib.choose_blend(item_factors, content, trained, None, 0.05)[:3] == (
        0.0, 0.25, 1.0)


def test_the_cold_floor_is_the_share_of_the_catalogue_among_the_songs_left():
    # 20 % of 1,000 songs are new: a user who heard 200 others has 800 left, 200 of them new.
    assert hybrid_lib.cold_floor(0.2, 500, 1000, [1000, 800, 1]).tolist() == [100, 125, 500]
    assert hybrid_lib.cold_floor(0.0, 500, 1000, [800]).tolist() == [0]
    assert hybrid_lib.cold_floor(0.01, 8, 30, [30]).tolist() == [0]  # rounds to none


def test_the_scale_is_chosen_on_the_listens_the_als_fit_left_out():
    """The validation users are ALS's own (same fraction and seed): their held-out listens are
    exactly the ones fit_als did not train on, and the scale comes from the training data."""
    rng = np.random.default_rng(0)
    matrix = sp.random(200, 50, density=0.2, random_state=1, format="csr")
    matrix.data = rng.integers(1, 5, size=matrix.nnz).astype(np.float64)
    parameters = als_lib.ALSParameters(factors=4, iterations=2, validation_fraction=0.2, seed=3)
    als_rows = np.arange(50) * 2 + 1  # catalogue rows of the ALS songs
    validation = training.hybrid_validation_users(matrix, als_rows, parameters)
    _, metrics = als_lib.fit_als(matrix, parameters, log=lambda _: None)
    assert sum(len(h) for h in validation.hidden) == metrics["validation_hidden_listens"]
    assert len(validation.hidden) == metrics["validation_users"] == 40
    _, users, hidden = als_lib.validation_split(matrix, 0.2, 3)
    for i, user in enumerate(users):
        songs = matrix.indices[matrix.indptr[user]:matrix.indptr[user + 1]]
        held = hidden.indices[hidden.indptr[user]:hidden.indptr[user + 1]]
        assert validation.hidden[i].tolist() == als_rows[held].tolist()
        assert sorted(validation.histories[i].tolist() + validation.hidden[i].tolist()) == \
            als_rows[songs].tolist()
        assert np.isin(validation.histories[i] % 2, 1).all()


def test_the_predicted_songs_get_the_median_norm_times_the_validation_scale():
    inputs, factors, cluster = clustered_songs(seed=2)
    held = np.arange(len(cluster)) % 10 == 0
    rows = np.flatnonzero(~held)
    rng = np.random.default_rng(4)
    histories, hidden = [], []
    for user in range(40):  # each user likes one cluster's warm songs
        liked = rng.permutation(rows[cluster[rows] == user % 4])[:16]
        histories.append(np.sort(liked[:8]))
        hidden.append(np.sort(liked[8:]))
    validation = hybrid_lib.ValidationUsers(histories, [np.full(8, 3.0)] * 40, hidden, 0.5)
    out, content, trained, metrics = hybrid_factors(
        inputs, rows, factors[rows], np.where(held, 0, 5), FAST, validation=validation,
        log=lambda _: None)
    median = np.median(np.linalg.norm(factors[rows], axis=1))
    assert metrics["cold_scale_chosen_by"] == "validation" and 0 < metrics["cold_scale"] <= 2
    assert metrics["validation_warm_map_ratio"] >= 0.95
    np.testing.assert_allclose(np.linalg.norm(out[held], axis=1),
                               metrics["cold_scale"] * median, rtol=1e-5)
    again = hybrid_factors(inputs, rows, factors[rows], np.where(held, 0, 5), FAST,
                           validation=validation, log=lambda _: None)
    np.testing.assert_array_equal(again[0], out)
    np.testing.assert_array_equal(again[1], content)
    assert metrics["content_weight"] in hybrid_lib.BLEND_GRID
    np.testing.assert_allclose(np.linalg.norm(content, axis=1), metrics["content_weight"],
                               rtol=1e-5)


def hybrid_with_cold_songs(songs=30, warm=24, factors=4, seed=2, weight=0.3, cold_share=0.0):
    rng = np.random.default_rng(seed)
    trained = np.arange(songs) < warm
    content = (weight * unit_rows(rng.normal(size=(songs, 6)))).astype(np.float32)
    return HybridModel(np.array([song(i) for i in range(songs)], dtype=object),
                       rng.normal(size=(songs, factors)).astype(np.float32),
                       np.where(trained, rng.integers(1, 9, size=songs), 0), trained, content,
                       hybrid={"cold_share": cold_share}, regularization=0.5, alpha=3.0)


def test_a_history_of_trained_songs_gets_exactly_its_als_user_vector():
    """The fold-in's Gram is over the ALS songs only: the hybrid and the ALS model of those
    songs give a user the same factors; a song's score adds the weighted cosine of its
    content to the mean content of the user's history (one kernel pass)."""
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
    content = hybrid.content.astype(np.float64)
    for user, history in enumerate(histories):
        profile = unit_rows(content[history].mean(0, keepdims=True))[0]
        scores[user] += content @ profile
        scores[user, history] = -np.inf
        assert ranked.rows[user].tolist() == np.lexsort((np.arange(30), -scores[user]))[:10].tolist()


def served_scores(hybrid, histories, counts):
    """Every song's score as served (ALS fold-in · factors + weighted content cosine)."""
    scores = hybrid.user_factors(histories, counts) @ hybrid.item_factors.T.astype(np.float64)
    content = hybrid.content.astype(np.float64)
    for user, history in enumerate(histories):
        scores[user] += content @ unit_rows(content[history].mean(0, keepdims=True))[0]
        scores[user, history] = -np.inf
    return scores


def test_every_list_holds_the_cold_share_of_new_songs_and_is_otherwise_ranked_by_score():
    """With a cold share, a list holds at least round(share × k) songs without ALS factors
    (the best of them by score), the rest the best songs with factors, in score order; a user
    who heard most songs of one kind gets what is left of it and more of the other."""
    hybrid = hybrid_with_cold_songs(cold_share=0.5)  # 24 songs with ALS factors, 6 without
    histories = [np.array([0, 3, 7]), np.array([5]), np.arange(2, 20, 3),
                 np.array([1, 24, 25, 26, 27, 28]),  # 5 of the 6 new songs heard
                 np.concatenate([np.arange(20), [29]])]  # 4 + 5 left: floor 8 × 0.5 × 30 / 9
    counts = [np.ones(len(h)) for h in histories]
    scores = served_scores(hybrid, histories, counts)
    for k in (8, 5, 1):
        ranked = hybrid.recommend(histories, counts, k=k)
        for user in range(len(histories)):
            expected = floor_list(scores[user], hybrid.trained, k, hybrid_lib.cold_floor(
                0.5, k, 30, [30 - len(histories[user])])[0])
            assert ranked.rows[user].tolist() == expected.tolist(), (k, user)
            np.testing.assert_allclose(ranked.scores[user], scores[user, expected], rtol=1e-12)
    ranked = hybrid.recommend(histories, counts, k=8)
    new = ~hybrid.trained[ranked.rows]
    assert new[:3].sum(axis=1).tolist() == [4, 4, 5]  # 8 × 0.5 × 30 / (27, 29, 24) songs left
    assert new[3].sum() == 1 and new[4].sum() == 5  # one new song left; all 5 left (floor 8)
    # A share that rounds to no song gives exactly the lists without a floor.
    plain = hybrid_with_cold_songs(cold_share=0.0).recommend(histories, counts, k=8)
    tiny = hybrid_with_cold_songs(cold_share=0.01).recommend(histories, counts, k=8)
    np.testing.assert_array_equal(tiny.rows, plain.rows)
    np.testing.assert_array_equal(tiny.scores, plain.scores)
    with pytest.raises(ValueError):
        hybrid.recommend([np.arange(28)], [np.ones(28)], k=3)  # 2 songs left


def test_the_cold_floor_is_exact_when_new_songs_win_more_places_than_first_asked_for():
    """The songs without ALS factors are first ranked to the floor plus a margin; a user whose
    new songs win more places than that is ranked again in full: the lists are still exact."""
    hybrid = hybrid_with_cold_songs(songs=300, warm=200, factors=3, seed=4, cold_share=0.2)
    rng = np.random.default_rng(8)
    histories = [np.sort(rng.choice(300, size=n, replace=False)) for n in (1, 3, 10, 40)]
    histories.append(np.arange(190))  # 10 songs with factors left: the new songs fill the rest
    counts = [np.ones(len(h)) for h in histories]
    scores = served_scores(hybrid, histories, counts)
    k = 100
    floors = hybrid_lib.cold_floor(0.2, k, 300, [300 - len(h) for h in histories])
    first = floors.max() + hybrid_lib.COLD_MARGIN + k // 8
    ranked = hybrid.recommend(histories, counts, k=k)
    taken = (~hybrid.trained[ranked.rows]).sum(axis=1)
    assert taken.max() > first and (taken >= floors).all() and floors[-1] == 55
    for user in range(len(histories)):
        expected = floor_list(scores[user], hybrid.trained, k, floors[user])
        assert ranked.rows[user].tolist() == expected.tolist(), user
        np.testing.assert_allclose(ranked.scores[user], scores[user, expected], rtol=1e-12)


def test_the_cold_floor_holds_when_k_exceeds_the_songs_with_als_factors():
    """Few songs with ALS factors and a small floor: the new songs fill the rest of k."""
    hybrid = hybrid_with_cold_songs(songs=60, warm=20, cold_share=0.05)
    histories, counts = [np.array([0, 1, 30])], [np.ones(3)]
    scores = served_scores(hybrid, histories, counts)
    for k in (30, 40, 50, 57):
        ranked = hybrid.recommend(histories, counts, k=k)
        floor = hybrid_lib.cold_floor(0.05, k, 60, [57])[0]
        assert ranked.rows[0].tolist() == floor_list(scores[0], hybrid.trained, k,
                                                     floor).tolist(), k


def test_a_cold_share_outside_zero_to_one_is_refused():
    for bad in (-0.1, 1.5, "half", None, True):
        with pytest.raises(base.ModelError, match="cold_share"):
            hybrid_with_cold_songs(cold_share=bad)


def test_the_model_directory_round_trips_and_refuses_a_missing_or_misshapen_array(tmp_path):
    model = hybrid_with_cold_songs()
    base.save_model(model, str(tmp_path / "m"))
    loaded = models.load_model(str(tmp_path / "m"))
    assert loaded.kind == "hybrid" and loaded.trained.tolist() == model.trained.tolist()
    np.testing.assert_array_equal(loaded.item_factors, model.item_factors)
    np.testing.assert_array_equal(loaded.content, model.content)

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
                    np.zeros(30, bool), model.content)
    with pytest.raises(models.ModelError, match=r"content must be float32 \[songs \(30\)"):
        HybridModel(model.song_ids, model.item_factors, model.popularity.listeners,
                    model.trained, model.content[:-1])
    base.save_model(model, str(tmp_path / "c"))
    (tmp_path / "c" / "content.npy").unlink()
    with pytest.raises(models.ModelError, match="content.npy"):
        models.load_model(str(tmp_path / "c"))


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


def test_content_inputs_encode_the_song_fields_and_their_unknown_values():
    """The feature job stores an unknown key as -1 and an unknown time signature as 0
    (msd.hdf5_reader.UNKNOWN): neither may pose as a real key (C) or a real signature."""
    from recommend.models.hybrid import TIME_SIGNATURES, content_inputs

    rng = np.random.default_rng(0)
    matrix, names = content_inputs({
        "raw_features": rng.normal(size=(4, 90)), "key": np.array([0, 11, -1, 5]),
        "mode": np.array([1, 0, -1, 1]), "time_signature": np.array([4, 3, 0, 7])})
    assert matrix.shape == (4, 90 + 12 + 1 + len(TIME_SIGNATURES)) and len(names) == len(
        matrix[0])
    key = matrix[:, names.index("key_0"):names.index("key_11") + 1]
    assert key.argmax(axis=1)[[0, 1, 3]].tolist() == [0, 11, 5]
    assert key[2].sum() == 0 and key.sum() == 3  # -1: unknown, no key column set
    assert matrix[:, names.index("mode_major")].tolist() == [1, 0, 0, 1]
    signature = matrix[:, names.index(f"time_signature_{TIME_SIGNATURES[0]}"):]
    assert signature.sum(axis=1).tolist() == [1, 1, 0, 1]  # 0: none found, no column set


def test_a_hybrid_without_the_blend_stores_no_content_columns_and_ranks_by_its_factors(tmp_path):
    """Weight 0 (the validation chose no blend): ``content`` has no columns, the model
    round-trips, and its lists are the ALS scores of its factors alone."""
    model = hybrid_with_cold_songs()
    plain = HybridModel(model.song_ids, model.item_factors, model.popularity.listeners,
                        model.trained, np.zeros((30, 0), np.float32),
                        regularization=0.5, alpha=3.0)
    base.save_model(plain, str(tmp_path / "m"))
    loaded = models.load_model(str(tmp_path / "m"))
    assert loaded.content.shape == (30, 0)
    histories = [np.array([0, 3, 7]), np.array([5]), np.arange(2, 20, 3)]
    counts = [np.arange(1, len(h) + 1) for h in histories]
    ranked = loaded.recommend(histories, counts, k=10)
    scores = loaded.user_factors(histories, counts) @ loaded.item_factors.T.astype(np.float64)
    for user, history in enumerate(histories):
        scores[user, history] = -np.inf
        assert ranked.rows[user].tolist() == np.lexsort((np.arange(30), -scores[user]))[:10].tolist()
