"""Exact top-k recommendation kernel in TensorFlow.

For a batch of users with listening histories (rows of a catalogue ``F`` of L2-normalised song
vectors), the kernel computes

    profile_u = sum_i w_ui * F[h_ui]          (duplicates count each time; w = 1 by default)
    score_u   = F @ profile_u
    result_u  = the k best songs the user has not listened to, best first,
                ties broken by the lower catalogue index

exactly: the songs, order and scores of a float64 brute force (each score the float64 dot
product of the float32 song vector with the float64 profile), whichever users share the batch.

Public API
----------
``recommend(catalogue, histories, k=500, weights=None, *, batch_size=256)``
    One-shot convenience wrapper: returns ``(indices int64 [B, k], scores float64 [B, k])``.
``CatalogueScorer(catalogue, *, batch_size=256, ...)``
    Holds the catalogue on the device once and keeps compiled ``tf.function`` s per padded batch
    size and ``k``; ``.recommend(histories, k, weights)`` / ``.recommend_packed(packed, k)``.
``max_k_for(histories, num_songs)`` / ``check_k(histories, num_songs, k)``
    The largest ``k`` every user can be served (songs not listened to), and the up-front check.
``pack_histories(histories, weights=None, num_songs=None)`` -> ``PackedHistories``
    Flat ``values`` + ``row_splits`` (+ ``weights``) form the scorer consumes.

How it stays exact
------------------
Every candidate carries an int64 key ``(order-preserving int32 of its score) << 32 |
(2^32 - 1 - index)``: a higher key means a better score, then a lower index, so ties can never
make a threshold ambiguous and the final ordering is one descending sort of unique keys.
Pruning only ever drops a song when k other songs (not listened to) provably beat it:

* a *valid* threshold (k-th best block maximum of already-scored songs, or k-th best key of
  the candidate buffer) is beaten or tied by k earlier songs, and ties go to the lower index;
* a *speculative* threshold ``tau_u`` (below) is verified at the end: if at least k songs the
  user has not listened to scored above it, every pruned song (score <= tau_u) is beaten by k of
  them. Users for whom the check fails (e.g. masses of tied scores) are scored again by the
  always-exact path (no speculation: the threshold starts as the k-th best block maximum of the
  first chunks and rises with compactions), so results never depend on the guess.
* Listened songs are removed from the candidates (a membership test against the sorted codes
  ``user * N + song``) before any threshold is computed from them and before the final choice.

Why results do not depend on the batch
--------------------------------------
float32 matrix products round differently for different batch shapes, so the kernel's float32
scores of a user change in the last bits with the users batched alongside (and near-tied songs
can swap). The kernel therefore selects k + margin candidates in float32 and the final order
and scores are computed in float64 on the host, each score one fixed-order reduction over its
song's d products (``exact_scores``), from a profile summed in history order (``profiles64``).
A per-user bound on the float32 error proves the candidates contain the float64 top k; a user
whose margin is too thin (masses of near-ties) is scored in float64 over the whole catalogue.
Cost: ~B * (k + margin) * d float64 products per batch, a few % of the catalogue pass.

How it stays fast (one pass over the catalogue, memory bounded by a tile)
-------------------------------------------------------------------------
* The catalogue is stored once, on the device, as ``[n_chunks, Cs, d]`` so that every chunk is a
  zero-copy view (row slices of an ``[N, 90]`` tensor would be copied: 360-byte rows are not
  64-byte aligned). Batches are padded to powers of two and inputs are flat (values + user ids),
  so compiled graphs are reused.
* Small batches (``padded_batch * N <= dense_elements``, e.g. one user): scores per ~32k-song
  chunk, exclusions scattered in, ``top_k`` per chunk (independent chunks run in parallel),
  one merge.
* Larger batches (the streaming path):
  1. Speculative threshold: score a strided sample (every 16th song, precomputed) and take per
     user the j-th best block (or group) maximum, j ~ guess_factor * k * sample / N, so that about
     guess_factor * k songs of the catalogue beat it (2 * k with the default): ~6% extra
     matmul.
  2. One ``tf.while_loop`` over tiles ``S = F_chunk @ P^T`` ([C, Bp], C ~ tile_elements / Bp,
     4 MB by default: the tile stays in the last-level cache). Block maxima (8 consecutive songs)
     and group maxima (8 blocks) are vectorised middle-axis reductions; ``tf.where`` on the
     (transposed, boolean) group mask > tau, then only the passing groups' block maxima, then
     only the passing blocks' songs are gathered. Candidates (score, index, user) go to
     TensorArrays. Listened songs are not masked inside the loop (a scatter there copies the
     tile); the block maxima that include them are still valid upper bounds for pruning.
     Depth adapts to the expected share of candidates: groups->blocks->songs, blocks->songs, or
     a plain comparison of every score when k is a large share of N.
  3. If the candidate buffer exceeds compact_factor * k per user it is compacted to ~k per user
     and tau is raised to the k-th best so far (bounds memory on adversarial data).
  4. Final: per-user histogram thresholds (first for k + listens, then membership test on the
     survivors, then for k), user-major packing to [Bp, ~k], one sort.

The catalogue pass is all TensorFlow and runs on GPU when TensorFlow sees one (soft placement);
numpy validates and packs inputs, sums the float64 profiles and re-ranks the k + margin
candidates in float64 on the host (O(B * k * d) per batch, independent of the catalogue size).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

__all__ = [
    "DEFAULT_K",
    "PackedHistories",
    "pack_histories",
    "available_counts",
    "max_k_for",
    "check_k",
    "CatalogueScorer",
    "recommend",
    "sum_rows",
]

DEFAULT_K = 500

_INT64_MIN = np.iinfo(np.int64).min
_INT64_MAX = np.iinfo(np.int64).max
_TWO32 = 1 << 32


# ----------------------------------------------------------------------------------------------
# Input packing and validation (numpy; not the hot path)
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PackedHistories:
    """Histories of B users as one flat array: user ``u`` listened to
    ``values[row_splits[u]:row_splits[u+1]]`` (catalogue row indices), with optional parallel
    ``weights`` (one per listen)."""

    values: np.ndarray  # int64 [nnz]
    row_splits: np.ndarray  # int64 [B + 1]
    weights: Optional[np.ndarray] = None  # float32 [nnz] or None (all ones)

    @property
    def num_users(self) -> int:
        return int(self.row_splits.shape[0]) - 1

    def lengths(self) -> np.ndarray:
        return np.diff(self.row_splits)

    def slice(self, start: int, stop: int) -> "PackedHistories":
        lo, hi = int(self.row_splits[start]), int(self.row_splits[stop])
        return PackedHistories(
            values=self.values[lo:hi],
            row_splits=self.row_splits[start : stop + 1] - lo,
            weights=None if self.weights is None else self.weights[lo:hi],
        )


def _as_index_array(seq, position: int) -> np.ndarray:
    arr = np.asarray(seq)
    if arr.size == 0:
        return np.zeros(0, np.int64)
    if arr.ndim != 1:
        raise ValueError(f"history of user {position} must be a 1-D sequence of song indices, got shape {arr.shape}")
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(
            f"history of user {position} must contain integer catalogue row indices, got dtype {arr.dtype}"
        )
    return arr.astype(np.int64, copy=False)


def pack_histories(histories, weights=None, num_songs: Optional[int] = None) -> PackedHistories:
    """Validates and flattens ``histories`` (a sequence of B sequences of catalogue row indices;
    a ``PackedHistories`` is passed through) and the optional parallel ``weights``.

    With ``num_songs`` every index is checked to be in ``[0, num_songs)``.
    """
    if isinstance(histories, PackedHistories):
        packed = histories
        if weights is not None:
            raise ValueError("weights must be inside PackedHistories when passing PackedHistories")
    else:
        if isinstance(histories, (str, bytes)) or not isinstance(histories, Sequence) and not isinstance(
            histories, np.ndarray
        ):
            try:
                histories = list(histories)
            except TypeError:
                raise TypeError("histories must be a sequence of sequences of song indices") from None
        arrays = [_as_index_array(h, i) for i, h in enumerate(histories)]
        lengths = np.fromiter((a.shape[0] for a in arrays), dtype=np.int64, count=len(arrays))
        row_splits = np.zeros(len(arrays) + 1, np.int64)
        np.cumsum(lengths, out=row_splits[1:])
        values = np.concatenate(arrays) if arrays else np.zeros(0, np.int64)
        w = None
        if weights is not None:
            if len(weights) != len(arrays):
                raise ValueError(
                    f"weights must have one sequence per user: got {len(weights)} for {len(arrays)} histories"
                )
            ws = []
            for i, (wi, n) in enumerate(zip(weights, lengths)):
                wa = np.asarray(wi, dtype=np.float64).reshape(-1) if np.size(wi) else np.zeros(0)
                if wa.shape[0] != n:
                    raise ValueError(
                        f"weights of user {i} have {wa.shape[0]} entries but the history has {n} listens"
                    )
                ws.append(wa)
            w = np.concatenate(ws).astype(np.float32) if ws else np.zeros(0, np.float32)
        packed = PackedHistories(values=values, row_splits=row_splits, weights=w)
    if packed.weights is not None:
        if packed.weights.shape != packed.values.shape:
            raise ValueError("weights must be parallel to the history values")
        bad = ~np.isfinite(packed.weights)
        if bad.any():
            pos = int(np.searchsorted(packed.row_splits, np.flatnonzero(bad)[0], side="right") - 1)
            raise ValueError(f"weights of user {pos} contain a non-finite value")
    if num_songs is not None and packed.values.size:
        bad = (packed.values < 0) | (packed.values >= num_songs)
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            pos = int(np.searchsorted(packed.row_splits, first, side="right") - 1)
            raise ValueError(
                f"history of user {pos} has song index {int(packed.values[first])} outside the "
                f"catalogue [0, {num_songs})"
            )
    return packed


def _distinct_per_user(packed: PackedHistories, num_songs: int) -> np.ndarray:
    b = packed.num_users
    if packed.values.size == 0:
        return np.zeros(b, np.int64)
    users = np.repeat(np.arange(b, dtype=np.int64), packed.lengths())
    codes = np.unique(users * np.int64(num_songs) + packed.values)
    return np.bincount(codes // np.int64(num_songs), minlength=b).astype(np.int64)


def available_counts(histories, num_songs: int) -> np.ndarray:
    """Per user, the number of catalogue songs not in the history (what can be recommended)."""
    packed = pack_histories(histories, num_songs=num_songs)
    return np.int64(num_songs) - _distinct_per_user(packed, num_songs)


def max_k_for(histories, num_songs: int) -> int:
    """The largest k every user in ``histories`` can be served: the smallest number of
    not-yet-listened songs over the users (``num_songs`` if there are no users)."""
    avail = available_counts(histories, num_songs)
    return int(avail.min()) if avail.size else int(num_songs)


def check_k(histories, num_songs: int, k: int) -> None:
    """Raises ``ValueError`` naming the first user (by position) who has fewer than ``k``
    songs left to recommend; the pipeline can call this before scoring."""
    _check_k_packed(pack_histories(histories, num_songs=num_songs), num_songs, k)


def _check_k_value(k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an integer, got {type(k).__name__}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return int(k)


def _check_k_packed(packed: PackedHistories, num_songs: int, k: int, offset: int = 0) -> None:
    _check_available(np.int64(num_songs) - _distinct_per_user(packed, num_songs), num_songs,
                     _check_k_value(k), offset)


def _check_available(avail: np.ndarray, num_songs: int, k: int, offset: int = 0) -> None:
    """Raises ``ValueError`` naming the first user (position + ``offset``) with fewer than k
    songs available (``avail``: per user, catalogue songs not in the history)."""
    short = np.flatnonzero(avail < k)
    if short.size:
        u = int(short[0])
        raise ValueError(
            f"k={k} is larger than the number of songs available for user at position {u + offset}: "
            f"{int(avail[u])} of {num_songs} catalogue songs are not in their history "
            f"({short.size} user(s) affected; max_k_for() gives the largest feasible k)"
        )


def _validate_catalogue(catalogue) -> np.ndarray:
    if isinstance(catalogue, tf.Tensor):
        catalogue = catalogue.numpy()
    arr = np.asarray(catalogue)
    if arr.dtype != np.float32:
        raise TypeError(f"catalogue must be a float32 array, got dtype {arr.dtype} (use .astype(np.float32))")
    if arr.ndim != 2:
        raise ValueError(f"catalogue must be 2-D [num_songs, dim], got shape {arr.shape}")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"catalogue must have at least one song and one dimension, got shape {arr.shape}")
    if arr.shape[0] >= 2**31 - 1:
        raise ValueError("catalogues of 2^31 songs or more are not supported")
    finite = np.isfinite(arr)
    if not finite.all():
        row = int(np.flatnonzero(~finite.all(axis=1))[0])
        raise ValueError(f"catalogue contains a non-finite value (first in row {row})")
    return arr


# ----------------------------------------------------------------------------------------------
# TensorFlow building blocks
# ----------------------------------------------------------------------------------------------


def _make_keys(scores: tf.Tensor, index: tf.Tensor) -> tf.Tensor:
    """int64 keys ordered like (score desc, index asc) is ordered like key desc."""
    bits = tf.bitcast(scores, tf.int32)
    # -0.0 and denormals (which TF's CPU kernels flush to zero when comparing) are all 0.0.
    bits = tf.where(tf.equal(tf.bitwise.bitwise_and(bits, np.int32(0x7F800000)), 0), tf.zeros_like(bits), bits)
    ordered = tf.where(bits < 0, tf.bitwise.bitwise_xor(bits, np.int32(0x7FFFFFFF)), bits)
    return tf.cast(ordered, tf.int64) * _TWO32 + (_TWO32 - 1 - tf.cast(index, tf.int64))


def _key_scores(keys: tf.Tensor) -> tf.Tensor:
    ordered = tf.cast(tf.math.floordiv(keys, _TWO32), tf.int32)
    bits = tf.where(ordered < 0, tf.bitwise.bitwise_xor(ordered, np.int32(0x7FFFFFFF)), ordered)
    return tf.bitcast(bits, tf.float32)


def _key_index(keys: tf.Tensor) -> tf.Tensor:
    return (_TWO32 - 1) - tf.math.floormod(keys, _TWO32)


def _key_score_threshold(tau_key: tf.Tensor) -> tf.Tensor:
    """Float threshold for later chunks: a later song (higher index) beats key tau only if its
    score is strictly greater than tau's score."""
    return tf.where(tau_key == _INT64_MIN, tf.fill(tf.shape(tau_key), -np.inf), _key_scores(tau_key))


