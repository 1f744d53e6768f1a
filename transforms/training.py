"""Beam transforms of the training job: user histories → the listening matrix → a model.

Item-based CF at Taste Profile scale (48M listens, 1M users, 385k songs) costs Σ_u |h(u)|²
co-occurrence pairs (billions), so the work is split by blocks of candidate songs: the binary
users × songs matrix X (≈ 8 bytes per listen: 400 MB at full size) is built once and shared
with every worker as a side input; ``plan_blocks`` cuts the songs into ranges whose pair count
fits a memory budget; each range's rows of the model are computed independently
(``neighbour_block``) after a Reshuffle, so Dataflow spreads the blocks over its workers; the
rows are put back together in song order and written as one model directory.

Every model trains from the same prepared data (``PrepareListening``): the listener counts,
the vocabulary (songs with at least ``min_listeners`` listeners), each user's song rows and
play counts (listens of other songs are dead letters) and one users × songs matrix, its users
in user-id order whatever order the runner delivers them in. ALS (``FitALS``) fits the play-count
matrix on one worker (``recommend.models.als.fit_als``).
"""
from __future__ import annotations

import dataclasses

import logging
from typing import Iterable, Iterator, Optional

import apache_beam as beam
import numpy as np
import scipy.sparse as sp

from msd import listening
from recommend.models import als as als_lib
from recommend.models import itemcf_similarity
from transforms.listens import UserHistory, counter


class AnySong:
    """The catalogue of a training run without ``--features``: every song is known."""

    def __contains__(self, song_id: str) -> bool:
        return True


def vocabulary(listener_counts: dict[str, int], min_listeners: int) -> list[str]:
    """The model's songs: those with at least ``min_listeners`` listeners, sorted."""
    return sorted(s for s, n in listener_counts.items() if n >= min_listeners)


@dataclasses.dataclass(frozen=True)
class UserRows:
    """A user's listens among the model's songs: rows (int32, sorted) and play counts."""
    user_id: str
    rows: np.ndarray         # int32
    play_counts: np.ndarray  # int64


class SongRowsFn(beam.DoFn):
    """UserHistory → ``UserRows`` among the model's songs; a user's listens of a song with too
    few listeners go to the dead-letter output as one record per (user, song) that says how many
    listens (input lines) it stands for; the counters count listens, so they reconcile with
    ``listens_used``: listens_in_model + listens_rare_song."""

    def process(self, history: UserHistory, songs: list[str], min_listeners: int) -> Iterator:
        row_of_song = self._rows(songs)
        lines = history.listen_lines or (1,) * history.size
        rows, counts, in_model = [], [], 0
        for song_id, play_count, listens in zip(history.song_ids, history.play_counts, lines):
            row = row_of_song.get(song_id)
            if row is None:
                counter("listens_rare_song").inc(listens)
                yield beam.pvalue.TaggedOutput("rejected", listening.Rejection(
                    reason="too_few_listeners", raw=f"{history.user_id}\t{song_id}",
                    detail=f"song {song_id} has fewer than --min_listeners={min_listeners} "
                    f"listeners; it is not in the model ({listens} listen"
                    f"{'s' if listens != 1 else ''} of this user, play count {play_count})"))
            else:
                rows.append(row)
                counts.append(play_count)
                in_model += listens
        counter("listens_in_model").inc(in_model)
        if rows:
            counter("users_in_model").inc()
            yield UserRows(history.user_id, np.array(rows, np.int32), np.array(counts, np.int64))
        else:
            counter("users_without_model_song").inc()

    _cache: tuple = (None, None)

    def _rows(self, songs: list[str]) -> dict[str, int]:
        if self._cache[0] is not songs:
            self._cache = (songs, {song_id: row for row, song_id in enumerate(songs)})
        return self._cache[1]


class ListeningMatrixFn(beam.CombineFn):
    """``UserRows`` (one per user) → all of them in one list (``listening_matrix`` builds the
    matrix, users in user-id order)."""

    def create_accumulator(self):
        return []

    def add_input(self, parts: list, rows: UserRows) -> list:
        parts.append(rows)
        return parts

    def merge_accumulators(self, accumulators: Iterable[list]) -> list:
        merged = []
        for parts in accumulators:
            merged.extend(parts)
        return merged

    def extract_output(self, parts: list):
        return parts


MATRIX_VALUES = ("binary", "play_counts")


