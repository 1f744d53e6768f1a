"""Item-based collaborative filtering with the asymmetric cosine (Aiolli 2012, the MSD Challenge
winner's method).

    sim(i, j)   = |U(i) ∩ U(j)| / (|U(i)|^α · |U(j)|^(1−α))      U(x): the users of song x
    score(u, i) = Σ_{j listened by u} sim(i, j)^q

Training (``recommend.models.itemcf_similarity``) keeps for every song j its ``top_m`` best
candidates i by sim(i, j) as the sparse row W[j, :] = sim(·, j)^q, so a batch of users is
scored by one sparse product X_batch · W (X: binary histories). Each user's candidates are the
songs with a positive score; they are ranked by score (ties by the lower row = the lower song
id), listened songs excluded. A user with fewer than k candidates gets the rest from the
training data's popularity (``PopularityModel``: listeners, ties by song id), counted in
``Recommendations.filled`` and scored 0.

Every score is a float64 sum over the user's listened songs in row order (scipy's CSR product
adds row by row), so a user's list does not depend on the other users of the batch.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import scipy.sparse as sp

from recommend.models.base import ModelError, Recommendations, Recommender
from recommend.models.popularity import PopularityModel

DEFAULT_ALPHA = 0.15
DEFAULT_Q = 3.0
# Candidate entries (user × song) held at once while ranking a batch: ~24 bytes each.
MAX_BATCH_ENTRIES = 8_000_000


def _sorted_distinct(history: np.ndarray) -> bool:
    return bool((history[1:] > history[:-1]).all())


class ItemCFModel(Recommender):
    kind = "itemcf"
    stored_arrays = {"listeners": ("i", 1), "neighbour_indptr": ("i", 1),
                     "neighbour_indices": ("i", 1), "neighbour_weights": ("f", 1)}

    def __init__(self, song_ids: np.ndarray, listeners: np.ndarray, neighbours: sp.csr_matrix,
                 alpha: float = DEFAULT_ALPHA, q: float = DEFAULT_Q, top_m: int = 0,
                 min_listeners: int = 1):
        super().__init__(song_ids)
        n = len(self.song_ids)
        if neighbours.shape != (n, n):
            raise ModelError(f"itemcf: neighbour matrix {neighbours.shape} for {n} songs")
        if neighbours.nnz and not (np.isfinite(neighbours.data) & (neighbours.data > 0)).all():
            raise ModelError("itemcf: the neighbour weights must be positive and finite")
        indices, indptr = neighbours.indices, neighbours.indptr
        within_row = np.ones(len(indices), bool)
        within_row[indptr[1:-1][indptr[1:-1] < len(indices)]] = False
        if len(indices) > 1 and not (np.diff(indices.astype(np.int64)) > 0)[within_row[1:]].all():
            raise ModelError("itemcf: a song's neighbours must be distinct and sorted")
        if n and np.asarray(listeners).min() < 1:
            raise ModelError("itemcf: every song of the model has at least one listener")
        self.popularity = PopularityModel(self.song_ids, listeners)
        self.neighbours = neighbours.tocsr()
        self.alpha, self.q, self.top_m, self.min_listeners = alpha, q, top_m, min_listeners
        self._max_row = np.maximum(np.diff(self.neighbours.indptr), 1)

    def _candidates(self, histories: Sequence[np.ndarray], k: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per user (in order) the ranked candidates: rows, scores and per-user counts."""
        n = self.num_songs()
        lengths = np.fromiter((len(h) for h in histories), np.int64, count=len(histories))
        indptr = np.zeros(len(histories) + 1, np.int64)
        np.cumsum(lengths, out=indptr[1:])
        listened = (np.concatenate(histories).astype(np.int64) if indptr[-1]
                    else np.zeros(0, np.int64))
        batch = sp.csr_matrix((np.ones(len(listened)), listened, indptr),
                              shape=(len(histories), n))
        scores = (batch @ self.neighbours).tocsr()
        # Listened songs: v − v·1 is exactly 0, and zeros are dropped (weights are positive).
        scores = (scores - scores.multiply(batch)).tocsr()
        scores.eliminate_zeros()
        starts, values = scores.indptr, scores.data
        # Only entries at or above a user's k-th best value can be in the top k: a partition
        # per long row, then one sort of what is left (far fewer entries than all candidates).
        thresholds = np.full(len(histories), -np.inf)
        for user in np.flatnonzero(np.diff(starts) > k).tolist():
            row = values[starts[user]:starts[user + 1]]
            thresholds[user] = np.partition(row, len(row) - k)[len(row) - k]
        users = np.repeat(np.arange(len(histories), dtype=np.int64), np.diff(starts))
        keep = values >= thresholds[users]
        users, columns, values = users[keep], scores.indices[keep].astype(np.int64), values[keep]
        order = np.lexsort((columns, -values, users))
        users, columns, values = users[order], columns[order], values[order]
        counts = np.bincount(users, minlength=len(histories))
        first = np.zeros(len(histories) + 1, np.int64)
        np.cumsum(counts, out=first[1:])
        top = (np.arange(len(users)) - first[users]) < k
        return columns[top], values[top], np.minimum(counts, k)

    def recommend(self, histories: Sequence[np.ndarray], play_counts: Sequence[np.ndarray],
                  k: int) -> Recommendations:
        histories = [h if _sorted_distinct(h) else np.unique(h)
                     for h in (np.asarray(h, dtype=np.int64) for h in histories)]
        rows = np.zeros((len(histories), k), np.int32)
        scores = np.zeros((len(histories), k), np.float64)
        filled = np.zeros(len(histories), np.int32)
        start = 0
        while start < len(histories):
            # Users in chunks whose candidate entries stay under MAX_BATCH_ENTRIES.
            budget, stop = 0, start
            while stop < len(histories) and (stop == start or budget < MAX_BATCH_ENTRIES):
                budget += min(int(self._max_row[histories[stop]].sum()), self.num_songs())
                stop += 1
            columns, values, counts = self._candidates(histories[start:stop], k)
            offset = 0
            for user in range(start, stop):
                count = int(counts[user - start])
                rows[user, :count] = columns[offset:offset + count]
                scores[user, :count] = values[offset:offset + count]
                if count < k:
                    picks = self.popularity.top(
                        np.concatenate([histories[user], columns[offset:offset + count]]),
                        k - count)
                    if len(picks) < k - count:
                        raise ModelError(f"itemcf: user {user} leaves fewer than k={k} songs")
                    rows[user, count:] = picks
                    filled[user] = k - count
                offset += count
            start = stop
        return Recommendations(rows, scores, filled)

    def parameters(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "q": self.q, "top_m": self.top_m,
                "min_listeners": self.min_listeners}

    def arrays(self) -> dict[str, np.ndarray]:
        return {"listeners": self.popularity.listeners,
                "neighbour_indptr": self.neighbours.indptr.astype(np.int64),
                "neighbour_indices": self.neighbours.indices.astype(np.int32),
                "neighbour_weights": self.neighbours.data.astype(np.float64)}

    @classmethod
    def from_arrays(cls, song_ids, arrays, parameters) -> "ItemCFModel":
        n = len(song_ids)
        indptr, indices = arrays["neighbour_indptr"], arrays["neighbour_indices"]
        weights = arrays["neighbour_weights"]
        if (len(indptr) != n + 1 or indptr[0] != 0 or indptr[-1] != len(indices)
                or len(weights) != len(indices) or (np.diff(indptr) < 0).any()
                or (len(indices) and (indices.min() < 0 or indices.max() >= n))):
            raise ModelError(f"itemcf: the neighbour arrays do not describe a {n} × {n} "
                             "sparse matrix (indptr, indices, weights disagree)")
        neighbours = sp.csr_matrix((weights, indices, indptr), shape=(n, n))
        try:
            values = {"alpha": float(parameters.get("alpha", DEFAULT_ALPHA)),
                      "q": float(parameters.get("q", DEFAULT_Q)),
                      "top_m": int(parameters.get("top_m", 0)),
                      "min_listeners": int(parameters.get("min_listeners", 1))}
        except (TypeError, ValueError) as error:
            raise ModelError(f"itemcf: model.json parameters {parameters}: {error}") from error
        return cls(song_ids, arrays["listeners"], neighbours, **values)
