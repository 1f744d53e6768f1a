"""Scoring users with RunInference: a ModelHandler whose model is any registered recommendation
model (``recommend.models``), plus the popularity fallback for users with no known song.
"""
import collections
import dataclasses
import logging
from typing import Any, Iterable, Iterator, Optional, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult, RunInference

from msd import listening
from recommend.models import ModelSource, Recommender
from recommend.models.popularity import PopularityModel
from transforms.listens import UserHistory, counter

SCORED = "scored"
REJECTED = "rejected"


@dataclasses.dataclass(frozen=True)
class RunContext:
    """What the scoring steps need to know about the run (the run date is the writers')."""
    model: str
    k: int


@dataclasses.dataclass(frozen=True, eq=False)  # arrays: compare fields explicitly
class ScoredUser:
    """A user's k recommendations as catalogue rows (best first) with their scores; the last
    ``filled`` of them come from the popularity fill (k for a user served by the fallback).

    Compact on purpose (12 bytes per recommendation instead of a dict per song): the writers
    turn them into output rows with the catalogue's ids (``write_recommendations``)."""
    user_id: str
    model: str
    history_size: int
    rows: np.ndarray    # int32 [k], catalogue rows (the catalogue's sorted song order)
    scores: np.ndarray  # float64 [k]
    filled: int = 0


def user_rejection(history: UserHistory, reason: str, detail: str) -> listening.Rejection:
    return listening.Rejection(reason=reason, detail=detail, raw=history.user_id)


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


class LoadedModel:
    """A model with its song → row map, as one worker holds it."""

    def __init__(self, model: Recommender):
        self.model = model
        self.row_of_song = model.row_of_song()

    def num_songs(self) -> int:
        return self.model.num_songs()

    def recommend(self, histories: Sequence[UserHistory], k: int):
        rows = [np.fromiter((self.row_of_song[s] for s in h.song_ids), np.int64, count=h.size)
                for h in histories]
        counts = [np.asarray(h.play_counts, np.int64) for h in histories]
        return self.model.recommend(rows, counts, k)


class RecommenderModelHandler(ModelHandler[UserHistory, Any, LoadedModel]):
    """RunInference handler: loads the model once per worker and shares it across the
    worker's processes (a 1M-song catalogue is 360 MB: one copy, not one per thread)."""

    def __init__(self, source: ModelSource, context: RunContext, batch_size: int = 256,
                 require_gpu: bool = False):
        super().__init__()
        self._source = source
        self._context = context
        self._batch_size = batch_size
        self._require_gpu = require_gpu

    def load_model(self) -> LoadedModel:
        gpus = check_gpu(self._require_gpu)
        model = LoadedModel(self._source.load())
        logging.info("recommender: %s model, %d songs; GPUs: %s", model.model.kind,
                     model.num_songs(), gpus or "none")
        return model

    def run_inference(self, batch: Sequence[UserHistory], model: LoadedModel,
                      inference_args: Optional[dict] = None) -> Iterable[PredictionResult]:
        k = self._context.k
        num_songs = model.num_songs()
        scorable = [h for h in batch if num_songs - h.size >= k]
        result = model.recommend(scorable, k) if scorable else None
        position = 0
        for history in batch:
            if num_songs - history.size < k:
                yield PredictionResult(history, user_rejection(
                    history, "too_few_unlistened_songs",
                    f"the user listened to {history.size} of the {num_songs} catalogue songs, "
                    f"leaving fewer than k={k} to recommend"))
            else:
                yield PredictionResult(history, ScoredUser(
                    history.user_id, self._context.model, history.size,
                    result.rows[position], result.scores[position],
                    int(result.filled[position])))
                position += 1

    def share_model_across_processes(self) -> bool:
        return True

    def batch_elements_kwargs(self) -> dict:
        # Fixed-size batches: BatchElements' adaptive sizing settled on ~1-2 users per batch
        # (8,588 batches for 11,000 users measured), paying a catalogue pass per user.
        return {"min_batch_size": self._batch_size, "max_batch_size": self._batch_size}

    def get_num_bytes(self, batch: Sequence[UserHistory]) -> int:
        return sum(48 * h.size + 64 for h in batch)

    def get_metrics_namespace(self) -> str:
        return "msd_recommend_inference"


