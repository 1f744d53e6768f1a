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
5. Every list holds at least a share of songs without ALS factors (``BlendScorer``: the best
   of them by score, ordered by score with the rest): ``cold_share`` of the catalogue, as a
   share of the songs the user has not heard (``cold_floor``). By default it is the
   catalogue's share of those songs, the exposure a content-only ranking gives them: their
   scores are guesses (a predicted direction at a guessed norm), so rather than let that guess
   decide whether a new song is ever seen, the hybrid gives new songs their share of the
   lists, and they win places above it on their score. A floor costs the warm songs little
   (it displaces the warm list's last songs), a scale much more (a cold song that outscores
   warm ones pushes every warm hit below it down). On two synthetic development sets a 20 %
   floor at scale 0.3 kept 1.01 × ALS's warm mAP at 1.00-1.01 × content's cold recall, where
   the scale alone (0.82-0.88) kept 0.89-0.92 × at 1.05-1.07 × (docs/evaluation.md).
6. The weight and the scale are chosen on ALS's validation users (``choose_blend``): their
   held-out listens are not in the ALS fit (``als.validation_split``, the same fraction and
   seed), so ranking the whole catalogue for them from their visible listens shows what each
   setting does. The weight is the smallest of BLEND_GRID whose ranking of the warm songs is
   within one paired standard error of the best (the 1-SE rule); the scale is the largest of
   SCALE_GRID that keeps the users' mAP@500 on their held-out songs, with the floor, within
   ``warm_map_loss`` (default DEFAULT_WARM_MAP_LOSS) of the blend's without cold songs.
   Training data only; deterministic for a seed.