def _float_block_threshold(m: tf.Tensor, k: int, nbins: int) -> tf.Tensor:
    """m: [Bp, R] block maxima (row = user). Returns tau [Bp]: the lowest value in the histogram
    bin holding the k-th largest finite value of the row, so that at least k values are >= tau;
    -inf where a row has fewer than k finite values."""
    bp = tf.shape(m)[0]
    finite = m > -np.inf
    inf = tf.constant(np.inf, tf.float32)
    lo = tf.reduce_min(tf.where(finite, m, inf), axis=1, keepdims=True)
    hi = tf.reduce_max(m, axis=1, keepdims=True)
    lo = tf.where(lo < inf, lo, tf.zeros_like(lo))
    span = hi - lo
    scale = tf.where(span > 1e-30, nbins / tf.maximum(span, 1e-30), tf.zeros_like(span))
    safe = tf.where(finite, m, lo)
    b = tf.clip_by_value(tf.cast(tf.floor((safe - lo) * scale), tf.int32), 0, nbins - 1)
    ids = tf.where(finite, b + tf.range(bp)[:, None] * nbins, bp * nbins)
    counts = tf.math.bincount(tf.reshape(ids, [-1]), minlength=bp * nbins + 1, maxlength=bp * nbins + 1)
    cum = tf.cumsum(tf.reshape(counts[: bp * nbins], [bp, nbins]), axis=1, reverse=True)
    j = tf.reduce_sum(tf.cast(cum >= k, tf.int32), axis=1) - 1
    in_bin = finite & tf.equal(b, j[:, None])
    tau = tf.reduce_min(tf.where(in_bin, m, inf), axis=1)
    return tf.where(j >= 0, tau, tf.fill(tf.shape(tau), -np.inf))


