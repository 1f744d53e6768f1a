"""The hybrid model: ALS item factors for songs with listens, factors predicted from the song's
content for every other song with features (cold start; van den Oord, Dieleman and Schrauwen,
"Deep content-based music recommendation", NIPS 2013).

Training (Beam-free; ``transforms.training.FitHybrid`` runs it on one worker after the ALS fit):

1. ALS is fitted on the listens (``recommend.models.als.fit_als``, the same parameters as
   ``--model als``). Every song ALS was fitted on (at least ``--min_listeners`` listeners)
   keeps its ALS factors.
2. A small Keras MLP maps a song's content to the *direction* of its ALS factors: inputs are
   the 90 raw timbre statistics standardised over the catalogue, plus the other song fields the
   feature output carries (``content_inputs``: year with a known/unknown flag, log duration,
   and loudness, tempo, key, mode and time signature when the features hold them); the
   target is the song's ALS factor vector scaled to unit length (a factor's norm follows the
   song's popularity, which content cannot know), the loss is the cosine distance. It learns
   from the songs with at least ``target_min_listeners`` listeners (their factors are
   reliable), of which ``holdout`` (seeded) are held out of its training: the validation
   cosine and loss reported in model.json's metrics are measured on them.
3. Every catalogue song without ALS factors (fewer than ``--min_listeners`` listeners, or
   none: a new song) gets the predicted direction times the median norm of the ALS factors of
   the songs the network learnt from (a typical song's norm) times a scale ``cold_scale``.
4. Every song's score also gets ``content_weight`` × the cosine between its content vector
   (the network's inputs scaled to unit length) and the mean content vector of the user's
   history: the issue's blend with the content cosine, in the same kernel pass (``content``
   holds the weighted unit vectors, the user's query gets the unit mean; one dot product is
   x_u·y_i + w·cos). It helps both the warm songs' ranking and the cold songs' (content
   is the only signal a cold song has besides its predicted factors).
5. The weight and the scale are chosen on ALS's validation users (``choose_blend``): their
   held-out listens are not in the ALS fit (``als.validation_split``, the same fraction and
   seed), so ranking the whole catalogue for them from their visible listens shows what each
   setting does. The weight is the smallest of BLEND_GRID whose ranking of the warm songs is
   within one paired standard error of the best (the 1-SE rule); the scale is the largest of
   SCALE_GRID up to which the songs without ALS factors keep the users' mAP@500 on their
   held-out songs within ``warm_map_loss`` (default 3 %) of ALS alone's — a larger scale
   recommends more cold songs and pushes warm ones down. Training data only; deterministic
   for a seed.

Measured and rejected (docs/evaluation.md): shrinking uncertain predictions (regressing the
unit target with MSE, or scaling by the MSE network's norm), an ensemble's agreement, a
content-nearest-neighbour average of warm factors, other network sizes and target thresholds:
none beat the cosine network at the same share of cold songs recommended.

Scoring is ``ALSModel``'s (this class is one) with the content columns appended
(``BlendScorer``): a user's factors by the exact ALS fold-in, then the exact top-k kernel over
every catalogue song. The fold-in's Gram YᵀY is taken over the songs ALS was fitted on only
(``trained``), so a history of those songs gets exactly its ALS user vector; a predicted song
enters a user's system only when the user listened to it.

Model directory: ALS's arrays (``item_factors`` for the whole catalogue, ``listeners``) plus
``trained`` (bool per song: ALS factors, or predicted) and ``content`` (float32 [songs,
columns]: the weighted unit content vectors; no columns when the weight is 0). The network
itself is not stored: the catalogue is every song with features at training time, and a song
added later is scored after the next training run.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Callable, Optional, Sequence

import numpy as np

from recommend.models.als import VALIDATION_K, ALSModel
from recommend.models.base import ModelError

DEFAULT_TARGET_MIN_LISTENERS = 5
DEFAULT_HIDDEN_UNITS = 64
DEFAULT_EPOCHS = 30
DEFAULT_HOLDOUT = 0.1
# Chosen on the development synthetic data sets (seeds 7-9), not on the reported test sets:
# docs/evaluation.md, "Hybrid and cold start".
DEFAULT_WARM_MAP_LOSS = 0.03
# The cold-song scales tried on the validation users (× the median norm of the targets).
SCALE_GRID = tuple(round(0.02 * i, 2) for i in range(1, 101))  # 0.02 … 2.0
# The weights of the content cosine tried on the validation users.
BLEND_GRID = (0.0, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3)
BATCH_SIZE = 128
LEARNING_RATE = 1e-3

# Song fields beside the timbre statistics: (name, TFRecord type). Older feature outputs carry
# only year and duration; the others are used when present.
SONG_FIELDS = (("year", "int"), ("duration", "float"), ("loudness", "float"),
               ("tempo", "float"), ("key", "int"), ("mode", "int"), ("time_signature", "int"))
TIME_SIGNATURES = (1, 3, 4, 5, 7)  # the values the MSD uses (others: none of the columns)


# ----------------------------------------------------------------------------------------------
# Content
# ----------------------------------------------------------------------------------------------

def load_song_content(features: str, track_ids: Sequence[str]) -> dict[str, np.ndarray]:
    """The raw timbre statistics (float64 [N, 90]) and song fields of ``track_ids`` (in that
    order) from the feature pipeline's TFRecord output; fields the files do not hold are
    absent from the result."""
    import tensorflow as tf

    from recommend import catalogue as catalogue_lib

    paths, file_format = catalogue_lib.feature_files(features)
    if file_format != "tfrecord":
        raise ModelError(f"hybrid: --features {features} is CSV, which holds no raw statistics "
                         "or song fields; give the feature output folder or its TFRecord shards")
    spec = {"track_id": tf.io.FixedLenFeature([], tf.string),
            "raw_features": tf.io.RaggedFeature(tf.float32)}
    for name, kind in SONG_FIELDS:
        spec[name] = tf.io.RaggedFeature(tf.int64 if kind == "int" else tf.float32)
    wanted = {track: row for row, track in enumerate(track_ids)}
    raw = np.full((len(wanted), 0), np.nan)
    fields = {name: np.full(len(wanted), np.nan) for name, _ in SONG_FIELDS}
    present = {name: 0 for name, _ in SONG_FIELDS}
    found = np.zeros(len(wanted), bool)
    for path in paths:
        records = list(catalogue_lib.tfrecord_records(path))
        if not records:
            continue
        parsed = tf.io.parse_example(tf.constant(records, dtype=tf.string), spec)
        rows = np.array([wanted.get(t.decode(), -1) for t in parsed["track_id"].numpy()])
        keep = rows >= 0
        widths = set(parsed["raw_features"].row_lengths().numpy().tolist())
        if widths and widths != {90}:
            raise ModelError(f"hybrid: {path}: raw_features of lengths {sorted(widths)}, "
                             "expected 90 (not a feature pipeline output?)")
        if raw.shape[1] == 0:
            raw = np.full((len(wanted), 90), np.nan)
        raw[rows[keep]] = parsed["raw_features"].to_tensor().numpy()[keep]
        found[rows[keep]] = True
        for name, _ in SONG_FIELDS:
            lengths = parsed[name].row_lengths().numpy()
            has = keep & (lengths == 1)
            present[name] += int(has.sum())
            values = parsed[name].to_tensor(default_value=0).numpy()
            if values.shape[1]:
                fields[name][rows[has]] = values[has, 0]
    if not found.all():
        missing = [t for t, row in wanted.items() if not found[row]]
        raise ModelError(f"hybrid: {len(missing)} catalogue tracks have no record in "
                         f"{features} (e.g. {missing[0]})")
    out = {"raw_features": raw}
    for name, _ in SONG_FIELDS:
        if present[name] == len(wanted):
            out[name] = fields[name]
        elif present[name]:
            raise ModelError(f"hybrid: the field {name!r} is in {present[name]} of "
                             f"{len(wanted)} feature records: mixed feature outputs?")
    return out


def _z(values: np.ndarray, rows: Optional[np.ndarray] = None) -> np.ndarray:
    """Standardised over ``rows`` (default: all); a constant column becomes zeros."""
    values = np.asarray(values, np.float64)
    basis = values if rows is None else values[rows]
    if not len(basis):
        return np.zeros_like(values)
    spread = basis.std(axis=0)
    spread = np.where(spread > 0, spread, 1.0)
    return (values - basis.mean(axis=0)) / spread


def content_inputs(content: dict[str, np.ndarray]) -> tuple[np.ndarray, list[str]]:
    """The network's input matrix (float32 [N, d]) and its column names: the 90 statistics
    standardised; year (known flag, standardised over the songs whose year is known, 0 when
    unknown); log duration, loudness and tempo standardised; key one-hot (12; none set for
    an unknown key, -1); mode (1 major, else 0); time signature one-hot over TIME_SIGNATURES."""
    raw = content["raw_features"]
    columns = [_z(raw)]
    names = [f"timbre_{i:02d}" for i in range(raw.shape[1])]
    if "year" in content:
        year = content["year"]
        known = year > 0
        columns.append(np.stack([known.astype(np.float64),
                                 np.where(known, _z(year, np.flatnonzero(known)), 0.0)], 1))
        names += ["year_known", "year"]
    if "duration" in content:
        columns.append(_z(np.log1p(np.maximum(content["duration"], 0.0)))[:, None])
        names.append("log_duration")
    for name in ("loudness", "tempo"):
        if name in content:
            columns.append(_z(content[name])[:, None])
            names.append(name)
    if "key" in content:
        key = content["key"].astype(np.int64)  # -1: unknown (msd.hdf5_reader): no column set
        columns.append(np.vstack([np.eye(12), np.zeros(12)])[np.where(
            (key >= 0) & (key <= 11), key, 12)])
        names += [f"key_{k}" for k in range(12)]
    if "mode" in content:
        columns.append((content["mode"] > 0).astype(np.float64)[:, None])
        names.append("mode_major")
    if "time_signature" in content:
        signature = content["time_signature"].astype(np.int64)
        columns.append(np.stack([(signature == s).astype(np.float64)
                                 for s in TIME_SIGNATURES], 1))
        names += [f"time_signature_{s}" for s in TIME_SIGNATURES]
    matrix = np.concatenate(columns, axis=1).astype(np.float32)
    if not np.isfinite(matrix).all():
        raise ModelError("hybrid: the song content holds NaN/Inf values")
    return matrix, names


# ----------------------------------------------------------------------------------------------
# The content network
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class HybridParameters:
    target_min_listeners: int = DEFAULT_TARGET_MIN_LISTENERS
    hidden_units: int = DEFAULT_HIDDEN_UNITS
    epochs: int = DEFAULT_EPOCHS
    holdout: float = DEFAULT_HOLDOUT
    warm_map_loss: float = DEFAULT_WARM_MAP_LOSS
    seed: int = 0


def check_hybrid_parameters(p: HybridParameters) -> list[str]:
    problems = []
    if p.target_min_listeners < 1:
        problems.append(f"--target_min_listeners must be at least 1, got "
                        f"{p.target_min_listeners}")
    if p.hidden_units < 1:
        problems.append(f"--hidden_units must be at least 1, got {p.hidden_units}")
    if p.epochs < 1:
        problems.append(f"--epochs must be at least 1, got {p.epochs}")
    if not 0.0 <= p.holdout < 1.0:
        problems.append(f"--holdout_songs must be in [0, 1), got {p.holdout}")
    if not 0.0 < p.warm_map_loss < 1.0:
        problems.append(f"--warm_map_loss must be in (0, 1), got {p.warm_map_loss}")
    return problems


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms > 0, norms, 1.0)


def fit_content_network(inputs: np.ndarray, targets: np.ndarray, p: HybridParameters,
                        log: Callable[[str], None] = logging.info
                        ) -> tuple[Callable[[np.ndarray], np.ndarray], dict[str, Any]]:
    """Fits the MLP content → unit target direction on ``inputs`` [M, d] / ``targets`` [M, f]
    (``holdout`` of the rows, seeded, held out for validation). Returns the predictor (inputs
    → unit directions, float64) and the metrics: per-epoch training and validation loss
    (1 − mean cosine), the final validation mean cosine, and the mean cosine of the mean
    training direction on the held-out songs (what a network that learnt nothing would get)."""
    import tensorflow as tf

    if len(inputs) < 2:
        raise ModelError(f"hybrid: {len(inputs)} songs have at least --target_min_listeners "
                         f"listeners; the content network needs at least 2")
    rng = np.random.default_rng([p.seed, 2013])
    order = rng.permutation(len(inputs))
    num_held = min(int(round(p.holdout * len(inputs))), len(inputs) - 1)
    held, train = np.sort(order[:num_held]), np.sort(order[num_held:])
    targets = unit_rows(np.asarray(targets, np.float64)).astype(np.float32)
    from tensorflow.python.framework import config as tf_config

    tf.keras.utils.set_random_seed(p.seed)
    was_deterministic = tf_config.is_op_determinism_enabled()
    tf.config.experimental.enable_op_determinism()  # for the fit only: a global switch
    try:
        return _fit(tf, inputs, targets, held, train, p, log)
    finally:
        if not was_deterministic:
            tf_config.disable_op_determinism()


def _fit(tf, inputs, targets, held, train, p: HybridParameters, log):
    model = tf.keras.Sequential([
        tf.keras.Input(shape=(inputs.shape[1],)),
        tf.keras.layers.Dense(p.hidden_units, activation="relu"),
        tf.keras.layers.Dropout(0.2),
        tf.keras.layers.Dense(p.hidden_units, activation="relu"),
        tf.keras.layers.Dense(targets.shape[1]),
        tf.keras.layers.UnitNormalization(),
    ])
    model.compile(optimizer=tf.keras.optimizers.Adam(LEARNING_RATE),
                  loss=tf.keras.losses.CosineSimilarity())  # −cosine: we report 1 + it
    started = time.monotonic()
    history = model.fit(inputs[train], targets[train], batch_size=BATCH_SIZE, epochs=p.epochs,
                        shuffle=True, verbose=0,
                        validation_data=(inputs[held], targets[held]) if len(held) else None)
    train_loss = [round(1.0 + float(v), 6) for v in history.history["loss"]]
    val_loss = [round(1.0 + float(v), 6) for v in history.history.get("val_loss", [])]

    def predict(x: np.ndarray) -> np.ndarray:
        return unit_rows(model.predict(np.asarray(x, np.float32), batch_size=4096,
                                       verbose=0).astype(np.float64))

    metrics: dict[str, Any] = {"network_songs": int(len(train)),
                               "validation_songs": int(len(held)),
                               "training_loss": train_loss, "validation_loss": val_loss,
                               "input_columns": int(inputs.shape[1]),
                               "fit_seconds": round(time.monotonic() - started, 3)}
    if len(held):
        cosine = (predict(inputs[held]) * targets[held]).sum(axis=1)
        mean_direction = unit_rows(targets[train].mean(axis=0, keepdims=True))
        metrics["validation_cosine"] = round(float(cosine.mean()), 6)
        metrics["validation_cosine_mean_direction"] = round(
            float((targets[held] @ mean_direction[0]).mean()), 6)
        log(f"hybrid: content network: validation cosine {metrics['validation_cosine']:.4f} "
            f"on {len(held)} held-out songs (mean direction: "
            f"{metrics['validation_cosine_mean_direction']:.4f}), training loss "
            f"{train_loss[-1]:.4f}, validation loss {val_loss[-1]:.4f}")
    return predict, metrics


@dataclasses.dataclass(frozen=True)
class ValidationUsers:
    """ALS's validation users (``als.validation_split``, the same seed and fraction as the ALS
    fit, so none of their ``hidden`` listens is in it), in catalogue rows: per user the songs
    ALS was fitted on (``histories``) with their confidences, and the held-out songs."""
    histories: list
    confidences: list
    hidden: list
    regularization: float


def content_profiles(content: np.ndarray, histories: Sequence[np.ndarray]) -> np.ndarray:
    """float64 [B, d]: each history's mean content vector scaled to unit length (zeros for
    an empty history or all-zero vectors)."""
    content = np.asarray(content, np.float64)
    out = np.zeros((len(histories), content.shape[1]))
    for user, history in enumerate(histories):
        if len(history):
            out[user] = content[np.asarray(history, np.int64)].mean(axis=0)
    return unit_rows(out)


def validation_maps(item_factors: np.ndarray, content: np.ndarray, trained: np.ndarray,
                    validation: ValidationUsers, weights: Sequence[float],
                    scales: Sequence[float], k: int = VALIDATION_K
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The validation users' mAP@k against their held-out songs for every content weight w
    and scale s of the songs without ALS factors, the lists over the whole catalogue as
    served (each user folded in from the listens ALS was fitted on, those excluded; a song's
    score x·y + w·cos(profile, content), the predicted factors at scale 1 in
    ``item_factors``, ``content`` unit rows). Returns (mAP per user of ALS alone: warm songs,
    w = 0; per user for each weight of the warm songs alone [W, U]; per user for each weight
    and scale with every song [W, S, U]). A warm song's rank is its rank among the warm songs
    plus the number of the user's top-k cold songs that outscore it."""
    from recommend.models.als import ALSFoldIn

    weights, scales = np.asarray(weights, np.float64), np.asarray(scales, np.float64)
    warm_rows, cold_rows = np.flatnonzero(trained), np.flatnonzero(~trained)
    column_of_warm = np.full(len(trained), -1, np.int64)
    column_of_warm[warm_rows] = np.arange(len(warm_rows))
    users = [u for u, hidden in enumerate(validation.hidden) if len(hidden)]
    histories = [np.asarray(validation.histories[u], np.int64) for u in users]
    x = ALSFoldIn(item_factors, validation.regularization, warm_rows).user_factors(
        histories, [validation.confidences[u] for u in users])
    profiles = content_profiles(content, histories)
    items = np.asarray(item_factors, np.float64)
    content = np.asarray(content, np.float64)
    alone = np.zeros(len(users))
    warm_only = np.zeros((len(weights), len(users)))
    mixed = np.zeros((len(weights), len(scales), len(users)))
    for start in range(0, len(users), 64):
        chunk = slice(start, start + 64)
        als_warm, als_cold = x[chunk] @ items[warm_rows].T, x[chunk] @ items[cold_rows].T
        cos_warm, cos_cold = (profiles[chunk] @ content[warm_rows].T,
                              profiles[chunk] @ content[cold_rows].T)
        for i, u in enumerate(users[chunk]):
            history, hidden = column_of_warm[histories[start + i]], validation.hidden[u]
            ideal = min(k, len(hidden))
            length = min(k, len(warm_rows) - len(history))
            for j, w in enumerate(weights):
                scores = als_warm[i] + w * cos_warm[i]
                scores[history] = -np.inf
                top = np.lexsort((warm_rows, -scores))[:length]
                hit = np.isin(warm_rows[top], hidden)
                ordinal, at = np.cumsum(hit)[hit], np.flatnonzero(hit)
                warm_only[j, start + i] = (ordinal / (at + 1.0)).sum() / ideal
                if w == 0:
                    alone[start + i] = warm_only[j, start + i]
                if not len(cold_rows):
                    mixed[j, :, start + i] = warm_only[j, start + i]
                    continue
                cold = scales[:, None] * als_cold[i][None, :] + w * cos_cold[i][None, :]
                if cold.shape[1] > k:
                    cold = -np.partition(-cold, k - 1, axis=1)[:, :k]
                cold = -np.sort(-cold, axis=1)  # descending per scale
                above = np.stack([np.searchsorted(-cold[row], -scores[top][hit], side="left")
                                  for row in range(len(scales))])  # #{cold > warm hit}
                rank = at[None, :] + above  # 0-based rank in the merged list
                mixed[j, :, start + i] = np.where(rank < k, ordinal / (rank + 1.0),
                                                  0.0).sum(axis=1) / ideal
    return alone, warm_only, mixed