Measured and rejected (docs/evaluation.md): shrinking uncertain predictions (regressing the
unit target with MSE, or scaling by the MSE network's norm), an ensemble's agreement, a
content-nearest-neighbour average of warm factors, other network sizes and target thresholds:
none beat the cosine network at the same share of cold songs recommended.

Scoring is ``ALSModel``'s (this class is one) with the content columns appended
(``BlendScorer``): a user's factors by the exact ALS fold-in, then the exact top-k kernel over
the songs with ALS factors and over those without (one pass over the catalogue in all), merged
with the cold floor. The fold-in's Gram YᵀY is taken over the songs ALS was fitted on only
(``trained``), so a history of those songs gets exactly its ALS user vector; a predicted song
enters a user's system only when the user listened to it.

Model directory: ALS's arrays (``item_factors`` for the whole catalogue, ``listeners``) plus
``trained`` (bool per song: ALS factors, or predicted) and ``content`` (float32 [songs,
columns]: the weighted unit content vectors; no columns when the weight is 0); model.json's
``hybrid.cold_share`` is the floor. The network itself is not stored: the catalogue is every
song with features at training time, and a song added later is scored after the next training
run.
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
DEFAULT_WARM_MAP_LOSS = 0.05
# The cold-song scales tried on the validation users (× the median norm of the targets).
SCALE_GRID = tuple(round(0.02 * i, 2) for i in range(1, 101))  # 0.02 … 2.0
# The weights of the content cosine tried on the validation users.
BLEND_GRID = (0.0, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3)
# Songs without ALS factors first asked of the kernel beyond the floor (plus k / 8): users who
# take them all are ranked again with k (BlendScorer).
COLD_MARGIN = 8
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
    cold_share: Optional[float] = None  # None: the catalogue's share of cold songs
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
    if p.cold_share is not None and not 0.0 <= p.cold_share <= 1.0:
        problems.append(f"--cold_share must be in [0, 1], got {p.cold_share}")
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
    content = np.asarray(content)  # rows are converted to float64 as they are read, not all
    out = np.zeros((len(histories), content.shape[1]))
    for user, history in enumerate(histories):
        if len(history):
            out[user] = content[np.asarray(history, np.int64)].astype(np.float64).mean(axis=0)
    return unit_rows(out)


def cold_floor(share: float, k: int, num_songs: int, left) -> np.ndarray:
    """Songs without ALS factors a user's list of ``k`` holds at least: ``share`` of the
    catalogue's ``num_songs`` as a share of the ``left`` songs the user has not heard (so a
    share equal to the catalogue's share of such songs gives a user who heard only songs with
    ALS factors exactly the share of the rest a content-blind ranking gives them), of k,
    rounded half up; int64, one per entry of ``left``."""
    left = np.maximum(np.asarray(left, np.float64), 1.0)
    return np.minimum(int(k), np.floor(share * k * num_songs / left + 0.5)).astype(np.int64)


def validation_maps(item_factors: np.ndarray, content: np.ndarray, trained: np.ndarray,
                    validation: ValidationUsers, weights: Sequence[float],
                    scales: Sequence[float], floors: Sequence[float] = (0.0,),
                    k: int = VALIDATION_K) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The validation users' mAP@k against their held-out songs for every content weight w,
    cold share f and scale s of the songs without ALS factors, the lists over the whole
    catalogue as served (``BlendScorer``: each user folded in from the listens ALS was fitted
    on, those excluded; a song's score x·y + w·cos(profile, content), the predicted factors at
    scale 1 in ``item_factors``, ``content`` unit rows; at least ``cold_floor(f, k, songs,
    songs left)`` songs without ALS factors in every list). Returns (mAP per user of ALS
    alone: warm songs, w = 0; per user for each weight of the warm songs alone [W, U]; per
    user for each weight, share and scale with every song [W, F, S, U]). In the merged list
    the c = max(cold songs that win on score, floor) best cold songs and the k − c best warm
    songs are ordered by score: a warm song of warm rank r is in it when r < k − c, at rank r
    plus the number of those c cold songs that outscore it. (An exact score tie between a song
    with and one without ALS factors counts for the one without here, where the served list
    puts the lower row first: for predicted factors times a scale such ties do not occur.)"""
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
    mixed = np.zeros((len(weights), len(floors), len(scales), len(users)))
    for start in range(0, len(users), 64):
        chunk = slice(start, start + 64)
        als_warm, als_cold = x[chunk] @ items[warm_rows].T, x[chunk] @ items[cold_rows].T
        cos_warm, cos_cold = (profiles[chunk] @ content[warm_rows].T,
                              profiles[chunk] @ content[cold_rows].T)
        for i, u in enumerate(users[chunk]):
            history, hidden = column_of_warm[histories[start + i]], validation.hidden[u]
            floor_counts = np.concatenate([cold_floor(f, k, len(trained),
                                                      [len(trained) - len(history)])
                                           for f in floors])
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
                    mixed[j, :, :, start + i] = warm_only[j, start + i]
                    continue
                cold = scales[:, None] * als_cold[i][None, :] + w * cos_cold[i][None, :]
                if cold.shape[1] > k:
                    cold = -np.partition(-cold, k - 1, axis=1)[:, :k]
                cold = -np.sort(-cold, axis=1)  # descending per scale [S, kc]
                ranked = scores[top]  # descending
                # Cold songs that win on score: the j-th best is in the top k when j + the warm
                # songs above it < k (increasing in j).
                warm_above = np.stack([np.searchsorted(-ranked, -cold[row], side="left")
                                       for row in range(len(scales))])
                winners = ((np.arange(cold.shape[1])[None, :] + warm_above) < k).sum(axis=1)
                count = np.maximum(winners[None, :], np.minimum(
                    floor_counts, cold.shape[1])[:, None])  # [F, S]
                above = np.stack([np.searchsorted(-cold[row], -ranked[hit], side="left")
                                  for row in range(len(scales))])  # #{cold > warm hit} [S, H]
                rank = at[None, None, :] + np.minimum(above[None, :, :], count[:, :, None])
                kept = at[None, None, :] < (k - count)[:, :, None]
                mixed[j, :, :, start + i] = np.where(kept, ordinal / (rank + 1.0),
                                                     0.0).sum(axis=2) / ideal
    return alone, warm_only, mixed


def choose_blend(item_factors: np.ndarray, content: np.ndarray, trained: np.ndarray,
                 validation: Optional[ValidationUsers], warm_map_loss: float,
                 cold_share: Optional[float] = None
                 ) -> tuple[float, float, float, dict[str, Any]]:
    """(content weight, cold share, cold scale, metrics). The share is ``cold_share`` (default:
    the catalogue's share of songs without ALS factors, the exposure a content-only model gives
    them): a product choice, not a fitted one. The weight and the scale come from ALS's
    validation users:

    1. the weight: the smallest of BLEND_GRID whose blend ranks their held-out (warm) songs
       among the warm songs within one paired standard error of the best weight's mAP@500;
    2. the scale: the largest of SCALE_GRID up to which the songs without ALS factors (the
       floor, and those winning places on their score) keep the users' mAP@500 within
       ``warm_map_loss`` of the blend's over the warm songs alone (so the blend's own gain is
       not spent on cold songs).

    Without validation users (or hits): weight 0, scale 1 (the median norm)."""
    catalogue_share = float((~trained).mean()) if len(trained) else 0.0
    share = catalogue_share if cold_share is None else float(cold_share)
    if trained.all():
        share = 0.0
    if validation is None or not any(len(h) for h in validation.hidden) or trained.all():
        return 0.0, share, 1.0, {
            "cold_scale_chosen_by": "default (no validation users or no cold song)"}
    alone, warm_only, mixed = validation_maps(item_factors, content, trained, validation,
                                              BLEND_GRID, SCALE_GRID, (share,))
    if not alone.mean() > 0:
        return 0.0, share, 1.0, {"cold_scale_chosen_by": "default (no validation hit)"}
    # The smallest weight within one paired standard error of the best (the 1-SE rule: the
    # weights near the best are indistinguishable on a few hundred users).
    gap = warm_only[int(np.argmax(warm_only.mean(axis=1)))][None, :] - warm_only
    error = (gap.std(axis=1, ddof=1) / np.sqrt(len(alone)) if len(alone) > 1
             else np.zeros(len(BLEND_GRID)))
    best = int(np.flatnonzero(gap.mean(axis=1) <= error)[0])
    ratio = mixed[best, 0].mean(axis=1) / warm_only[best].mean()  # per scale
    within = ratio >= 1.0 - warm_map_loss
    chosen = (len(within) if within.all() else int(np.argmin(within))) - 1
    how = "validation"
    if chosen < 0:  # even the smallest scale costs more than the budget: take it, and say so
        chosen, how = 0, (f"validation: no scale of the grid keeps the budget, the smallest "
                          f"({SCALE_GRID[0]:g}) taken")
    return BLEND_GRID[best], share, SCALE_GRID[chosen], {
        "cold_scale_chosen_by": how,
        "catalogue_cold_share": round(catalogue_share, 6),
        "scale_validation_users": int(len(alone)),
        "validation_warm_map_als": round(float(alone.mean()), 6),
        "validation_warm_map_by_content_weight": {
            f"{w:g}": round(float(m), 6) for w, m in zip(BLEND_GRID, warm_only.mean(axis=1))},
        "validation_warm_map": round(float(mixed[best, 0, chosen].mean()), 6),
        "validation_warm_map_ratio": round(float(ratio[chosen]), 6),
        "validation_warm_map_ratio_to_als": round(
            float(mixed[best, 0, chosen].mean() / alone.mean()), 6),
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
    weight, share, scale, chosen = choose_blend(factors.astype(np.float32), content, trained,
                                                validation, p.warm_map_loss, p.cold_share)
    factors[cold] *= scale
    metrics.update(median_target_norm=round(median_norm, 6), content_weight=weight,
                   cold_share=share, cold_scale=scale,
                   predicted_norm=round(scale * median_norm, 6), **chosen,
                   songs_with_als_factors=int(trained.sum()),
                   songs_with_predicted_factors=int(len(cold)),
                   target_min_listeners=p.target_min_listeners)
    log(f"hybrid: {int(trained.sum())} songs keep their ALS factors, {len(cold)} get predicted "
        f"ones (norm {scale * median_norm:.4f}: scale {scale:g} × the median norm of the "
        f"network's targets), at least {share:.0%} of every list, content cosine weight "
        f"{weight:g}; chosen by "
        f"{chosen['cold_scale_chosen_by']}"
        + (f" (validation warm mAP {chosen['validation_warm_map_ratio']:.3f} × ALS's)"
           if "validation_warm_map_ratio" in chosen else ""))
    # Weight 0: no content columns at all (a block of zeros would cost storage and kernel work).
    blend = content * weight if weight > 0 else np.zeros((len(content), 0))
    return factors.astype(np.float32), blend.astype(np.float32), trained, metrics


class BlendScorer:
    """``CatalogueScorer`` over [item factors | content]: a user's query is [x_u | unit mean
    content of the history], so one dot product is x_u·y_i + w·cos(profile, song) (the content
    rows hold w × unit vectors).

    With a ``cold_share`` > 0 every list holds at least ``cold_floor(cold_share, k)`` songs
    without ALS factors (``trained`` False), or all the user has not heard if fewer: the songs
    with and without ALS factors are two catalogues, each ranked exactly by the kernel, and a
    user's list is the c = max(cold songs in the top k by score, floor) best songs without ALS
    factors and the k − c best with, ordered by score (ties: lower row first). The songs
    without factors are asked for the floor plus a margin (COLD_MARGIN) first, and for k only
    for the users all of whose candidates made the list (docs/performance.md: the floor costs
    throughput). A user with no history is not scored here (``ALSModel`` gives the popularity
    list, which holds no song without listeners)."""

    def __init__(self, item_factors: np.ndarray, content: np.ndarray, batch_size: int,
                 trained: Optional[np.ndarray] = None, cold_share: float = 0.0):
        from recommend import kernel

        self.content = content
        self.cold_share = float(cold_share)
        matrix = np.ascontiguousarray(np.hstack([item_factors, content]), dtype=np.float32)
        trained = np.ones(len(matrix), bool) if trained is None else np.asarray(trained, bool)
        if self.cold_share > 0 and trained.any() and not trained.all():
            self.parts = [np.flatnonzero(trained), np.flatnonzero(~trained)]
        else:
            self.parts = [np.arange(len(matrix))]
        self.scorers = [kernel.CatalogueScorer(matrix[rows], batch_size=batch_size)
                        for rows in self.parts]
        self.part_of = np.zeros(len(matrix), np.int64)
        self.local = np.zeros(len(matrix), np.int64)
        for part, rows in enumerate(self.parts):
            self.part_of[rows], self.local[rows] = part, np.arange(len(rows))

    def _ranked(self, part: int, own, left: np.ndarray, users: np.ndarray, wanted: int,
                queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The best ``wanted`` songs of one part for ``users`` (positions in ``own``, the
        histories in the part's rows; ``left`` songs of the part each has not heard):
        (catalogue rows [U, wanted], -1 past a user's last; float64 scores)."""
        from recommend import kernel

        rows, scorer = self.parts[part], self.scorers[part]
        top = np.full((len(users), wanted), -1, np.int64)
        scores = np.full((len(users), wanted), -np.inf)
        enough = np.flatnonzero(left[users] >= wanted)
        if len(enough):
            found, found_scores = scorer.recommend_packed(
                kernel._subset(own, users[enough]), wanted, queries=queries[users[enough]])
            top[enough], scores[enough] = rows[found], found_scores
        for at in np.flatnonzero(left[users] < wanted):  # heard nearly all of this part
            user, count = int(users[at]), int(left[users[at]])
            found, found_scores = scorer._exact_user(own, user, queries[user], count)
            top[at, :count], scores[at, :count] = rows[found], found_scores
        return top, scores

    def recommend_packed(self, packed, k: int, queries: np.ndarray):
        if self.content.shape[1]:  # the blend: append each user's unit mean content
            histories = [packed.values[packed.row_splits[u]:packed.row_splits[u + 1]]
                         for u in range(packed.num_users)]
            queries = np.hstack([queries, content_profiles(self.content, histories)])
        if len(self.parts) == 1:
            return self.scorers[0].recommend_packed(packed, k, queries=queries)
        from recommend import kernel

        users = packed.num_users
        listener = np.repeat(np.arange(users), packed.lengths())
        owns, lefts = [], []
        for part, rows in enumerate(self.parts):
            mine = self.part_of[packed.values] == part
            splits = np.zeros(users + 1, np.int64)
            np.cumsum(np.bincount(listener[mine], minlength=users), out=splits[1:])
            owns.append(kernel.PackedHistories(values=self.local[packed.values[mine]],
                                               row_splits=splits))
            lefts.append(len(rows) - kernel._distinct_per_user(owns[-1], len(rows)))
        kernel._check_available(lefts[0] + lefts[1], len(self.part_of), k)
        everyone = np.arange(users)
        floor = cold_floor(self.cold_share, k, len(self.part_of), lefts[0] + lefts[1])
        warm = self._ranked(0, owns[0], lefts[0], everyone, min(k, len(self.parts[0])), queries)
        # Enough candidates for the floor and a margin, and for k when the songs with ALS
        # factors are fewer than k.
        first = min(k, len(self.parts[1]), max(int(floor.max()) + COLD_MARGIN + k // 8,
                                               k - min(k, len(self.parts[0]))))
        cold = self._ranked(1, owns[1], lefts[1], everyone, first, queries)
        top, scores, taken = merge_with_cold_floor(warm, cold, k, floor)
        # Users who took every candidate while more are left may take more: rank them fully.
        again = np.flatnonzero((taken >= (cold[0] >= 0).sum(axis=1))
                               & (lefts[1] > (cold[0] >= 0).sum(axis=1)))
        if len(again):
            more = self._ranked(1, owns[1], lefts[1], again, min(k, len(self.parts[1])),
                                queries)
            top[again], scores[again], _ = merge_with_cold_floor(
                (warm[0][again], warm[1][again]), more, k, floor[again])
        return top, scores


