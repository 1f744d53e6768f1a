"""Implicit-feedback matrix factorisation (Hu, Koren and Volinsky 2008), trained by alternating
least squares with benfred/implicit and served by an exact fold-in.

    minimise Σ_{u,i} c_ui (p_ui − x_uᵀ y_i)² + λ (Σ_u ‖x_u‖² + Σ_i ‖y_i‖²)

with p_ui = 1 for a listen (0 otherwise) and the confidence of a listen with play count r

    linear: c_ui = 1 + α·r            log: c_ui = 1 + α·log(1 + r/ε)   (ε = 1)

and c_ui = 1 for songs not listened to.

implicit's ``fit`` reads the stored matrix values times its own ``alpha`` as the confidence c
itself (its solver adds (c − 1)·y yᵀ for a stored value c; an absent entry means c = 1, p = 0).
So the training matrix holds c_ui = 1 + α·r (or the log form) and implicit's alpha is 1: the
model is exactly the one above, with λ added unscaled (implicit 0.7's CPU solver).

The model directory holds only the item factors Y (float32 [N, f], row i = song i) and the
training listener counts (the popularity fill of users with no known song). A user's factors
are computed from their history when they are scored, by the exact ALS user step

    x_u = (YᵀY + Yᵀ(Cᵘ − I)Y + λI)⁻¹ YᵀCᵘ p(u)

in float64 (``ALSFoldIn``): a user seen in training and a new user with the same history get
the same vector, and it equals implicit's ``recalculate_user`` up to its float32 arithmetic.
Scores are y_i·x_u, ranked by the exact top-k kernel with listened songs excluded
(``recommend.kernel``).

Batch independence: Yᵀ(Cᵘ − I)Y and YᵀCᵘp(u) are accumulated listen by listen in history
order with element-wise TensorFlow operations (no reduction whose order could depend on the
batch shape), and each user's system is factorised and solved on its own (batched Cholesky
solves one matrix per batch entry), so x_u is a function of the user's history alone.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Callable, Optional, Sequence

import numpy as np
import scipy.sparse as sp

from recommend import metrics as metrics_lib
from recommend.models.base import ModelError, Recommendations, Recommender
from recommend.models.popularity import PopularityModel

CONFIDENCES = ("linear", "log")
LOG_EPSILON = 1.0
# Defaults chosen on the real Taste Profile sample (docs/evaluation.md, "Matrix factorisation").
DEFAULT_FACTORS = 64
DEFAULT_REGULARIZATION = 10.0
DEFAULT_ALPHA = 10.0
DEFAULT_CONFIDENCE = "log"
DEFAULT_ITERATIONS = 15
DEFAULT_VALIDATION_FRACTION = 0.1
MAX_VALIDATION_USERS = 300
VALIDATION_K = 500
# Validation mAPs per fit (evenly spaced, always the last iteration): each ranks every song for
# every validation user, which costs about as much as an ALS iteration at 100k songs.
VALIDATION_POINTS = 5
# Users whose padded histories share one fold-in step (bounds the [B, f, f] accumulators).
FOLD_IN_GROUP = 64


def confidence(play_counts: np.ndarray, alpha: float, variant: str) -> np.ndarray:
    """c = 1 + α·r (``linear``) or 1 + α·log(1 + r/ε) (``log``), float64, per listen."""
    counts = np.asarray(play_counts, dtype=np.float64)
    if variant == "linear":
        return 1.0 + alpha * counts
    if variant == "log":
        return 1.0 + alpha * np.log1p(counts / LOG_EPSILON)
    raise ModelError(f"als: unknown confidence {variant!r}; expected one of {CONFIDENCES}")


def check_parameters(factors: int, regularization: float, alpha: float, confidence_variant: str,
                     iterations: int) -> list[str]:
    """The problems with a parameter set, one line each (empty when usable)."""
    problems = []
    if factors < 1:
        problems.append(f"--factors must be at least 1, got {factors}")
    if not regularization > 0:
        problems.append(f"--regularization must be positive, got {regularization}")
    if not alpha > 0:
        problems.append(f"--als_alpha must be positive, got {alpha}")
    if confidence_variant not in CONFIDENCES:
        problems.append(f"--confidence must be one of {', '.join(CONFIDENCES)}, "
                        f"got {confidence_variant!r}")
    if iterations < 1:
        problems.append(f"--iterations must be at least 1, got {iterations}")
    return problems


_FOLD_IN_GRAPH = None


def _fold_in_graph():
    """The fold-in as one ``tf.function`` for every model and shape (traced once)."""
    global _FOLD_IN_GRAPH
    if _FOLD_IN_GRAPH is not None:
        return _FOLD_IN_GRAPH
    import tensorflow as tf

    matrix = tf.TensorSpec([None, None], tf.float64)

    @tf.function(input_signature=(matrix, matrix, tf.TensorSpec([None, None], tf.int64),
                                  matrix, matrix))
    def solve(items, gram, rows, confidences, extra):
        """items Y [N, f], gram YᵀY + λI [f, f]; rows int64 [B, L] (padded with 0),
        confidences c [B, L] and extra c − 1 [B, L] (both 0 in padding) → x [B, f]."""
        b, length, f = tf.shape(rows)[0], tf.shape(rows)[1], tf.shape(items)[1]

        def step(l, system, rhs):
            y = tf.gather(items, rows[:, l])                              # [B, f]
            weighted = extra[:, l][:, None] * y                           # (c − 1)·y
            system = system + weighted[:, :, None] * y[:, None, :]        # + (c − 1)·y yᵀ
            rhs = rhs + confidences[:, l][:, None] * y                    # + c·y
            return l + 1, system, rhs

        _, system, rhs = tf.while_loop(
            lambda l, *_: l < length, step,
            (tf.constant(0), tf.zeros([b, f, f], tf.float64), tf.zeros([b, f], tf.float64)))
        system = system + gram[None]
        return tf.linalg.cholesky_solve(tf.linalg.cholesky(system), rhs[:, :, None])[:, :, 0]

    _FOLD_IN_GRAPH = solve
    return solve


class ALSFoldIn:
    """The exact ALS user step for batches of histories, in float64 TensorFlow (see the module
    docstring). ``item_factors`` float32 [N, f]; YᵀY + λI is computed once here, over the
    rows ``gram_rows`` (default: every row). The hybrid model passes the rows ALS was fitted
    on, so songs with predicted factors (nobody listened to them in training) do not enter the
    Gram and a history of trained songs gets exactly its ALS user vector."""

    def __init__(self, item_factors: np.ndarray, regularization: float,
                 gram_rows: Optional[np.ndarray] = None):
        import tensorflow as tf

        item_factors = np.asarray(item_factors, dtype=np.float32)
        self.factors = item_factors.shape[1]
        y64 = item_factors.astype(np.float64)
        gram_y = y64 if gram_rows is None else y64[np.asarray(gram_rows, np.int64)]
        self.gram = gram_y.T @ gram_y + regularization * np.eye(self.factors)
        self._items = tf.constant(y64)
        self._gram = tf.constant(self.gram)
        self._solve = _fold_in_graph()

    def user_factors(self, histories: Sequence[np.ndarray],
                     confidences: Sequence[np.ndarray]) -> np.ndarray:
        """float64 [B, f]: x_u for each history (rows) with its per-listen confidences c."""
        out = np.zeros((len(histories), self.factors), np.float64)
        lengths = np.fromiter((len(h) for h in histories), np.int64, count=len(histories))
        order = np.argsort(lengths, kind="stable")  # similar lengths share a padded group
        for start in range(0, len(order), FOLD_IN_GROUP):
            group = order[start:start + FOLD_IN_GROUP]
            width = max(int(lengths[group].max()), 1)
            rows = np.zeros((len(group), width), np.int64)
            conf = np.zeros((len(group), width), np.float64)
            extra = np.zeros((len(group), width), np.float64)
            for slot, user in enumerate(group):
                n = lengths[user]
                rows[slot, :n] = histories[user]
                conf[slot, :n] = confidences[user]
                extra[slot, :n] = np.asarray(confidences[user], np.float64) - 1.0
            out[group] = self._solve(self._items, self._gram, rows, conf, extra).numpy()
        return out


class ALSModel(Recommender):
    kind = "als"
    stored_arrays = {"item_factors": ("f", 2), "listeners": ("i", 1)}

    def __init__(self, song_ids: np.ndarray, item_factors: np.ndarray, listeners: np.ndarray,
                 regularization: float = DEFAULT_REGULARIZATION, alpha: float = DEFAULT_ALPHA,
                 confidence_variant: str = DEFAULT_CONFIDENCE,
                 iterations: int = DEFAULT_ITERATIONS, seed: int = 0, min_listeners: int = 1,
                 batch_size: int = 256):
        super().__init__(song_ids)
        n = len(self.song_ids)
        item_factors = np.asarray(item_factors)
        if item_factors.ndim != 2 or item_factors.shape[0] != n or item_factors.shape[1] < 1:
            raise ModelError(f"{self.kind}: item factors of shape {item_factors.shape} for {n} "
                             "songs (expected [songs, factors])")
        if item_factors.dtype != np.float32:
            raise ModelError(f"{self.kind}: item factors must be float32, got "
                             f"{item_factors.dtype}")
        if not np.isfinite(item_factors).all():
            raise ModelError(f"{self.kind}: the item factors hold NaN/Inf")
        problems = check_parameters(item_factors.shape[1], regularization, alpha,
                                    confidence_variant, iterations)
        if problems:
            raise ModelError(f"{self.kind}: " + "; ".join(problems))
        self.item_factors = np.ascontiguousarray(item_factors)
        self.popularity = PopularityModel(self.song_ids, listeners)
        self.regularization, self.alpha = float(regularization), float(alpha)
        self.confidence_variant, self.iterations = confidence_variant, int(iterations)
        self.seed, self.min_listeners = int(seed), int(min_listeners)
        self.batch_size = batch_size
        self._fold_in: Optional[ALSFoldIn] = None
        self._scorer = None

    def gram_rows(self) -> Optional[np.ndarray]:
        """The rows whose factors form the fold-in's YᵀY (None: all; see ``ALSFoldIn``)."""
        return None

    def fold_in(self) -> ALSFoldIn:
        if self._fold_in is None:
            self._fold_in = ALSFoldIn(self.item_factors, self.regularization, self.gram_rows())
        return self._fold_in

    def scorer(self):
        if self._scorer is None:
            from recommend import kernel

            self._scorer = kernel.CatalogueScorer(self.item_factors, batch_size=self.batch_size)
        return self._scorer

    def listen_confidences(self, histories: Sequence[np.ndarray],
                           play_counts: Sequence[Optional[np.ndarray]]) -> list[np.ndarray]:
        """c per listen; a user without play counts (None) counts each listen once."""
        if len(play_counts) != len(histories):
            raise ModelError(f"{self.kind}: {len(play_counts)} play-count arrays for "
                             f"{len(histories)} histories")
        out = []
        for user, (history, counts) in enumerate(zip(histories, play_counts)):
            counts = np.ones(len(history)) if counts is None else np.asarray(counts)
            if counts.shape != (len(history),):
                raise ModelError(f"{self.kind}: user {user} has {len(history)} songs and "
                                 f"{counts.shape} play counts")
            if len(counts) and counts.min() < 1:
                raise ModelError(f"{self.kind}: user {user} has a play count below 1")
            out.append(confidence(counts, self.alpha, self.confidence_variant))
        return out

    def user_factors(self, histories: Sequence[np.ndarray],
                     play_counts: Sequence[Optional[np.ndarray]]) -> np.ndarray:
        """float64 [B, f]: the exact ALS user step for each history (zeros for no history)."""
        histories = [np.asarray(h, dtype=np.int64) for h in histories]
        return self.fold_in().user_factors(histories,
                                           self.listen_confidences(histories, play_counts))

    def recommend(self, histories: Sequence[np.ndarray], play_counts: Sequence[np.ndarray],
                  k: int) -> Recommendations:
        from recommend import kernel

        histories = [np.asarray(h, dtype=np.int64) for h in histories]
        rows = np.zeros((len(histories), k), np.int32)
        scores = np.zeros((len(histories), k), np.float64)
        filled = np.zeros(len(histories), np.int32)
        known = [u for u, h in enumerate(histories) if len(h)]
        if known:
            queries = self.user_factors([histories[u] for u in known],
                                        [play_counts[u] for u in known])
            packed = kernel.pack_histories([histories[u] for u in known],
                                           num_songs=self.num_songs())
            top, top_scores = self.scorer().recommend_packed(packed, k, queries=queries)
            rows[known], scores[known] = top, top_scores
        for user in sorted(set(range(len(histories))) - set(known)):
            picks = self.popularity.top(histories[user], k)  # no history: no factors
            if len(picks) < k:
                raise ModelError(f"{self.kind}: user {user} leaves fewer than k={k} songs")
            rows[user], filled[user] = picks, k
        return Recommendations(rows, scores, filled)

    def parameters(self) -> dict[str, Any]:
        return {"factors": int(self.item_factors.shape[1]),
                "regularization": self.regularization, "alpha": self.alpha,
                "confidence": self.confidence_variant, "epsilon": LOG_EPSILON,
                "iterations": self.iterations, "seed": self.seed,
                "min_listeners": self.min_listeners}

    def arrays(self) -> dict[str, np.ndarray]:
        return {"item_factors": self.item_factors, "listeners": self.popularity.listeners}

    @classmethod
    def from_arrays(cls, song_ids, arrays, parameters) -> "ALSModel":
        return cls(song_ids, arrays["item_factors"], arrays["listeners"],
                   **cls.stored_parameters(arrays, parameters))

    @classmethod
    def stored_parameters(cls, arrays, parameters) -> dict[str, Any]:
        """The constructor's keyword arguments from model.json's parameters (the factor count
        checked against item_factors.npy)."""
        factors = parameters.get("factors")
        if factors is not None and arrays["item_factors"].shape[1:] != (factors,):
            raise ModelError(f"{cls.kind}: item_factors.npy has shape "
                             f"{arrays['item_factors'].shape}, model.json says {factors} factors")
        return dict(regularization=float(parameters.get("regularization",
                                                        DEFAULT_REGULARIZATION)),
                    alpha=float(parameters.get("alpha", DEFAULT_ALPHA)),
                    confidence_variant=parameters.get("confidence", DEFAULT_CONFIDENCE),
                    iterations=int(parameters.get("iterations", DEFAULT_ITERATIONS)),
                    seed=int(parameters.get("seed", 0)),
                    min_listeners=int(parameters.get("min_listeners", 1)))


