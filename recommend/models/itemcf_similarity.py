"""Training maths of item-based collaborative filtering (Aiolli 2012, the MSD Challenge winner).

Beam-free and vectorised (numpy/scipy): the batch training job splits the songs into the blocks
``plan_blocks`` makes and runs ``neighbour_block`` on each (one Dataflow work item per block);
``item_neighbours`` does the same in one process.

Definitions. ``X`` is the binary users x songs listening matrix; ``n_x`` the number of
listeners of song ``x``; ``c_ij = |U(i) & U(j)|`` the number of users who listened to both.

    sim(i, j) = c_ij / (n_i ** alpha * n_j ** (1 - alpha))     (asymmetric cosine)
    score(u, i) = sum over songs j the user listened to of sim(i, j) ** q

The model ``W`` keeps, in row ``j``, the ``top_m`` candidates ``i`` (``i != j``, ``c_ij > 0``)
with the highest ``sim(i, j)``, ties to the lower column ``i``, and stores
``W[j, i] = sim(i, j) ** q``; a user's scores are then ``x_u @ W``. ``W`` is a float64
``scipy.sparse.csr_matrix`` with sorted column indices in each row. In float64, ``sim`` is
computed as ``(c_ij / n_i ** alpha) / n_j ** (1 - alpha)`` and ranked as such. A row depends
only on its song, so the model is bit for bit the same whatever the blocks.

Cost and memory. Block ``[start, stop)`` computes ``C = X[:, start:stop].T @ X`` sparsely: the
product does one accumulation per (user, song in the block, song in the user's history), i.e.
``sum_u |h(u) & block| * |h(u)|`` ("pairs"), which also bounds the entries of ``C``. The whole
model costs ``sum_u |h(u)| ** 2`` pairs. A block's working memory (measured by tracemalloc
in ``tests/test_itemcf_similarity.py``) is at most ``BYTES_PER_PAIR`` (16) bytes per pair of its
work, for ``C``'s column indices and counts (4 + 4 bytes an entry) and the similarities (8;
the diagonal mask and row ids that follow take 5 while the counts are gone), plus
``BYTES_PER_KEPT_ENTRY`` (40) per entry the block keeps (at most ``top_m`` a song): positions,
similarities, the values and their columns. ``DEFAULT_PAIR_BUDGET`` (60M pairs) keeps a block
under ~1 GB + 4 KB per song at M = 100.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import scipy.sparse as sp

DEFAULT_ALPHA = 0.15
DEFAULT_Q = 3.0
DEFAULT_TOP_M = 200
BYTES_PER_PAIR = 16
BYTES_PER_KEPT_ENTRY = 40
DEFAULT_PAIR_BUDGET = 60_000_000  # 60e6 * 16 bytes = 0.96 GB


def listening_matrix(user_rows: np.ndarray, song_rows: np.ndarray, num_users: int,
                     num_songs: int) -> sp.csr_matrix:
    """The binary users x songs matrix ``X`` (int32 ones; a (user, song) pair given several
    times is one listen). int32 counts keep ``C`` at 4 bytes an entry and are exact."""
    user_rows = np.asarray(user_rows)
    song_rows = np.asarray(song_rows)
    if user_rows.shape != song_rows.shape or user_rows.ndim != 1:
        raise ValueError("user_rows and song_rows must be 1-D arrays of the same length")
    matrix = sp.csr_matrix((np.ones(len(user_rows), np.int32), (user_rows, song_rows)),
                           shape=(num_users, num_songs))
    matrix.sum_duplicates()
    matrix.data.fill(1)
    return matrix


def song_pair_work(matrix: sp.csr_matrix) -> np.ndarray:
    """Per song ``x``, the pairs its row of ``C`` costs: ``sum over u in U(x) of |h(u)|``
    (int64)."""
    history_lengths = np.diff(matrix.indptr).astype(np.int64)
    return np.asarray(matrix.T @ history_lengths, dtype=np.int64)


def plan_blocks(matrix: sp.csr_matrix, pair_budget: int) -> list[tuple[int, int]]:
    """Contiguous song ranges ``[start, stop)`` covering every song once, in order, each
    costing at most ``pair_budget`` pairs (see ``song_pair_work``), except a song that alone
    costs more, which is a block of its own. Greedy: each block is as long as the budget
    allows."""
    if pair_budget < 1:
        raise ValueError(f"pair_budget must be at least 1, got {pair_budget}")
    num_songs = matrix.shape[1]
    cumulative_work = np.concatenate([[0], np.cumsum(song_pair_work(matrix))])
    blocks = []
    start = 0
    while start < num_songs:
        limit = cumulative_work[start] + pair_budget
        stop = int(np.searchsorted(cumulative_work, limit, side="right")) - 1
        stop = max(stop, start + 1)
        blocks.append((start, stop))
        start = stop
    return blocks


def _check_parameters(alpha: float, q: float, top_m: int) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if not q > 0:
        raise ValueError(f"q must be positive (sim ** q must rank like sim), got {q}")
    if top_m < 1:
        raise ValueError(f"top_m must be at least 1, got {top_m}")


def _top_m_entries(key: np.ndarray, columns: np.ndarray, row_starts: np.ndarray,
                   row_divisors: np.ndarray, top_m: int) -> tuple[np.ndarray, np.ndarray]:
    """(positions, row_starts) of the entries to keep, as a CSR selection: in each row, the
    ``top_m`` highest positive ``key / row_divisors[row]``, ties to the lower column. Rows of at
    most ``top_m`` entries are kept whole (vectorised); longer rows are visited one by one (a
    partition of the row, a handful of numpy calls)."""
    row_lengths = np.diff(row_starts)
    long_rows = row_lengths > top_m
    keep = key > 0
    keep[np.repeat(long_rows, row_lengths)] = False
    kept_positions = [keep.nonzero()[0]]
    for row in long_rows.nonzero()[0].tolist():
        begin, end = int(row_starts[row]), int(row_starts[row + 1])
        segment = key[begin:end] / row_divisors[row]
        threshold = np.partition(segment, end - begin - top_m)[end - begin - top_m]
        above = (segment > threshold).nonzero()[0]
        tied = (segment == threshold).nonzero()[0]
        missing = top_m - len(above)
        if len(tied) > missing:  # more ties at the threshold than places: the lower columns
            tied = tied[np.argpartition(columns[begin + tied], missing - 1)[:missing]]
        kept_positions += [above + begin, tied + begin]
    positions = np.sort(np.concatenate(kept_positions))
    return positions, np.searchsorted(positions, row_starts)


def neighbour_block(matrix: sp.csr_matrix, start: int, stop: int, listeners: np.ndarray,
                    alpha: float, q: float, top_m: int) -> sp.csr_matrix:
    """Rows ``start .. stop - 1`` of the model ``W`` (shape ``[stop - start, num_songs]``):
    for each song ``j`` of the block, its ``top_m`` candidates ``i`` by ``sim(i, j)`` with
    ``W[j, i] = sim(i, j) ** q``.

    ``matrix`` is ``listening_matrix``'s ``X``; ``listeners`` is ``n``, the listeners per song
    (the column sums of ``X``, int or float)."""
    _check_parameters(alpha, q, top_m)
    num_songs = matrix.shape[1]
    listeners = np.asarray(listeners, dtype=np.float64)
    block_listeners = matrix[:, start:stop].T.tocsr()
    cooccurrence = block_listeners @ matrix
    row_starts = cooccurrence.indptr
    columns = cooccurrence.indices
    # key = c_ij / n_i ** alpha; sim = key / n_j ** (1 - alpha), a row's constant divisor.
    key = (listeners ** alpha)[columns]
    np.divide(cooccurrence.data, key, out=key)
    del cooccurrence
    row_of_entry = np.repeat(np.arange(start, stop, dtype=columns.dtype), np.diff(row_starts))
    key[columns == row_of_entry] = -1.0  # the diagonal c_jj: never a candidate
    del row_of_entry
    row_divisors = listeners[start:stop] ** (1.0 - alpha)
    positions, kept_row_starts = _top_m_entries(key, columns, row_starts, row_divisors, top_m)
    similarities = key[positions] / np.repeat(row_divisors, np.diff(kept_row_starts))
    block = sp.csr_matrix((similarities ** q, columns[positions], kept_row_starts),
                          shape=(stop - start, num_songs))
    block.sort_indices()
    return block


def item_neighbours(matrix: sp.csr_matrix, alpha: float = DEFAULT_ALPHA, q: float = DEFAULT_Q,
                    top_m: int = DEFAULT_TOP_M, pair_budget: int = DEFAULT_PAIR_BUDGET,
                    progress: Optional[Callable[[int, int], None]] = None) -> sp.csr_matrix:
    """The whole model ``W`` (songs x songs, float64 CSR, sorted indices), block by block.

    ``pair_budget`` bounds each block's work and so its memory: at most ``BYTES_PER_PAIR``
    (16) bytes per pair, 0.96 GB with the default 60M pairs, plus ``BYTES_PER_KEPT_ENTRY`` (40)
    per entry the block keeps; on top of that ``X`` and the model itself (12 bytes per entry,
    at most ``top_m`` a song; twice while the blocks are stacked). ``progress(done, total)`` is
    called after each block."""
    _check_parameters(alpha, q, top_m)
    listeners = np.bincount(matrix.indices, minlength=matrix.shape[1])
    blocks = plan_blocks(matrix, pair_budget)
    rows = []
    for done, (start, stop) in enumerate(blocks, start=1):
        rows.append(neighbour_block(matrix, start, stop, listeners, alpha, q, top_m))
        if progress is not None:
            progress(done, len(blocks))
    if not rows:
        return sp.csr_matrix((0, matrix.shape[1]), dtype=np.float64)
    model = sp.vstack(rows, format="csr")
    model.sort_indices()
    return model
