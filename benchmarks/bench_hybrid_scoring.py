"""Hybrid scoring with a cold floor: ``HybridModel.recommend`` throughput (fold-in + scoring,
k = 500) without the floor (``cold_share`` 0: one kernel pass over the catalogue) next to a
20 % floor (``cold_share`` 0.2: the songs with and without ALS factors ranked by two part
kernels, then ``merge_with_cold_floor``), on the same catalogue and the same users.

    python -m benchmarks.bench_hybrid_scoring            # 100,000 songs, 2,048 users
    python -m benchmarks.bench_hybrid_scoring --quick    # 20,000 songs, 512 users (smoke run)

Catalogue (fixed seeds): ``--songs`` songs with a Zipf-Mandelbrot popularity 1 / (rank +
100) (ranks shuffled over the rows), 64 float32 factors and 113 content columns (random unit
rows × 0.05, the weighted unit vectors a trained hybrid stores). The least popular songs have
no ALS factors (``trained`` False, no listeners): 20 % of the catalogue in one configuration,
60 % in the other (the MSD has 61.5 % of its songs without listens). The songs with ALS factors
get real ones: ``fit_als`` (``regularization=10.0, alpha=10.0``, log confidence, 15
iterations, no validation split) on a synthetic training set of ``--listens`` listens
(``bench_als``'s shape: lengths lognormal, median 30; 1 + geometric play counts) restricted
to those songs, one fit per cold fraction, not timed. The others get a random unit direction
× 0.3 × the median norm of the fitted factors of songs with at least 5 listeners (what
``hybrid_factors`` gives them at a small scale). Users: ``--users`` new histories among the
40 % most popular songs that have ALS factors in both catalogues (so both score the same
users), lengths lognormal (median 30, sigma 0.947, clipped to [1, 1,000]), songs drawn by
popularity without repeats, play counts 1. Models: ``HybridModel`` with the same ALS
parameters, the default scoring batch of 256 users.

Timing: per cold fraction the two models (no floor, floor) are built from the same arrays;
each gets one untimed warm-up call over all the users (TensorFlow tracing); then, in one
process, ``--repeats`` rounds (default 3), each timing every model's ``recommend`` over all
the users, the order of the two alternating between rounds; the best of the rounds is
reported (users/s), with the ratio floor / no floor per cold fraction (and the ratio within
each round, to show the noise of the shared machine). Stage times (fold-in, the kernel calls,
each part's too, the merge) are measured inside the same calls by thin wrappers, as shares
of the best call. Checks (outside the timing, assertions): the floor model really splits the
catalogue; every floor list holds at least its floor of songs without ALS factors
(``cold_floor``: 0.2 of the catalogue as a share of the songs the user has not heard, of k);
its songs with ALS factors are the no-floor list's first ones and its first cold songs the
no-floor list's cold songs (same scores). Results: ``benchmarks/results/hybrid_scoring.json``.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import time

import numpy as np
import scipy.sparse as sp

from benchmarks.machine import loadavg, machine_info
from recommend.models import hybrid as hybrid_lib
from recommend.models.hybrid import HybridModel, cold_floor, unit_rows

RESULTS = pathlib.Path(__file__).resolve().parent / "results" / "hybrid_scoring.json"
FACTORS = 64
CONTENT_COLUMNS = 113
CONTENT_WEIGHT = 0.05
COLD_SCALE = 0.3
COLD_FRACTIONS = (0.2, 0.6)
COLD_SHARE = 0.2
HISTORY_POOL = 0.4  # histories draw from the most popular 40 %: warm in every catalogue
MAX_HISTORY = 1000
REGULARIZATION, ALPHA, CONFIDENCE = 10.0, 10.0, "log"


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------

def popularity(songs: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(weights per catalogue row summing to 1, rank per row): Zipf-Mandelbrot 1 / (rank +
    100), ranks shuffled over the rows (a catalogue is in song-id order, not by popularity)."""
    rank = np.random.default_rng([seed, 1]).permutation(songs)
    weights = 1.0 / (rank + 100.0)
    return weights / weights.sum(), rank


