"""Tests of the exact top-k kernel (recommend/kernel.py) against a float64 numpy brute force.

Comparison rule (``assert_exact``): the kernel ranks by float64 scores (float32 candidates,
re-ranked in float64), so it must return the brute force's list itself. The reference sums the
profile in another order, so scores may differ in the last float64 bits: returned scores must
match within ``TOL`` (1e-10, scaled by the profile norm for big profiles), and only songs whose
float64 scores are within ``NEAR`` of each other may swap places. Exact ties must be broken by
the lower index; the tie tests use exactly representable values.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recommend.kernel import (
    CatalogueScorer,
    PackedHistories,
    available_counts,
    check_k,
    max_k_for,
    pack_histories,
    recommend,
)

TOL = 1e-10
NEAR = 1e-10

# Forces the pruned streaming path (with several chunks, so the tf.while_loop runs) on small
# catalogues; the default options pick the dense path for small batch * catalogue sizes.
STREAM = dict(dense_elements=0, tile_elements=1 << 14, storage_rows=64)
TINY_TILES = dict(dense_elements=0, tile_elements=256, storage_rows=64)  # 64-row chunks


def unit_rows(rng, n, d):
    f = rng.standard_normal((n, d)).astype(np.float32)
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    return f


def brute_scores(catalogue, histories, weights=None):
    """float64 scores [B, N] with listened songs at -inf, and profile norms [B]."""
    f = catalogue.astype(np.float64)
    out = np.empty((len(histories), f.shape[0]))
    norms = np.empty(len(histories))
    for u, h in enumerate(histories):
        h = np.asarray(h, dtype=np.int64)
        # weights are float32 in the kernel's contract (PackedHistories.weights)
        w = np.ones(len(h)) if weights is None else np.asarray(weights[u], np.float32).astype(np.float64)
        p = (f[h] * w[:, None]).sum(axis=0) if len(h) else np.zeros(f.shape[1])
        norms[u] = np.linalg.norm(p)
        out[u] = f @ p
        out[u, h] = -np.inf
    return out, norms


def brute_topk(scores, k):
    order = np.lexsort((np.broadcast_to(np.arange(scores.shape[1]), scores.shape), -scores), axis=1)
    return order[:, :k]


def assert_exact(catalogue, histories, k, idx, sc, weights=None):
    s64, norms = brute_scores(catalogue, histories, weights)
    n = catalogue.shape[0]
    assert idx.shape == (len(histories), k) and idx.dtype == np.int64
    assert sc.shape == (len(histories), k) and sc.dtype == np.float64
    ref = brute_topk(s64, k)
    for u, h in enumerate(histories):
        row, got = idx[u], sc[u]
        scale = max(1.0, norms[u] / 16.0)
        tol, near = TOL * scale, NEAR * scale
        assert len(set(row.tolist())) == k, f"user {u}: duplicate indices"
        assert row.min() >= 0 and row.max() < n
        assert not set(row.tolist()) & set(np.asarray(h, dtype=np.int64).tolist()), f"user {u}: listened song returned"
        assert np.all(np.isfinite(got))
        assert np.all(np.diff(got) <= 0), f"user {u}: scores increase"
        same = np.diff(got) == 0
        assert np.all(np.diff(row)[same] > 0), f"user {u}: exact tie not broken by lower index"
        true = s64[u, row]
        assert np.max(np.abs(got - true)) <= tol, f"user {u}: score error {np.max(np.abs(got - true))}"
        kth = s64[u, ref[u, -1]]
        must = np.flatnonzero(s64[u] > kth + near)
        assert set(must.tolist()) <= set(row.tolist()), f"user {u}: missing a clearly better song"
        assert true.min() >= kth - near, f"user {u}: returned a song clearly below the k-th"
        assert np.all(np.diff(true) <= near), f"user {u}: order differs beyond near-ties"
        band = np.flatnonzero(np.abs(s64[u] - kth) <= near)
        if band.size <= 1 and np.all(np.abs(np.diff(s64[u, ref[u]])) > near):
            np.testing.assert_array_equal(row, ref[u])  # no near-tie anywhere: identical lists


def lognormal_histories(rng, n_users, n_songs, median=30, sigma=1.0, cap=None):
    lengths = np.maximum(1, rng.lognormal(np.log(median), sigma, n_users).astype(int))
    if cap:
        lengths = np.minimum(lengths, cap)
    return [rng.integers(0, n_songs, size=m).tolist() for m in lengths]


# ------------------------------------------------------------------------------------------
# Against the brute force
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n,d,b,k,options",
    [
        (7, 3, 3, 4, {}),  # tiny catalogue
        (1000, 16, 5, 10, {}),
        (5003, 90, 37, 500, {}),  # N not a multiple of any chunk/block size
        (5003, 90, 37, 500, STREAM),
        (20011, 32, 70, 200, dict(STREAM, batch_size=32)),  # B=70: batches of 32, 32, 6 (padded to 8)
        (30000, 90, 40, 500, dict(dense_elements=0)),  # stream path, default tiling
    ],
)
def test_matches_brute_force(n, d, b, k, options):
    rng = np.random.default_rng(n + b)
    f = unit_rows(rng, n, d)
    hists = lognormal_histories(rng, b, n, median=min(30, n // 3 or 1), cap=n - k)
    idx, sc = recommend(f, hists, k=k, **options)
    assert_exact(f, hists, k, idx, sc)


@pytest.mark.parametrize("levels", [0, 1, 2])
def test_pruning_levels_with_speculative_threshold(levels):
    rng = np.random.default_rng(20 + levels)
    n, k = 20011, 50
    f = unit_rows(rng, n, 16)
    hists = lognormal_histories(rng, 40, n)
    hists[3] = rng.integers(0, n, 4100).tolist()  # heavy user
    scorer = CatalogueScorer(f, batch_size=64, levels=levels, **STREAM)
    plan = scorer._plan(64, k, guess=True)
    assert plan.guess_rank > 0 and len(plan.chunks) > 2 and plan.levels == levels
    idx, sc = scorer.recommend(hists, k=k)
    assert_exact(f, hists, k, idx, sc)


def test_scorer_reused_across_batches_and_k():
    rng = np.random.default_rng(3)
    f = unit_rows(rng, 12000, 24)
    scorer = CatalogueScorer(f, batch_size=16, **STREAM)
    for b, k in [(16, 50), (3, 50), (1, 7), (16, 300)]:
        hists = lognormal_histories(rng, b, 12000)
        idx, sc = scorer.recommend(hists, k=k)
        assert_exact(f, hists, k, idx, sc)


def test_heavy_users_duplicates_and_weights():
    rng = np.random.default_rng(5)
    n, k = 20000, 500
    f = unit_rows(rng, n, 90)
    hists = [
        rng.integers(0, n, 4500).tolist(),  # heavy user (with duplicates)
        rng.choice(n, 4200, replace=False).tolist(),  # heavy user, distinct
        [3, 3, 3, 17, 17, 42],  # duplicates count each time
        rng.integers(0, n, 25).tolist(),
    ]
    weights = [np.log1p(rng.integers(1, 50, len(h))).tolist() for h in hists]
    for options in ({}, STREAM):
        idx, sc = recommend(f, hists, k=k, **options)
        assert_exact(f, hists, k, idx, sc)
        idx, sc = recommend(f, hists, k=k, weights=weights, **options)
        assert_exact(f, hists, k, idx, sc, weights=weights)


def test_duplicate_listens_weigh_the_profile():
    f = np.eye(4, dtype=np.float32)
    idx, sc = recommend(f, [[0, 0, 0, 1]], k=2)
    # profile = 3 e0 + e1; 0 and 1 are listened, 2 and 3 score 0 -> lowest index first
    np.testing.assert_array_equal(idx, [[2, 3]])
    f2 = np.array([[1, 0], [0, 1], [0.6, 0.8], [0.8, 0.6]], np.float32)
    idx, _ = recommend(f2, [[0, 0, 0, 1]], k=2)
    np.testing.assert_array_equal(idx, [[3, 2]])  # 3*0.8+0.6 > 3*0.6+0.8
    idx, _ = recommend(f2, [[0, 1]], k=2, weights=[[1.0, 3.0]])
    np.testing.assert_array_equal(idx, [[2, 3]])


def test_exactly_k_left():
    rng = np.random.default_rng(7)
    n, k = 3000, 40
    f = unit_rows(rng, n, 8)
    keep = rng.choice(n, k, replace=False)
    listened = np.setdiff1d(np.arange(n), keep)
    hists = [rng.permutation(listened).tolist(), rng.integers(0, n, 10).tolist()]
    assert max_k_for(hists, n) == k
    for options in ({}, STREAM):
        idx, sc = recommend(f, hists, k=k, **options)
        assert set(idx[0].tolist()) == set(keep.tolist())
        assert_exact(f, hists, k, idx, sc)


def test_k_too_large_is_a_clear_error():
    rng = np.random.default_rng(8)
    f = unit_rows(rng, 100, 4)
    hists = [[1, 2], list(range(95)), [3]]
    assert max_k_for(hists, 100) == 5
    np.testing.assert_array_equal(available_counts(hists, 100), [98, 5, 99])
    with pytest.raises(ValueError, match=r"k=6 .* position 1: 5 of 100"):
        recommend(f, hists, k=6)
    with pytest.raises(ValueError, match=r"position 1"):
        check_k(hists, 100, 6)
    check_k(hists, 100, 5)
    with pytest.raises(ValueError, match=r"k=101"):
        recommend(f, [[]], k=101)


def test_ties_broken_by_lower_index():
    # Exactly representable rows and profiles: float32 and float64 agree bit for bit.
    protos = np.array(
        [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0.5, 0.5, 0.5, 0.5], [0.5, -0.5, 0.5, -0.5]], np.float32
    )
    rng = np.random.default_rng(9)
    n = 2503
    f = protos[rng.integers(0, len(protos), n)]
    hists = [rng.integers(0, n, int(m)).tolist() for m in (1, 3, 8, 40)] + [[0], []]
    for options in ({}, STREAM):
        for k in (1, 60, 700):
            idx, sc = recommend(f, hists, k=k, **options)
            s64, _ = brute_scores(f, hists)
            np.testing.assert_array_equal(idx, brute_topk(s64, k))
            np.testing.assert_array_equal(sc, np.take_along_axis(s64, idx, 1).astype(np.float32))


def test_empty_history_gets_lowest_indices():
    rng = np.random.default_rng(10)
    f = unit_rows(rng, 4000, 16)
    for options in ({}, STREAM):
        scorer = CatalogueScorer(f, **options)
        idx, sc = scorer.recommend([[], [5, 6]], k=300)
        np.testing.assert_array_equal(idx[0], np.arange(300))
        assert np.all(sc[0] == 0)
        assert_exact(f, [[], [5, 6]], 300, idx, sc)


def test_fallback_and_compaction_paths():
    rng = np.random.default_rng(11)
    n = 6000
    # All-identical rows: every score ties, the speculative threshold fails for every user
    # and the always-exact path (warm-up threshold + compactions) answers.
    f = np.tile(unit_rows(rng, 1, 8), (n, 1))
    hists = lognormal_histories(rng, 20, n, median=10)
    for levels in (None, 2):
        scorer = CatalogueScorer(f, batch_size=8, levels=levels, **STREAM)
        idx, sc = scorer.recommend(hists, k=100)
        assert scorer.last_stats["fallback_users"] == 20
        assert_exact(f, hists, 100, idx, sc)
    # Tiny compaction limit: the buffer is compacted (threshold raised) after every chunk.
    f = unit_rows(rng, n, 8)
    scorer = CatalogueScorer(f, batch_size=8, compact_factor=0.25, **STREAM)
    idx, sc = scorer.recommend(hists, k=100)
    assert scorer.last_stats["fallback_users"] == 0
    assert_exact(f, hists, 100, idx, sc)


def test_single_user_and_empty_batch():
    rng = np.random.default_rng(12)
    f = unit_rows(rng, 9000, 90)
    h = [rng.integers(0, 9000, 50).tolist()]
    idx, sc = recommend(f, h, k=500)
    assert_exact(f, h, 500, idx, sc)
    idx, sc = recommend(f, [], k=5)
    assert idx.shape == (0, 5) and sc.shape == (0, 5)


def test_packed_histories_input():
    rng = np.random.default_rng(13)
    f = unit_rows(rng, 500, 6)
    hists = [[1, 2, 3], [], [4, 4]]
    weights = [[1.0, 2.0, 0.5], [], [1.0, 3.0]]
    packed = pack_histories(hists, weights, num_songs=500)
    assert isinstance(packed, PackedHistories) and packed.num_users == 3
    np.testing.assert_array_equal(packed.row_splits, [0, 3, 3, 5])
    scorer = CatalogueScorer(f)
    a = scorer.recommend(hists, k=20, weights=weights)
    b = scorer.recommend_packed(packed, k=20)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


# ------------------------------------------------------------------------------------------
# Validation
# ------------------------------------------------------------------------------------------


def test_input_validation():
    rng = np.random.default_rng(14)
    f = unit_rows(rng, 50, 4)
    with pytest.raises(TypeError, match="float32"):
        recommend(f.astype(np.float64), [[1]], k=1)
    with pytest.raises(ValueError, match="2-D"):
        recommend(f[0], [[1]], k=1)
    with pytest.raises(ValueError, match="at least one song"):
        recommend(np.zeros((0, 4), np.float32), [[]], k=1)
    bad = f.copy()
    bad[7, 2] = np.nan
    with pytest.raises(ValueError, match="non-finite.*row 7"):
        CatalogueScorer(bad)
    bad[7, 2] = np.inf
    with pytest.raises(ValueError, match="non-finite"):
        recommend(bad, [[1]], k=1)
    with pytest.raises(ValueError, match=r"user 1 has song index 50 outside"):
        recommend(f, [[1], [2, 50]], k=1)
    with pytest.raises(ValueError, match=r"user 0 has song index -1"):
        recommend(f, [[-1]], k=1)
    with pytest.raises(TypeError, match="integer"):
        recommend(f, [[1.5]], k=1)
    with pytest.raises(ValueError, match="k must be >= 1"):
        recommend(f, [[1]], k=0)
    with pytest.raises(TypeError, match="k must be an integer"):
        recommend(f, [[1]], k=2.0)
    with pytest.raises(ValueError, match="one sequence per user"):
        recommend(f, [[1], [2]], k=1, weights=[[1.0]])
    with pytest.raises(ValueError, match="weights of user 1 have 1 entries but the history has 2"):
        recommend(f, [[1], [2, 3]], k=1, weights=[[1.0], [1.0]])
    with pytest.raises(ValueError, match="weights of user 0 contain a non-finite"):
        recommend(f, [[1]], k=1, weights=[[np.nan]])


# ------------------------------------------------------------------------------------------
# Properties
# ------------------------------------------------------------------------------------------

_PROP_RNG = np.random.default_rng(2024)
_PROP_CATALOGUES = {
    "random": unit_rows(_PROP_RNG, 300, 6),
    # many duplicated rows: plenty of exact ties
    "ties": np.repeat(unit_rows(_PROP_RNG, 20, 3), 13, axis=0)[:257],
}
_PROP_SCORERS = {
    (name, mode): CatalogueScorer(cat, batch_size=8, **(TINY_TILES if mode == "stream" else {}))
    for name, cat in _PROP_CATALOGUES.items()
    for mode in ("dense", "stream")
}


@st.composite
def _problems(draw):
    name = draw(st.sampled_from(sorted(_PROP_CATALOGUES)))
    mode = draw(st.sampled_from(["dense", "stream"]))
    n = _PROP_CATALOGUES[name].shape[0]
    b = draw(st.integers(1, 5))
    hists = draw(
        st.lists(st.lists(st.integers(0, n - 1), max_size=draw(st.sampled_from([0, 3, 40, n]))), min_size=b, max_size=b)
    )
    use_w = draw(st.booleans())
    weights = None
    if use_w:
        weights = [draw(st.lists(st.floats(0.0, 5.0, width=32), min_size=len(h), max_size=len(h))) for h in hists]
    k = draw(st.sampled_from([1, 5, 17, 64]))
    return name, mode, hists, weights, k


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(_problems())
def test_property_exact_topk(problem):
    name, mode, hists, weights, k = problem
    cat = _PROP_CATALOGUES[name]
    scorer = _PROP_SCORERS[(name, mode)]
    n = cat.shape[0]
    if k > max_k_for(hists, n):
        with pytest.raises(ValueError, match="larger than the number of songs available"):
            scorer.recommend(hists, k=k, weights=weights)
        return
    idx, sc = scorer.recommend(hists, k=k, weights=weights)
    for u, h in enumerate(hists):
        assert len(np.unique(idx[u])) == k  # exactly k distinct
        assert not set(idx[u].tolist()) & set(h)  # none listened
        assert np.all(np.diff(sc[u]) <= 0)  # best first
    assert_exact(cat, hists, k, idx, sc, weights=weights)
