import numpy as np
import pytest

from msd import timbre


def independent_statistics(matrix: np.ndarray) -> np.ndarray:
    """The YearPredictionMSD definition written out plainly: means, then np.cov diagonals."""
    covariance = np.cov(matrix, rowvar=False)
    diagonals = [np.diag(covariance, offset) for offset in range(12)]
    return np.concatenate([matrix.mean(axis=0)] + diagonals)


def test_golden_column_order_on_a_hand_made_matrix():
    # Rows 0, v, 0 with v = 1..12: means v/3 and covariance v·vᵀ/3, so each entry names its place.
    v = np.arange(1, 13, dtype=np.float64)
    matrix = np.stack([np.zeros(12), v, np.zeros(12)])
    stats = timbre.timbre_statistics(matrix)
    assert stats.shape == (90,)
    np.testing.assert_allclose(stats[:3], [1 / 3, 2 / 3, 1.0])
    np.testing.assert_allclose(stats[11], 4.0)            # mean of column 11
    np.testing.assert_allclose(stats[12], 1 / 3)          # var(0)
    np.testing.assert_allclose(stats[23], 48.0)           # var(11) = 144/3
    np.testing.assert_allclose(stats[24], 2 / 3)          # cov(0, 1): first entry of diagonal 1
    np.testing.assert_allclose(stats[34], 44.0)           # cov(10, 11) = 132/3: last of diagonal 1
    np.testing.assert_allclose(stats[35], 1.0)            # cov(0, 2): first entry of diagonal 2
    np.testing.assert_allclose(stats[87:90], [11 / 3, 8.0, 4.0])  # cov(0,10), cov(1,11), cov(0,11)


def test_feature_names_follow_the_same_order():
    names = timbre.feature_names()
    assert len(names) == 90 and names[0] == "mean_0" and names[12] == "cov_0_0"
    assert names[24] == "cov_0_1" and names[88] == "cov_1_11" and names[89] == "cov_0_11"


@pytest.mark.parametrize("num_segments", [2, 10, 935, 3300])
def test_statistics_equal_an_independent_numpy_computation(num_segments):
    rng = np.random.default_rng(num_segments)
    matrix = rng.normal([43] + [0] * 11, [8] + [40] * 11, size=(num_segments, 12))
    np.testing.assert_allclose(timbre.timbre_statistics(matrix), independent_statistics(matrix),
                               rtol=1e-10, atol=1e-8)


@pytest.mark.parametrize("matrix, min_segments, reason", [
    (np.ones((9, 12)), 10, "too_few_segments"),
    (np.ones((1, 12)), 1, "too_few_segments"),
    (np.ones((20, 11)), 10, "bad_timbre_shape"),
    (np.ones((20, 13)), 10, "bad_timbre_shape"),
    (np.ones(240), 10, "bad_timbre_shape"),
    (np.ones((20, 12), dtype=np.int32), 10, "bad_timbre_dtype"),
    (np.where(np.eye(20, 12) > 0, np.nan, 1.0), 10, "non_finite_timbre"),
    (np.where(np.eye(20, 12) > 0, np.inf, 1.0), 10, "non_finite_timbre"),
])
def test_unusable_timbre_is_named(matrix, min_segments, reason):
    assert timbre.timbre_problem(matrix, min_segments)[0] == reason


def test_ten_finite_segments_are_usable():
    assert timbre.timbre_problem(np.ones((10, 12)), 10) is None