def _key_threshold(keys, users, bp, k, nbins, rounds):
    """keys int64 [n], users int32 [n] (values in [0, bp)), k int or int32 [bp]. Returns tau [bp]
    int64 with count(keys >= tau) >= k per user and close to k (INT64_MIN where a user has
    fewer than k keys). The bins only need to be monotone in the key, so rounding is harmless;
    tau is always an actual key (the smallest in the chosen bin)."""
    n = tf.shape(keys)[0]
    need = tf.fill([bp], np.int32(k)) if isinstance(k, int) else tf.cast(k, tf.int32)
    active = tf.ones([n], tf.bool)
    tau = tf.fill([bp], np.int64(_INT64_MIN))
    have_enough = None
    big = tf.fill([n], np.int64(_INT64_MAX))
    for r in range(rounds):
        # Round 0 bins linearly in score (good resolution whatever the score range), later
        # rounds in key space (separates exact ties by index). Both are monotone in the key.
        v = tf.cast(_key_scores(keys), tf.float64) if r == 0 else tf.cast(keys, tf.float64)
        inf = tf.fill([n], np.float64(np.inf))
        lo = tf.math.unsorted_segment_min(tf.where(active, v, inf), users, bp)
        hi = tf.math.unsorted_segment_max(tf.where(active, v, -inf), users, bp)
        span = hi - lo
        ok = tf.logical_and(span > 0, tf.math.is_finite(span))
        scale = tf.where(ok, nbins / tf.where(ok, span, tf.ones_like(span)), tf.zeros_like(span))
        lo = tf.where(tf.math.is_finite(lo), lo, tf.zeros_like(lo))
        x = (v - tf.gather(lo, users)) * tf.gather(scale, users)
        b = tf.clip_by_value(tf.cast(tf.floor(tf.clip_by_value(x, 0.0, float(nbins))), tf.int32), 0, nbins - 1)
        ids = tf.where(active, users * nbins + b, bp * nbins)
        counts = tf.math.bincount(ids, minlength=bp * nbins + 1, maxlength=bp * nbins + 1)
        counts = tf.reshape(counts[: bp * nbins], [bp, nbins])
        cum = tf.cumsum(counts, axis=1, reverse=True)
        j = tf.reduce_sum(tf.cast(cum >= need[:, None], tf.int32), axis=1) - 1
        if have_enough is None:
            have_enough = j >= 0
        jj = tf.maximum(j, 0)
        above = tf.gather(cum, tf.minimum(jj + 1, nbins - 1), batch_dims=1)
        above = tf.where(jj + 1 < nbins, above, tf.zeros_like(above))
        in_bin = active & tf.equal(b, tf.gather(jj, users))
        t = tf.math.unsorted_segment_min(tf.where(in_bin, keys, big), users, bp)
        tau = tf.where(have_enough, t, tau)
        if r + 1 < rounds:
            need = need - above
            active = in_bin
    return tf.where(have_enough, tau, tf.fill([bp], np.int64(_INT64_MIN)))


@dataclasses.dataclass(frozen=True)
class _Plan:
    bp: int  # padded batch size
    k: int
    chunks: tuple  # ((first storage chunk, number of storage chunks), ...) covering the catalogue
    chunk_rows: int  # rows of a full chunk
    sample_chunks: tuple  # the same over the strided sample
    sample_chunk_rows: int
    guess_rank: int  # rank j of the sample statistic used as the speculative threshold (0: none)
    guess_level: int  # 1: block maxima, 2: group maxima
    warm_chunks: int
    limit: int  # candidate buffer size that triggers a compaction
    levels: int  # 2: groups -> blocks -> songs; 1: blocks -> songs; 0: all songs compared