# ----------------------------------------------------------------------------------------------
# Training (Beam-free: ``transforms.training.FitALS`` calls ``fit_als`` on one worker)
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ALSParameters:
    factors: int = DEFAULT_FACTORS
    regularization: float = DEFAULT_REGULARIZATION
    alpha: float = DEFAULT_ALPHA
    confidence: str = DEFAULT_CONFIDENCE
    iterations: int = DEFAULT_ITERATIONS
    seed: int = 0
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION


def validation_split(play_counts: sp.csr_matrix, fraction: float, seed: int
                     ) -> tuple[sp.csr_matrix, np.ndarray, sp.csr_matrix]:
    """(training matrix, validation users, their hidden listens): ``fraction`` of the users
    with at least two songs (at most MAX_VALIDATION_USERS), chosen with ``seed``, each with
    half their songs (rounded down, chosen with ``seed``) moved out of the training matrix."""
    play_counts = play_counts.tocsr()
    empty = sp.csr_matrix(play_counts.shape, dtype=play_counts.dtype)
    lengths = np.diff(play_counts.indptr)
    eligible = np.flatnonzero(lengths >= 2)
    wanted = min(int(round(fraction * play_counts.shape[0])), len(eligible),
                 MAX_VALIDATION_USERS)
    if wanted < 1:
        return play_counts, np.zeros(0, np.int64), empty
    rng = np.random.default_rng(seed)
    users = np.sort(rng.choice(eligible, size=wanted, replace=False))
    hide = np.zeros(play_counts.nnz, bool)
    for user in users:
        start, stop = play_counts.indptr[user], play_counts.indptr[user + 1]
        hide[start + rng.choice(stop - start, size=(stop - start) // 2, replace=False)] = True
    coo = play_counts.tocoo()
    shape = play_counts.shape
    train = sp.csr_matrix((coo.data[~hide], (coo.row[~hide], coo.col[~hide])), shape=shape)
    hidden = sp.csr_matrix((coo.data[hide], (coo.row[hide], coo.col[hide])), shape=shape)
    return train, users, hidden


def validation_map(item_factors: np.ndarray, regularization: float, alpha: float,
                   variant: str, visible: sp.csr_matrix, hidden: sp.csr_matrix,
                   users: np.ndarray, k: int = VALIDATION_K) -> float:
    """mAP@k of the validation users: each folded in from their visible (training) listens as
    at serving time, ranked over every song not visible, scored against the hidden ones."""
    if not len(users):
        return float("nan")
    fold = ALSFoldIn(item_factors, regularization)
    histories = [visible.indices[visible.indptr[u]:visible.indptr[u + 1]].astype(np.int64)
                 for u in users]
    counts = [visible.data[visible.indptr[u]:visible.indptr[u + 1]] for u in users]
    x = fold.user_factors(histories, [confidence(c, alpha, variant) for c in counts])
    items = np.asarray(item_factors, np.float32)  # ranking only: float32 suffices here
    queries = x.astype(np.float32)
    k = max(1, min(k, items.shape[0] - max(len(h) for h in histories)))
    ranked = []
    for start in range(0, len(users), 64):
        scores = queries[start:start + 64] @ items.T
        for row, history in enumerate(histories[start:start + 64]):
            scores[row, history] = -np.inf
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        top_scores = np.take_along_axis(scores, top, axis=1)
        order = np.lexsort((top, -top_scores), axis=1)
        ranked.extend(np.take_along_axis(top, order, axis=1))
    offsets = np.arange(len(users) + 1, dtype=np.int64) * k
    hidden_rows = [hidden.indices[hidden.indptr[u]:hidden.indptr[u + 1]] for u in users]
    hidden_offsets = np.zeros(len(users) + 1, np.int64)
    np.cumsum([len(h) for h in hidden_rows], out=hidden_offsets[1:])
    relevant = metrics_lib.batch_relevance(offsets, np.concatenate(ranked), hidden_offsets,
                                           np.concatenate(hidden_rows))
    scores = metrics_lib.batch_user_scores(relevant, offsets,
                                           np.diff(hidden_offsets), map_cutoff=k)
    return float(scores["average_precision"].mean())


def confidence_matrix(play_counts: sp.csr_matrix, alpha: float, variant: str
                      ) -> sp.csr_matrix:
    """The matrix implicit fits with its alpha = 1: c_ui stored for every listen (float32)."""
    matrix = play_counts.tocsr().astype(np.float64)
    matrix.data = confidence(matrix.data, alpha, variant)
    return matrix.astype(np.float32)


def fit_als(play_counts: sp.csr_matrix, parameters: ALSParameters,
            log: Callable[[str], None] = logging.info) -> tuple[np.ndarray, dict]:
    """users × songs play counts → (item factors float32 [songs, f], training metrics).

    Fits implicit's CPU ALS (conjugate-gradient solver, BLAS limited to one thread as implicit
    requires) on the confidences of ``play_counts`` minus a validation split; reports every
    iteration's time and, at VALIDATION_POINTS evenly spaced iterations (the last always), the
    training loss (implicit's ``calculate_loss``) and the validation mAP@500 of the validation
    users folded in from their visible listens. The loss is not computed at every iteration:
    it costs about a sixth of an iteration, and every iteration made the fit 1.40x implicit's
    own (benchmarks/bench_als.py)."""
    from implicit.cpu import _als
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    p = parameters
    train, users, hidden = validation_split(play_counts, p.validation_fraction, p.seed)
    matrix = confidence_matrix(train, p.alpha, p.confidence)
    history = {"training_loss": [], "loss_iterations": [], "validation_map": [],
               "validation_iterations": [], "iteration_seconds": []}
    every = max(1, -(-p.iterations // VALIDATION_POINTS))
    started = time.monotonic()

    def report(iteration: int, seconds: float, _loss) -> None:
        history["iteration_seconds"].append(round(float(seconds), 3))
        line = f"als: iteration {iteration + 1}/{p.iterations}"
        if (iteration + 1) % every and iteration + 1 != p.iterations:
            log(f"{line} ({seconds:.1f} s)")
            return
        loss = _als.calculate_loss(matrix, model.user_factors, model.item_factors,
                                   p.regularization, num_threads=model.num_threads)
        history["training_loss"].append(float(loss))
        history["loss_iterations"].append(iteration + 1)
        line += f": training loss {loss:.6f}"
        if len(users):
            score = validation_map(model.item_factors, p.regularization, p.alpha, p.confidence,
                                   train, hidden, users)
            history["validation_map"].append(score)
            history["validation_iterations"].append(iteration + 1)
            line += f", validation mAP@{VALIDATION_K} {score:.4f} ({len(users)} users)"
        log(f"{line} ({seconds:.1f} s)")

    with threadpool_limits(limits=1, user_api="blas"):
        model = AlternatingLeastSquares(factors=p.factors, regularization=p.regularization,
                                        alpha=1.0, iterations=p.iterations, dtype=np.float32,
                                        calculate_training_loss=False, random_state=p.seed)
        model.fit(matrix, show_progress=False, callback=report)
    item_factors = np.ascontiguousarray(model.item_factors, dtype=np.float32)
    if not np.isfinite(item_factors).all():
        raise ModelError("als: training produced NaN/Inf factors (raise --regularization)")
    metrics = {**history, "validation_users": int(len(users)),
               "validation_hidden_listens": int(hidden.nnz), "validation_k": VALIDATION_K,
               "training_listens": int(train.nnz),
               "fit_seconds": round(time.monotonic() - started, 3)}
    return item_factors, metrics
