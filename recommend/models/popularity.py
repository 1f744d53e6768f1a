"""Popularity: songs ranked by their number of listeners, most first, ties by the lower song id.

One implementation serves the batch job's fallback (users with no song the model knows), the
fill of a collaborative model's short lists, and the evaluation's baseline. Only songs with at
least one listener are recommended; the score of a song is its listener count.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from recommend.models.base import ModelError, Recommendations, Recommender


def popularity_order(listeners: np.ndarray) -> np.ndarray:
    """Rows with listeners, most listeners first, ties by the lower row (rows are sorted song
    ids, so: by the lower song id). The one popularity ranking of the product."""
    listeners = np.asarray(listeners)
    listened = np.flatnonzero(listeners > 0)
    return listened[np.lexsort((listened, -listeners[listened]))]


class PopularityModel(Recommender):
    kind = "popularity"
    stored_arrays = {"listeners": ("i", 1)}

    def __init__(self, song_ids: np.ndarray, listeners: np.ndarray):
        super().__init__(song_ids)
        listeners = np.asarray(listeners, dtype=np.int64)
        if listeners.shape != (len(self.song_ids),) or (listeners < 0).any():
            raise ModelError("popularity: one non-negative listener count per song is needed")
        self.listeners = listeners
        self.order = popularity_order(listeners)

    def top(self, excluded: np.ndarray, k: int) -> np.ndarray:
        """The ``k`` most popular rows not in ``excluded`` (fewer if not enough songs have
        listeners)."""
        head = self.order[:k + len(excluded)]
        return head[~np.isin(head, excluded)][:k]

    def recommend(self, histories: Sequence[np.ndarray], play_counts: Sequence[np.ndarray],
                  k: int) -> Recommendations:
        rows = np.zeros((len(histories), k), np.int32)
        for user, history in enumerate(histories):
            picks = self.top(np.asarray(history), k)
            if len(picks) < k:
                raise ModelError(f"popularity: only {len(picks)} songs with listeners remain "
                                 f"for user {user}; k={k}")
            rows[user] = picks
        return Recommendations(rows, self.listeners[rows].astype(np.float64),
                               np.zeros(len(histories), np.int32))

    def parameters(self) -> dict[str, Any]:
        return {}

    def arrays(self) -> dict[str, np.ndarray]:
        return {"listeners": self.listeners}

    @classmethod
    def from_arrays(cls, song_ids, arrays, parameters) -> "PopularityModel":
        return cls(song_ids, arrays["listeners"])
