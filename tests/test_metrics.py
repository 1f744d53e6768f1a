"""The ranking metrics against hand-computed cases and an independent brute force."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from recommend import metrics
from recommend.metrics import (average_precision, catalogue_coverage, fallback_share, gini,
                               mean_average_precision, mean_popularity, ndcg_at, precision_at,
                               recall_at, user_scores)


def brute_force_ap(ranked, hidden, k):
    """AP@k straight from the MSD Challenge paper: Σ_i P(i)·rel(i) / min(k, |hidden|), with
    P(i) = |first i ∩ hidden| / i and rel(i) = the i-th is hidden and new (lists of distinct
    songs only, so 'new' never matters)."""
    hidden = set(hidden)
    total = 0.0
    for i in range(1, min(k, len(ranked)) + 1):
        if ranked[i - 1] in hidden:
            total += len(set(ranked[:i]) & hidden) / i
    return total / min(k, len(hidden))


# --- average precision: the cases the challenge's definition turns on ------------------------

def test_ap_fewer_hidden_songs_than_the_cutoff():
    # hits at 1 and 3: (1/1 + 2/3) / min(500, 3)
    assert average_precision(["a", "x", "b", "y"], {"a", "b", "c"}) == pytest.approx(
        (1 + 2 / 3) / 3)


def test_ap_none_found_is_zero():
    assert average_precision(["x", "y", "z"], {"a", "b"}) == 0.0


def test_ap_hidden_songs_outside_the_catalogue_still_count_in_the_denominator():
    # "z1" and "z2" can never be recommended, yet they lower the ceiling: 1/3, not 1
    assert average_precision(["a", "x"], {"a", "z1", "z2"}) == pytest.approx(1 / 3)
    assert mean_average_precision({"u": ["a"], "v": ["b"]},
                                  {"u": {"a"}, "v": {"b", "z1", "z2", "z3"}}) == pytest.approx(
        (1.0 + 0.25) / 2)


def test_ap_perfect_list_is_one_in_any_order_of_the_hits():
    hidden = {"a", "b", "c"}
    assert average_precision(["c", "a", "b", "x", "y"], hidden) == 1.0
    assert average_precision(["b", "c", "a"], hidden) == 1.0


def test_ap_more_hidden_songs_than_the_cutoff_divides_by_the_cutoff():
    hidden = {f"s{i}" for i in range(600)}
    ranked = sorted(hidden)[:500]
    assert average_precision(ranked, hidden) == 1.0          # 500 hits / min(500, 600)
    assert average_precision(ranked[:250], hidden) == pytest.approx(250 / 500)


def test_ap_is_truncated_at_k():
    hidden = {"a"}
    ranked = [f"x{i}" for i in range(500)] + ["a"]
    assert average_precision(ranked, hidden) == 0.0          # the hit is at 501
    assert average_precision(ranked, hidden, k=501) == pytest.approx(1 / 501)
    assert average_precision(["x", "a", "b"], {"a", "b"}, k=2) == pytest.approx((1 / 2) / 2)


def test_ap_a_repeated_hit_counts_once():
    assert average_precision(["a", "a", "b"], {"a", "b"}) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision(["a", "a", "a"], {"a", "b"}) == pytest.approx(1 / 2)


def test_ap_empty_list_and_undefined_user():
    assert average_precision([], {"a"}) == 0.0
    with pytest.raises(ValueError):
        average_precision(["a"], set())
    with pytest.raises(ValueError):
        mean_average_precision({"u": ["a"]}, {"u": set()})


def test_map_counts_users_without_a_list_as_zero():
    assert mean_average_precision({"u": ["a"]}, {"u": {"a"}, "v": {"b"}}) == pytest.approx(0.5)


# --- the other ranking metrics ---------------------------------------------------------------

def test_precision_at_10_does_not_excuse_short_lists():
    assert precision_at(["a", "b", "x"], {"a", "b", "c"}) == pytest.approx(2 / 10)
    assert precision_at(["x"] * 10 + ["a"], {"a"}) == 0.0
    assert precision_at(["a", "b"], {"a"}, k=2) == 0.5


def test_recall_divides_by_every_hidden_song():
    assert recall_at(["a", "x", "b"], {"a", "b", "c", "d"}) == pytest.approx(2 / 4)
    assert recall_at(["x", "a"], {"a"}, k=1) == 0.0


def test_ndcg_by_hand():
    # hit at 2 of 2 hidden: (1/log2 3) / (1 + 1/log2 3)
    expected = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert ndcg_at(["x", "a"], {"a", "b"}) == pytest.approx(expected)
    assert ndcg_at(["b", "a"], {"a", "b"}) == pytest.approx(1.0)
    # the ideal list is cut at k: one hit at 1 of 3 hidden with k = 1 is perfect
    assert ndcg_at(["a", "b"], {"a", "b", "c"}, k=1) == pytest.approx(1.0)


def test_user_scores_matches_the_single_metric_functions():
    ranked, hidden = ["x", "a", "y", "b", "a", "z"], {"a", "b", "q"}
    scores = user_scores(ranked, hidden, map_cutoff=4, precision_cutoff=2)
    assert scores.average_precision == pytest.approx(average_precision(ranked, hidden, 4))
    assert scores.precision == pytest.approx(precision_at(ranked, hidden, 2))
    assert scores.recall == pytest.approx(recall_at(ranked, hidden, 4))
    assert scores.ndcg == pytest.approx(ndcg_at(ranked, hidden, 4))


# --- catalogue-level metrics -----------------------------------------------------------------

def test_coverage_counts_catalogue_songs_within_k():
    lists = [["a", "b", "zz"], ["b", "c", "d"]]
    assert catalogue_coverage(lists, {"a", "b", "c", "d", "e"}, k=2) == pytest.approx(3 / 5)
    assert catalogue_coverage(lists, {"a", "b", "c", "d", "e"}) == pytest.approx(4 / 5)
    with pytest.raises(ValueError):
        catalogue_coverage(lists, set())


def test_mean_popularity_over_every_slot():
    popularity = {"a": 10, "b": 2}
    assert mean_popularity([["a", "b"], ["a", "zz"]], popularity) == pytest.approx(22 / 4)
    assert mean_popularity([["a", "b"]], popularity, k=1) == 10
    assert mean_popularity([[]], popularity) is None


def test_fallback_share():
    assert fallback_share([True, False, False, True]) == 0.5
    with pytest.raises(ValueError):
        fallback_share([])


def test_gini_by_hand():
    assert gini([0, 1, 1, 2]) == pytest.approx(0.375)   # 2·13/(4·4) − 5/4
    assert gini([3, 3, 3]) == pytest.approx(0.0)
    assert gini([0, 0, 0, 7]) == pytest.approx(3 / 4)    # all on one of n: (n − 1)/n
    assert gini([0, 0]) == 0.0
    with pytest.raises(ValueError):
        gini([1, -1])


# --- properties --------------------------------------------------------------------------------

songs = st.integers(min_value=0, max_value=30)


@settings(max_examples=200, deadline=None)
@given(ranked=st.lists(songs, max_size=40, unique=True),
       hidden=st.sets(songs, min_size=1, max_size=15),
       k=st.integers(min_value=1, max_value=45))
def test_ap_equals_the_brute_force_and_lies_in_0_1(ranked, hidden, k):
    ap = average_precision(ranked, hidden, k)
    assert ap == pytest.approx(brute_force_ap(ranked, hidden, k))
    assert 0.0 <= ap <= 1.0 + 1e-12
    # songs after position k change nothing (pad to k with songs nobody hid, then add hits)
    padded = ranked[:k] + [-1] * (k - len(ranked[:k]))
    assert average_precision(padded + sorted(hidden), hidden, k) == pytest.approx(ap)


@settings(max_examples=150, deadline=None)
@given(data=st.lists(st.tuples(st.lists(songs, max_size=25),
                               st.sets(songs, min_size=1, max_size=10)),
                     min_size=1, max_size=8),
       map_cutoff=st.integers(min_value=1, max_value=30),
       precision_cutoff=st.integers(min_value=1, max_value=12))
def test_the_batch_computation_equals_the_per_user_definition(data, map_cutoff,
                                                                precision_cutoff):
    lists = [np.array(ranked, dtype=np.int64) for ranked, _ in data]
    hidden = [np.array(sorted(h), dtype=np.int64) for _, h in data]
    offsets = np.concatenate([[0], np.cumsum([len(x) for x in lists])])
    hidden_offsets = np.concatenate([[0], np.cumsum([len(x) for x in hidden])])
    flat = np.concatenate(lists) if offsets[-1] else np.zeros(0, np.int64)
    relevant = metrics.batch_relevance(offsets, flat, hidden_offsets, np.concatenate(hidden))
    batch = metrics.batch_user_scores(relevant, offsets, np.diff(hidden_offsets),
                                      map_cutoff=map_cutoff, precision_cutoff=precision_cutoff)
    for user, (ranked, truth) in enumerate(data):
        expected = user_scores(ranked, truth, map_cutoff=map_cutoff,
                               precision_cutoff=precision_cutoff)
        assert batch["average_precision"][user] == pytest.approx(expected.average_precision)
        assert batch["precision"][user] == pytest.approx(expected.precision)
        assert batch["recall"][user] == pytest.approx(expected.recall)
        assert batch["ndcg"][user] == pytest.approx(expected.ndcg)


def test_batch_scores_reject_a_user_without_hidden_songs():
    with pytest.raises(ValueError):
        metrics.batch_user_scores(np.array([True]), np.array([0, 1]), np.array([0]))