def training_play_counts(listens: int, songs: int, seed: int = 0) -> sp.csr_matrix:
    """users × songs play counts of ALS's training set (``bench_als.synthetic_play_counts``'
    shape: lengths lognormal, median 30, sigma 0.947, clipped to [1, 5,000]; 1 + geometric
    repeats), songs by ``popularity``."""
    rng = np.random.default_rng([seed, 2])
    weights, _ = popularity(songs, seed)
    users = max(1, int(listens / 47 * 1.1))
    lengths = np.clip(np.round(rng.lognormal(np.log(30), 0.947, users)), 1, 5000).astype(int)
    lengths = lengths[np.cumsum(lengths) <= listens]
    picks = rng.choice(songs, size=int(lengths.sum()), p=weights)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    counts = rng.geometric(0.4, size=len(picks))
    matrix = sp.csr_matrix((counts.astype(np.int64), (rows, picks)), shape=(len(lengths), songs))
    matrix.sum_duplicates()
    return matrix


def catalogue(matrix: sp.csr_matrix, cold_fraction: float, seed: int = 0) -> dict:
    """The arrays a trained hybrid stores, for a catalogue whose least popular
    ``cold_fraction`` of songs (and any song left without a listen) have no ALS factors: ALS
    (``fit_als``, no validation split) fitted on the listens of the other songs; the songs
    without get a random unit direction × COLD_SCALE × the median norm of the ALS factors of
    the songs with at least 5 listeners (``hybrid_factors`` with a predicted direction); the
    content is random unit rows × CONTENT_WEIGHT."""
    from recommend.models.als import ALSParameters, fit_als

    songs = matrix.shape[1]
    _, rank = popularity(songs, seed)
    rng = np.random.default_rng([seed, 3])
    directions = unit_rows(rng.normal(size=(songs, FACTORS)))
    content = CONTENT_WEIGHT * unit_rows(rng.normal(size=(songs, CONTENT_COLUMNS)))
    listeners = np.bincount(matrix.indices, minlength=songs)
    trained = (rank < songs - int(round(cold_fraction * songs))) & (listeners > 0)
    warm = np.flatnonzero(trained)
    started = time.perf_counter()
    als_factors, _ = fit_als(matrix[:, warm], ALSParameters(
        factors=FACTORS, regularization=REGULARIZATION, alpha=ALPHA, confidence=CONFIDENCE,
        validation_fraction=0.0), log=lambda line: None)
    fit_seconds = time.perf_counter() - started
    factors = directions.copy()
    factors[warm] = als_factors
    targets = warm[listeners[warm] >= hybrid_lib.DEFAULT_TARGET_MIN_LISTENERS]
    median_norm = float(np.median(np.linalg.norm(factors[targets], axis=1)))
    factors[~trained] = directions[~trained] * COLD_SCALE * median_norm
    return {"song_ids": np.array([f"SO{i:016d}" for i in range(songs)], dtype=object),
            "item_factors": factors.astype(np.float32),
            "listeners": np.where(trained, listeners, 0).astype(np.int64),
            "trained": trained, "content": content.astype(np.float32),
            "fit_seconds": round(fit_seconds, 1), "median_target_norm": round(median_norm, 4)}


def histories(songs: int, pool: np.ndarray, users: int, seed: int = 0) -> list[np.ndarray]:
    """New users' histories among the catalogue rows ``pool`` (lognormal lengths, median 30, sigma
    0.947, clipped to [1, MAX_HISTORY]; songs by ``popularity``, no repeats)."""
    rng = np.random.default_rng([seed, 4])
    weights = popularity(songs, seed)[0][pool]
    weights /= weights.sum()
    lengths = np.clip(np.round(rng.lognormal(np.log(30), 0.947, users)), 1,
                      min(MAX_HISTORY, len(pool))).astype(int)
    return [np.sort(pool[rng.choice(len(pool), size=n, replace=False, p=weights)])
            for n in lengths]


def build_model(arrays: dict, cold_share: float) -> HybridModel:
    return HybridModel(arrays["song_ids"], arrays["item_factors"], arrays["listeners"],
                       arrays["trained"], arrays["content"], hybrid={"cold_share": cold_share},
                       regularization=REGULARIZATION, alpha=ALPHA,
                       confidence_variant=CONFIDENCE)


# ----------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------

