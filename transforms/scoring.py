"""Scoring users with RunInference: a ModelHandler whose model is the catalogue + TF kernel,
plus the popularity fallback for users with no known song.
"""
import collections
import dataclasses
from typing import Any, Iterable, Iterator, Optional, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult, RunInference

from msd import listening
from recommend.model import CatalogueRecommender
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
    """A user's k recommendations as catalogue rows (best first) with their scores.

    Compact on purpose (12 bytes per recommendation instead of a dict per song): the writers
    turn them into output rows with the catalogue's ids (``write_recommendations``)."""
    user_id: str
    model: str
    history_size: int
    rows: np.ndarray    # int32 [k], catalogue rows (the catalogue's sorted track order)
    scores: np.ndarray  # float64 [k]


def user_rejection(history: UserHistory, reason: str, detail: str) -> listening.Rejection:
    return listening.Rejection(reason=reason, detail=detail, raw=history.user_id)


class RecommenderModelHandler(ModelHandler[UserHistory, Any, CatalogueRecommender]):
    """RunInference handler: loads the catalogue + kernel once per worker and shares it across
    the worker's processes (a 1M-song catalogue is 360 MB: one copy, not one per thread)."""

    def __init__(self, features: str, context: RunContext, weighting: str = "none",
                 batch_size: int = 256, require_gpu: bool = False):
        super().__init__()
        self._features = features
        self._context = context
        self._weighting = weighting
        self._batch_size = batch_size
        self._require_gpu = require_gpu

    def load_model(self) -> CatalogueRecommender:
        return CatalogueRecommender.from_features(self._features, self._require_gpu)

    def run_inference(self, batch: Sequence[UserHistory], model: CatalogueRecommender,
                      inference_args: Optional[dict] = None) -> Iterable[PredictionResult]:
        k = self._context.k
        num_songs = model.num_songs()
        scorable = [h for h in batch if num_songs - h.size >= k]
        rows, scores = (model.recommend_rows([h.track_ids for h in scorable],
                                             [h.play_counts for h in scorable], k, self._weighting)
                        if scorable else (None, None))
        position = 0
        for history in batch:
            if num_songs - history.size < k:
                yield PredictionResult(history, user_rejection(
                    history, "too_few_unlistened_songs",
                    f"the user listened to {history.size} of the {num_songs} catalogue songs, "
                    f"leaving fewer than k={k} to recommend"))
            else:
                yield PredictionResult(history, ScoredUser(
                    history.user_id, self._context.model, history.size, rows[position],
                    scores[position]))
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
    """UserHistory → {track_id: listeners}: one Counter update per user (not one element per
    listen, which cost ~5 million Beam element steps at the Kaggle size)."""

    def create_accumulator(self) -> collections.Counter:
        return collections.Counter()

    def add_input(self, counts: collections.Counter, history: UserHistory) -> collections.Counter:
        counts.update(history.track_ids)
        return counts

    def merge_accumulators(self, accumulators: Iterable[collections.Counter]) -> collections.Counter:
        merged = collections.Counter()
        for counts in accumulators:
            merged.update(counts)
        return merged

    def extract_output(self, counts: collections.Counter) -> dict[str, int]:
        return dict(counts)


def most_popular(listener_counts: Iterable[tuple[str, int]], row_of_track: dict[str, int],
                 size: int) -> list[tuple[int, float]]:
    """The ``size`` tracks with most listeners, ties by lower track id, as (catalogue row,
    listener count)."""
    ranked = sorted(listener_counts, key=lambda item: (-item[1], item[0]))[:size]
    return [(row_of_track[track_id], float(count)) for track_id, count in ranked]


class PopularityFallbackFn(beam.DoFn):
    """Users with no known song: the most-listened songs minus their own (``--fallback
    popularity``), or a dead-letter entry (``--fallback none``)."""

    def __init__(self, context: RunContext, enabled: bool):
        self._context = context
        self._enabled = enabled

    def process(self, history: UserHistory, popular: list[tuple[int, float]],
                row_of_track: dict[str, int]) -> Iterator:
        k = self._context.k
        if not self._enabled:
            counter("users_rejected_no_known_song").inc()
            yield beam.pvalue.TaggedOutput(REJECTED, user_rejection(
                history, "no_known_song", f"none of the user's {history.unknown_listens} listens "
                "is a catalogue song, and --fallback is none"))
            return
        own = {row_of_track[track_id] for track_id in history.track_ids}
        picks = [item for item in popular if item[0] not in own][:k]
        if len(picks) < k:
            counter("users_rejected_fallback_too_short").inc()
            yield beam.pvalue.TaggedOutput(REJECTED, user_rejection(
                history, "fallback_too_short", f"only {len(picks)} listened catalogue songs "
                f"exist to recommend by popularity; k={k}"))
            return
        counter("users_fallback").inc()
        yield ScoredUser(history.user_id, f"{self._context.model}:popularity_fallback",
                         history.size, np.array([row for row, _ in picks], np.int32),
                         np.array([count for _, count in picks], np.float64))
