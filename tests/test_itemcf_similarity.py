"""Item-based CF training maths (recommend/models/itemcf_similarity.py) against a plain dense
float64 computation, and the blocks: same model whatever the blocks, budgets respected."""
import tracemalloc

import numpy as np
import pytest
import scipy.sparse as sp

from recommend.models import itemcf_similarity as itemcf


def random_listens(rng, num_users, num_songs, density):
    """(user rows, song rows) of a random binary matrix, each pair given once."""
    dense = rng.random((num_users, num_songs)) < density
    return np.nonzero(dense)


def dense_model(listened: np.ndarray, alpha: float, q: float, top_m: int) -> np.ndarray:
    """The model written plainly: dense co-occurrence, asymmetric cosine, top M per row by
    (higher sim, lower column), stored as sim ** q."""
    x = listened.astype(np.float64)
    cooccurrence = x.T @ x
    listeners = x.sum(axis=0)
    num_songs = x.shape[1]
    model = np.zeros((num_songs, num_songs))
    for j in range(num_songs):
        candidates = []
        for i in range(num_songs):
            if i != j and cooccurrence[j, i] > 0:
                sim = cooccurrence[j, i] / listeners[i] ** alpha / listeners[j] ** (1.0 - alpha)
                candidates.append((-sim, i))
        for negative_sim, i in sorted(candidates)[:top_m]:
            model[j, i] = (-negative_sim) ** q
    return model


def dense_listening(users, songs, num_users, num_songs):
    listened = np.zeros((num_users, num_songs), dtype=bool)
    listened[users, songs] = True
    return listened


def assert_same_sparse(a: sp.csr_matrix, b: sp.csr_matrix):
    """Same shape, structure and values, bit for bit."""
    assert a.shape == b.shape
    np.testing.assert_array_equal(a.indptr, b.indptr)
    np.testing.assert_array_equal(a.indices, b.indices)
    assert a.data.tobytes() == b.data.tobytes()


def assert_canonical(model: sp.csr_matrix, num_songs: int):
    assert isinstance(model, sp.csr_matrix)
    assert model.dtype == np.float64
    assert model.shape == (num_songs, num_songs)
    for row in range(num_songs):
        columns = model.indices[model.indptr[row]:model.indptr[row + 1]]
        assert np.all(np.diff(columns) > 0), f"row {row}: columns not sorted and unique"


@pytest.mark.parametrize("alpha, q, top_m", [
    (0.15, 3.0, 1000),   # M >= songs: no truncation
    (0.15, 3.0, 5),
    (0.5, 1.0, 3),
    (0.0, 2.0, 7),
    (1.0, 0.5, 1),
])
def test_model_matches_dense_computation(alpha, q, top_m):
    rng = np.random.default_rng(7)
    num_users, num_songs = 60, 40
    users, songs = random_listens(rng, num_users, num_songs, 0.15)
    matrix = itemcf.listening_matrix(users, songs, num_users, num_songs)
    model = itemcf.item_neighbours(matrix, alpha=alpha, q=q, top_m=top_m)
    assert_canonical(model, num_songs)
    expected = dense_model(dense_listening(users, songs, num_users, num_songs), alpha, q, top_m)
    np.testing.assert_array_equal(model.toarray() != 0, expected != 0)
    np.testing.assert_allclose(model.toarray(), expected, rtol=1e-13, atol=0)


def test_ties_go_to_the_lower_column():
    # Song 0 is heard by users 0-3. Songs 1-5 each share exactly one of them and have one
    # listener: equal sim for all five, so M = 2 keeps columns 1 and 2. Song 6 shares two
    # users with song 0 (and has two listeners): it ranks first.
    pairs = [(0, 0), (1, 0), (2, 0), (3, 0),
             (0, 5), (1, 4), (2, 3), (3, 2), (0, 1),
             (0, 6), (1, 6)]
    users, songs = np.array(pairs).T
    matrix = itemcf.listening_matrix(users, songs, 4, 7)
    model = itemcf.item_neighbours(matrix, top_m=3)
    assert model[0].indices.tolist() == [1, 2, 6]
    expected = dense_model(dense_listening(users, songs, 4, 7), itemcf.DEFAULT_ALPHA,
                           itemcf.DEFAULT_Q, 3)
    np.testing.assert_allclose(model.toarray(), expected, rtol=1e-13, atol=0)


def test_same_model_bit_for_bit_whatever_the_blocks():
    rng = np.random.default_rng(3)
    num_users, num_songs = 80, 50
    users, songs = random_listens(rng, num_users, num_songs, 0.2)
    matrix = itemcf.listening_matrix(users, songs, num_users, num_songs)
    one_block = itemcf.item_neighbours(matrix, top_m=6, pair_budget=10**12)
    calls = []
    one_song_blocks = itemcf.item_neighbours(matrix, top_m=6, pair_budget=1,
                                             progress=lambda done, total: calls.append((done, total)))
    middle = itemcf.item_neighbours(matrix, top_m=6, pair_budget=700)
    assert_same_sparse(one_block, one_song_blocks)
    assert_same_sparse(one_block, middle)
    assert calls == [(done, num_songs) for done in range(1, num_songs + 1)]