def listening_matrix(parts: list[UserRows], num_songs: int, values: str = "binary"
                     ) -> sp.csr_matrix:
    """The users × songs CSR matrix, row u = the u-th user by user id: ``binary`` (int32 ones,
    itemcf) or ``play_counts`` (int64, ALS's confidences). A sorted user order makes a seeded
    fit repeatable whatever order the runner delivers the users in."""
    if values not in MATRIX_VALUES:
        raise ValueError(f"matrix values {values!r}: expected one of {MATRIX_VALUES}")
    parts = sorted(parts, key=lambda part: part.user_id)
    lengths = np.fromiter((len(p.rows) for p in parts), np.int64, count=len(parts))
    users = np.repeat(np.arange(len(parts), dtype=np.int64), lengths)
    songs = np.concatenate([p.rows for p in parts]) if parts else np.zeros(0, np.int32)
    if values == "binary":
        return itemcf_similarity.listening_matrix(users, songs, len(parts), num_songs)
    counts = (np.concatenate([p.play_counts for p in parts]) if parts
              else np.zeros(0, np.int64))
    matrix = sp.csr_matrix((counts, (users, songs)), shape=(len(parts), num_songs))
    matrix.sum_duplicates()
    return matrix


def song_listeners(matrix: sp.csr_matrix) -> np.ndarray:
    """int64 [songs]: users per song (the popularity fill's counts)."""
    return np.bincount(matrix.indices, minlength=matrix.shape[1]).astype(np.int64)


class PrepareListening(beam.PTransform):
    """UserHistories → {"songs": the vocabulary (one sorted list), "matrix": one users × songs
    matrix of ``values``, "rejected": listens of songs below ``min_listeners``}: the data
    preparation every trained model shares."""

    def __init__(self, min_listeners: int, values: str = "binary"):
        super().__init__()
        if values not in MATRIX_VALUES:
            raise ValueError(f"matrix values {values!r}: expected one of {MATRIX_VALUES}")
        self._min_listeners, self._values = min_listeners, values

    def expand(self, histories):
        from transforms.scoring import ListenerCountsFn

        counts = histories | "Listeners" >> beam.CombineGlobally(ListenerCountsFn())
        songs = counts | "Vocabulary" >> beam.Map(vocabulary, self._min_listeners)
        rows = histories | "SongRows" >> beam.ParDo(
            SongRowsFn(), beam.pvalue.AsSingleton(songs), self._min_listeners).with_outputs(
                "rejected", main="rows")
        values = self._values
        matrix = (rows["rows"]
                  | "CollectRows" >> beam.CombineGlobally(ListeningMatrixFn())
                  | "Matrix" >> beam.Map(lambda parts, s: listening_matrix(parts, len(s), values),
                                         beam.pvalue.AsSingleton(songs)))
        return {"songs": songs, "matrix": matrix, "rejected": rows["rejected"]}


class NeighbourBlockFn(beam.DoFn):
    """A block of songs → (start, its rows of the model W)."""

    def __init__(self, alpha: float, q: float, top_m: int):
        self._alpha, self._q, self._top_m = alpha, q, top_m

    def process(self, block: tuple[int, int], matrix: sp.csr_matrix) -> Iterator:
        start, stop = block
        listeners = np.bincount(matrix.indices, minlength=matrix.shape[1])
        rows = itemcf_similarity.neighbour_block(matrix, start, stop, listeners, self._alpha,
                                                 self._q, self._top_m)
        counter("model_blocks_done").inc()
        logging.info("itemcf: songs %d-%d done (%d neighbours)", start, stop, rows.nnz)
        yield start, rows


def assemble(blocks: list[tuple[int, sp.csr_matrix]], num_songs: int) -> sp.csr_matrix:
    """The model's rows in song order (every song exactly once, or it fails loudly)."""
    blocks = sorted(blocks, key=lambda item: item[0])
    covered = sum(rows.shape[0] for _, rows in blocks)
    if covered != num_songs:
        raise RuntimeError(f"itemcf: the model blocks cover {covered} songs, not {num_songs}")
    if not blocks:
        return sp.csr_matrix((0, 0), dtype=np.float64)
    model = sp.vstack([rows for _, rows in blocks], format="csr")
    model.sort_indices()
    return model


class FitItemCF(beam.PTransform):
    """UserHistories → {"model": one (songs, listeners, W) tuple, "rejected": dead letters}."""

    def __init__(self, min_listeners: int, alpha: float, q: float, top_m: int,
                 pair_budget: int):
        super().__init__()
        self._min_listeners = min_listeners
        self._alpha, self._q, self._top_m = alpha, q, top_m
        self._pair_budget = pair_budget

    def expand(self, histories):
        prepared = histories | "Prepare" >> PrepareListening(self._min_listeners, "binary")
        songs, matrix = prepared["songs"], prepared["matrix"]
        pair_budget = self._pair_budget
        blocks = (matrix
                  | "PlanBlocks" >> beam.FlatMap(
                      lambda m: itemcf_similarity.plan_blocks(m, pair_budget))
                  | "SpreadBlocks" >> beam.Reshuffle()
                  | "Neighbours" >> beam.ParDo(
                      NeighbourBlockFn(self._alpha, self._q, self._top_m),
                      beam.pvalue.AsSingleton(matrix)))
        model = (blocks
                 | "CollectBlocks" >> beam.combiners.ToList()
                 | "Assemble" >> beam.Map(
                     lambda parts, s, m: (s, song_listeners(m), assemble(parts, len(s))),
                     beam.pvalue.AsSingleton(songs), beam.pvalue.AsSingleton(matrix)))
        return {"model": model, "rejected": prepared["rejected"]}


