"""The scoring model of the batch job: the catalogue plus the TF kernel, loaded once per worker.

Beam-free: ``transforms.scoring`` wraps it in a RunInference ModelHandler. It speaks track ids
(strings) at its edges so that the pipeline never needs catalogue row numbers.
"""
import logging
from typing import Optional, Sequence

import numpy as np

from recommend import catalogue as catalogue_lib
from recommend import kernel

WEIGHTINGS = ("none", "log_count")


class GpuNotFoundError(RuntimeError):
    """An accelerator was requested but TensorFlow sees no GPU on this worker."""


def check_gpu(required: bool) -> list[str]:
    """The GPUs TensorFlow sees; fails fast when one was required and there is none."""
    import tensorflow as tf

    gpus = [device.name for device in tf.config.list_physical_devices("GPU")]
    if required and not gpus:
        raise GpuNotFoundError(
            "an accelerator was requested (--accelerator) but TensorFlow sees no GPU on this "
            "worker: check the worker container (CUDA/cuDNN matching TensorFlow) and the "
            "install-nvidia-driver flag of the accelerator hint")
    return gpus


def listen_weights(play_counts: Sequence[int], weighting: str) -> Optional[np.ndarray]:
    """Per-listen weights: None for plain sums, log(1 + play_count) for ``log_count``."""
    if weighting == "none":
        return None
    if weighting == "log_count":
        return np.log1p(np.asarray(play_counts, dtype=np.float64)).astype(np.float32)
    raise ValueError(f"unknown weighting {weighting!r}; expected one of {WEIGHTINGS}")


class CatalogueRecommender:
    """Scores users against the whole catalogue: profile = Σ listened vectors, exact top-k."""

    def __init__(self, catalogue: catalogue_lib.Catalogue, require_gpu: bool = False):
        self.gpus = check_gpu(require_gpu)
        self.catalogue = catalogue
        self._row_of_track = catalogue.row_of_track()
        self._scorer = kernel.CatalogueScorer(catalogue.features)
        logging.info("recommender: %d songs × %d dims loaded; GPUs: %s", len(catalogue),
                     catalogue.features.shape[1], self.gpus or "none")

    @classmethod
    def from_features(cls, features: str, require_gpu: bool = False) -> "CatalogueRecommender":
        return cls(catalogue_lib.load_catalogue(features), require_gpu)

    def num_songs(self) -> int:
        """A method, not a property: a model shared across processes is reached by proxy."""
        return len(self.catalogue)

    def recommend_rows(self, track_histories: Sequence[Sequence[str]],
                       play_counts: Sequence[Sequence[int]], k: int, weighting: str = "none",
                       ) -> tuple[np.ndarray, np.ndarray]:
        """For each user, the k best catalogue rows (int32 [B, k], best first, none of their own
        tracks) and their scores (float64 [B, k]): compact, for the pipeline.

        Every track id must be in the catalogue (the pipeline resolved them) and every user must
        leave at least k songs unlistened (``kernel.check_k`` checks that first).
        """
        histories = [[self._row_of_track[t] for t in tracks] for tracks in track_histories]
        weights = None
        if weighting != "none":
            weights = [listen_weights(counts, weighting) for counts in play_counts]
        rows, scores = self._scorer.recommend(histories, k=k, weights=weights)
        return rows.astype(np.int32), scores

    def recommend(self, track_histories: Sequence[Sequence[str]],
                  play_counts: Sequence[Sequence[int]], k: int, weighting: str = "none",
                  ) -> list[list[tuple[str, str, float]]]:
        """For each user, k (track_id, song_id, score) best first (see ``recommend_rows``)."""
        rows, scores = self.recommend_rows(track_histories, play_counts, k, weighting)
        track_ids, song_ids = self.catalogue.track_ids, self.catalogue.song_ids
        return [[(track_ids[i], song_ids[i], float(s)) for i, s in zip(row_i, row_s)]
                for row_i, row_s in zip(rows.tolist(), scores.tolist())]
