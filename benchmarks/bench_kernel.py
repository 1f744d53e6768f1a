"""Benchmark of the exact top-k kernel (recommend/kernel.py) against its baselines.

    python -m benchmarks.bench_kernel            # 100,000 / 386,213 / 1,000,000 songs
    python -m benchmarks.bench_kernel --quick    # 100,000 songs, fewer batches

Random unit-norm catalogues (d=90), k=500, batches of 256 users with Taste-Profile-like
history lengths (lognormal, median 30, mean ~47, capped at 6,000), plus one 4,500-song user per
batch so that every batch has the long tail (the JSON records the actual median/mean/max). In
one process and on the same batches, interleaved batch by batch so that load from other
processes hits every method alike, it times:

  tf_matmul          P @ F^T as one tf.matmul producing the full [B, N] score matrix (kept in
                     TF, not copied out): the bound the goals refer to.
  tf_matmul_chunked  the same products in the kernel's chunks, discarding them: the cost of
                     reading the catalogue through matmul with nothing else (a stricter bound).
  tf_naive           matmul, scatter -inf on listened songs, tf.math.top_k over everything.
  faiss_flat_ip      FAISS IndexFlatIP exact search over-fetching k + (distinct songs listened),
                     users bucketed by that need (powers of two), listened songs filtered out.
  numpy_argpartition numpy matmul, -inf on listened songs, argpartition (32 users at a time),
                     sort of the k.
  ours               CatalogueScorer.recommend_packed (profiles built inside, exact, top-k).

The baselines get the profiles precomputed (not timed); ours builds them from the histories.
Single-user latency (1M songs, or the largest size run): ours end to end, next to the time to
stream the catalogue once (tf.reduce_sum over it) and a single-user tf.matmul.

Memory, per method in a fresh subprocess (allocators in the main process keep memory cached
after warm-up, which would hide it): the subprocess loads the catalogue and what the method
needs, then runs the method on one batch twice (the first call includes tracing).
``peak_rss_delta_mb`` (table: +RSS MB) is the peak resident set size during those runs (a thread
samples /proc/self/statm every ~2 ms) minus the RSS before; for TensorFlow methods it includes
graph building. ``tf_alloc_peak_mb`` (table: TF MB) is the peak of TensorFlow's CPU allocator
(TF_ENABLE_CPU_ALLOCATOR_STATS=1, tf.config.experimental.get_memory_info) minus its level
before: the tensors' working memory. ``ru_maxrss_mb`` is the main process's peak
(resource.getrusage). tracemalloc is not used: it does not see TensorFlow's or FAISS's
allocations.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks import machine  # noqa: E402
from recommend.kernel import CatalogueScorer, pack_histories  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results" / "kernel.json"
K = 500
DIM = 90
BATCH = 256


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------


def machine_info() -> dict:
    info = machine.machine_info(tensorflow=tf.__version__,
                                tf_gpus=[d.name for d in tf.config.list_physical_devices("GPU")])
    try:
        import faiss

        info["faiss"] = faiss.__version__
        info["faiss_threads"] = faiss.omp_get_max_threads()
    except ImportError:  # pragma: no cover
        info["faiss"] = None
    return info


loadavg = machine.loadavg


class RssPeak:
    """Peak RSS (bytes) over a code block, sampled by a thread; ``delta`` is over the RSS at entry."""

    def __init__(self, period=0.002):
        self.period = period
        self.page = os.sysconf("SC_PAGE_SIZE")

    def rss(self):
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * self.page

    def __enter__(self):
        self.start = self.peak = self.rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.period)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())
        self.delta = self.peak - self.start
        return False


def make_catalogue(n, seed):
    rng = np.random.default_rng(seed)
    f = rng.standard_normal((n, DIM), dtype=np.float32)
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    return f


def make_histories(n_users, n_songs, seed):
    """Taste-Profile-like: lognormal lengths with median 30 and mean ~47 (sigma 0.96)."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(30), 0.96, n_users).astype(int), 1, min(6000, n_songs // 4))
    # one heavy user per batch so every batch exercises the long tail
    lengths[::BATCH] = np.minimum(4500, n_songs // 4)
    return [rng.integers(0, n_songs, m) for m in lengths]


def profiles(catalogue, hists):
    return np.stack([catalogue[h].sum(axis=0) for h in hists]).astype(np.float32)


# ------------------------------------------------------------------------------------------
# methods
# ------------------------------------------------------------------------------------------


class Methods:
    def __init__(self, catalogue, scorer: CatalogueScorer, with_faiss=True):
        self.n = catalogue.shape[0]
        self.catalogue = catalogue
        self.scorer = scorer
        self.flat = tf.reshape(scorer._cat3, [-1, DIM])[: self.n]  # one copy of the catalogue in TF
        flat = self.flat
        plan = scorer._plan(BATCH, K, guess=True)
        cat3, cs = scorer._cat3, scorer.storage_rows

        @tf.function(autograph=False)
        def tf_matmul(p):
            s = tf.matmul(p, flat, transpose_b=True)  # [B, N] materialised
            return s[:, :1]

        @tf.function(autograph=False)
        def tf_matmul_chunked(p):
            out = []
            for s0, ns in plan.chunks:
                s = tf.matmul(tf.reshape(cat3[s0 : s0 + ns], [ns * cs, DIM]), p, transpose_b=True)
                out.append(s[:1, :1])
            return tf.add_n(out)

        @tf.function(
            autograph=False,
            input_signature=(tf.TensorSpec([None, DIM], tf.float32), tf.TensorSpec([None, 2], tf.int32)),
        )
        def tf_naive(p, listened):
            s = tf.matmul(p, flat, transpose_b=True)
            s = tf.tensor_scatter_nd_update(s, listened, tf.fill(tf.shape(listened)[:1], -np.inf))
            return tf.math.top_k(s, K)

        self.tf_matmul, self.tf_matmul_chunked, self.tf_naive_fn = tf_matmul, tf_matmul_chunked, tf_naive
        self.faiss = None
        if with_faiss:
            try:
                import faiss

                self.faiss = faiss.IndexFlatIP(DIM)
                self.faiss.add(catalogue)
            except ImportError:  # pragma: no cover
                self.faiss = None

    def run_tf_matmul(self, batch):
        self.tf_matmul(batch["P_tf"]).numpy()

    def run_tf_matmul_chunked(self, batch):
        self.tf_matmul_chunked(batch["P_tf"]).numpy()

    def run_tf_naive(self, batch):
        v, i = self.tf_naive_fn(batch["P_tf"], batch["pairs_tf"])
        return i.numpy().astype(np.int64), v.numpy()

    def run_faiss(self, batch):
        """Each user needs k + (distinct songs listened) results so that k survive the filter;
        users are bucketed by that need rounded up to a power of two, one search per bucket."""
        sets = batch["sets"]
        need = np.array([K + len(s) for s in sets])
        bucket = np.maximum(K, 2 ** np.ceil(np.log2(need))).astype(int)
        bucket = np.minimum(bucket, self.n)
        out = np.empty((len(sets), K), np.int64)
        for kk in np.unique(bucket):
            rows = np.flatnonzero(bucket == kk)
            _, ind = self.faiss.search(batch["P"][rows], int(kk))
            for r, row in zip(rows, ind):
                out[r] = row[~np.isin(row, sets[r])][:K]
        return out

    def run_numpy(self, batch):
        """numpy matmul, -inf on listened songs, argpartition per slice of 32 users (the whole
        [B, N] int64 argpartition output would be 2 GB at 1M songs), sort of the k."""
        s = batch["P"] @ self.catalogue.T
        s[batch["pairs"][:, 0], batch["pairs"][:, 1]] = -np.inf
        n = s.shape[1]
        out = np.empty((s.shape[0], K), np.int64)
        for r0 in range(0, s.shape[0], 32):
            blk = s[r0 : r0 + 32]
            part = np.argpartition(blk, n - K, axis=1)[:, n - K :]
            vals = np.take_along_axis(blk, part, 1)
            order = np.lexsort((part, -vals), axis=1)
            out[r0 : r0 + 32] = np.take_along_axis(part, order, 1)
        return out

    def run_ours(self, batch):
        return self.scorer.recommend_packed(batch["packed"], K)


METHODS = [
    ("tf_matmul", "run_tf_matmul"),
    ("tf_matmul_chunked", "run_tf_matmul_chunked"),
    ("tf_naive", "run_tf_naive"),
    ("faiss_flat_ip", "run_faiss"),
    ("numpy_argpartition", "run_numpy"),
    ("ours", "run_ours"),
]


def prepare_batches(catalogue, n_batches, seed):
    n = catalogue.shape[0]
    hists = make_histories(n_batches * BATCH, n, seed)
    batches = []
    for b in range(n_batches):
        hs = hists[b * BATCH : (b + 1) * BATCH]
        pairs = np.concatenate([np.stack([np.full(len(h), u), h], 1) for u, h in enumerate(hs)]).astype(np.int32)
        p = profiles(catalogue, hs)
        batches.append(
            {
                "hists": hs,
                "sets": [np.unique(h) for h in hs],
                "packed": pack_histories([h.tolist() for h in hs], num_songs=n),
                "P": p,
                "P_tf": tf.constant(p),
                "pairs": pairs,
                "pairs_tf": tf.constant(pairs),
                "history_lengths": [len(h) for h in hs],
            }
        )
    return batches


def agreement(ours_idx, ref_idx):
    """Fraction of users whose top-k set equals the reference set, and mean overlap."""
    same = [set(a.tolist()) == set(b.tolist()) for a, b in zip(ours_idx, ref_idx)]
    overlap = [len(set(a.tolist()) & set(b.tolist())) / K for a, b in zip(ours_idx, ref_idx)]
    return float(np.mean(same)), float(np.mean(overlap))


def bench_size(n, n_batches, rounds, seed, with_faiss=True, latency=False, measure_memory=True):
    catalogue = make_catalogue(n, seed)
    t0 = time.perf_counter()
    scorer = CatalogueScorer(catalogue, batch_size=BATCH)
    load_s = time.perf_counter() - t0
    methods = Methods(catalogue, scorer, with_faiss=with_faiss)
    batches = prepare_batches(catalogue, n_batches, seed + 1)
    names = [m for m in METHODS if not (m[0] == "faiss_flat_ip" and methods.faiss is None)]

    # warm-up (traces/compiles) and a correctness cross-check on batch 0
    t0 = time.perf_counter()
    ours_idx, ours_sc = methods.run_ours(batches[0])
    first_call_s = time.perf_counter() - t0
    for name, fn in names:
        if name != "ours":
            getattr(methods, fn)(batches[0])
    naive_idx, naive_sc = methods.run_tf_naive(batches[0])
    same, overlap = agreement(ours_idx, naive_idx)
    check = {
        "users_same_set_as_tf_naive": same,
        "mean_overlap_with_tf_naive": overlap,
        "max_abs_score_diff_vs_tf_naive": float(np.max(np.abs(np.sort(ours_sc, 1) - np.sort(naive_sc, 1)))),
    }
    if methods.faiss is not None:
        check["users_same_set_as_faiss"] = agreement(ours_idx, methods.run_faiss(batches[0]))[0]
    check["users_same_set_as_numpy"] = agreement(ours_idx, methods.run_numpy(batches[0]))[0]

    times = {name: [] for name, _ in names}
    fallbacks = 0
    for r in range(rounds):
        for bi, batch in enumerate(batches):
            order = names if (r + bi) % 2 == 0 else names[::-1]
            for name, fn in order:
                time.sleep(0.1)  # let spinning thread pools (OpenBLAS, Eigen, OpenMP) go idle
                t0 = time.perf_counter()
                getattr(methods, fn)(batch)
                times[name].append(time.perf_counter() - t0)
                if name == "ours":
                    fallbacks += scorer.last_stats.get("fallback_users", 0)
    mem = {name: memory_probe(n, name, seed) for name, _ in names} if measure_memory else {}

    res = {"songs": n, "batches": n_batches, "rounds": rounds, "batch_size": BATCH, "k": K}
    res["history_length"] = {
        "median": float(np.median([x for b in batches for x in b["history_lengths"]])),
        "mean": float(np.mean([x for b in batches for x in b["history_lengths"]])),
        "max": int(max(x for b in batches for x in b["history_lengths"])),
    }
    res["scorer_load_s"] = round(load_s, 2)
    res["ours_first_call_s"] = round(first_call_s, 2)
    res["ours_fallback_users"] = fallbacks
    res["check_batch0"] = check
    res["methods"] = {}
    bound = statistics.median(times["tf_matmul"])
    chunked = statistics.median(times["tf_matmul_chunked"])
    for name, _ in names:
        med, best = statistics.median(times[name]), min(times[name])
        res["methods"][name] = {
            "ms_per_batch_median": round(med * 1e3, 1),
            "ms_per_batch_min": round(best * 1e3, 1),
            "users_per_s": round(BATCH / med, 1),
            "throughput_vs_tf_matmul": round(bound / med, 3),
            "throughput_vs_tf_matmul_chunked": round(chunked / med, 3),
            "peak_rss_delta_mb": mem.get(name, (None, None))[0],
            "tf_alloc_peak_mb": mem.get(name, (None, None))[1],
        }
    if "faiss_flat_ip" in times:
        res["ours_speedup_vs_faiss"] = round(statistics.median(times["faiss_flat_ip"]) / statistics.median(times["ours"]), 2)
    res["ours_speedup_vs_tf_naive"] = round(statistics.median(times["tf_naive"]) / statistics.median(times["ours"]), 2)
    res["ours_speedup_vs_numpy"] = round(statistics.median(times["numpy_argpartition"]) / statistics.median(times["ours"]), 2)

    lat = single_user_latency(catalogue, scorer, methods, batches, seed) if latency else None
    del methods, scorer
    return res, lat


def memory_probe(n, method, seed):
    """(peak RSS increase, peak TF CPU-allocator increase) in MB of ``method`` on one batch,
    measured in a fresh subprocess with TF allocator statistics switched on."""
    cmd = [sys.executable, "-m", "benchmarks.bench_kernel", "--probe-memory", method, "--sizes", str(n),
           "--seed", str(seed)]
    env = dict(os.environ, TF_ENABLE_CPU_ALLOCATOR_STATS="1")
    found = {}
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env,
                             cwd=pathlib.Path(__file__).resolve().parents[1])
        for line in out.stdout.splitlines():
            if line.startswith("PEAK_") and len(line.split()) == 2:
                found[line.split()[0]] = float(line.split()[1])
    except subprocess.TimeoutExpired:
        pass
    return found.get("PEAK_RSS_DELTA_MB"), found.get("PEAK_TF_ALLOC_MB")