class SplitPredictionsFn(beam.DoFn):
    """PredictionResult → output row (main) or a user-level rejection (``REJECTED``)."""

    def process(self, result: PredictionResult) -> Iterator:
        if isinstance(result.inference, listening.Rejection):
            counter("users_rejected_" + result.inference.reason).inc()
            yield beam.pvalue.TaggedOutput(REJECTED, result.inference)
        else:
            counter("users_scored").inc()
            yield result.inference


class ScoreUsers(beam.PTransform):
    """UserHistory (at least one known track) → rows, rejections. ``accelerator`` (a Dataflow
    accelerator hint such as ``type:nvidia-l4;count:1;install-nvidia-driver``) is put on this
    step only, so Dataflow's right fitting gives only the scoring step GPU workers."""

    def __init__(self, handler: RecommenderModelHandler, accelerator: Optional[str] = None):
        super().__init__()
        self._handler = handler
        self._accelerator = accelerator

    def expand(self, histories):
        inference = RunInference(self._handler)
        if self._accelerator:
            inference = inference.with_resource_hints(accelerator=self._accelerator)
        return (histories
                | "RunInference" >> inference
                | "Split" >> beam.ParDo(SplitPredictionsFn()).with_outputs(REJECTED, main=SCORED))


class ListenerCountsFn(beam.CombineFn):
    """UserHistory → {song_id: listeners}: one Counter update per user (not one element per
    listen, which cost ~5 million Beam element steps at the Kaggle size)."""

    def create_accumulator(self) -> collections.Counter:
        return collections.Counter()

    def add_input(self, counts: collections.Counter, history: UserHistory) -> collections.Counter:
        counts.update(history.song_ids)
        return counts

    def merge_accumulators(self, accumulators: Iterable[collections.Counter]) -> collections.Counter:
        merged = collections.Counter()
        for counts in accumulators:
            merged.update(counts)
        return merged

    def extract_output(self, counts: collections.Counter) -> dict[str, int]:
        return dict(counts)


def popularity_over(catalogue_songs: Sequence[str], listener_counts: dict[str, int]
                    ) -> PopularityModel:
    """The popularity model over the catalogue's songs, from this run's listener counts."""
    return PopularityModel(np.asarray(catalogue_songs, dtype=object),
                           np.array([listener_counts.get(s, 0) for s in catalogue_songs],
                                    np.int64))


class PopularityFallbackFn(beam.DoFn):
    """Users with no known song: the most-listened songs minus their own (``--fallback
    popularity``; ``filled`` = k marks them), or a dead-letter entry (``--fallback none``)."""

    def __init__(self, context: RunContext, enabled: bool):
        self._context = context
        self._enabled = enabled

    def process(self, history: UserHistory, popularity: PopularityModel) -> Iterator:
        k = self._context.k
        if not self._enabled:
            counter("users_rejected_no_known_song").inc()
            yield beam.pvalue.TaggedOutput(REJECTED, user_rejection(
                history, "no_known_song", f"none of the user's {history.unknown_listens} listens "
                "is a catalogue song, and --fallback is none"))
            return
        picks = popularity.top(np.zeros(0, np.int64), k)  # the user has no catalogue song
        if len(picks) < k:
            counter("users_rejected_fallback_too_short").inc()
            yield beam.pvalue.TaggedOutput(REJECTED, user_rejection(
                history, "fallback_too_short", f"only {len(picks)} listened catalogue songs "
                f"exist to recommend by popularity; k={k}"))
            return
        counter("users_fallback").inc()
        yield ScoredUser(history.user_id, self._context.model, history.size,
                         picks.astype(np.int32), popularity.listeners[picks].astype(np.float64),
                         filled=k)