def fit_als_model(matrix: sp.csr_matrix, songs: list[str], parameters: als_lib.ALSParameters
                  ) -> tuple:
    """(songs, listeners, item factors, training metrics); nothing to fit without songs."""
    if not songs or not matrix.nnz:
        return songs, song_listeners(matrix), None, {}
    counter("als_fits").inc()
    item_factors, metrics = als_lib.fit_als(matrix, parameters)
    return songs, song_listeners(matrix), item_factors, metrics


class FitALS(beam.PTransform):
    """UserHistories → {"model": one (songs, listeners, item factors, metrics) tuple,
    "rejected": dead letters}. The data preparation is Beam's (``PrepareListening``); the fit
    runs on one worker (implicit's multithreaded CPU solver)."""

    def __init__(self, min_listeners: int, parameters: als_lib.ALSParameters):
        super().__init__()
        self._min_listeners, self._parameters = min_listeners, parameters

    def expand(self, histories):
        prepared = histories | "Prepare" >> PrepareListening(self._min_listeners, "play_counts")
        model = prepared["matrix"] | "ALS" >> beam.Map(
            fit_als_model, beam.pvalue.AsSingleton(prepared["songs"]), self._parameters)
        return {"model": model, "rejected": prepared["rejected"]}


def hybrid_validation_users(matrix: sp.csr_matrix, als_rows: np.ndarray,
                            parameters: als_lib.ALSParameters):
    """ALS's validation users (the split ``fit_als`` held out of the fit: same fraction and
    seed) in catalogue rows, for the hybrid's choice of the cold songs' scale."""
    from recommend.models import hybrid as hybrid_lib

    visible, users, hidden = als_lib.validation_split(matrix, parameters.validation_fraction,
                                                      parameters.seed)

    def row(m, u):
        return als_rows[m.indices[m.indptr[u]:m.indptr[u + 1]]]

    return hybrid_lib.ValidationUsers(
        histories=[row(visible, u) for u in users],
        confidences=[als_lib.confidence(visible.data[visible.indptr[u]:visible.indptr[u + 1]],
                                        parameters.alpha, parameters.confidence)
                     for u in users],
        hidden=[row(hidden, u) for u in users], regularization=parameters.regularization)


def fit_hybrid_model(matrix: sp.csr_matrix, songs: list[str],
                     parameters: als_lib.ALSParameters, content_source,
                     hybrid_parameters) -> tuple:
    """(catalogue songs, listeners, item factors, content, trained mask, metrics): ALS on the
    listens (``fit_als_model``), then the content network over every song of ``content_source`` (a
    ``recommend.models.ModelSource`` of the features); nothing to fit without songs."""
    from recommend.models import hybrid as hybrid_lib

    songs, listeners, item_factors, als_metrics = fit_als_model(matrix, songs, parameters)
    if item_factors is None:
        return songs, listeners, None, None, None, {}
    catalogue, _ = content_source.catalogue()
    content = hybrid_lib.load_song_content(content_source.features,
                                           catalogue.track_ids.tolist())
    inputs, names = hybrid_lib.content_inputs(content)
    row_of_song = catalogue.row_of_song()
    als_rows = np.array([row_of_song[song_id] for song_id in songs], np.int64)
    all_listeners = np.zeros(len(catalogue), np.int64)
    all_listeners[als_rows] = listeners
    factors, content, trained, network = hybrid_lib.hybrid_factors(
        inputs, als_rows, item_factors, all_listeners, hybrid_parameters,
        validation=hybrid_validation_users(matrix, als_rows, parameters))
    counter("hybrid_fits").inc()
    return (catalogue.song_ids, all_listeners, factors, content, trained,
            {"als": als_metrics, "content_network": network, "input_columns": names})


class FitHybrid(beam.PTransform):
    """UserHistories → {"model": one (songs, listeners, item factors, content, trained,
    metrics) tuple, "rejected": dead letters}: ``FitALS``'s preparation and fit, then the
    content network (``recommend.models.hybrid``) on the same worker."""

    def __init__(self, min_listeners: int, parameters: als_lib.ALSParameters, content_source,
                 hybrid_parameters):
        super().__init__()
        self._min_listeners, self._parameters = min_listeners, parameters
        self._content_source, self._hybrid_parameters = content_source, hybrid_parameters

    def expand(self, histories):
        prepared = histories | "Prepare" >> PrepareListening(self._min_listeners, "play_counts")
        model = prepared["matrix"] | "Hybrid" >> beam.Map(
            fit_hybrid_model, beam.pvalue.AsSingleton(prepared["songs"]), self._parameters,
            self._content_source, self._hybrid_parameters)
        return {"model": model, "rejected": prepared["rejected"]}
