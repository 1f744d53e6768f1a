"""The 90 timbre statistics of a song, in the YearPredictionMSD definition and column order.

Features = the 12 column means of the song's timbre matrix T (n_segments × 12), then the 78
distinct entries of the sample covariance ``np.cov(T, rowvar=False)`` (ddof = 1), diagonal by
diagonal: ``np.diag(cov, 0)`` (12 variances), ``np.diag(cov, 1)`` (11), …, ``np.diag(cov, 11)``.
That is the order of the public YearPredictionMSD data set, so our vectors line up with it.
"""
from typing import Optional

import numpy as np

TIMBRE_DIMS = 12
NUM_MEANS = TIMBRE_DIMS
NUM_COVARIANCES = TIMBRE_DIMS * (TIMBRE_DIMS + 1) // 2
NUM_FEATURES = NUM_MEANS + NUM_COVARIANCES  # 90

# Flat positions in the 12×12 covariance matrix, diagonal by diagonal.
_COVARIANCE_ROWS = np.concatenate([np.arange(TIMBRE_DIMS - offset) for offset in range(TIMBRE_DIMS)])
_COVARIANCE_COLS = np.concatenate(
    [np.arange(offset, TIMBRE_DIMS) for offset in range(TIMBRE_DIMS)])
_COVARIANCE_FLAT = _COVARIANCE_ROWS * TIMBRE_DIMS + _COVARIANCE_COLS


def feature_names() -> list[str]:
    """Human-readable names of the 90 statistics: mean_0..11, then cov_i_j diagonal by diagonal."""
    means = [f"mean_{i}" for i in range(TIMBRE_DIMS)]
    covs = [f"cov_{i}_{j}" for i, j in zip(_COVARIANCE_ROWS, _COVARIANCE_COLS)]
    return means + covs


def timbre_statistics(timbre: np.ndarray) -> np.ndarray:
    """Returns the 90 statistics (float64) of a (n_segments ≥ 2, 12) timbre matrix.

    The caller validates the matrix first (``timbre_problem``); this function only computes.
    """
    timbre = np.asarray(timbre, dtype=np.float64)
    means = timbre.mean(axis=0)
    centred = timbre - means
    covariance = centred.T @ centred / (timbre.shape[0] - 1)
    return np.concatenate([means, covariance.ravel()[_COVARIANCE_FLAT]])


def timbre_problem(timbre: np.ndarray, min_segments: int) -> Optional[tuple[str, str]]:
    """Why a timbre matrix cannot give usable statistics, as (reason, detail); None if it can.

    The rules are YearPredictionMSD's: at least ``min_segments`` segments and no NaN/Inf.
    """
    if timbre.ndim != 2 or timbre.shape[1] != TIMBRE_DIMS:
        return "bad_timbre_shape", f"segments_timbre has shape {timbre.shape}, expected (n, 12)"
    if not np.issubdtype(timbre.dtype, np.floating):
        return "bad_timbre_dtype", f"segments_timbre has dtype {timbre.dtype}, expected float"
    if timbre.shape[0] < max(min_segments, 2):
        return ("too_few_segments",
                f"{timbre.shape[0]} segments, fewer than the minimum of {max(min_segments, 2)}")
    if not np.isfinite(timbre).all():
        bad = int((~np.isfinite(timbre)).sum())
        return "non_finite_timbre", f"{bad} NaN/Inf values in segments_timbre"
    return None
