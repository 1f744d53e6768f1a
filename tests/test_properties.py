"""Property-based tests (hypothesis) of the two pieces of maths everything rests on: the 90
timbre statistics (``msd.timbre``) and the exact top-k kernel (``recommend.kernel``).

The statistics are compared with an independent numpy definition (np.cov) and checked for the
invariances a covariance has. The kernel is checked on integer-valued catalogues, where every score is exact in
float32 and ties are everywhere, with the scorer's internal options drawn as well (so the dense
path, the pruned streaming path, compaction and the exact fallback all run): the order (score
descending, then lower index) must be right to the last position. And a user's result must not
depend on the other users in the batch (determinism of the pipeline).
test_timbre.py holds the golden column order and fixed examples, test_kernel.py the float
brute-force comparisons (fixed cases and a property over fixed catalogues); this file adds
only what those lack.
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from msd import timbre
from recommend import kernel
from tests.test_timbre import independent_statistics

STATS_SETTINGS = settings(max_examples=150, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
# Each example builds a scorer and traces its TF graphs (~0.3 s): few examples, varied a lot.
KERNEL_SETTINGS = settings(max_examples=40, deadline=None,
                           suppress_health_check=[HealthCheck.too_slow,
                                                  HealthCheck.data_too_large])


# -- the 90 timbre statistics ---------------------------------------------------------------

def timbre_matrices(min_rows=2, max_rows=80):
    """Timbre-like matrices: dimension 0 in 0..60, the others within ±500 (the real ranges),
    with constant columns and repeated rows possible."""
    rows = st.integers(min_rows, max_rows)
    element = st.floats(-500, 500, allow_nan=False, allow_infinity=False, width=64)
    return rows.flatmap(lambda n: hnp.arrays(np.float64, (n, 12), elements=element)).map(
        lambda m: np.concatenate([np.clip(m[:, :1], 0, 60), m[:, 1:]], axis=1))


def covariance_part(stats):
    return stats[timbre.NUM_MEANS:]


def scale_of(matrix):
    return max(1.0, float(np.abs(matrix).max())) ** 2


@STATS_SETTINGS
@given(matrix=timbre_matrices())
def test_statistics_equal_the_independent_definition(matrix):
    got = timbre.timbre_statistics(matrix)
    assert got.shape == (90,) and got.dtype == np.float64
    np.testing.assert_allclose(got, independent_statistics(matrix), rtol=1e-9,
                               atol=1e-9 * scale_of(matrix))


@STATS_SETTINGS
@given(matrix=timbre_matrices())
def test_each_entry_sits_where_its_name_says(matrix):
    stats = timbre.timbre_statistics(matrix)
    covariance = np.cov(matrix, rowvar=False)
    for position, name in enumerate(timbre.feature_names()):
        kind, *indices = name.split("_")
        expected = (matrix[:, int(indices[0])].mean() if kind == "mean"
                    else covariance[int(indices[0]), int(indices[1])])
        assert stats[position] == pytest.approx(expected, rel=1e-9, abs=1e-9 * scale_of(matrix))


@STATS_SETTINGS
@given(matrix=timbre_matrices(),
       shift=hnp.arrays(np.float64, 12, elements=st.floats(-1000, 1000, width=64)))
def test_translation_moves_the_means_and_leaves_the_covariance(matrix, shift):
    before = timbre.timbre_statistics(matrix)
    after = timbre.timbre_statistics(matrix + shift)
    tolerance = 1e-8 * (scale_of(matrix) + float(np.abs(shift).max()) ** 2)
    np.testing.assert_allclose(after[:12], before[:12] + shift, rtol=1e-9, atol=tolerance)
    np.testing.assert_allclose(covariance_part(after), covariance_part(before), rtol=1e-7,
                               atol=tolerance)


@STATS_SETTINGS
@given(matrix=timbre_matrices(), data=st.data())
def test_segment_order_does_not_matter(matrix, data):
    order = data.draw(st.permutations(range(len(matrix))))
    np.testing.assert_allclose(timbre.timbre_statistics(matrix[list(order)]),
                               timbre.timbre_statistics(matrix), rtol=1e-9,
                               atol=1e-9 * scale_of(matrix))


@STATS_SETTINGS
@given(matrix=timbre_matrices(),
       factors=hnp.arrays(np.float64, 12, elements=st.floats(-4, 4, width=64)))
def test_scaling_dimensions_scales_the_covariances_by_both_factors(matrix, factors):
    before = timbre.timbre_statistics(matrix)
    after = timbre.timbre_statistics(matrix * factors)
    rows, cols = zip(*[map(int, name.split("_")[1:]) for name in timbre.feature_names()[12:]])
    expected = covariance_part(before) * factors[list(rows)] * factors[list(cols)]
    tolerance = 1e-8 * scale_of(matrix) * 16
    np.testing.assert_allclose(after[:12], before[:12] * factors, rtol=1e-9, atol=tolerance)
    np.testing.assert_allclose(covariance_part(after), expected, rtol=1e-7, atol=tolerance)


@STATS_SETTINGS
@given(matrix=timbre_matrices())
def test_repeating_every_segment_keeps_the_means_and_rescales_the_covariance(matrix):
    n = len(matrix)
    before = timbre.timbre_statistics(matrix)
    after = timbre.timbre_statistics(np.concatenate([matrix, matrix]))
    np.testing.assert_allclose(after[:12], before[:12], rtol=1e-9, atol=1e-9 * scale_of(matrix))
    np.testing.assert_allclose(covariance_part(after),
                               covariance_part(before) * 2 * (n - 1) / (2 * n - 1),
                               rtol=1e-7, atol=1e-8 * scale_of(matrix))


@STATS_SETTINGS
@given(matrix=timbre_matrices())
def test_variances_are_never_negative_and_bound_the_covariances(matrix):
    stats = timbre.timbre_statistics(matrix)
    variances = stats[12:24]
    tolerance = 1e-9 * scale_of(matrix)
    assert (variances >= -tolerance).all()
    names = timbre.feature_names()
    for position in range(24, 90):
        i, j = map(int, names[position].split("_")[1:])
        assert abs(stats[position]) <= np.sqrt(max(variances[i], 0) * max(variances[j], 0)) + \
            1e-7 * scale_of(matrix)


@STATS_SETTINGS
@given(matrix=st.one_of(timbre_matrices(0, 30),
                        timbre_matrices(1, 30).map(lambda m: m.astype(np.float32))),
       min_segments=st.integers(1, 40), poison=st.sampled_from([None, np.nan, np.inf, -np.inf]),
       data=st.data())
def test_timbre_problem_accepts_exactly_the_usable_matrices(matrix, min_segments, poison, data):
    matrix = matrix.copy()
    if poison is not None and matrix.size:
        row = data.draw(st.integers(0, len(matrix) - 1))
        matrix[row, data.draw(st.integers(0, 11))] = poison
    problem = timbre.timbre_problem(matrix, min_segments)
    usable = len(matrix) >= max(min_segments, 2) and np.isfinite(matrix).all()
    assert (problem is None) == usable, problem
    if problem:
        reason, detail = problem
        assert reason in ("too_few_segments", "non_finite_timbre") and detail
    else:
        assert np.isfinite(timbre.timbre_statistics(matrix)).all()


# -- the kernel ---------------------------------------------------------------------------------

def brute_force_scores(catalogue, history):
    """float64 scores of every song for a history (duplicates count each time)."""
    f64 = catalogue.astype(np.float64)
    profile = f64[list(history)].sum(axis=0) if len(history) else np.zeros(catalogue.shape[1])
    return f64 @ profile


scorer_options = st.fixed_dictionaries({}, optional={
    "dense_elements": st.sampled_from([0, 1 << 23]),        # 0: always the streaming path
    "tile_elements": st.sampled_from([1 << 10, 1 << 14, 1 << 20]),
    "sample_stride": st.sampled_from([1, 4, 16]),
    "guess_factor": st.sampled_from([0.25, 1.0, 2.0]),       # < 1: guesses too high → fallback
    "warmup_rows": st.sampled_from([64, 16384]),
    "compact_factor": st.sampled_from([1.0, 4.0]),
    "histogram_bins": st.sampled_from([4, 256]),
    "batch_size": st.sampled_from([1, 2, 3, 256]),
    "levels": st.sampled_from([None, 0, 1, 2]),
})


@st.composite
def integer_kernel_problems(draw):
    """Catalogue values in {-2, …, 2}: every score is a small integer, exact in float32, and
    ties are everywhere (duplicated rows included)."""
    n = draw(st.integers(1, 600))
    d = draw(st.integers(1, 12))
    catalogue = draw(hnp.arrays(np.float32, (n, d), elements=st.integers(-2, 2).map(float)))
    if draw(st.booleans()):
        copies = draw(st.integers(1, n))
        catalogue[n - copies:] = catalogue[:copies]
    num_users = draw(st.integers(1, 7))
    histories = [draw(st.lists(st.integers(0, n - 1), max_size=min(n, 30)))
                 for _ in range(num_users)]
    available = min(n - len(set(h)) for h in histories)
    assume(available >= 1)
    k = draw(st.one_of(st.integers(1, min(available, 20)), st.just(available)))
    return catalogue, histories, k, draw(scorer_options)


@KERNEL_SETTINGS
@given(problem=integer_kernel_problems())
def test_kernel_order_is_exact_whatever_the_internal_options(problem):
    """Integer catalogue values: float32 scores are exact, so the whole order is known:
    score descending, then lower catalogue index (listened songs excluded). The scorer's
    internal options are drawn too (tiling, sample stride, a speculative threshold that is
    too high so the exact fallback runs, compaction, histogram bins, pruning levels, batch
    size), so every path must give exactly this order. test_kernel.py compares float
    catalogues with fixed options; this adds the option space with exact expectations."""
    catalogue, histories, k, options = problem
    indices, scores = kernel.recommend(catalogue, histories, k=k, **options)
    for user, history in enumerate(histories):
        exact = brute_force_scores(catalogue, history)
        candidates = np.setdiff1d(np.arange(len(catalogue)), np.asarray(history, np.int64))
        order = candidates[np.lexsort((candidates, -exact[candidates]))][:k]
        assert indices[user].tolist() == order.tolist(), (user, options)
        np.testing.assert_array_equal(scores[user], exact[order])


def test_a_users_result_does_not_depend_on_the_rest_of_the_batch():
    """Determinism of the pipeline rests on this: a user's recommendations must be a
    function of their history, whichever users Beam happens to batch them with. float32
    scores differ in the last bits between a user scored alone (padded batch 1, dense path)
    and the same user in a batch of 256 (streaming path: other matmul shapes); with near-tied
    songs the order changed too (before the float64 re-ranking, user 35: songs 21407 and 49636,
    float64 scores 2.44880535 and 2.44880557, swapped places). Expected: the same indices and
    bit-identical scores."""
    rng = np.random.default_rng(0)
    n = 50_000
    catalogue = rng.normal(size=(n, 90)).astype(np.float32)
    catalogue /= np.linalg.norm(catalogue, axis=1, keepdims=True)
    histories = [rng.choice(n, size=rng.integers(1, 60), replace=False) for _ in range(300)]
    scorer = kernel.CatalogueScorer(catalogue, batch_size=256)
    batch_indices, batch_scores = scorer.recommend(histories, k=50)
    order_differs, scores_differ = [], []
    for user in range(0, 300, 7):
        alone_indices, alone_scores = scorer.recommend([histories[user]], k=50)
        if not np.array_equal(alone_indices[0], batch_indices[user]):
            order_differs.append(user)
        if not np.array_equal(alone_scores[0], batch_scores[user]):
            scores_differ.append(user)
    assert not order_differs and not scores_differ, (
        f"users whose songs/order depend on the batch: {order_differs}; whose scores do: "
        f"{len(scores_differ)} of {len(range(0, 300, 7))}")


def test_near_tied_users_scored_over_the_whole_catalogue_match_the_batch_path():
    """Masses of exactly tied songs at the k-th place leave no safe margin for the float32
    candidates, so those users are scored in float64 over the whole catalogue. Their songs,
    order (ties by lower index) and scores must equal the brute force, alone or in a batch."""
    rng = np.random.default_rng(3)
    n, d, k = 3000, 16, 50
    catalogue = rng.normal(size=(n, d)).astype(np.float32)
    catalogue /= np.linalg.norm(catalogue, axis=1, keepdims=True)
    catalogue[100:400] = catalogue[0]  # 300 copies of song 0: ties everywhere near the top
    histories = [[0, 5, 9], [0, 7], [11, 12, 13, 14], [0]]
    scorer = kernel.CatalogueScorer(catalogue, batch_size=4, dense_elements=0,
                                    tile_elements=1 << 12, storage_rows=64)
    indices, scores = scorer.recommend(histories, k=k)
    assert scorer.last_stats["float64_catalogue_users"] >= 2  # at least [0] and [0, 7]
    for user, history in enumerate(histories):
        exact = brute_force_scores(catalogue, history)
        candidates = np.setdiff1d(np.arange(n), history)
        order = candidates[np.lexsort((candidates, -exact[candidates]))][:k]
        assert indices[user].tolist() == order.tolist()
        np.testing.assert_allclose(scores[user], exact[order], rtol=1e-12)
        alone_indices, alone_scores = scorer.recommend([history], k=k)
        np.testing.assert_array_equal(alone_indices[0], indices[user])
        np.testing.assert_array_equal(alone_scores[0], scores[user])


def test_exact_scores_do_not_depend_on_the_rows_scored_with_them():
    """The float64 re-ranking relies on one row's score being the same bits whether it is
    scored alone, among others, or for several profiles at once."""
    rng = np.random.default_rng(4)
    catalogue = rng.normal(size=(5000, 90)).astype(np.float32)
    scorer = kernel.CatalogueScorer(catalogue)
    profiles = rng.normal(size=(3, 90))
    rows = rng.integers(0, 5000, size=(3, 700))
    together = scorer.exact_scores(rows, profiles)
    for user in range(3):
        np.testing.assert_array_equal(scorer.exact_scores(rows[user], profiles[user]), together[user])
        for position in (0, 1, 699):
            np.testing.assert_array_equal(
                scorer.exact_scores(rows[user][position:position + 1], profiles[user]),
                together[user][position:position + 1])


def test_the_scorer_turns_tensorfloat32_off():
    """On Ampere+ GPUs TensorFlow would run float32 matmuls in TF32 (10-bit mantissa), which
    breaks the error bound behind the float64 re-ranking; the scorer must switch it off."""
    import tensorflow as tf

    tf.config.experimental.enable_tensor_float_32_execution(True)
    kernel.CatalogueScorer(np.eye(4, dtype=np.float32))
    assert not tf.config.experimental.tensor_float_32_execution_enabled()