class StageClock:
    """Seconds spent in the fold-in, the kernel calls and the merge of one model's calls:
    thin wrappers on the model's ``user_factors``, its scorers' ``recommend_packed`` and
    ``hybrid.merge_with_cold_floor`` (looked up as a module global by ``BlendScorer``)."""

    def __init__(self, model: HybridModel):
        scorer = model.scorer()
        self.seconds = {"fold_in": 0.0, "kernel": 0.0, "merge": 0.0,
                        **{f"kernel_part{i}": 0.0 for i in range(len(scorer.scorers))}}
        self.kernel_stats: list[dict] = []
        model.user_factors = self._timed("fold_in", model.user_factors)
        for i, part in enumerate(scorer.scorers):
            part.recommend_packed = self._timed(f"kernel_part{i}", part.recommend_packed, part)
        self.scorer = scorer

    def _timed(self, stage, function, part=None):
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[stage] += time.perf_counter() - started
                if part is not None:
                    self.seconds["kernel"] += time.perf_counter() - started
                    self.kernel_stats.append(dict(part.last_stats))
        return wrapper

    def reset(self) -> None:
        self.seconds = dict.fromkeys(self.seconds, 0.0)
        self.kernel_stats = []


_ACTIVE: list[StageClock] = []
_MERGE = hybrid_lib.merge_with_cold_floor


def _timed_merge(*args, **kwargs):
    started = time.perf_counter()
    try:
        return _MERGE(*args, **kwargs)
    finally:
        for clock in _ACTIVE:
            clock.seconds["merge"] += time.perf_counter() - started


def timed_call(model, clock: StageClock, users, counts, k: int):
    clock.reset()
    _ACTIVE[:] = [clock]
    started = time.perf_counter()
    result = model.recommend(users, counts, k)
    seconds = time.perf_counter() - started
    _ACTIVE[:] = []
    return result, seconds, dict(clock.seconds), list(clock.kernel_stats)


# ----------------------------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------------------------

def check_lists(plain, floored, trained: np.ndarray, users, k: int, floor: np.ndarray) -> dict:
    """Asserts that the floor run took the split path correctly; returns what was seen."""
    rows, plain_rows = floored.rows.astype(np.int64), plain.rows.astype(np.int64)
    cold = ~trained[rows]
    assert (cold.sum(axis=1) >= floor).all(), (
        f"floor run: {int((cold.sum(axis=1) < floor).sum())} users hold fewer than their "
        f"floor of songs without ALS factors (min {int(cold.sum(axis=1).min())})")
    plain_cold = ~trained[plain_rows]
    for user, history in enumerate(users):
        assert not np.isin(rows[user], history).any(), f"user {user}: a heard song recommended"
        assert len(np.unique(rows[user])) == k, f"user {user}: repeated songs"
        warm_floor = rows[user][~cold[user]]
        warm_plain = plain_rows[user][~plain_cold[user]]
        shared = min(len(warm_floor), len(warm_plain))
        assert (warm_floor[:shared] == warm_plain[:shared]).all(), (
            f"user {user}: the floor list's songs with ALS factors are not the no-floor "
            f"list's first ones")
        cold_floor_rows = rows[user][cold[user]]
        cold_plain = plain_rows[user][plain_cold[user]]
        assert (cold_floor_rows[:len(cold_plain)] == cold_plain).all(), (
            f"user {user}: the no-floor list's cold songs are not the floor list's first ones")
        assert np.all(np.diff(floored.scores[user]) <= 0), f"user {user}: not in score order"
        np.testing.assert_allclose(
            floored.scores[user][~cold[user]][:shared],
            plain.scores[user][~plain_cold[user]][:shared], rtol=1e-12, atol=1e-15)
    counts = cold.sum(axis=1)
    return {"cold_per_list_min": int(counts.min()),
            "cold_per_list_mean": round(float(counts.mean()), 2),
            "cold_per_list_max": int(counts.max()),
            "no_floor_cold_per_list_mean": round(float(plain_cold.sum(axis=1).mean()), 2),
            "no_floor_cold_per_list_max": int(plain_cold.sum(axis=1).max())}


def exact_path_users(model: HybridModel, users, k: int) -> list[int]:
    """Per part of the floor model's catalogue, the users ``BlendScorer`` ranks one by one in
    float64 (fewer songs of the part left than k: the per-user exact path)."""
    scorer = model.scorer()
    out = []
    for rows in scorer.parts:
        member = np.zeros(len(model.song_ids), bool)
        member[rows] = True
        left = np.array([len(rows) - int(member[np.unique(h)].sum()) for h in users])
        out.append(int((left < min(k, len(rows))).sum()))
    return out


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------

