"""The model seam (recommend.models): the interface's promises for every registered model, the
model directory, the song-keyed catalogue, popularity, and item-based CF scoring against a
direct float64 computation."""
import json

import numpy as np
import pytest
import scipy.sparse as sp

from recommend import catalogue as catalogue_lib
from recommend import models
from recommend.models import base
from recommend.models.content import ContentModel
from recommend.models.itemcf import ItemCFModel
from recommend.models.popularity import PopularityModel, popularity_order


def song(i: int) -> str:
    return f"SO{i:016d}"


def random_listening(seed=0, users=60, songs=40, density=0.15):
    rng = np.random.default_rng(seed)
    return (rng.random((users, songs)) < density).astype(np.float64)


def direct_itemcf_weights(listening, alpha, q):
    """W[j, i] = sim(i, j)^q with sim(i, j) = c_ij / (n_i^α n_j^(1−α)), plainly in float64."""
    cooccurrence = listening.T @ listening
    np.fill_diagonal(cooccurrence, 0)
    listeners = np.maximum(listening.sum(axis=0), 1)
    similarity = cooccurrence / (listeners[:, None] ** alpha * listeners[None, :] ** (1 - alpha))
    return similarity.T ** q


def itemcf_model(listening, alpha=0.15, q=3.0):
    weights = direct_itemcf_weights(listening, alpha, q)
    ids = np.array([song(i) for i in range(listening.shape[1])], dtype=object)
    return ItemCFModel(ids, listening.sum(axis=0).astype(np.int64), sp.csr_matrix(weights),
                       alpha=alpha, q=q)


def content_model(songs=40, dims=6, seed=1):
    vectors = np.random.default_rng(seed).normal(size=(songs, dims))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return ContentModel(np.array([song(i) for i in range(songs)], dtype=object), vectors)


def popularity_model(songs=40, seed=2):
    listeners = np.random.default_rng(seed).integers(1, 6, size=songs)  # many ties
    return PopularityModel(np.array([song(i) for i in range(songs)], dtype=object), listeners)


def als_model(songs=40, factors=5, seed=4):
    """ALS item factors as training leaves them (any float32 matrix is a valid model)."""
    from recommend.models.als import ALSModel

    rng = np.random.default_rng(seed)
    return ALSModel(np.array([song(i) for i in range(songs)], dtype=object),
                    rng.normal(size=(songs, factors)).astype(np.float32),
                    rng.integers(1, 6, size=songs), regularization=0.3, alpha=2.0)


def hybrid_model(songs=40, factors=5, seed=4):
    """A hybrid: ALS factors for 30 songs, predicted ones (any direction) for the other 10,
    and a content blend (weight 0.1 × unit content vectors)."""
    from recommend.models.hybrid import HybridModel, unit_rows

    rng = np.random.default_rng(seed)
    trained = np.arange(songs) < 30
    listeners = np.where(trained, rng.integers(1, 6, size=songs), 0)
    content = (0.1 * unit_rows(rng.normal(size=(songs, 7)))).astype(np.float32)
    return HybridModel(np.array([song(i) for i in range(songs)], dtype=object),
                       rng.normal(size=(songs, factors)).astype(np.float32), listeners,
                       trained, content, regularization=0.3, alpha=2.0)


MODEL_FACTORIES = {"itemcf": lambda: itemcf_model(random_listening()),
                   "content": content_model, "popularity": popularity_model,
                   "als": als_model, "hybrid": hybrid_model}


@pytest.mark.parametrize("kind", sorted(MODEL_FACTORIES))
def test_every_model_keeps_the_interface_promises(kind):
    """Exactly k songs per user, none listened to, none twice, scores not increasing."""
    model = MODEL_FACTORIES[kind]()
    rng = np.random.default_rng(5)
    histories = [np.sort(rng.choice(40, size=size, replace=False)) for size in (1, 3, 10, 30)]
    result = model.recommend(histories, [np.ones(len(h), np.int64) for h in histories], k=10)
    assert result.rows.shape == (4, 10) and result.scores.shape == (4, 10)
    for history, rows, scores in zip(histories, result.rows, result.scores):
        assert len(set(rows.tolist())) == 10 and not set(rows.tolist()) & set(history.tolist())
        assert (np.diff(scores) <= 0).all()


@pytest.mark.parametrize("kind", sorted(MODEL_FACTORIES))
def test_a_users_list_does_not_depend_on_the_batch(kind):
    model = MODEL_FACTORIES[kind]()
    rng = np.random.default_rng(6)
    histories = [np.sort(rng.choice(40, size=int(rng.integers(1, 12)), replace=False))
                 for _ in range(9)]
    counts = [np.ones(len(h), np.int64) for h in histories]
    together = model.recommend(histories, counts, k=8)
    for user in range(9):
        alone = model.recommend([histories[user]], [counts[user]], k=8)
        assert alone.rows[0].tolist() == together.rows[user].tolist()
        assert alone.scores[0].tolist() == together.scores[user].tolist()


