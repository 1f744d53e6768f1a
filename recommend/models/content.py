"""Content (timbre) similarity: item vectors = the songs' normalised timbre statistics; a user's
query = Σ (weighted) vectors of the songs they listened to; score = item · query (cosine when the
vectors are unit length). Scored by the exact TF top-k kernel (``recommend.kernel``).

The catalogue is keyed by song: the feature files hold one row per track, and a song with
several tracks is represented by one of them (``recommend.catalogue.song_catalogue``).
"""
from __future__ import annotations

import logging
from typing import Any, Optional, Sequence

import numpy as np

from recommend import kernel
from recommend.models.base import ModelError, Recommendations, Recommender

WEIGHTINGS = ("none", "log_count")


def listen_weights(play_counts: Sequence[Sequence[int]], weighting: str
                   ) -> Optional[list[np.ndarray]]:
    """Per-listen weights: None for plain sums, log(1 + play_count) for ``log_count``."""
    if weighting == "none":
        return None
    if weighting == "log_count":
        return [np.log1p(np.asarray(counts, dtype=np.float64)).astype(np.float32)
                for counts in play_counts]
    raise ModelError(f"unknown weighting {weighting!r}; expected one of {WEIGHTINGS}")


class ContentModel(Recommender):
    kind = "content"
    stored_arrays = {"vectors": ("f", 2)}

    def __init__(self, song_ids: np.ndarray, vectors: np.ndarray, weighting: str = "none",
                 batch_size: int = 256):
        super().__init__(song_ids)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(self.song_ids):
            raise ModelError(f"content: {vectors.shape} vectors for {len(self.song_ids)} songs")
        listen_weights([], weighting)  # refuses an unknown weighting now, not per batch
        self.vectors = vectors
        self.weighting = weighting
        self._scorer = kernel.CatalogueScorer(vectors, batch_size=batch_size)
        logging.info("content model: %d songs × %d dims", *vectors.shape)

    def queries(self, packed: kernel.PackedHistories) -> np.ndarray:
        """float64 [B, d]: Σ (weighted) listened vectors per user (the seed's profile)."""
        return kernel.sum_rows(self.vectors, packed)

    def recommend(self, histories: Sequence[np.ndarray], play_counts: Sequence[np.ndarray],
                  k: int) -> Recommendations:
        packed = kernel.pack_histories(histories, listen_weights(play_counts, self.weighting),
                                       num_songs=self.num_songs())
        rows, scores = self._scorer.recommend_packed(packed, k, queries=self.queries(packed))
        return Recommendations(rows.astype(np.int32), scores,
                               np.zeros(len(histories), np.int32))

    def parameters(self) -> dict[str, Any]:
        return {"weighting": self.weighting}

    def arrays(self) -> dict[str, np.ndarray]:
        return {"vectors": self.vectors}

    @classmethod
    def from_arrays(cls, song_ids, arrays, parameters) -> "ContentModel":
        return cls(song_ids, arrays["vectors"], parameters.get("weighting", "none"))