def run(args) -> dict:
    matrix = training_play_counts(args.listens, args.songs)
    print(f"ALS training set: {matrix.shape[0]:,} users × {args.songs:,} songs, "
          f"{matrix.nnz:,} listens", flush=True)
    catalogues = {}
    for fraction in COLD_FRACTIONS:
        catalogues[fraction] = catalogue(matrix, fraction)
        print(f"cold {fraction:.0%}: {int((~catalogues[fraction]['trained']).sum()):,} songs "
              f"without ALS factors; ALS fit {catalogues[fraction]['fit_seconds']} s",
              flush=True)
    _, rank = popularity(args.songs)
    in_every = np.logical_and.reduce([c["trained"] for c in catalogues.values()])
    pool = np.flatnonzero(in_every & (rank < HISTORY_POOL * args.songs))
    users = histories(args.songs, pool, args.users)
    counts = [np.ones(len(h), np.int64) for h in users]
    lengths = np.array([len(h) for h in users])
    print(f"{len(users):,} users (history median {np.median(lengths):g}, mean "
          f"{lengths.mean():.1f}, max {lengths.max()}), k = {args.k}", flush=True)
    floor = cold_floor(COLD_SHARE, args.k, args.songs, args.songs - lengths)  # per user
    hybrid_lib.merge_with_cold_floor = _timed_merge
    try:
        setups = {}
        for fraction in COLD_FRACTIONS:
            arrays = catalogues[fraction]
            models = {"no_floor": build_model(arrays, 0.0),
                      "floor": build_model(arrays, COLD_SHARE)}
            clocks = {name: StageClock(model) for name, model in models.items()}
            assert len(models["no_floor"].scorer().parts) == 1
            assert len(models["floor"].scorer().parts) == 2, "the floor model did not split"
            warm_up = {}
            for name, model in models.items():
                started = time.perf_counter()
                result = model.recommend(users, counts, args.k)
                warm_up[name] = (result, time.perf_counter() - started)
            seen = check_lists(warm_up["no_floor"][0], warm_up["floor"][0], arrays["trained"],
                               users, args.k, floor)
            setups[fraction] = {"models": models, "clocks": clocks, "seen": seen,
                                "warm_up_seconds": {n: round(s, 2)
                                                    for n, (_, s) in warm_up.items()},
                                "exact_path_users": exact_path_users(models["floor"], users,
                                                                     args.k),
                                "trained": arrays["trained"], "timed": {n: [] for n in models}}
            print(f"cold {fraction:.0%}: warm-up {setups[fraction]['warm_up_seconds']}; "
                  f"floor lists hold {seen['cold_per_list_min']}-{seen['cold_per_list_max']} "
                  f"cold songs (no floor: mean {seen['no_floor_cold_per_list_mean']})",
                  flush=True)
        for repeat in range(args.repeats):
            order = ("no_floor", "floor") if repeat % 2 == 0 else ("floor", "no_floor")
            line = []
            for fraction, setup in setups.items():
                for name in order:
                    result, seconds, stages, stats = timed_call(
                        setup["models"][name], setup["clocks"][name], users, counts, args.k)
                    if name == "floor":
                        cold = (~setup["trained"][result.rows.astype(np.int64)]).sum(axis=1)
                        assert (cold >= floor).all(), "a timed floor list misses its floor"
                    setup["timed"][name].append({"seconds": seconds, "stages": stages,
                                                 "kernel_stats": stats})
                    line.append(f"{fraction:.0%} {name} {len(users) / seconds:,.0f}")
            print(f"  repeat {repeat + 1}: " + ", ".join(line) + " users/s", flush=True)
    finally:
        hybrid_lib.merge_with_cold_floor = _MERGE

    out = {}
    for fraction, setup in setups.items():
        entry = {"songs_without_als_factors": int((~setup["trained"]).sum()),
                 "als_fit_seconds": catalogues[fraction]["fit_seconds"],
                 "median_target_norm": catalogues[fraction]["median_target_norm"],
                 "warm_up_seconds": setup["warm_up_seconds"], **setup["seen"],
                 "floor_exact_path_users_per_part": setup["exact_path_users"]}
        for name, runs in setup["timed"].items():
            best = min(runs, key=lambda r: r["seconds"])
            stats = best["kernel_stats"]  # one entry per kernel call of the best run
            entry[name] = {
                "seconds": [round(r["seconds"], 3) for r in runs],
                "users_per_s": round(len(users) / best["seconds"], 1),
                "stage_share_of_best": {stage: round(s / best["seconds"], 4)
                                        for stage, s in best["stages"].items()},
                "other_share_of_best": round(1 - sum(
                    s for stage, s in best["stages"].items() if "part" not in stage)
                    / best["seconds"], 4),
                # Users the kernel scored again exactly (speculative threshold too high), and
                # users it ranked in float64 over the whole (part) catalogue (near-ties at the
                # k-th place within the float32 error bound), per part, in the best call.
                "kernel_fallback_users": [s.get("fallback_users", 0) for s in stats],
                "kernel_float64_catalogue_users": [s.get("float64_catalogue_users", 0)
                                                   for s in stats],
                "kernel_parts": len(setup["models"][name].scorer().parts),
                "kernel_dense_path": [bool(p.is_dense(p.padded_batch(p.batch_size)))
                                      for p in setup["models"][name].scorer().scorers]}
        entry["floor_over_no_floor_users_per_s"] = round(
            entry["floor"]["users_per_s"] / entry["no_floor"]["users_per_s"], 3)
        # The same ratio within each round (the two calls back to back), a check on the noise.
        entry["floor_over_no_floor_per_round"] = [
            round(plain["seconds"] / floored["seconds"], 3)
            for plain, floored in zip(setup["timed"]["no_floor"], setup["timed"]["floor"])]
        out[f"cold_{fraction:g}"] = entry
        print(f"cold {fraction:.0%}: no floor {entry['no_floor']['users_per_s']:,} users/s, "
              f"floor {entry['floor']['users_per_s']:,} users/s, ratio "
              f"{entry['floor_over_no_floor_users_per_s']} (per round "
              f"{entry['floor_over_no_floor_per_round']}; merge "
              f"{entry['floor']['stage_share_of_best']['merge']:.1%} of the floor call)",
              flush=True)
    return {"parameters": {"songs": args.songs, "users": len(users), "k": args.k,
                           "als_training_users": int(matrix.shape[0]),
                           "als_training_listens": int(matrix.nnz),
                           "history_pool_songs": int(len(pool)),
                           "repeats": args.repeats, "factors": FACTORS,
                           "content_columns": CONTENT_COLUMNS,
                           "content_weight": CONTENT_WEIGHT, "cold_scale": COLD_SCALE,
                           "cold_fractions": list(COLD_FRACTIONS), "cold_share": COLD_SHARE,
                           "cold_floor_per_user": {"min": int(floor.min()),
                                                   "max": int(floor.max())}, "regularization": REGULARIZATION,
                           "alpha": ALPHA, "confidence": CONFIDENCE,
                           "batch_size": setups[COLD_FRACTIONS[0]]["models"]["floor"]
                           .batch_size,
                           "history_median": float(np.median(lengths)),
                           "history_mean": round(float(lengths.mean()), 1),
                           "history_max": int(lengths.max())},
            "results": out}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--songs", type=int, default=100_000)
    parser.add_argument("--listens", type=int, default=2_000_000,
                        help="listens of ALS's synthetic training set")
    parser.add_argument("--users", type=int, default=2048, help="users scored")
    parser.add_argument("--k", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true",
                        help="20,000 songs, 200,000 listens, 512 users, 1 repeat (smoke run)")
    args = parser.parse_args(argv)
    if args.quick:
        args.songs, args.listens, args.users, args.repeats = 20_000, 200_000, 512, 1
    import tensorflow as tf

    started = time.perf_counter()
    results = {"loadavg_start": loadavg(), "quick": args.quick, **run(args)}
    results["elapsed_seconds"] = round(time.perf_counter() - started, 1)
    results["machine"] = machine_info(loadavg=loadavg(), tensorflow=tf.__version__)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {RESULTS} ({results['elapsed_seconds']} s)")


if __name__ == "__main__":
    main()