def choose_blend(item_factors: np.ndarray, content: np.ndarray, trained: np.ndarray,
                 validation: Optional[ValidationUsers], warm_map_loss: float
                 ) -> tuple[float, float, dict[str, Any]]:
    """(content weight, cold scale, metrics), both from ALS's validation users: the smallest
    weight of BLEND_GRID whose blend ranks their held-out (warm) songs among the warm songs
    within one paired standard error of the best weight's mAP@500, then the largest scale of
    SCALE_GRID up to which the songs without ALS factors keep their mAP@500 within
    ``warm_map_loss`` of ALS alone's. Without validation users (or hits): weight 0, scale 1
    (the median norm)."""
    if validation is None or not any(len(h) for h in validation.hidden) or trained.all():
        return 0.0, 1.0, {"cold_scale_chosen_by": "default (no validation users or no cold "
                                                  "song)"}
    alone, warm_only, mixed = validation_maps(item_factors, content, trained, validation,
                                              BLEND_GRID, SCALE_GRID)
    if not alone.mean() > 0:
        return 0.0, 1.0, {"cold_scale_chosen_by": "default (no validation hit)"}
    # The smallest weight within one paired standard error of the best (the 1-SE rule: the
    # weights near the best are indistinguishable on a few hundred users).
    gap = warm_only[int(np.argmax(warm_only.mean(axis=1)))][None, :] - warm_only
    error = (gap.std(axis=1, ddof=1) / np.sqrt(len(alone)) if len(alone) > 1
             else np.zeros(len(BLEND_GRID)))
    best = int(np.flatnonzero(gap.mean(axis=1) <= error)[0])
    ratio = mixed[best].mean(axis=1) / alone.mean()
    within = ratio >= 1.0 - warm_map_loss
    chosen = (len(within) if within.all() else int(np.argmin(within))) - 1
    how = "validation"
    if chosen < 0:  # even the smallest scale costs more than the budget: take it, and say so
        chosen, how = 0, (f"validation: no scale of the grid keeps the budget, the smallest "
                          f"({SCALE_GRID[0]:g}) taken")
    return BLEND_GRID[best], SCALE_GRID[chosen], {
        "cold_scale_chosen_by": how,
        "scale_validation_users": int(len(alone)),
        "validation_warm_map_als": round(float(alone.mean()), 6),
        "validation_warm_map_by_content_weight": {
            f"{w:g}": round(float(m), 6) for w, m in zip(BLEND_GRID, warm_only.mean(axis=1))},
        "validation_warm_map": round(float(mixed[best, chosen].mean()), 6),
        "validation_warm_map_ratio": round(float(ratio[chosen]), 6),
        "validation_warm_map_ratio_by_scale": {
            f"{scale:g}": round(float(r), 4) for scale, r in zip(SCALE_GRID, ratio)
            if round(scale * 10, 6).is_integer()}}


