"""Ranking metrics of the offline evaluation: pure functions over ranked lists, no I/O.

The headline metric is the MSD Challenge's truncated mean average precision (McFee et al. 2012,
"The Million Song Dataset Challenge", section 4): for a user u with hidden (held-out) songs H_u
and a ranked list y_u,

    AP@τ(u) = 1 / min(τ, |H_u|) · Σ_{i=1..τ} P_u(i) · rel_u(i),   P_u(i) = hits in the first i / i

and mAP@τ is the mean of AP@τ over the evaluated users (τ = 500 in the challenge). The
denominator counts every hidden song, also those the recommender could never return (songs
missing from its catalogue): such a user still counts, with a lower ceiling.

Conventions shared by every function here:
- ``ranked`` is best first; only the first ``k`` entries count.
- A song repeated in a ranked list counts at its first position only; the repeats are misses
  (so a list cannot gain by repeating a hit).
- ``hidden`` is a collection of distinct songs; users with no hidden song have no defined AP and
  are not evaluated (``mean_average_precision`` raises if it is given one).
Songs can be any hashable ids (strings, or ints for speed).

The per-user functions are the definition, written to be read; ``batch_relevance`` and
``batch_user_scores`` compute the same numbers for many users at once with numpy (the tests
check them against the per-user functions), which the evaluation of 110,000 users needs.
"""
import dataclasses
import math
from typing import Collection, Hashable, Iterable, Mapping, Optional, Sequence

import numpy as np

MAP_CUTOFF = 500          # τ of the MSD Challenge
PRECISION_CUTOFF = 10