def run_memory_probe(method, n, seed):
    catalogue = make_catalogue(n, seed)
    scorer = CatalogueScorer(catalogue, batch_size=BATCH)
    methods = Methods(catalogue, scorer, with_faiss=(method == "faiss_flat_ip"))
    batch = prepare_batches(catalogue, 1, seed + 1)[0]
    fn = dict(METHODS)[method]
    time.sleep(0.5)
    tf.config.experimental.reset_memory_stats("CPU:0")
    tf_before = tf.config.experimental.get_memory_info("CPU:0")["current"]
    with RssPeak() as rp:
        for _ in range(2):
            getattr(methods, fn)(batch)
    tf_peak = tf.config.experimental.get_memory_info("CPU:0")["peak"] - tf_before
    print(f"PEAK_RSS_DELTA_MB {rp.delta / 2**20:.1f}")
    print(f"PEAK_TF_ALLOC_MB {tf_peak / 2**20:.1f}")


def single_user_latency(catalogue, scorer, methods, batches, seed, reps=30):
    cat3 = scorer._cat3

    @tf.function(autograph=False)
    def stream_once():
        return tf.reduce_sum(cat3)

    flat = methods.flat

    @tf.function(autograph=False)
    def matvec(p):
        return tf.matmul(p, flat, transpose_b=True)[:, :1]

    users = [h for b in batches for h in b["hists"]][:reps]
    packs = [pack_histories([h.tolist()], num_songs=catalogue.shape[0]) for h in users]
    ps = [tf.constant(profiles(catalogue, [h])) for h in users]
    scorer.recommend_packed(packs[0], K)  # trace
    stream_once().numpy()
    matvec(ps[0]).numpy()
    t_ours, t_stream, t_mv = [], [], []
    for i in range(reps):
        time.sleep(0.05)
        t0 = time.perf_counter()
        scorer.recommend_packed(packs[i], K)
        t_ours.append(time.perf_counter() - t0)
        time.sleep(0.05)
        t0 = time.perf_counter()
        stream_once().numpy()
        t_stream.append(time.perf_counter() - t0)
        time.sleep(0.05)
        t0 = time.perf_counter()
        matvec(ps[i]).numpy()
        t_mv.append(time.perf_counter() - t0)
    med = statistics.median
    return {
        "songs": int(catalogue.shape[0]),
        "reps": reps,
        "ours_ms_median": round(med(t_ours) * 1e3, 2),
        "ours_ms_min": round(min(t_ours) * 1e3, 2),
        "stream_catalogue_once_ms_median": round(med(t_stream) * 1e3, 2),
        "stream_catalogue_once_ms_min": round(min(t_stream) * 1e3, 2),
        "single_user_tf_matmul_ms_median": round(med(t_mv) * 1e3, 2),
        "ours_vs_stream_median": round(med(t_ours) / med(t_stream), 2),
        "ours_vs_stream_min": round(min(t_ours) / min(t_stream), 2),
        "path": "dense" if scorer.is_dense(1) else "stream",
    }