def hybrid_factors(inputs: np.ndarray, als_rows: np.ndarray, als_factors: np.ndarray,
                   listeners: np.ndarray, p: HybridParameters,
                   validation: Optional[ValidationUsers] = None,
                   log: Callable[[str], None] = logging.info
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """The whole catalogue's factors: ``inputs`` [N, d] content of every catalogue song;
    ``als_rows`` the catalogue rows ALS was fitted on and ``als_factors`` their factors;
    ``listeners`` [N] training listeners per song; ``validation`` ALS's validation users, on
    whom the content weight and the cold songs' scale are chosen (``choose_blend``). Returns
    (item factors float32 [N, f], content float32 [N, d] (the unit content vectors times the
    weight), trained bool [N], metrics)."""
    als_rows = np.asarray(als_rows, np.int64)
    als_factors = np.asarray(als_factors, np.float64)
    targets = als_rows[listeners[als_rows] >= p.target_min_listeners]
    position = {row: i for i, row in enumerate(als_rows.tolist())}
    target_factors = als_factors[[position[r] for r in targets.tolist()]]
    predict, metrics = fit_content_network(inputs[targets], target_factors, p, log)
    median_norm = float(np.median(np.linalg.norm(target_factors, axis=1)))
    trained = np.zeros(len(inputs), bool)
    trained[als_rows] = True
    factors = np.zeros((len(inputs), als_factors.shape[1]), np.float64)
    factors[als_rows] = als_factors
    cold = np.flatnonzero(~trained)
    if len(cold):
        factors[cold] = predict(inputs[cold]) * median_norm
    content = unit_rows(np.asarray(inputs, np.float64))
    weight, scale, chosen = choose_blend(factors.astype(np.float32), content, trained,
                                         validation, p.warm_map_loss)
    factors[cold] *= scale
    metrics.update(median_target_norm=round(median_norm, 6), content_weight=weight,
                   cold_scale=scale, predicted_norm=round(scale * median_norm, 6), **chosen,
                   songs_with_als_factors=int(trained.sum()),
                   songs_with_predicted_factors=int(len(cold)),
                   target_min_listeners=p.target_min_listeners)
    log(f"hybrid: {int(trained.sum())} songs keep their ALS factors, {len(cold)} get predicted "
        f"ones (norm {scale * median_norm:.4f}: scale {scale:g} × the median norm of the "
        f"network's targets), content cosine weight {weight:g}; chosen by "
        f"{chosen['cold_scale_chosen_by']}"
        + (f" (validation warm mAP {chosen['validation_warm_map_ratio']:.3f} × ALS's)"
           if "validation_warm_map_ratio" in chosen else ""))
    # Weight 0: no content columns at all (a block of zeros would cost storage and kernel work).
    blend = content * weight if weight > 0 else np.zeros((len(content), 0))
    return factors.astype(np.float32), blend.astype(np.float32), trained, metrics


class BlendScorer:
    """``CatalogueScorer`` over [item factors | content]: a user's query is [x_u | unit mean
    content of the history], so one dot product is x_u·y_i + w·cos(profile, song) (the content
    rows hold w × unit vectors)."""

    def __init__(self, item_factors: np.ndarray, content: np.ndarray, batch_size: int):
        from recommend import kernel

        self.content = content
        self.scorer = kernel.CatalogueScorer(np.ascontiguousarray(
            np.hstack([item_factors, content]), dtype=np.float32), batch_size=batch_size)

    def recommend_packed(self, packed, k: int, queries: np.ndarray):
        histories = [packed.values[packed.row_splits[u]:packed.row_splits[u + 1]]
                     for u in range(len(packed.row_splits) - 1)]
        return self.scorer.recommend_packed(
            packed, k, queries=np.hstack([queries, content_profiles(self.content, histories)]))


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------

class HybridModel(ALSModel):
    """ALS factors where known, predicted ones elsewhere, plus the weighted content cosine;
    scored as ALS with the content columns appended (module docstring)."""
    kind = "hybrid"
    stored_arrays = {**ALSModel.stored_arrays, "trained": ("b", 1), "content": ("f", 2)}

    def __init__(self, song_ids: np.ndarray, item_factors: np.ndarray, listeners: np.ndarray,
                 trained: np.ndarray, content: np.ndarray,
                 hybrid: Optional[dict[str, Any]] = None, **als_arguments):
        super().__init__(song_ids, item_factors, listeners, **als_arguments)
        trained = np.asarray(trained)
        if trained.dtype != np.bool_ or trained.shape != (len(self.song_ids),):
            raise ModelError(f"hybrid: trained must be one bool per song ({len(self.song_ids)}),"
                             f" got {trained.dtype} {trained.shape}")
        if not trained.any():
            raise ModelError("hybrid: no song has ALS factors (trained is all False)")
        content = np.asarray(content)
        if content.dtype != np.float32 or content.ndim != 2 or content.shape[0] != len(
                self.song_ids):
            raise ModelError(f"hybrid: content must be float32 [songs ({len(self.song_ids)}), "
                             f"columns], got {content.dtype} {content.shape}")
        if not np.isfinite(content).all():
            raise ModelError("hybrid: the content vectors hold NaN/Inf")
        self.trained = trained
        self.content = np.ascontiguousarray(content)
        self.hybrid = dict(hybrid or {})

    def gram_rows(self) -> np.ndarray:
        return np.flatnonzero(self.trained)

    def scorer(self):
        if self._scorer is None:
            self._scorer = BlendScorer(self.item_factors, self.content, self.batch_size)
        return self._scorer

    def parameters(self) -> dict[str, Any]:
        return {**super().parameters(), "hybrid": self.hybrid}

    def arrays(self) -> dict[str, np.ndarray]:
        return {**super().arrays(), "trained": self.trained, "content": self.content}

    @classmethod
    def from_arrays(cls, song_ids, arrays, parameters) -> "HybridModel":
        return cls(song_ids, arrays["item_factors"], arrays["listeners"], arrays["trained"],
                   arrays["content"], hybrid=parameters.get("hybrid"),
                   **cls.stored_parameters(arrays, parameters))