def relevance(ranked: Sequence[Hashable], hidden: Collection[Hashable], k: int) -> list[bool]:
    """rel(i) for i = 1..min(k, len(ranked)): True where the i-th song is hidden and not a
    repeat of an earlier one."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    hidden_set = hidden if isinstance(hidden, (set, frozenset)) else set(hidden)
    seen: set = set()
    flags = []
    for song in ranked[:k]:
        flags.append(song in hidden_set and song not in seen)
        seen.add(song)
    return flags


def average_precision(ranked: Sequence[Hashable], hidden: Collection[Hashable],
                      k: int = MAP_CUTOFF) -> float:
    """AP@k as the MSD Challenge defined it: Σ P(i)·rel(i) over the first k, / min(k, |hidden|)."""
    if not hidden:
        raise ValueError("average precision is undefined for a user with no hidden songs")
    total = 0.0
    hits = 0
    for position, is_hit in enumerate(relevance(ranked, hidden, k), 1):
        if is_hit:
            hits += 1
            total += hits / position
    return total / min(k, len(hidden))


def precision_at(ranked: Sequence[Hashable], hidden: Collection[Hashable],
                 k: int = PRECISION_CUTOFF) -> float:
    """Hits among the first k, / k (a list shorter than k is not excused)."""
    return sum(relevance(ranked, hidden, k)) / k


def recall_at(ranked: Sequence[Hashable], hidden: Collection[Hashable],
              k: int = MAP_CUTOFF) -> float:
    """Hits among the first k, / |hidden| (hidden songs outside the catalogue included)."""
    if not hidden:
        raise ValueError("recall is undefined for a user with no hidden songs")
    return sum(relevance(ranked, hidden, k)) / len(hidden)


def ndcg_at(ranked: Sequence[Hashable], hidden: Collection[Hashable], k: int = MAP_CUTOFF) -> float:
    """Binary-relevance NDCG@k: Σ rel(i)/log2(i+1), / the same sum for a perfect list, which puts
    min(k, |hidden|) hits first."""
    if not hidden:
        raise ValueError("NDCG is undefined for a user with no hidden songs")
    dcg = sum(1.0 / math.log2(position + 1)
              for position, is_hit in enumerate(relevance(ranked, hidden, k), 1) if is_hit)
    ideal = sum(1.0 / math.log2(position + 1) for position in range(1, min(k, len(hidden)) + 1))
    return dcg / ideal


@dataclasses.dataclass(frozen=True)
class UserScores:
    """The per-user metrics of one ranked list (one pass over the list computes them all)."""
    average_precision: float
    precision: float
    recall: float
    ndcg: float


def user_scores(ranked: Sequence[Hashable], hidden: Collection[Hashable], *,
                map_cutoff: int = MAP_CUTOFF,
                precision_cutoff: int = PRECISION_CUTOFF) -> UserScores:
    """AP@map_cutoff, precision@precision_cutoff, recall@map_cutoff and NDCG@map_cutoff of one
    user; equal to the single-metric functions above, computed from one relevance vector."""
    if not hidden:
        raise ValueError("metrics are undefined for a user with no hidden songs")
    flags = relevance(ranked, hidden, max(map_cutoff, precision_cutoff))
    hits = 0
    ap_sum = 0.0
    dcg = 0.0
    hits_at_map = 0
    hits_at_precision = 0
    for position, is_hit in enumerate(flags, 1):
        if not is_hit:
            continue
        hits += 1
        if position <= map_cutoff:
            hits_at_map += 1
            ap_sum += hits_at_map / position
            dcg += 1.0 / math.log2(position + 1)
        if position <= precision_cutoff:
            hits_at_precision += 1
    ideal = sum(1.0 / math.log2(position + 1)
                for position in range(1, min(map_cutoff, len(hidden)) + 1))
    return UserScores(average_precision=ap_sum / min(map_cutoff, len(hidden)),
                      precision=hits_at_precision / precision_cutoff,
                      recall=hits_at_map / len(hidden),
                      ndcg=dcg / ideal)


def mean_average_precision(lists: Mapping[Hashable, Sequence[Hashable]],
                           hidden: Mapping[Hashable, Collection[Hashable]],
                           k: int = MAP_CUTOFF) -> float:
    """mAP@k over the users of ``hidden`` (every one counts; a user with no list scores 0)."""
    if not hidden:
        raise ValueError("no users to evaluate")
    total = 0.0
    for user, truth in hidden.items():
        if not truth:
            raise ValueError(f"user {user!r} has no hidden songs; leave such users out")
        total += average_precision(lists.get(user, ()), truth, k)
    return total / len(hidden)


def catalogue_coverage(lists: Iterable[Sequence[Hashable]], catalogue: Collection[Hashable],
                       k: int = MAP_CUTOFF) -> float:
    """Share of the catalogue's songs that appear in the first k of at least one list (songs
    outside ``catalogue`` are not counted)."""
    if not catalogue:
        raise ValueError("the catalogue is empty")
    catalogue_set = catalogue if isinstance(catalogue, (set, frozenset)) else set(catalogue)
    recommended = set()
    for ranked in lists:
        recommended.update(ranked[:k])
    return len(recommended & catalogue_set) / len(catalogue_set)


def mean_popularity(lists: Iterable[Sequence[Hashable]], popularity: Mapping[Hashable, float],
                    k: int = MAP_CUTOFF) -> Optional[float]:
    """Mean popularity (e.g. listeners in the visible data; 0 for a song not in ``popularity``)
    over every recommendation slot in the first k of every list; None when there is none."""
    total = 0.0
    slots = 0
    for ranked in lists:
        for song in ranked[:k]:
            total += popularity.get(song, 0.0)
            slots += 1
    return total / slots if slots else None


def fallback_share(served_by_fallback: Iterable[bool]) -> float:
    """Share of users whose list came from the fallback rather than the model itself."""
    flags = list(served_by_fallback)
    if not flags:
        raise ValueError("no users")
    return sum(bool(flag) for flag in flags) / len(flags)


def gini(counts: Iterable[float]) -> float:
    """Gini coefficient of non-negative counts (0: all equal; → 1: all in one item), the
    concentration of recommendations over the catalogue when ``counts`` has one entry per
    catalogue song (zeros included). G = 2·Σ i·x_(i) / (n·Σx) − (n+1)/n, x ascending, i from 1."""
    values = sorted(float(count) for count in counts)
    if any(value < 0 for value in values):
        raise ValueError("counts must be non-negative")
    n = len(values)
    total = sum(values)
    if n == 0 or total == 0:
        return 0.0
    weighted = sum(position * value for position, value in enumerate(values, 1))
    return 2.0 * weighted / (n * total) - (n + 1) / n


def batch_relevance(offsets: np.ndarray, songs: np.ndarray, hidden_offsets: np.ndarray,
                    hidden_songs: np.ndarray) -> np.ndarray:
    """rel flags of many ranked lists at once. User u's list is ``songs[offsets[u]:offsets[u+1]]``
    and their hidden songs ``hidden_songs[hidden_offsets[u]:hidden_offsets[u+1]]`` (non-negative
    int song codes). True where an entry is one of its user's hidden songs and not a repeat of
    an earlier entry of the same list, as in ``relevance``."""
    offsets = np.asarray(offsets, dtype=np.int64)
    hidden_offsets = np.asarray(hidden_offsets, dtype=np.int64)
    songs = np.asarray(songs, dtype=np.int64)
    hidden_songs = np.asarray(hidden_songs, dtype=np.int64)
    if len(offsets) != len(hidden_offsets):
        raise ValueError("offsets and hidden_offsets must describe the same users")
    if len(songs) == 0:
        return np.zeros(0, dtype=bool)
    width = int(max(songs.max(initial=0), hidden_songs.max(initial=0))) + 1
    users = len(offsets) - 1
    list_keys = np.repeat(np.arange(users, dtype=np.int64), np.diff(offsets)) * width + songs
    hidden_keys = (np.repeat(np.arange(users, dtype=np.int64), np.diff(hidden_offsets)) * width
                   + hidden_songs)
    first = np.zeros(len(songs), dtype=bool)
    first[np.unique(list_keys, return_index=True)[1]] = True
    return first & np.isin(list_keys, hidden_keys)


def batch_user_scores(relevant: np.ndarray, offsets: np.ndarray, num_hidden: np.ndarray, *,
                      map_cutoff: int = MAP_CUTOFF,
                      precision_cutoff: int = PRECISION_CUTOFF) -> dict[str, np.ndarray]:
    """``user_scores`` for many users from their rel flags (``batch_relevance``): arrays
    ``average_precision``, ``precision``, ``recall``, ``ndcg``, one entry per user. Every user
    needs at least one hidden song."""
    relevant = np.asarray(relevant, dtype=bool)
    offsets = np.asarray(offsets, dtype=np.int64)
    num_hidden = np.asarray(num_hidden, dtype=np.int64)
    users = len(offsets) - 1
    if len(num_hidden) != users:
        raise ValueError("num_hidden must have one entry per user")
    if users and num_hidden.min() < 1:
        raise ValueError("metrics are undefined for a user with no hidden songs")
    lengths = np.diff(offsets)
    owner = np.repeat(np.arange(users), lengths)
    position = np.arange(len(relevant), dtype=np.int64) - np.repeat(offsets[:-1], lengths) + 1
    in_map = relevant & (position <= map_cutoff)
    # Hits so far within the user's list: a global running count minus the count before the list.
    running = np.cumsum(in_map)
    before = np.concatenate([[0], running])[offsets[:-1]]
    hit_ordinal = running - np.repeat(before, lengths)
    hit_owner = owner[in_map]
    hit_position = position[in_map].astype(np.float64)
    ap_sum = np.bincount(hit_owner, weights=hit_ordinal[in_map] / hit_position, minlength=users)
    hits_at_map = np.bincount(hit_owner, minlength=users)
    dcg = np.bincount(hit_owner, weights=1.0 / np.log2(hit_position + 1), minlength=users)
    in_precision = relevant & (position <= precision_cutoff)
    hits_at_precision = np.bincount(owner[in_precision], minlength=users)
    ideal_length = np.minimum(map_cutoff, num_hidden)
    ideal_prefix = np.concatenate(
        [[0.0], np.cumsum(1.0 / np.log2(np.arange(2, map_cutoff + 2, dtype=np.float64)))])
    return {"average_precision": ap_sum / ideal_length,
            "precision": hits_at_precision / precision_cutoff,
            "recall": hits_at_map / num_hidden,
            "ndcg": dcg / ideal_prefix[ideal_length]}
