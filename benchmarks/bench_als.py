"""ALS (``--model als``): training time of our wrapper next to implicit's own ``fit``, fold-in +
scoring throughput next to the kernel alone, and the parameter sweep on real listens.

    python -m benchmarks.bench_als                 # speed: synthetic matrix (~5 min on 2 cores)
    python -m benchmarks.bench_als --quick         # speed, smaller matrix (smoke run)
    python -m benchmarks.bench_als --real          # the real-data sweep (~5 min)

Speed (results under "speed" in ``benchmarks/results/als.json``): a synthetic Taste-Profile-shaped
play-count matrix (fixed seed: history lengths lognormal, median 30, sigma 0.947, clipped to
[1, 5,000]; songs from a Zipf-Mandelbrot popularity 1 / (rank + 100); play counts 1 + a
geometric number of repeats). In the same process, alternately, best of ``--repeats``:

  * ``implicit``: ``AlternatingLeastSquares(alpha=1).fit`` on the confidence matrix, BLAS
    threads 1, no loss, no callback: the floor;
  * ``wrapper``: ``recommend.models.als.fit_als``, what ``pipelines.train --model als`` runs:
    the validation split, the confidence matrix, the same fit plus the training loss and
    the validation mAP@500 at 5 evenly spaced iterations (the default
    --validation_fraction 0.1, at most 300 users, so the fit sees ~0.3% fewer listens).
    The best of the repeats is compared (the first wrapper run also traces the TensorFlow
    fold-in, a one-off ~4 s per process).

Scoring: ``ALSModel.recommend`` (fold-in in TensorFlow float64 + the exact top-k kernel with
exclusion) on ``--users`` histories drawn from the matrix, next to the kernel alone
(``CatalogueScorer.recommend_packed``) with the same user factors precomputed; users/s each.

Real data (results under "real_data"): the splits ``pipelines.evaluate --write_split`` writes
for seeds 1, 2, 3 of ``$MSD_SAMPLE_DATA/listening/train_triplets_sample.head42739.txt`` (half
of each user's songs hidden). The sweep fits in-process (``fit_als`` with no validation split,
on the visible half, the same matrix ``pipelines.train`` builds) and scores mAP@500 of every
user with a hidden song (hidden songs outside the model count as misses), so a grid point
costs seconds; the chosen settings are then run through the documented commands
(``pipelines.train``, ``pipelines.evaluate --model_dir``) for the table in docs/evaluation.md.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import scipy.sparse as sp

from benchmarks.machine import loadavg, machine_info
from recommend.models import als

REPO = pathlib.Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "als.json"
SAMPLE = pathlib.Path("listening") / "train_triplets_sample.head42739.txt"
SEEDS = (1, 2, 3)


# ----------------------------------------------------------------------------------------------
# Speed
# ----------------------------------------------------------------------------------------------


def synthetic_play_counts(listens: int, songs: int, seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    users = max(1, int(listens / 47 * 1.1))
    lengths = np.clip(np.round(rng.lognormal(np.log(30), 0.947, users)), 1, 5000).astype(int)
    lengths = lengths[np.cumsum(lengths) <= listens * 1.05] if lengths.sum() > listens else lengths
    weights = 1.0 / (np.arange(songs) + 100.0)
    rank_to_song = rng.permutation(songs)
    picks = rank_to_song[rng.choice(songs, size=int(lengths.sum()), p=weights / weights.sum())]
    rows = np.repeat(np.arange(len(lengths)), lengths)
    counts = 1 + rng.geometric(0.4, size=len(picks)) - 1
    matrix = sp.csr_matrix((counts.astype(np.int64), (rows, picks)),
                           shape=(len(lengths), songs))
    matrix.sum_duplicates()
    return matrix


def time_implicit_fit(matrix: sp.csr_matrix, p: als.ALSParameters) -> float:
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    confidences = als.confidence_matrix(matrix, p.alpha, p.confidence)
    with threadpool_limits(limits=1, user_api="blas"):
        model = AlternatingLeastSquares(factors=p.factors, regularization=p.regularization,
                                        alpha=1.0, iterations=p.iterations,
                                        random_state=p.seed)
        started = time.perf_counter()
        model.fit(confidences, show_progress=False)
        return time.perf_counter() - started


def time_wrapper_fit(matrix: sp.csr_matrix, p: als.ALSParameters) -> tuple[float, dict]:
    started = time.perf_counter()
    _, metrics = als.fit_als(matrix, p, log=lambda line: None)
    return time.perf_counter() - started, metrics


def speed(args) -> dict:
    import tensorflow as tf

    from recommend import kernel

    matrix = synthetic_play_counts(args.listens, args.songs)
    p = als.ALSParameters(factors=args.factors, iterations=args.iterations)
    print(f"matrix: {matrix.shape[0]:,} users × {matrix.shape[1]:,} songs, {matrix.nnz:,} "
          f"listens; {p}", flush=True)
    implicit_s, wrapper_s, metrics = [], [], {}
    for repeat in range(args.repeats):
        implicit_s.append(time_implicit_fit(matrix, p))
        seconds, metrics = time_wrapper_fit(matrix, p)
        wrapper_s.append(seconds)
        print(f"  repeat {repeat + 1}: implicit fit {implicit_s[-1]:.2f} s, wrapper "
              f"{wrapper_s[-1]:.2f} s", flush=True)
    training = {"implicit_fit_seconds": implicit_s, "wrapper_seconds": wrapper_s,
                "ratio_best": round(min(wrapper_s) / min(implicit_s), 3),
                "validation_users": metrics.get("validation_users"),
                "training_loss_last": metrics["training_loss"][-1],
                "validation_map_last": (metrics["validation_map"] or [None])[-1]}

    item_factors, _ = als.fit_als(matrix, als.ALSParameters(
        factors=args.factors, iterations=args.iterations, validation_fraction=0.0),
        log=lambda line: None)
    model = als.ALSModel(np.array([f"SO{i:016d}" for i in range(matrix.shape[1])], dtype=object),
                         item_factors, np.bincount(matrix.indices, minlength=matrix.shape[1]))
    rng = np.random.default_rng(1)
    users = rng.choice(matrix.shape[0], size=min(args.users, matrix.shape[0]), replace=False)
    histories = [matrix.indices[matrix.indptr[u]:matrix.indptr[u + 1]].astype(np.int64)
                 for u in users]
    counts = [matrix.data[matrix.indptr[u]:matrix.indptr[u + 1]] for u in users]
    model.recommend(histories[:256], counts[:256], args.k)  # warm-up: tracing, device upload
    started = time.perf_counter()
    model.recommend(histories, counts, args.k)
    full_s = time.perf_counter() - started
    started = time.perf_counter()
    queries = model.user_factors(histories, counts)
    fold_in_s = time.perf_counter() - started
    packed = kernel.pack_histories(histories, num_songs=model.num_songs())
    started = time.perf_counter()
    model.scorer().recommend_packed(packed, args.k, queries=queries)
    kernel_s = time.perf_counter() - started
    n = len(histories)
    scoring = {"users": n, "k": args.k, "mean_history": round(float(np.mean(
                   [len(h) for h in histories])), 1),
               "recommend_users_per_s": round(n / full_s, 1),
               "fold_in_users_per_s": round(n / fold_in_s, 1),
               "kernel_precomputed_users_per_s": round(n / kernel_s, 1),
               "recommend_over_kernel_time": round(full_s / kernel_s, 3)}
    print(f"training: wrapper / implicit = {training['ratio_best']}; scoring: "
          f"{scoring['recommend_users_per_s']} users/s with fold-in, "
          f"{scoring['kernel_precomputed_users_per_s']} users/s kernel alone "
          f"(fold-in alone {scoring['fold_in_users_per_s']} users/s)", flush=True)
    return {"matrix": {"users": matrix.shape[0], "songs": matrix.shape[1],
                       "listens": int(matrix.nnz)},
            "parameters": {"factors": p.factors, "iterations": p.iterations,
                           "regularization": p.regularization, "alpha": p.alpha,
                           "confidence": p.confidence},
            "training": training, "scoring": scoring,
            "tensorflow": tf.__version__, "loadavg_after": loadavg()}


# ----------------------------------------------------------------------------------------------
# Real data
# ----------------------------------------------------------------------------------------------


def read_split(folder: pathlib.Path):
    """(visible play counts users × songs, hidden song-id sets per user row, song ids)."""
    from msd import listening

    visible, hidden = {}, {}
    for record in listening.read_listens(str(folder / "visible.txt")):
        visible.setdefault(record.user_id, {})
        visible[record.user_id][record.song_id] = (
            visible[record.user_id].get(record.song_id, 0) + record.play_count)
    for record in listening.read_listens(str(folder / "hidden.txt")):
        hidden.setdefault(record.user_id, set()).add(record.song_id)
    songs = sorted({s for h in visible.values() for s in h})
    row = {s: i for i, s in enumerate(songs)}
    users = sorted(visible)
    data, rows, cols = [], [], []
    for u, user in enumerate(users):
        for song, count in visible[user].items():
            rows.append(u), cols.append(row[song]), data.append(count)
    matrix = sp.csr_matrix((np.array(data, np.int64), (rows, cols)),
                           shape=(len(users), len(songs)))
    matrix.sum_duplicates()
    return matrix, [hidden.get(user, set()) for user in users], np.array(songs, dtype=object)


def sweep_map(split, p: als.ALSParameters) -> float:
    """mAP@500 over the users with a hidden song (the evaluation's users)."""
    from recommend import metrics

    matrix, hidden, songs = split
    item_factors, _ = als.fit_als(matrix, p, log=lambda line: None)
    model = als.ALSModel(songs, item_factors, np.bincount(matrix.indices,
                                                          minlength=matrix.shape[1]),
                         regularization=p.regularization, alpha=p.alpha,
                         confidence_variant=p.confidence)
    users = [u for u in range(matrix.shape[0]) if hidden[u]]
    histories = [matrix.indices[matrix.indptr[u]:matrix.indptr[u + 1]].astype(np.int64)
                 for u in users]
    counts = [matrix.data[matrix.indptr[u]:matrix.indptr[u + 1]] for u in users]
    result = model.recommend(histories, counts, 500)
    return statistics.fmean(metrics.average_precision(songs[rows].tolist(), hidden[u], 500)
                            for u, rows in zip(users, result.rows))


def run_module(args: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True,
                          text=True)
    if proc.returncode:
        raise RuntimeError(f"{args[0]} failed:\n{proc.stderr[-3000:]}")


def real_data(args) -> dict:
    import os

    data = pathlib.Path(os.environ.get("MSD_SAMPLE_DATA", "/work/shared/data")) / SAMPLE
    work = pathlib.Path(tempfile.mkdtemp(prefix="als_real_"))
    splits = {}
    for seed in SEEDS:
        run_module(["pipelines.evaluate", "--listens", str(data), "--holdout_fraction", "0.5",
                    "--seed", str(seed), "--write_split", str(work / f"split{seed}"),
                    "--output_dir", str(work / f"split_eval{seed}")])
        splits[seed] = read_split(work / f"split{seed}")
    results = []

    def point(**changes) -> dict:
        p = als.ALSParameters(validation_fraction=0.0, **changes)
        maps = [sweep_map(splits[seed], p) for seed in SEEDS]
        entry = {"factors": p.factors, "regularization": p.regularization, "alpha": p.alpha,
                 "confidence": p.confidence, "iterations": p.iterations, "map": maps,
                 "mean": statistics.fmean(maps), "sd": statistics.stdev(maps)}
        results.append(entry)
        print(f"  {entry['confidence']:6s} α {p.alpha:<5g} λ {p.regularization:<5g} "
              f"f {p.factors:<4d} it {p.iterations:<3d} mAP@500 {entry['mean']:.4f} ± "
              f"{entry['sd']:.4f}", flush=True)
        return entry

    grid = {"linear": (0.5, 2.0, 10.0, 40.0), "log": (0.5, 2.0, 10.0, 40.0)}
    for variant, alphas in grid.items():
        for alpha in alphas:
            for reg in (0.1, 1.0, 10.0):
                point(confidence=variant, alpha=alpha, regularization=reg, factors=64)
    best = max(results, key=lambda e: e["mean"])
    for factors in (16, 32, 128):
        point(confidence=best["confidence"], alpha=best["alpha"],
              regularization=best["regularization"], factors=factors)
    for iterations in (5, 30):
        point(confidence=best["confidence"], alpha=best["alpha"],
              regularization=best["regularization"], factors=64, iterations=iterations)
    return {"data": str(data), "seeds": list(SEEDS), "grid": results,
            "best": max(results, key=lambda e: e["mean"]), "work_dir": str(work)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--real", action="store_true", help="the real-data sweep instead")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--listens", type=int, default=2_000_000)
    parser.add_argument("--songs", type=int, default=100_000)
    parser.add_argument("--factors", type=int, default=als.DEFAULT_FACTORS)
    parser.add_argument("--iterations", type=int, default=als.DEFAULT_ITERATIONS)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--users", type=int, default=4096)
    parser.add_argument("--k", type=int, default=500)
    args = parser.parse_args()
    if args.quick:
        args.listens, args.songs, args.users, args.repeats = 200_000, 20_000, 1024, 1
    existing = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    import implicit
    import tensorflow as tf

    info = machine_info(implicit=implicit.__version__, tensorflow=tf.__version__)
    if args.real:
        existing["real_data"] = {**real_data(args), "machine": info}
    else:
        existing["speed"] = {**speed(args), "machine": info, "quick": args.quick}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(existing, indent=2, sort_keys=True) + "\n")
    print(f"written {RESULTS}")


if __name__ == "__main__":
    main()