# ------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------


def fmt_mb(x):
    return "-" if x is None else f"{x:.1f}"


def print_table(results):
    hdr = (f"{'songs':>9} {'method':<20} {'ms/batch':>9} {'(min)':>8} {'users/s':>9} {'vs matmul':>10} "
           f"{'vs chunked':>11} {'+RSS MB':>8} {'TF MB':>7}")
    print(hdr)
    print("-" * len(hdr))
    for r in results["sizes"]:
        for name, m in r["methods"].items():
            print(
                f"{r['songs']:>9,} {name:<20} {m['ms_per_batch_median']:>9.1f} {m['ms_per_batch_min']:>8.1f} "
                f"{m['users_per_s']:>9.1f} {m['throughput_vs_tf_matmul']:>10.3f} "
                f"{m['throughput_vs_tf_matmul_chunked']:>11.3f} {fmt_mb(m['peak_rss_delta_mb']):>8} "
                f"{fmt_mb(m['tf_alloc_peak_mb']):>7}"
            )
        extra = [f"ours vs FAISS x{r.get('ours_speedup_vs_faiss', float('nan'))}",
                 f"vs tf_naive x{r['ours_speedup_vs_tf_naive']}", f"vs numpy x{r['ours_speedup_vs_numpy']}",
                 f"fallback users {r['ours_fallback_users']}",
                 f"same set as tf_naive {r['check_batch0']['users_same_set_as_tf_naive']:.3f}"]
        print(" " * 10 + "; ".join(extra))
    lat = results.get("single_user")
    if lat:
        print(
            f"\nsingle user, {lat['songs']:,} songs: ours {lat['ours_ms_median']} ms (min {lat['ours_ms_min']}), "
            f"stream catalogue once {lat['stream_catalogue_once_ms_median']} ms (min {lat['stream_catalogue_once_ms_min']}), "
            f"ratio {lat['ours_vs_stream_median']} (min/min {lat['ours_vs_stream_min']}); "
            f"single-user tf.matmul {lat['single_user_tf_matmul_ms_median']} ms"
        )
    print(f"process peak RSS (ru_maxrss): {results['ru_maxrss_mb']} MB; load average {results['loadavg_start']} -> {results['loadavg_end']}")