@pytest.mark.parametrize("alpha, q", [(0.15, 3.0), (0.5, 1.0), (0.0, 2.0), (1.0, 5.0)])
def test_itemcf_scores_equal_a_direct_float64_computation(alpha, q):
    listening = random_listening(seed=3)
    model = itemcf_model(listening, alpha, q)
    weights = direct_itemcf_weights(listening, alpha, q)
    histories = [np.flatnonzero(row) for row in listening[:20] if row.any()]
    result = model.recommend(histories, [None] * len(histories), k=5)
    for history, rows, scores, filled in zip(histories, result.rows, result.scores,
                                             result.filled):
        x = np.zeros(40)
        x[history] = 1
        expected = x @ weights
        expected[history] = -np.inf
        order = np.lexsort((np.arange(40), -expected))
        positive = [i for i in order if expected[i] > 0][:5]
        assert rows[:len(positive)].tolist() == positive
        np.testing.assert_allclose(scores[:len(positive)], expected[positive], rtol=1e-12)
        assert filled == 5 - len(positive)


def test_itemcf_fills_short_lists_with_the_most_popular_unlistened_songs():
    # Songs 0-2 are listened together; song 3-9 only by others. A user of song 0 has two
    # candidates (1, 2); the rest of k = 5 comes from popularity (listeners, ties by song id).
    listening = np.zeros((6, 10))
    listening[0:2, 0:3] = 1
    listening[2:6, 3] = 1      # 4 listeners
    listening[2:5, 5] = 1      # 3 listeners
    listening[2:4, [4, 6]] = 1  # 2 listeners each: tie, song 4 first
    listening[5, 7:10] = 1     # 1 listener each (every song of a model has listeners)
    model = itemcf_model(listening)
    result = model.recommend([np.array([0])], [None], k=5)
    assert result.rows[0].tolist() == [1, 2, 3, 5, 4] and result.filled.tolist() == [3]
    assert (result.scores[0, :2] > 0).all() and (result.scores[0, 2:] == 0).all()


def test_popularity_ranks_by_listeners_then_song_id():
    listeners = np.array([3, 5, 3, 0, 5])
    assert popularity_order(listeners).tolist() == [1, 4, 0, 2]  # song 3 has no listener
    model = PopularityModel(np.array([song(i) for i in range(5)], dtype=object), listeners)
    assert model.recommend([np.array([1])], [None], k=3).rows.tolist() == [[4, 0, 2]]


def test_model_directory_round_trip_and_clear_errors(tmp_path):
    model = itemcf_model(random_listening())
    base.save_model(model, str(tmp_path / "m"), training={"users": 60})
    loaded = models.load_model(str(tmp_path / "m"))
    histories = [np.array([1, 2, 3]), np.array([7])]
    assert loaded.kind == "itemcf" and loaded.parameters() == model.parameters()
    assert (loaded.recommend(histories, [None, None], 6).rows
            == model.recommend(histories, [None, None], 6).rows).all()

    with pytest.raises(models.ModelError, match="holds no model.json"):
        models.load_model(str(tmp_path))
    (tmp_path / "m" / "neighbour_weights.npy").unlink()
    with pytest.raises(models.ModelError, match="neighbour_weights.npy"):
        models.load_model(str(tmp_path / "m"))

    base.save_model(model, str(tmp_path / "n"))
    manifest = json.loads((tmp_path / "n" / "model.json").read_text())
    manifest["arrays"]["listeners"]["shape"] = [41]
    (tmp_path / "n" / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(models.ModelError, match=r"listeners.npy: shape \(40,\)"):
        models.load_model(str(tmp_path / "n"))
    manifest["kind"] = "nonsense"
    (tmp_path / "n" / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(models.ModelError, match="unknown model kind 'nonsense'"):
        models.load_model(str(tmp_path / "n"))


def test_song_catalogue_has_one_row_per_song_and_the_lowest_unmismatched_track():
    pairs = [("TRB0000000000000002", song(1)), ("TRA0000000000000001", song(1)),
             ("TRC0000000000000003", song(2)), ("TRD0000000000000004", song(3))]
    mismatches = {(song(1), "TRA0000000000000001"), (song(3), "TRD0000000000000004")}
    content = catalogue_lib.song_catalogue(pairs, None, mismatches)
    assert content.song_ids.tolist() == [song(1), song(2)]
    assert content.track_ids.tolist() == ["TRB0000000000000002", "TRC0000000000000003"]
    assert content.mismatched == {song(3)}
    # A collaborative model keeps every song it was trained on; unknown tracks are None.
    trained = catalogue_lib.song_catalogue(pairs, None, mismatches,
                                           model_songs=[song(1), song(3), song(9)])
    assert trained.track_ids.tolist() == ["TRB0000000000000002", None, None]
    assert catalogue_lib.song_catalogue(None, None, set(), [song(1)]).track_ids.tolist() == [None]


def test_model_names_are_checked_once_for_every_use():
    assert base.check_model_name("itemcf_v2") == "itemcf_v2"
    for bad in ("", "ItemCF", "item-cf", "a/b", "1cf", "x" * 64):
        with pytest.raises(models.ModelError, match="lowercase letters"):
            base.check_model_name(bad)
