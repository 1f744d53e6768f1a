"""Benchmark of item-based CF training (recommend/models/itemcf_similarity.py) on synthetic
Taste-Profile-shaped listening data, with an extrapolation to the full Taste Profile.

    python -m benchmarks.bench_train_itemcf             # 10M listens over 384,546 songs
    python -m benchmarks.bench_train_itemcf --quick     # 1M listens (smoke run)

Synthetic data (fixed seed, vectorised numpy): history lengths lognormal with median 30 and
sigma 0.947 (mean ~47, as in the Taste Profile), clipped to [1, 5,000]; songs drawn from a
Zipf-Mandelbrot popularity ``p(rank) ~ 1 / (rank + 100)`` (the most popular song is heard by
~0.1% of listens, the median song by ~30 users per 48M listens), ranks shuffled over the song
indices so that popular songs fall in every block. A user's repeated draws of a song collapse,
so users are added until the distinct (user, song) pairs reach ``--triplets``.

Measured: building ``X`` (``listening_matrix``), ``plan_blocks``, and ``item_neighbours`` for
each M of ``--top-m`` (total and per block, from the progress callback), the pairs
``sum_u |h(u)|^2`` (the product's work), the model's size, and the peak RSS of each phase
(VmHWM, reset through /proc/self/clear_refs before each phase when the kernel allows it, else
the process peak so far). The cost is linear in the pairs, so the extrapolation to the Taste
Profile (48,373,586 listens) scales the measured seconds per pair by the pairs the same length
distribution gives at that size (pairs per listen x 48.4M listens), and states the CPU-hours
and the Dataflow workers (one block per worker core at a time) for a wall time of
``--target-minutes``.
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import resource
import time
import tracemalloc

import numpy as np
import scipy
import scipy.sparse as sp

from benchmarks.machine import loadavg, machine_info
from recommend.models import itemcf_similarity as itemcf

RESULTS = pathlib.Path(__file__).resolve().parent / "results" / "train_itemcf.json"
TASTE_PROFILE = {"listens": 48_373_586, "users": 1_019_318, "songs": 384_546}
HISTORY_MEDIAN = 30
HISTORY_SIGMA = 0.947  # exp(sigma^2 / 2) = 47 / 30
HISTORY_MAX = 5_000
POPULARITY_OFFSET = 100.0
REAL_SAMPLE = (pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "listening"
               / "train_triplets_sample.head42739.txt")






class PeakRss:
    """Peak resident set size of this process over a phase, in MB (VmHWM, reset at entry when
    /proc/self/clear_refs accepts "5"; ``reset`` says whether it did)."""

    def __enter__(self):
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            self.reset = True
        except OSError:
            self.reset = False
        return self

    def __exit__(self, *exc):
        self.mb = vm_hwm_mb()
        return False


def vm_hwm_mb() -> float:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def synthetic_listens(triplets: int, num_songs: int, seed: int):
    """(user rows, song rows, num_users): at least ``triplets`` distinct pairs, each once."""
    rng = np.random.default_rng(seed)
    ranks = np.arange(num_songs, dtype=np.float64)
    popularity = 1.0 / (ranks + POPULARITY_OFFSET)
    cumulative = np.cumsum(popularity / popularity.sum())
    song_of_rank = rng.permutation(num_songs)
    user_chunks, song_chunks = [], []
    num_users = distinct = 0
    while distinct < triplets:
        chunk_users = max(1000, int((triplets - distinct) / 40))  # ~44 distinct songs a user
        lengths = rng.lognormal(math.log(HISTORY_MEDIAN), HISTORY_SIGMA, chunk_users)
        lengths = np.clip(lengths.astype(np.int64), 1, min(HISTORY_MAX, num_songs))
        users = np.repeat(np.arange(num_users, num_users + chunk_users, dtype=np.int64), lengths)
        ranks_drawn = np.searchsorted(cumulative, rng.random(len(users)), side="right")
        songs = song_of_rank[np.minimum(ranks_drawn, num_songs - 1)]
        keys = np.unique(users * num_songs + songs)
        user_chunks.append(keys // num_songs)
        song_chunks.append(keys % num_songs)
        num_users += chunk_users
        distinct += len(keys)
    users, songs = np.concatenate(user_chunks), np.concatenate(song_chunks)
    end = int(np.searchsorted(users, users[triplets - 1], side="right"))  # the whole last user
    return users[:end], songs[:end], int(users[triplets - 1]) + 1


def pairs_of(matrix: sp.csr_matrix) -> int:
    lengths = np.diff(matrix.indptr).astype(np.int64)
    return int((lengths * lengths).sum())


def real_sample_pairs_per_listen():
    """sum |h|^2 / sum |h| over the real Taste Profile sample's users (the last, cut-off user
    left out), to compare with the synthetic lengths; None if the file is missing."""
    if not REAL_SAMPLE.exists():
        return None
    users = [line.split("\t", 1)[0] for line in REAL_SAMPLE.read_text().splitlines() if line]
    _, lengths = np.unique([user for user in users if user != users[-1]], return_counts=True)
    lengths = lengths.astype(np.int64)
    return {"users": len(lengths), "mean_history": round(float(lengths.mean()), 2),
            "median_history": float(np.median(lengths)),
            "pairs_per_listen": round(float((lengths * lengths).sum() / lengths.sum()), 2)}


def bench(args) -> dict:
    result = {"triplets_requested": args.triplets, "songs": args.songs, "seed": args.seed,
              "top_m": args.top_m, "pair_budget": args.pair_budget, "alpha": itemcf.DEFAULT_ALPHA,
              "q": itemcf.DEFAULT_Q}
    t0 = time.perf_counter()
    users, songs, num_users = synthetic_listens(args.triplets, args.songs, args.seed)
    result["generate_s"] = round(time.perf_counter() - t0, 2)
    print(f"[bench_train_itemcf] generated {len(users):,} listens of {num_users:,} users "
          f"in {result['generate_s']} s", flush=True)

    with PeakRss() as rss:
        t0 = time.perf_counter()
        matrix = itemcf.listening_matrix(users, songs, num_users, args.songs)
        result["listening_matrix_s"] = round(time.perf_counter() - t0, 2)
    result["listening_matrix_peak_rss_mb"] = rss.mb
    del users, songs
    lengths = np.diff(matrix.indptr)
    listeners = np.bincount(matrix.indices, minlength=args.songs)
    pairs = pairs_of(matrix)
    result.update({
        "listens": int(matrix.nnz), "users": num_users,
        "users_with_listens": int(np.count_nonzero(lengths)),
        "history_length": {"median": float(np.median(lengths)), "mean": round(float(lengths.mean()), 2),
                           "p99": float(np.percentile(lengths, 99)), "max": int(lengths.max())},
        "listeners_per_song": {"median": float(np.median(listeners)), "max": int(listeners.max()),
                               "songs_without_listeners": int(np.count_nonzero(listeners == 0))},
        "pairs": pairs, "pairs_per_listen": round(pairs / matrix.nnz, 2),
        "matrix_bytes": int(matrix.data.nbytes + matrix.indices.nbytes + matrix.indptr.nbytes),
        "real_sample": real_sample_pairs_per_listen(),
    })
    print(f"[bench_train_itemcf] X built in {result['listening_matrix_s']} s; "
          f"{pairs:,} pairs ({result['pairs_per_listen']} per listen)", flush=True)

    t0 = time.perf_counter()
    blocks = itemcf.plan_blocks(matrix, args.pair_budget)
    result["plan_blocks_s"] = round(time.perf_counter() - t0, 3)
    block_work = [int(w) for w in np.add.reduceat(itemcf.song_pair_work(matrix),
                                                  [start for start, _ in blocks])]
    result["blocks"] = {"count": len(blocks), "max_pairs": max(block_work),
                        "median_pairs": int(np.median(block_work)),
                        "over_budget_single_songs": sum(w > args.pair_budget for w in block_work)}
    print(f"[bench_train_itemcf] {len(blocks)} blocks in {result['plan_blocks_s']} s", flush=True)

    result["runs"] = []
    for top_m in args.top_m:
        stamps = [(time.perf_counter(), time.process_time())]

        def progress(done, total):
            stamps.append((time.perf_counter(), time.process_time()))
            print(f"\r[bench_train_itemcf] M={top_m}: block {done}/{total}", end="", flush=True)

        with PeakRss() as rss:
            model = itemcf.item_neighbours(matrix, top_m=top_m, pair_budget=args.pair_budget,
                                           progress=progress)
        wall_s, cpu_s = np.diff(np.array(stamps), axis=0).T
        model_bytes = int(model.data.nbytes + model.indices.nbytes + model.indptr.nbytes)
        run = {
            "top_m": top_m, "item_neighbours_s": round(float(wall_s.sum()), 2),
            "item_neighbours_cpu_s": round(float(cpu_s.sum()), 2),
            "cpu_ns_per_pair": round(float(cpu_s.sum()) / pairs * 1e9, 2),
            "block_s": {"median": round(float(np.median(wall_s)), 3),
                        "max": round(float(wall_s.max()), 3)},
            "block_cpu_ns_per_pair": {
                "median": round(float(np.median(cpu_s / block_work)) * 1e9, 2),
                "max": round(float(np.max(cpu_s / block_work)) * 1e9, 2)},
            "peak_rss_mb": rss.mb, "peak_rss_reset": rss.reset,
            "model_entries": int(model.nnz), "model_bytes": model_bytes,
            "model_mb": round(model_bytes / 2**20, 1),
            "rows_full": int(np.count_nonzero(np.diff(model.indptr) == top_m)),
        }
        result["runs"].append(run)
        print(f"\r[bench_train_itemcf] M={top_m}: {run['item_neighbours_s']} s, CPU "
              f"{run['item_neighbours_cpu_s']} s ({run['cpu_ns_per_pair']} ns/pair), "
              f"model {run['model_mb']} MB, "
              f"peak RSS {run['peak_rss_mb']} MB", flush=True)
        del model
    result["largest_block_memory"] = block_memory(matrix, blocks, block_work, max(args.top_m))
    result["ru_maxrss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    result["extrapolation"] = extrapolate(result, args.target_minutes)
    return result


def block_memory(matrix, blocks, block_work, top_m) -> dict:
    """tracemalloc peak of ``neighbour_block`` on the costliest block, next to the stated bound
    (``BYTES_PER_PAIR`` per pair + ``BYTES_PER_KEPT_ENTRY`` per kept entry)."""
    largest = int(np.argmax(block_work))
    start, stop = blocks[largest]
    listeners = np.bincount(matrix.indices, minlength=matrix.shape[1])
    tracemalloc.start()
    try:
        block = itemcf.neighbour_block(matrix, start, stop, listeners, itemcf.DEFAULT_ALPHA,
                                       itemcf.DEFAULT_Q, top_m)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    bound = itemcf.BYTES_PER_PAIR * block_work[largest] + itemcf.BYTES_PER_KEPT_ENTRY * block.nnz
    return {"top_m": top_m, "songs": stop - start, "pairs": block_work[largest],
            "kept_entries": int(block.nnz), "tracemalloc_peak_mb": round(peak / 2**20, 1),
            "bytes_per_pair": round(peak / block_work[largest], 2),
            "stated_bound_mb": round(bound / 2**20, 1)}


def extrapolate(result: dict, target_minutes: float) -> dict:
    """The full Taste Profile at this length distribution: pairs per listen x 48.4M listens."""
    full_pairs = result["pairs_per_listen"] * TASTE_PROFILE["listens"]
    runs = {}
    for run in result["runs"]:
        cpu_s = run["cpu_ns_per_pair"] * 1e-9 * full_pairs
        runs[str(run["top_m"])] = {
            "cpu_hours": round(cpu_s / 3600, 3),
            "worker_cores_for_target": max(1, math.ceil(cpu_s / 60 / target_minutes)),
            "model_mb_at_most": round((TASTE_PROFILE["songs"] * run["top_m"] * 12
                                       + (TASTE_PROFILE["songs"] + 1) * 4) / 2**20, 1),
        }
    return {
        "taste_profile": TASTE_PROFILE, "target_minutes": target_minutes,
        "pairs": int(full_pairs), "pair_ratio": round(full_pairs / result["pairs"], 2),
        "blocks_at_budget": math.ceil(full_pairs / result["pair_budget"]),
        "by_top_m": runs,
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--triplets", type=int, default=10_000_000, help="distinct (user, song) pairs")
    ap.add_argument("--songs", type=int, default=TASTE_PROFILE["songs"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="1M listens, M = 100 only")
    ap.add_argument("--top-m", type=int, nargs="+", default=[50, 100, 200])
    ap.add_argument("--pair-budget", type=int, default=itemcf.DEFAULT_PAIR_BUDGET)
    ap.add_argument("--target-minutes", type=float, default=10.0)
    ap.add_argument("--output", default=str(RESULTS))
    args = ap.parse_args(argv)
    if args.quick:
        args.triplets, args.top_m = 1_000_000, [100]
    results = {"machine": machine_info(scipy=scipy.__version__), "loadavg_start": loadavg(), "quick": args.quick}
    results.update(bench(args))
    results["loadavg_end"] = loadavg()
    out = pathlib.Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["extrapolation"], indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