def scaling(n, seed, ks=(10, 100, 500, 2000), batch_sizes=(16, 64, 256, 1024), reps=3):
    """How ours grows with k and with the batch (users scored together) at one catalogue size,
    next to tf_matmul on the same batches (interleaved), and the share of the float64
    re-ranking (``ours`` minus the float32 kernel call alone, ``float32_kernel``)."""
    catalogue = make_catalogue(n, seed)
    rows = []
    for bs in batch_sizes:
        scorer = CatalogueScorer(catalogue, batch_size=bs)
        flat = tf.reshape(scorer._cat3, [-1, DIM])[:n]
        matmul = tf.function(lambda p: tf.matmul(p, flat, transpose_b=True)[:, :1], autograph=False)
        hists = make_histories(bs, n, seed + bs)
        packed = pack_histories([h.tolist() for h in hists], num_songs=n)
        p64 = scorer.profiles64(packed)
        p_tf = tf.constant(p64.astype(np.float32))
        for k in (ks if bs == BATCH else (K,)):
            kk = k + max(8, k // 16)
            scorer.recommend_packed(packed, k)  # trace
            scorer._run("stream", packed, p64.astype(np.float32), kk)
            matmul(p_tf).numpy()
            times = {"ours": [], "float32_kernel": [], "tf_matmul": []}
            for _ in range(reps):
                t = time.perf_counter()
                scorer.recommend_packed(packed, k)
                times["ours"].append(time.perf_counter() - t)
                t = time.perf_counter()
                scorer._run("stream", packed, p64.astype(np.float32), kk)
                times["float32_kernel"].append(time.perf_counter() - t)
                t = time.perf_counter()
                matmul(p_tf).numpy()
                times["tf_matmul"].append(time.perf_counter() - t)
            med = {name: statistics.median(v) for name, v in times.items()}
            row = {"songs": n, "batch": bs, "k": k,
                   "ours_users_per_s": round(bs / med["ours"], 1),
                   "tf_matmul_users_per_s": round(bs / med["tf_matmul"], 1),
                   "ours_vs_matmul": round(med["tf_matmul"] / med["ours"], 3),
                   "float64_rerank_share": round(1 - med["float32_kernel"] / med["ours"], 3)}
            print(f"[scaling] {row}", flush=True)
            rows.append(row)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="100,000 songs only, 2 batches, 1 round")
    ap.add_argument("--sizes", type=int, nargs="*", help="catalogue sizes (default 100000 386213 1000000)")
    ap.add_argument("--batches", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--no-faiss", action="store_true")
    ap.add_argument("--output", default=str(RESULTS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-memory", action="store_true", help="skip the per-method memory subprocesses")
    ap.add_argument("--probe-memory", metavar="METHOD", help=argparse.SUPPRESS)
    ap.add_argument("--scaling", type=int, metavar="SONGS", default=None,
                    help="also time ours vs tf_matmul for k in 10/100/500/2000 and batches of "
                    "16/64/256/1024 users at this catalogue size (e.g. 386213)")
    args = ap.parse_args(argv)
    if args.probe_memory:
        run_memory_probe(args.probe_memory, (args.sizes or [100_000])[0], args.seed)
        return 0
    sizes = args.sizes or ([100_000] if args.quick else [100_000, 386_213, 1_000_000])
    n_batches = args.batches or (2 if args.quick else 4)
    rounds = args.rounds or (1 if args.quick else 3)

    results = {"machine": machine_info(), "loadavg_start": loadavg(), "quick": args.quick, "sizes": []}
    results["notes"] = (
        "users/s = 256 / median batch time; vs matmul = tf_matmul time / method time (>= 0.9 is the "
        "goal for ours); vs chunked = the same against tf_matmul_chunked. +RSS MB = peak RSS increase "
        "while the method runs (thread sampling /proc/self/statm every ~2 ms). The machine is shared: "
        "see loadavg; methods are interleaved per batch so load affects all of them. Memory: per "
        "method in a fresh subprocess (see the module docstring)."
    )
    latency = None
    for i, n in enumerate(sizes):
        print(f"[bench_kernel] {n:,} songs ...", flush=True)
        last = i == len(sizes) - 1
        res, lat = bench_size(
            n, n_batches, rounds, args.seed + 10 * i, with_faiss=not args.no_faiss, latency=last,
            measure_memory=not args.no_memory,
        )
        results["sizes"].append(res)
        latency = lat or latency
    results["single_user"] = latency
    if args.scaling:
        print(f"[bench_kernel] scaling with k and batch at {args.scaling:,} songs ...", flush=True)
        results["scaling"] = scaling(args.scaling, args.seed + 99)
    results["loadavg_end"] = loadavg()
    results["ru_maxrss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print()
    print_table(results)
    out = pathlib.Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