def test_neighbour_block_is_rows_of_the_model():
    rng = np.random.default_rng(5)
    users, songs = random_listens(rng, 50, 30, 0.2)
    matrix = itemcf.listening_matrix(users, songs, 50, 30)
    model = itemcf.item_neighbours(matrix, top_m=4)
    listeners = np.asarray(matrix.sum(axis=0)).ravel()
    block = itemcf.neighbour_block(matrix, 10, 17, listeners, itemcf.DEFAULT_ALPHA,
                                   itemcf.DEFAULT_Q, 4)
    assert block.shape == (7, 30)
    assert_same_sparse(block, model[10:17])


@pytest.mark.parametrize("pair_budget", [1, 50, 400, 3000, 10**9])
def test_plan_blocks_cover_every_song_once_within_budget(pair_budget):
    rng = np.random.default_rng(11)
    num_users, num_songs = 70, 45
    users, songs = random_listens(rng, num_users, num_songs, 0.15)
    matrix = itemcf.listening_matrix(users, songs, num_users, num_songs)
    blocks = itemcf.plan_blocks(matrix, pair_budget)
    assert blocks[0][0] == 0 and blocks[-1][1] == num_songs
    assert all(stop > start for start, stop in blocks)
    assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
    listened = dense_listening(users, songs, num_users, num_songs).astype(np.int64)
    lengths = listened.sum(axis=1)
    for start, stop in blocks:
        work = int((listened[:, start:stop].sum(axis=1) * lengths).sum())
        assert work <= pair_budget or stop - start == 1
    # greedy: adding the next song to a block would break the budget
    for (start, stop), _ in zip(blocks, blocks[1:]):
        work = int((listened[:, start:stop + 1].sum(axis=1) * lengths).sum())
        assert work > pair_budget


def test_empty_songs_and_users():
    # users 1 and 3 listen to nothing, songs 0, 2 and 5 have no listener
    users = np.array([0, 0, 2, 2, 4, 4, 4])
    songs = np.array([1, 3, 1, 4, 3, 4, 6])
    matrix = itemcf.listening_matrix(users, songs, 5, 7)
    model = itemcf.item_neighbours(matrix, top_m=10)
    assert_canonical(model, 7)
    for song in (0, 2, 5):
        assert model[song].nnz == 0 and model[:, song].nnz == 0
    expected = dense_model(dense_listening(users, songs, 5, 7), itemcf.DEFAULT_ALPHA,
                           itemcf.DEFAULT_Q, 10)
    np.testing.assert_allclose(model.toarray(), expected, rtol=1e-13, atol=0)
    assert_same_sparse(model, itemcf.item_neighbours(matrix, top_m=10, pair_budget=1))


def test_nothing_listened():
    matrix = itemcf.listening_matrix(np.array([], int), np.array([], int), 3, 4)
    model = itemcf.item_neighbours(matrix)
    assert_canonical(model, 4)
    assert model.nnz == 0
    assert itemcf.item_neighbours(itemcf.listening_matrix(np.array([], int), np.array([], int), 0, 0)).shape == (0, 0)


def test_duplicate_listens_collapse():
    users = np.array([0, 0, 0, 1, 1, 2])
    songs = np.array([2, 2, 1, 1, 2, 2])
    matrix = itemcf.listening_matrix(users, songs, 3, 3)
    assert matrix.nnz == 5
    np.testing.assert_array_equal(matrix.toarray(), [[0, 1, 1], [0, 1, 1], [0, 0, 1]])
    deduplicated = itemcf.listening_matrix(np.array([0, 0, 1, 1, 2]), np.array([2, 1, 1, 2, 2]), 3, 3)
    assert_same_sparse(itemcf.item_neighbours(matrix), itemcf.item_neighbours(deduplicated))


@pytest.mark.parametrize("top_m", [5, 50, 5000])
def test_block_memory_stays_within_the_stated_bound(top_m):
    rng = np.random.default_rng(13)
    num_users, num_songs = 400, 3000
    lengths = np.minimum(rng.lognormal(np.log(30), 0.95, num_users).astype(int) + 1, 600)
    users = np.repeat(np.arange(num_users), lengths)
    popularity = 1.0 / (np.arange(num_songs) + 20.0)
    songs = rng.choice(num_songs, size=len(users), p=popularity / popularity.sum())
    matrix = itemcf.listening_matrix(users, songs, num_users, num_songs)
    listeners = np.bincount(matrix.indices, minlength=num_songs)
    work = int(itemcf.song_pair_work(matrix)[:500].sum())
    tracemalloc.start()
    try:
        block = itemcf.neighbour_block(matrix, 0, 500, listeners, 0.15, 3.0, top_m)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    bound = itemcf.BYTES_PER_PAIR * work + itemcf.BYTES_PER_KEPT_ENTRY * block.nnz
    assert peak <= bound, (peak, work, block.nnz)


def test_rejects_bad_parameters():
    matrix = itemcf.listening_matrix(np.array([0, 0]), np.array([0, 1]), 1, 2)
    with pytest.raises(ValueError, match="alpha"):
        itemcf.item_neighbours(matrix, alpha=1.5)
    with pytest.raises(ValueError, match="q must be positive"):
        itemcf.item_neighbours(matrix, q=0)
    with pytest.raises(ValueError, match="top_m"):
        itemcf.item_neighbours(matrix, top_m=0)
    with pytest.raises(ValueError, match="pair_budget"):
        itemcf.plan_blocks(matrix, 0)