def _chunk_plan(n_storage: int, per_chunk: int) -> tuple:
    per_chunk = max(1, min(n_storage, per_chunk))
    return tuple((s, min(per_chunk, n_storage - s)) for s in range(0, n_storage, per_chunk))


class CatalogueScorer:
    """Holds a catalogue on the TensorFlow device and scores batches of users exactly.

    Parameters
    ----------
    catalogue: float32 [N, d], rows L2-normalised (exactness does not depend on it).
    batch_size: users per compiled batch; a smaller batch is padded to a power of two, so at
        most log2(batch_size)+1 graphs are traced per k.
    tile_elements: scores held per chunk: a chunk has ~tile_elements / padded_batch rows.
    dense_elements: batches with padded_batch * N <= dense_elements (single users, small
        batches) use the dense path: per-chunk ``top_k`` on full chunks (chunks run in parallel),
        then one merge. Larger batches use the pruned streaming path.
    block, group: songs per block (block maxima) and blocks per group (group maxima).
    sample_stride: every sample_stride-th song forms the sample that sets the speculative
        threshold; guess_factor: the threshold aims at guess_factor * k candidates per user.
    warmup_rows: rows seeding the threshold when no guess is used (fallback path).
    compact_factor: the candidate buffer is compacted to ~k per user (raising the threshold)
        whenever it exceeds compact_factor * k per user (checked after every chunk).
    parallel_iterations: chunks the tf.while_loop may overlap.
    levels: pruning depth, None = chosen from the expected share of candidates: 2 = groups ->
        blocks -> songs, 1 = blocks -> songs, 0 = every score compared (results are identical).
    device: e.g. "/GPU:0"; None lets TensorFlow choose (GPU if visible).

    ``last_stats`` (dict) reports per call how many users needed the exact fallback.
    """

    def __init__(
        self,
        catalogue,
        *,
        batch_size: int = 256,
        tile_elements: int = 1 << 20,
        dense_elements: int = 1 << 23,
        block: int = 8,
        group: int = 8,
        storage_rows: int = 1024,
        sample_stride: int = 16,
        guess_factor: float = 2.0,
        warmup_rows: int = 16384,
        compact_factor: float = 4.0,
        histogram_bins: int = 256,
        parallel_iterations: int = 2,
        levels: Optional[int] = None,
        device: Optional[str] = None,
    ):
        arr = _validate_catalogue(catalogue)
        # TensorFloat-32 (on by default for matmuls on Ampere and later GPUs) rounds the inputs
        # to 10 mantissa bits: far beyond the float32 error bound the float64 re-ranking rests on.
        tf.config.experimental.enable_tensor_float_32_execution(False)
        self._host = arr  # float64 re-ranking reads candidate rows from here
        self._max_row_norm = float(np.sqrt(np.max(np.einsum("ij,ij->i", arr, arr, dtype=np.float64))))
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.num_songs, self.dim = int(arr.shape[0]), int(arr.shape[1])
        self.batch_size = int(batch_size)
        self.block, self.group = int(block), int(group)
        unit = self.block * self.group
        if storage_rows % unit or storage_rows % 16:
            raise ValueError("storage_rows must be a multiple of block*group and of 16")
        self.tile_elements = int(tile_elements)
        self.dense_elements = int(dense_elements)
        self.sample_stride = max(1, int(sample_stride))
        self.guess_factor = float(guess_factor)
        self.warmup_rows = int(warmup_rows)
        self.compact_factor = float(compact_factor)
        self.histogram_bins = int(histogram_bins)
        self.parallel_iterations = int(parallel_iterations)
        if levels not in (None, 0, 1, 2):
            raise ValueError(f"levels must be None, 0, 1 or 2, got {levels}")
        self.levels = levels
        self.device = device
        self.last_stats = {}
        self._fns = {}
        with tf.device(device) if device else _nullcontext():
            self._cat3, self.storage_rows, self.n_storage = self._store(arr, int(storage_rows), unit)
            sample = arr[:: self.sample_stride]
            self.num_sample = int(sample.shape[0])
            self._samp3, self.sample_storage_rows, self.n_sample_storage = self._store(
                np.ascontiguousarray(sample), int(storage_rows), unit
            )

    @staticmethod
    def _store(arr: np.ndarray, storage_rows: int, unit: int):
        """[n_chunks, Cs, d] with zero padding rows: indexing dimension 0 yields zero-copy views
        (Cs*d*4 bytes is a multiple of 64), which row slices of an [N, 90] tensor would not."""
        n, d = arr.shape
        cs = min(storage_rows, -(-n // unit) * unit)
        ns = -(-n // cs)
        if ns * cs != n:
            arr = np.concatenate([arr, np.zeros((ns * cs - n, d), np.float32)])
        return tf.constant(arr.reshape(ns, cs, d)), cs, ns

    # -- planning ---------------------------------------------------------------------------

    def padded_batch(self, b: int) -> int:
        """Batch size a batch of b users is padded to (power of two, at most batch_size)."""
        bp = 1
        while bp < b:
            bp *= 2
        return min(bp, self.batch_size)

    def is_dense(self, bp: int) -> bool:
        return bp * self.n_storage * self.storage_rows <= self.dense_elements

    def _plan(self, bp: int, k: int, guess: bool) -> _Plan:
        cs = self.storage_rows
        per = max(1, (self.tile_elements // bp) // cs)
        chunks = _chunk_plan(self.n_storage, per)
        rows = chunks[0][1] * cs
        scs = self.sample_storage_rows
        sample_chunks = _chunk_plan(self.n_sample_storage, max(1, (self.tile_elements // bp) // scs))
        guess_rank, level = 0, 1
        if guess:
            j = int(math.ceil(self.guess_factor * k * self.num_sample / self.num_songs))
            groups = self.num_sample // (self.block * self.group)
            blocks = self.num_sample // self.block
            if j <= groups // 8:
                guess_rank, level = j, 2
            elif j <= blocks // 2:
                guess_rank, level = j, 1
        warm = min(len(chunks), max(1, -(-self.warmup_rows // rows)), 8)  # unrolled: keep it small
        factor = self.compact_factor if guess_rank else 2.0
        limit = int(factor * k * bp)
        # Expected share of songs above the threshold ~ guess_factor * k / N: skip the group
        # level when most groups would pass anyway (small catalogues relative to k).
        share = min(1.0, self.guess_factor * k / self.num_songs)
        if 1.0 - (1.0 - share) ** (self.block * self.group) < 0.3:
            levels = 2
        elif share * self.block < 0.05:
            levels = 1
        else:
            levels = 0  # compare every score (flat): blocks would mostly pass too
        if self.levels is not None:
            levels = self.levels
        return _Plan(
            bp, k, chunks, rows, sample_chunks, scs * sample_chunks[0][1], guess_rank, level, warm, limit, levels
        )

    def _function(self, kind: str, bp: int, k: int):
        key = (kind, bp, k)
        fn = self._fns.get(key)
        if fn is None:
            if kind == "dense":
                body = lambda s, u, p: self._dense_graph(bp, k, s, u, p)  # noqa: E731
            else:
                plan = self._plan(bp, k, guess=(kind == "stream"))
                body = lambda s, u, p: self._stream_graph(plan, s, u, p)  # noqa: E731
            fn = tf.function(
                body,
                input_signature=(
                    tf.TensorSpec([None], tf.int32),
                    tf.TensorSpec([None], tf.int32),
                    tf.TensorSpec([None, self.dim], tf.float32),
                ),
                autograph=False,
            )
            self._fns[key] = fn
        return fn

    # -- graph pieces ------------------------------------------------------------------------

    def _profiles(self, bp, profiles):
        """The batch's profiles [n, d] padded to [bp, d]; padding users get a harmless profile
        (the first song's vector)."""
        pad = tf.tile(self._cat3[0, 0:1], [bp - tf.shape(profiles)[0], 1])
        return tf.ensure_shape(tf.concat([profiles, pad], axis=0), [bp, self.dim])

    def _chunk_scores(self, cat3, cs, n_valid, s0, ns, prof, excl, bp, rows_first=True):
        """Scores of storage chunks s0..s0+ns-1: [rows, bp] (``rows_first``; oneDNN computes
        F_c @ P^T faster than P @ F_c^T) or [bp, rows]. ``excl`` pairs (row, user) resp.
        (user, row) and the padding rows past ``n_valid`` are set to -inf."""
        rows = ns * cs
        fc = tf.reshape(cat3[s0 : s0 + ns], [rows, self.dim])  # zero-copy view
        if rows_first:
            s = tf.matmul(fc, prof, transpose_b=True)
        else:
            s = tf.matmul(prof, fc, transpose_b=True)
        s = tf.tensor_scatter_nd_update(s, excl, tf.fill(tf.shape(excl)[:1], -np.inf))
        valid = min(rows, n_valid - s0 * cs)
        if valid < rows:
            mask = np.arange(rows) < valid
            s = tf.where(tf.constant(mask[:, None] if rows_first else mask[None, :]), s, -np.inf)
        return s

    def _block_max(self, s):
        """Scores [rows, bp] -> block maxima [rows/block, bp] (block j = songs j*block ...
        j*block+block-1 of the chunk): a middle-axis reduction, which vectorises."""
        rows, bp = int(s.shape[0]), int(s.shape[1])
        return tf.reduce_max(tf.reshape(s, [rows // self.block, self.block, bp]), axis=1)

    def _extract(self, s, m1, tau_s, row0, bp, inclusive=False, levels=2):
        """Songs of chunk scores ``s`` [C, bp] (block maxima ``m1`` [C/block, bp]) scoring
        > tau_s[user] (>= and finite if ``inclusive``): (scores float32 [n], catalogue index
        int32 [n], users int32 [n]), sorted by user. Groups = ``group`` consecutive blocks; only
        the groups, then blocks, then songs that pass are gathered (user-major order comes from
        transposing the small boolean mask of the top level)."""
        bs, grp = self.block, self.group
        nb1 = int(m1.shape[0])
        nb2 = nb1 // grp

        def passes(x, t):
            if inclusive:
                return tf.logical_and(x >= t, x > -np.inf)
            return x > t

        if levels == 2:
            m2 = tf.reduce_max(tf.reshape(m1, [nb2, grp, bp]), axis=1)  # [nb2, bp]
            c2 = tf.cast(tf.where(tf.transpose(passes(m2, tau_s[None, :]))), tf.int32)  # (user, group)
            u2 = c2[:, 0]
            t2 = tf.gather(tau_s, u2)
            r1 = c2[:, 1:2] * grp + tf.range(grp)[None, :]  # [n2, grp] block rows
            m1v = tf.gather(tf.reshape(m1, [-1]), r1 * bp + u2[:, None])
            c1 = tf.cast(tf.where(passes(m1v, t2[:, None])), tf.int32)
            i1 = c1[:, 0]
            u1 = tf.gather(u2, i1)
            t1 = tf.gather(t2, i1)
            first = tf.gather_nd(r1, c1) * bs  # first song of each passing block
        else:
            c1 = tf.cast(tf.where(tf.transpose(passes(m1, tau_s[None, :]))), tf.int32)  # (user, block)
            u1 = c1[:, 0]
            t1 = tf.gather(tau_s, u1)
            first = c1[:, 1] * bs
        rows = (first[:, None] + tf.range(bs)[None, :]) * bp + u1[:, None]  # flat [row, user]
        sv = tf.gather(tf.reshape(s, [-1]), rows)
        c0 = tf.where(tf.reshape(passes(sv, t1[:, None]), [-1]))[:, 0]
        flat = tf.gather(tf.reshape(rows, [-1]), c0)
        vals = tf.gather(tf.reshape(sv, [-1]), c0)
        return vals, flat // bp + row0, tf.math.floormod(flat, bp)

    def _extract_flat(self, s, tau_s, row0, bp, inclusive=False):
        """Like ``_extract`` without blocks: one comparison per score (dense candidates).
        Returns candidates sorted by user."""
        t = tf.transpose(s)  # [bp, C]: user-major order
        mask = tf.logical_and(t >= tau_s[:, None], t > -np.inf) if inclusive else t > tau_s[:, None]
        c = tf.cast(tf.where(mask), tf.int32)
        return tf.gather_nd(t, c), c[:, 1] + row0, c[:, 0]

    def _compact(self, keys, codes, bp, k, rounds, excluded, listens):
        """Candidate buffer -> per user the best (about) k non-listened candidates, user-major.

        ``codes`` = piece * bp + user: pieces were appended in order and each piece is sorted by
        user, so codes are non-decreasing and the user-major permutation follows from counts.
        ``excluded``: sorted codes user * N + song of listened songs; ``listens`` [bp]: listens
        per user (>= distinct listened songs). First a threshold keeping >= k + listens_u
        candidates (at most listens_u of them can be listened songs), then the membership test
        on the survivors only, then the threshold for k. Returns (keys, users) user-major, the
        threshold keys and the per-user number of non-listened candidates examined (>= k unless
        the user has fewer than k candidates in total)."""
        users = tf.math.floormod(codes, bp)
        tau = _key_threshold(keys, users, bp, listens + k, self.histogram_bins, 1)
        keep = keys >= tf.gather(tau, users)
        keys, codes, users = (tf.boolean_mask(x, keep) for x in (keys, codes, users))
        songs = tf.cast(users, tf.int64) * self.num_songs + _key_index(keys)
        fresh = tf.not_equal(tf.gather(excluded, tf.searchsorted(excluded, songs)), songs)
        keys, codes, users = (tf.boolean_mask(x, fresh) for x in (keys, codes, users))
        available = tf.math.unsorted_segment_sum(tf.ones_like(users), users, bp)
        tau = _key_threshold(keys, users, bp, k, self.histogram_bins, rounds)
        keep = keys >= tf.gather(tau, users)
        keys, codes, users = (tf.boolean_mask(x, keep) for x in (keys, codes, users))
        # user-major order: position = items of the same user in earlier pieces + rank in piece
        n = tf.shape(keys)[0]
        slots = tf.maximum(tf.reduce_max(codes) // bp + 1, 1)
        cnt = tf.math.bincount(codes, minlength=slots * bp, maxlength=slots * bp)
        per_piece = tf.reshape(cnt, [slots, bp])
        offset = tf.reshape(tf.cumsum(per_piece, axis=0, exclusive=True), [-1])
        first = tf.cumsum(cnt, exclusive=True)
        pos = tf.gather(offset, codes) + tf.range(n) - tf.gather(first, codes)
        start = tf.cumsum(tf.reduce_sum(per_piece, axis=0), exclusive=True)
        perm = tf.math.invert_permutation(tf.gather(start, users) + pos)
        return tf.gather(keys, perm), tf.gather(users, perm), tau, available

    def _dense_graph(self, bp, k, songs, users, profiles):
        """Small batches: chunk scores, per-chunk top_k (chunks are independent, so they run in
        parallel), then one merge of the per-chunk winners by (score desc, index asc) keys."""
        prof = self._profiles(bp, profiles)
        cs = self.storage_rows
        per = max(1, min(32768 // cs, -(-self.n_storage // 2)))  # ~32k-row chunks, >= 2 if possible
        chunks = _chunk_plan(self.n_storage, per)
        crow = chunks[0][1] * cs
        cid = songs // crow
        one = bp == 1  # a single user: F_c @ p^T is a [rows, 1] column that reshapes for free
        pairs = tf.stack([songs - cid * crow, users] if one else [users, songs - cid * crow], 1)
        parts = tf.dynamic_partition(pairs, cid, len(chunks))
        keys = []
        for ci, (s0, ns) in enumerate(chunks):
            s = self._chunk_scores(self._cat3, cs, self.num_songs, s0, ns, prof, parts[ci], bp, rows_first=one)
            if one:
                s = tf.reshape(s, [1, ns * cs])
            kc = min(k, ns * cs)
            v, i = tf.math.top_k(s, kc)
            keys.append(_make_keys(v, i + s0 * cs))
        allk = keys[0] if len(keys) == 1 else tf.concat(keys, axis=1)
        top = tf.math.top_k(allk, k).values if len(keys) > 1 else allk[:, :k]
        return _key_index(top), _key_scores(top), tf.ones([bp], tf.bool)

    def _stream_graph(self, plan: _Plan, songs, users, profiles):
        bp, k = plan.bp, plan.k
        cs, d = self.storage_rows, self.dim
        cat3 = self._cat3
        prof = self._profiles(bp, profiles)
        inf = tf.constant(np.inf, tf.float32)
        tau_s = tf.fill([bp], -inf)

        if plan.guess_rank:
            # Speculative threshold from the strided sample: the j-th best block (or group)
            # maximum of the sample, j ~ guess_factor * k * sample/N, so that ~guess_factor * k
            # songs of the catalogue beat it. Verified per user at the end (>= k candidates
            # collected), otherwise the user is scored again on the always-exact path.
            st = self.sample_stride
            in_sample = tf.equal(songs % st, 0)
            srows, susers = tf.boolean_mask(songs // st, in_sample), tf.boolean_mask(users, in_sample)
            scrow = plan.sample_chunk_rows
            scid = srows // scrow
            sparts = tf.dynamic_partition(
                tf.stack([srows - scid * scrow, susers], 1), scid, len(plan.sample_chunks)
            )
            stats = []
            scs = self.sample_storage_rows
            for ci, (s0, ns) in enumerate(plan.sample_chunks):
                sc = self._chunk_scores(self._samp3, scs, self.num_sample, s0, ns, prof, sparts[ci], bp)
                m = self._block_max(sc)
                if plan.guess_level == 2:
                    m = tf.reduce_max(tf.reshape(m, [-1, self.group, bp]), axis=1)
                stats.append(tf.transpose(m))
            allm = stats[0] if len(stats) == 1 else tf.concat(stats, 1)
            tau_s = tf.math.top_k(allm, plan.guess_rank, sorted=True).values[:, -1]

        n_chunks = len(plan.chunks)
        crow = plan.chunk_rows
        cid = songs // crow
        parts = tf.dynamic_partition(tf.stack([songs - cid * crow, users], 1), cid, n_chunks)
        # Inside the loop listened songs are not masked in the scores (an in-loop scatter would
        # copy the tile); they may become candidates and are dropped, before any threshold is
        # computed from the buffer and before the final selection, by this membership test.
        excluded = tf.concat(
            [tf.sort(tf.cast(users, tf.int64) * self.num_songs + tf.cast(songs, tf.int64)), [_INT64_MAX]], 0
        )
        listens = tf.math.unsorted_segment_sum(tf.ones_like(users), users, bp)

        def new_arrays():
            return tuple(
                tf.TensorArray(dt, size=0, dynamic_size=True, infer_shape=False, element_shape=[None])
                for dt in (tf.float32, tf.int32, tf.int32)
            )

        def append(state, vals, idx, usr):
            ta_v, ta_i, ta_c, slot, total = state
            return (
                ta_v.write(slot, vals), ta_i.write(slot, idx), ta_c.write(slot, usr + slot * bp),
                slot + 1, total + tf.shape(vals)[0],
            )

        def buffer_keys(state):
            ta_v, ta_i, ta_c = state[:3]
            return _make_keys(ta_v.concat(), ta_i.concat()), ta_c.concat()

        def maybe_compact(state, tau_s):
            """Bounds memory: when the buffer exceeds the limit, keep ~k candidates per user and
            raise the threshold to (about) the k-th best so far."""

            def compact():
                keys, usr, tk, _ = self._compact(*buffer_keys(state), bp, k, 1, excluded, listens)
                nv, ni, nc = new_arrays()
                return (
                    nv.write(0, _key_scores(keys)), ni.write(0, tf.cast(_key_index(keys), tf.int32)),
                    nc.write(0, usr), tf.constant(1), tf.shape(keys)[0],
                    tf.maximum(tau_s, _key_score_threshold(tk)),
                )

            def keep():
                return tuple(state) + (tau_s,)

            out = tf.cond(state[4] > plan.limit, compact, keep)
            return tuple(out[:5]), out[5]

        def process(state, tau_s, s0, ns, scores, inclusive=False):
            if plan.levels == 0 and not inclusive:
                return append(state, *self._extract_flat(scores, tau_s, s0 * cs, bp))
            m1 = self._block_max(scores)
            return append(state, *self._extract(scores, m1, tau_s, s0 * cs, bp, inclusive, max(1, plan.levels)))

        state = new_arrays() + (tf.constant(0), tf.constant(0))
        first = 0
        if not plan.guess_rank:
            # No guess: seed a valid threshold from the warm-up block maxima (k distinct blocks
            # with max >= tau0 hold k songs >= tau0), extract the warm-up songs >= tau0.
            first = plan.warm_chunks
            warm = []
            for ci in range(first):
                s0, ns = plan.chunks[ci]
                sc = self._chunk_scores(cat3, cs, self.num_songs, s0, ns, prof, parts[ci], bp)
                warm.append((sc, self._block_max(sc)))
            allm = tf.transpose(warm[0][1] if len(warm) == 1 else tf.concat([w[1] for w in warm], 0))
            tau0 = _float_block_threshold(allm, k, 1024)
            for ci, (sc, _) in enumerate(warm):
                s0, ns = plan.chunks[ci]
                state = process(state, tau0, s0, ns, sc, inclusive=True)
            tau_s = tau0  # later songs (higher index) must beat tau0 strictly
            state, tau_s = maybe_compact(state, tau_s)

        last = n_chunks - 1
        if first < last:
            g = plan.chunks[first][1]
            rows = g * cs

            def body(c, tau_s, *state):
                s0 = c * g
                fc = tf.reshape(cat3[s0 : s0 + g], [rows, d])  # zero-copy view
                sc = tf.matmul(fc, prof, transpose_b=True)  # [rows, bp]
                st = process(tuple(state), tau_s, s0, g, sc)
                st, tau_s = maybe_compact(st, tau_s)
                return (c + 1, tau_s) + tuple(st)

            out = tf.while_loop(
                lambda c, *_: c < last,
                body,
                (tf.constant(first), tau_s) + tuple(state),
                parallel_iterations=self.parallel_iterations,
            )
            tau_s, state = out[1], tuple(out[2:])
        if last >= first:
            s0, ns = plan.chunks[last]
            sc = self._chunk_scores(cat3, cs, self.num_songs, s0, ns, prof, parts[last], bp)
            state = process(state, tau_s, s0, ns, sc)

        keys, usr, _, available = self._compact(*buffer_keys(state), bp, k, 2, excluded, listens)
        # Every candidate beats tau_s >= the guess; with >= k of them the guess was safe.
        ok = available >= k
        counts = tf.math.unsorted_segment_sum(tf.ones_like(usr), usr, bp)
        pos = tf.range(tf.shape(usr)[0]) - tf.gather(tf.cumsum(counts, exclusive=True), usr)
        width = tf.maximum(tf.reduce_max(counts), k)
        dense = tf.tensor_scatter_nd_update(
            tf.fill([bp, width], np.int64(_INT64_MIN)), tf.stack([usr, pos], axis=1), keys
        )
        top = tf.sort(dense, axis=1, direction="DESCENDING")[:, :k]
        return _key_index(top), _key_scores(top), ok

    # -- public ------------------------------------------------------------------------------

    def _run(self, kind, packed: PackedHistories, profiles: np.ndarray, k: int):
        nb = packed.num_users
        bp = self.padded_batch(nb)
        if kind != "dense" and self.is_dense(bp):
            kind = "dense"
        fn = self._function(kind, bp, k)
        songs = packed.values.astype(np.int32)
        users = np.repeat(np.arange(nb, dtype=np.int32), packed.lengths())
        idx, sc, ok = fn(tf.constant(songs), tf.constant(users), tf.constant(profiles))
        return idx.numpy()[:nb], sc.numpy()[:nb], ok.numpy()[:nb]

    def profiles64(self, packed: PackedHistories) -> np.ndarray:
        """float64 [B, d]: Σ (weighted) listened catalogue rows per user (``sum_rows``)."""
        return sum_rows(self._host, packed)

    def exact_scores(self, rows: np.ndarray, profiles64: np.ndarray) -> np.ndarray:
        """float64 scores of catalogue ``rows`` ([n] for one profile [d], or [U, n] for
        profiles [U, d]). Every score is one fixed-order reduction over its row's d products,
        so it does not depend on which other rows are scored with it (this is what makes
        results independent of the batch)."""
        # float64 operands: einsum then needs no buffered casting, so each score is one inner
        # loop over its row's d products (a buffer boundary could split a row otherwise).
        vectors = np.take(self._host, rows, axis=0).astype(np.float64)
        return np.einsum("...nd,...d->...n", vectors, profiles64)

    def _error_bounds(self, prof64: np.ndarray, prof32: np.ndarray) -> np.ndarray:
        """Per user, a bound on |float32 kernel score - float64 score| over all songs: float32
        dot products of length d in any order (FMA included) err by at most
        gamma_d * sum|F_ij p_j| <= gamma_d * |F_i| |p| (Cauchy-Schwarz), plus the rounding of
        the profile to float32 and denormals flushed to zero; doubled for safety."""
        unit = 2.0 ** -24
        gamma = (self.dim + 2) * unit / (1 - (self.dim + 2) * unit)
        norm32 = np.linalg.norm(prof32.astype(np.float64), axis=1)
        rounding = np.linalg.norm(prof32.astype(np.float64) - prof64, axis=1)
        return 2.0 * (gamma * self._max_row_norm * norm32 + self._max_row_norm * rounding
                      + self.dim * 2.0 ** -126 + 1e-12 * self._max_row_norm * norm32)

    def _exact_user(self, packed: PackedHistories, user: int, profile64: np.ndarray, k: int):
        """One user's top k by float64 scores over the whole catalogue (chunked)."""
        listened = np.unique(packed.values[packed.row_splits[user]:packed.row_splits[user + 1]])
        best_idx = np.zeros(0, np.int64)
        best_sc = np.zeros(0, np.float64)
        step = 1 << 16
        for lo in range(0, self.num_songs, step):
            rows = np.arange(lo, min(self.num_songs, lo + step))
            sc = self.exact_scores(rows, profile64)
            sc[listened[(listened >= lo) & (listened < lo + step)] - lo] = -np.inf
            cand_idx = np.concatenate([best_idx, rows])
            cand_sc = np.concatenate([best_sc, sc])
            order = np.lexsort((cand_idx, -cand_sc))[:k]
            best_idx, best_sc = cand_idx[order], cand_sc[order]
        return best_idx, best_sc

    def _refine(self, packed, prof64, prof32, idx, sc, k, avail):
        """Exact float64 order for the float32 kernel's top k' (k' > k) candidates.

        With delta_u bounding every float32 score's error, a song of the float64 top k has a
        float32 score >= s32[k-1] - 2 delta_u. When the k'-th candidate scores below that (or
        the user's every available song is a candidate), the candidates hold the float64 top k
        and re-ranking them in float64 gives it exactly; otherwise the user is scored in
        float64 over the whole catalogue. Either way the result depends only on the history."""
        delta = self._error_bounds(prof64, prof32)
        kk = idx.shape[1]
        safe = (sc[:, kk - 1].astype(np.float64) < sc[:, k - 1].astype(np.float64) - 2 * delta) | (avail <= kk)
        out_idx = np.zeros((idx.shape[0], k), np.int64)
        out_sc = np.zeros((idx.shape[0], k), np.float64)
        users = np.flatnonzero(safe)
        if users.size:
            candidates = idx[users]
            rescored = self.exact_scores(candidates, prof64[users])
            # The candidates come nearly in order: a stable sort is cheap; rows with exact
            # float64 ties are sorted again with the lower index first.
            order = np.argsort(-rescored, axis=1, kind="stable")
            tied = np.flatnonzero((np.diff(np.take_along_axis(rescored, order, axis=1), axis=1)
                                   == 0).any(axis=1))
            if tied.size:
                order[tied] = np.lexsort((candidates[tied], -rescored[tied]), axis=1)
            order = order[:, :k]
            out_idx[users] = np.take_along_axis(candidates, order, axis=1)
            out_sc[users] = np.take_along_axis(rescored, order, axis=1)
        for user in np.flatnonzero(~safe):
            out_idx[user], scores = self._exact_user(packed, int(user), prof64[user], k)
            out_sc[user] = scores
        return out_idx, out_sc, int((~safe).sum())

    def recommend_packed(self, packed: PackedHistories, k: int = DEFAULT_K,
                         queries: Optional[np.ndarray] = None):
        """Top-k for already packed and validated histories (see ``pack_histories``); raises
        ``ValueError`` if ``k`` exceeds the songs left for some user (checked per batch).

        Scores are catalogue · query; ``queries`` (float64 [B, d], one per user) default to the
        profiles Σ listened rows (``profiles64``). ``packed`` names the songs each user has
        listened to, which are excluded.

        The TensorFlow kernel picks the best k + margin songs by float32 scores; they are then
        ranked by float64 scores (``_refine``), so a user's songs, order and scores are the same
        whichever users they are batched with."""
        k = _check_k_value(k)
        b = packed.num_users
        out_idx = np.zeros((b, k), np.int64)
        out_sc = np.zeros((b, k), np.float64)
        fallbacks = refined_in_float64 = 0
        for start in range(0, b, self.batch_size):
            stop = min(b, start + self.batch_size)
            part = packed.slice(start, stop)
            prof64 = (self.profiles64(part) if queries is None
                      else np.asarray(queries[start:stop], dtype=np.float64))
            prof32 = prof64.astype(np.float32)
            avail = np.int64(self.num_songs) - _distinct_per_user(part, self.num_songs)
            _check_available(avail, self.num_songs, k, offset=start)
            kk = int(min(k + max(8, k // 16), avail.min()))
            idx, sc, ok = self._run("stream", part, prof32, kk)
            bad = np.flatnonzero(~ok)
            if bad.size:
                # The speculative threshold was too high for these users (e.g. many tied
                # scores): score them again with the always-exact path.
                fallbacks += int(bad.size)
                idx[bad], sc[bad], _ = self._run("exact", _subset(part, bad), prof32[bad], kk)
            idx, sc, whole = self._refine(part, prof64, prof32, idx, sc, k, avail)
            refined_in_float64 += whole
            out_idx[start:stop] = idx
            out_sc[start:stop] = sc
        self.last_stats = {"users": b, "fallback_users": fallbacks,
                           "float64_catalogue_users": refined_in_float64}
        return out_idx, out_sc

    def recommend(self, histories, k: int = DEFAULT_K, weights=None):
        """``(indices int64 [B, k], scores float64 [B, k])``, best first; see the module docs."""
        k = _check_k_value(k)
        packed = pack_histories(histories, weights, num_songs=self.num_songs)
        return self.recommend_packed(packed, k)


def sum_rows(matrix: np.ndarray, packed: PackedHistories) -> np.ndarray:
    """float64 [B, d]: per user the sum of ``matrix``'s rows in ``packed`` (times the weights),
    each summed in history order: a function of the user's history only, whatever batch the
    user is in (what a query vector of the content model is)."""
    rows = np.take(matrix, packed.values, axis=0).astype(np.float64)
    if packed.weights is not None:
        rows *= packed.weights.astype(np.float64)[:, None]
    sums = np.zeros((packed.num_users, matrix.shape[1]), np.float64)
    listened = np.flatnonzero(packed.lengths() > 0)
    if listened.size:  # reduceat sums each user's rows in order (empty users excluded)
        sums[listened] = np.add.reduceat(rows, packed.row_splits[listened], axis=0)
    return sums


def _subset(packed: PackedHistories, rows: np.ndarray) -> PackedHistories:
    lengths = packed.lengths()[rows]
    splits = np.zeros(rows.size + 1, np.int64)
    np.cumsum(lengths, out=splits[1:])
    take = np.concatenate(
        [np.arange(packed.row_splits[r], packed.row_splits[r + 1]) for r in rows]
    ) if rows.size else np.zeros(0, np.int64)
    take = take.astype(np.int64)
    return PackedHistories(
        values=packed.values[take],
        row_splits=splits,
        weights=None if packed.weights is None else packed.weights[take],
    )


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def recommend(catalogue, histories, k: int = DEFAULT_K, weights=None, *, batch_size: int = 256, **options):
    """Exact top-k recommendations: ``(indices int64 [B, k], scores float64 [B, k])``.

    ``catalogue`` float32 [N, d] (L2-normalised rows); ``histories`` B sequences of row indices
    (duplicates allowed); ``weights`` optional, parallel to ``histories``. Listened songs are
    excluded, ties go to the lower index. Raises ``ValueError`` if ``k`` exceeds the songs left
    for some user. For repeated calls build a ``CatalogueScorer`` once instead.
    """
    k = _check_k_value(k)
    arr = _validate_catalogue(catalogue)
    packed = pack_histories(histories, weights, num_songs=arr.shape[0])
    _check_k_packed(packed, arr.shape[0], k)  # before the catalogue is copied into TensorFlow
    if packed.num_users == 0:
        return np.zeros((0, k), np.int64), np.zeros((0, k), np.float64)
    scorer = CatalogueScorer(arr, batch_size=min(batch_size, max(1, packed.num_users)), **options)
    return scorer.recommend_packed(packed, k)