def merge_with_cold_floor(warm: tuple[np.ndarray, np.ndarray], cold: tuple[np.ndarray, np.ndarray],
                          k: int, floor: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each user's k best of two ranked lists (catalogue rows, -1 padding; scores) holding at least
    ``floor`` (per user) of the ``cold`` list's songs (or all it has, and more when the warm
    list runs out): (rows int64 [B, k], scores float64 [B, k], cold songs taken [B]), best
    first, ties lower row first. Exact when the cold list holds every candidate the user could
    take: all the part's songs the user has not heard, or more than were taken."""
    rows = np.hstack([warm[0], cold[0]])
    scores = np.where(rows >= 0, np.hstack([warm[1], cold[1]]), -np.inf)
    is_cold = np.hstack([np.zeros(warm[0].shape, bool), np.ones(cold[0].shape, bool)])
    order = np.lexsort((np.where(rows >= 0, rows, np.iinfo(np.int64).max), -scores), axis=1)
    rows, scores = np.take_along_axis(rows, order, 1), np.take_along_axis(scores, order, 1)
    is_cold = np.take_along_axis(is_cold, order, 1) & (rows >= 0)
    is_warm = ~is_cold & (rows >= 0)
    have_cold, have_warm = is_cold.sum(axis=1), is_warm.sum(axis=1)
    winners = is_cold[:, :k].sum(axis=1)
    count = np.minimum(np.maximum(np.maximum(winners, np.minimum(floor, have_cold)),
                                  k - have_warm), have_cold)
    keep = ((is_cold & (np.cumsum(is_cold, axis=1) <= count[:, None]))
            | (is_warm & (np.cumsum(is_warm, axis=1) <= (k - count)[:, None])))
    position = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    return (np.take_along_axis(rows, position, 1), np.take_along_axis(scores, position, 1),
            count)


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
        cold_share = (hybrid or {}).get("cold_share", 0.0)
        if (isinstance(cold_share, bool) or not isinstance(cold_share, (int, float))
                or not 0.0 <= cold_share <= 1.0):
            raise ModelError(f"hybrid: cold_share must be a number in [0, 1], got "
                             f"{cold_share!r}")
        self.cold_share = float(cold_share)
        self.trained = trained
        self.content = np.ascontiguousarray(content)
        self.hybrid = dict(hybrid or {})

    def gram_rows(self) -> np.ndarray:
        return np.flatnonzero(self.trained)

    def scorer(self):
        if self._scorer is None:
            self._scorer = BlendScorer(self.item_factors, self.content, self.batch_size,
                                       self.trained, self.cold_share)
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
