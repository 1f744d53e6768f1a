"""Scale soak of the recommendation job: 1,000,000 songs × 110,000 users on this machine, with
peak memory measured. Not part of CI: on 2 cores the scoring alone takes ~11 min, and today the
full run needs ~39 GiB on the DirectRunner, more than this 24 GB machine (docs/reliability.md).

    python benchmarks/soak_recommend.py                          # the full soak
    python benchmarks/soak_recommend.py --songs 100000 --users 11000 --label scaled_0.1

What it does:
1. Writes the catalogue directly as feature CSV shards in the feature pipeline's format
   (header ``track_id,song_id,f00,…,f89``, L2-normalised float32 rows that round-trip exactly):
   generating a million MSD HDF5 files (≈10 ms and 264 kB each) and running the feature job
   over them is a different benchmark. Songs are drawn around ``--styles`` planted style
   centres, so users' tastes have structure to find.
2. Writes Taste-Profile-like triplets (``user\\tsong\\tcount``): history lengths from
   ``msd.synthetic.sample_history_lengths`` (at least 10, median ≈ 30, a tail into the
   thousands), ≈87 % of a user's songs from 1–3 favourite styles with Zipf-like popularity
   inside a style, the rest by global popularity; one line per (user, song), Zipf play counts.
3. Runs ``python -m pipelines.recommend --k 500`` (``--config`` to add one) over them as a
   subprocess under ``/usr/bin/time -v`` and polls ``/proc`` every 0.5 s for the whole process
   tree (the job, RunInference's shared-model server process and anything else it starts):
   the summed RSS (over-counts pages shared between processes) and the summed PSS (shared
   pages split between sharers: the honest total), plus the largest single process's peak
   RSS from ``time -v``.
4. Checks the output: one row per user, k songs each, and for a sample of users the songs
   equal a float64 brute force (up to float32 near-ties).
5. Writes everything to ``benchmarks/results/soak_recommend.json`` under ``--label``, keeping
   the other labels already there (so the full run and scaled runs sit side by side).

Inputs are cached in ``--workdir`` (same sizes and seed → reused); ``--keep`` keeps the job's
output too.
"""
import argparse
import datetime
import json
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import threading
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from msd import synthetic  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "soak_recommend.json"
DIM = 90
RUN_DATE = "2026-01-01"
SHARD_ROWS = 50_000


# -- inputs --------------------------------------------------------------------------------

def track_ids(count: int) -> np.ndarray:
    return np.array([f"TR{i:016X}" for i in range(count)], dtype=object)


def song_ids(count: int) -> np.ndarray:
    return np.array([f"SO{i:016X}" for i in range(count)], dtype=object)


def user_ids(count: int) -> list[str]:
    return [f"{(u * 2654435761 + 12345) % (1 << 160):040x}" for u in range(count)]


def catalogue(num_songs: int, num_styles: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(style of each song, float32 L2-normalised feature rows), deterministic in the seed."""
    rng = np.random.default_rng([seed, 1])
    centres = rng.normal(size=(num_styles, DIM))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    style = rng.integers(0, num_styles, num_songs)
    features = np.empty((num_songs, DIM), np.float32)
    for start in range(0, num_songs, 100_000):
        stop = min(num_songs, start + 100_000)
        rows = centres[style[start:stop]] + rng.normal(0, 0.12, (stop - start, DIM))
        features[start:stop] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return style, features


def write_catalogue(directory: pathlib.Path, features: np.ndarray) -> int:
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    directory.mkdir(parents=True, exist_ok=True)
    header = ",".join(["track_id", "song_id"] + [f"f{i:02d}" for i in range(DIM)]) + "\n"
    n = len(features)
    shards = -(-n // SHARD_ROWS)
    total = 0
    for shard in range(shards):
        start, stop = shard * SHARD_ROWS, min(n, (shard + 1) * SHARD_ROWS)
        columns = {"track_id": pa.array([f"TR{i:016X}" for i in range(start, stop)]),
                   "song_id": pa.array([f"SO{i:016X}" for i in range(start, stop)])}
        for j in range(DIM):
            columns[f"f{j:02d}"] = pa.array(features[start:stop, j])
        path = directory / f"part-{shard:05d}-of-{shards:05d}.csv"
        with open(path, "wb") as handle:
            handle.write(header.encode())
            pa_csv.write_csv(pa.table(columns), handle,
                             pa_csv.WriteOptions(include_header=False, quoting_style="none"))
        total += path.stat().st_size
    return total


def listens(num_songs: int, num_users: int, style: np.ndarray, seed: int):
    """(user index, song index, play count) arrays, sorted by user then song, distinct pairs."""
    rng = np.random.default_rng([seed, 2])
    num_styles = int(style.max()) + 1
    lengths = synthetic.sample_history_lengths(rng, num_users, num_songs)
    # Popularity: Zipf-like over a random order of each style's songs.
    order = np.argsort(style, kind="stable")
    counts = np.bincount(style, minlength=num_styles)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    rank_in_style = np.empty(num_songs)
    for s in range(num_styles):
        rank_in_style[offsets[s]:offsets[s + 1]] = rng.permutation(counts[s])
    weight = (rank_in_style + synthetic.POPULARITY_ZIPF_OFFSET) ** -synthetic.POPULARITY_ZIPF_EXPONENT
    # Cumulative weights per style, each style mapped onto [s, s + 1).
    style_cumulative = np.empty(num_songs)
    for s in range(num_styles):
        part = np.cumsum(weight[offsets[s]:offsets[s + 1]])
        style_cumulative[offsets[s]:offsets[s + 1]] = s + part / part[-1]
    global_cumulative = np.cumsum(weight * counts[style[order]] / num_songs)
    global_cumulative /= global_cumulative[-1]

    favourites_count = rng.choice(synthetic.FAVOURITE_STYLE_COUNTS, num_users,
                                  p=synthetic.FAVOURITE_STYLE_COUNT_PROBS)
    favourites = rng.integers(0, num_styles, (num_users, 3))
    favourite_share = rng.beta(*synthetic.FAVOURITE_SHARE_BETA, num_users)
    draws = (lengths * 1.3).astype(np.int64) + 4  # extra draws: duplicates are dropped
    user = np.repeat(np.arange(num_users), draws)
    pick = (rng.random(len(user)) * favourites_count[user]).astype(np.int64)
    chosen_style = favourites[user, pick]
    u = rng.random(len(user))
    in_style = np.searchsorted(style_cumulative, chosen_style + u, side="right")
    in_style = np.minimum(in_style, offsets[chosen_style + 1] - 1)
    popular = np.minimum(np.searchsorted(global_cumulative, rng.random(len(user))), num_songs - 1)
    song = np.where(rng.random(len(user)) < favourite_share[user], order[in_style], order[popular])
    keys = np.unique(user.astype(np.int64) * num_songs + song)
    user, song = keys // num_songs, keys % num_songs
    # Keep at most `lengths[u]` songs per user (the first ones by song index).
    start = np.searchsorted(user, np.arange(num_users))
    position = np.arange(len(user)) - start[user]
    keep = position < lengths[user]
    user, song = user[keep], song[keep]
    plays = np.minimum(rng.zipf(synthetic.PLAY_COUNT_ZIPF, len(user)), synthetic.PLAY_COUNT_MAX)
    return user, song, plays


def write_triplets(path: pathlib.Path, users, songs, plays, num_songs: int, num_users: int) -> int:
    uid = user_ids(num_users)
    sid = song_ids(num_songs)
    with open(path, "w", encoding="ascii", newline="\n") as handle:
        for start in range(0, len(users), 500_000):
            stop = min(len(users), start + 500_000)
            handle.write("".join(f"{uid[u]}\t{sid[s]}\t{c}\n" for u, s, c in zip(
                users[start:stop].tolist(), songs[start:stop].tolist(),
                plays[start:stop].tolist())))
    return path.stat().st_size


# -- measuring ----------------------------------------------------------------------------

def process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(name))
        except OSError:
            continue
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def memory_of(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in bytes of one process (0, 0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            values = {line.split(":")[0]: int(line.split()[1]) * 1024
                      for line in handle if line.split(":")[0] in ("Rss", "Pss")}
        return values.get("Rss", 0), values.get("Pss", 0)
    except OSError:
        return 0, 0


class TreeMemoryPoller(threading.Thread):
    """Polls the process tree's memory; kills the tree (SIGKILL to its process group) if its
    PSS goes over ``limit`` bytes, so a run that would exhaust a shared machine stops first."""

    def __init__(self, root: int, interval: float = 0.5, limit: float = float("inf")):
        super().__init__(daemon=True)
        self.root, self.interval, self.limit = root, interval, limit
        self.killed_at = None  # (seconds, pss) when the limit stopped the job
        self.peak_rss = self.peak_pss = self.peak_processes = 0
        self.timeline = []  # (seconds, rss, pss, processes), one every 10 s
        self._halt = threading.Event()
        self._start = time.monotonic()

    def run(self):
        last_logged = -10.0
        while not self._halt.is_set():
            pids = process_tree(self.root)
            rss = pss = 0
            for pid in pids:
                r, p = memory_of(pid)
                rss, pss = rss + r, pss + p
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
            self.peak_processes = max(self.peak_processes, len(pids))
            now = time.monotonic() - self._start
            if pss > self.limit and self.killed_at is None:
                self.killed_at = (round(now, 1), pss)
                print(f"  {now:7.0f} s  tree PSS {pss / 2**30:.2f} GiB is over the limit: "
                      "killing the job", flush=True)
                try:
                    os.killpg(self.root, 9)
                except ProcessLookupError:
                    pass
            if now - last_logged >= 10:
                self.timeline.append((round(now, 1), rss, pss, len(pids)))
                last_logged = now
                print(f"  {now:7.0f} s  tree RSS {rss / 2**30:6.2f} GiB  PSS {pss / 2**30:6.2f} GiB "
                      f"({len(pids)} processes)", flush=True)
            self._halt.wait(self.interval)

    def stop(self):
        self._halt.set()
        self.join()


def time_v_value(text: str, key: str) -> str:
    for line in text.splitlines():
        if line.strip().startswith(key):
            return line.split(":", 1)[1].strip()
    return ""


# -- checking ------------------------------------------------------------------------------

def check_sample(output: pathlib.Path, features: np.ndarray, users, songs, num_users: int,
                 k: int, sample: int = 20) -> dict:
    import pyarrow.parquet as pq

    partition = output / f"run_date={RUN_DATE}"
    files = sorted(partition.glob("*.parquet"))
    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    uid = user_ids(num_users)
    index_of_user = {u: i for i, u in enumerate(uid)}
    start = np.searchsorted(users, np.arange(num_users + 1))
    table = pq.ParquetFile(files[0]).read_row_group(0, columns=["user_id", "recommendations"])
    picked = table.slice(0, sample).to_pylist()
    checked = exact = 0
    worst_gap = 0.0
    f64 = features.astype(np.float64)
    for row in picked:
        u = index_of_user[row["user_id"]]
        history = songs[start[u]:start[u + 1]]
        scores = f64 @ f64[history].sum(axis=0)
        scores[history] = -np.inf
        got = [int(r["track_id"][2:], 16) for r in row["recommendations"]]
        assert len(got) == k == len(set(got)) and not set(got) & set(history.tolist())
        best = np.argsort(-scores, kind="stable")[:k]
        checked += 1
        exact += got == best.tolist()
        # Whatever differs must be a float32 near-tie: the k-th scores agree closely.
        worst_gap = max(worst_gap, float(scores[best[-1]] - scores[got].min()))
    return {"rows": rows, "users_checked": checked, "identical_to_float64_order": exact,
            "worst_kth_score_gap": worst_gap}


def kernel_baseline(features: np.ndarray, users, songs, num_users: int, k: int) -> dict:
    """The kernel alone over the same histories (the users the job scores), timed."""
    from recommend import kernel

    start = np.searchsorted(users, np.arange(num_users + 1))
    histories = [songs[start[u]:start[u + 1]] for u in range(num_users) if start[u + 1] > start[u]]
    scorer = kernel.CatalogueScorer(features)
    scorer.recommend(histories[:256], k=k)  # compile the graphs, as the job's model does
    began = time.monotonic()
    scorer.recommend(histories, k=k)
    seconds = time.monotonic() - began
    return {"users": len(histories), "seconds": round(seconds, 1),
            "users_per_second": round(len(histories) / seconds, 1),
            "what": "CatalogueScorer.recommend over all users with listens, batches of 256, "
                    "after one warm-up batch; histories as catalogue rows (no parsing, "
                    "grouping or writing)"}


# -- main ------------------------------------------------------------------------------------

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--songs", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=110_000)
    parser.add_argument("--styles", type=int, default=40)
    parser.add_argument("--k", type=int, default=500)
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument("--workdir", default="/tmp/msd_soak")
    parser.add_argument("--config", default="none",
                        help="the job's --config, e.g. configs/local.yaml; 'none' (default): "
                        "Beam's default single worker — local.yaml's two threads lose data on "
                        "large text inputs (docs/reliability.md, B7)")
    parser.add_argument("--label", default=None, help="key in the results file "
                        "(default: full when 1M × 110k, else scaled_<songs>x<users>)")
    parser.add_argument("--keep", action="store_true", help="keep the job's output")
    parser.add_argument("--kernel_baseline", action="store_true",
                        help="after the job, time the kernel alone (CatalogueScorer, batches of "
                        "256) on the same catalogue and histories in this process: the job's "
                        "wall time / the kernel's is the pipeline overhead (issue 5: <= 1.5)")
    parser.add_argument("--memory_limit_gib", type=float, default=18.0,
                        help="kill the job if its process tree's PSS goes over this (the "
                        "machine is shared; default 18 GiB of 24)")
    args = parser.parse_args(argv)
    label = args.label or ("full" if (args.songs, args.users) == (1_000_000, 110_000)
                           else f"scaled_{args.songs}x{args.users}")
    work = pathlib.Path(args.workdir) / f"{args.songs}x{args.users}_s{args.seed}"
    work.mkdir(parents=True, exist_ok=True)
    result = {"label": label, "songs": args.songs, "users_generated": args.users, "k": args.k,
              "styles": args.styles, "seed": args.seed,
              "started_at": datetime.datetime.now(datetime.timezone.utc).isoformat(
                  timespec="seconds")}

    print(f"soak {label}: {args.songs:,} songs × {args.users:,} users, k={args.k} in {work}")
    started = time.monotonic()
    style, features = catalogue(args.songs, args.styles, args.seed)
    features_dir = work / "features" / "csv"
    marker = work / "inputs.json"
    users, songs, plays = listens(args.songs, args.users, style, args.seed)
    triplets = work / "train_triplets.txt"
    if not marker.exists():
        shutil.rmtree(features_dir, ignore_errors=True)
        csv_bytes = write_catalogue(features_dir, features)
        triplet_bytes = write_triplets(triplets, users, songs, plays, args.songs, args.users)
        marker.write_text(json.dumps({"csv_bytes": csv_bytes, "triplet_bytes": triplet_bytes}))
    sizes = json.loads(marker.read_text())
    lengths = np.bincount(users, minlength=args.users)
    result["inputs"] = {
        "feature_csv_bytes": sizes["csv_bytes"], "triplets_bytes": sizes["triplet_bytes"],
        "listens": int(len(users)), "history_median": float(np.median(lengths)),
        "history_p99": float(np.percentile(lengths, 99)), "history_max": int(lengths.max()),
        "catalogue_float32_bytes": int(features.nbytes),
        "seconds_to_generate_or_load": round(time.monotonic() - started, 1)}
    print(f"  inputs: {len(users):,} listens, history median {np.median(lengths):.0f}, "
          f"max {lengths.max():,}; CSV {sizes['csv_bytes'] / 1e9:.2f} GB, "
          f"triplets {sizes['triplet_bytes'] / 1e9:.2f} GB")

    output = work / "out"
    shutil.rmtree(output, ignore_errors=True)
    config = [] if args.config in ("", "none") else ["--config", args.config]
    command = ["/usr/bin/time", "-v", sys.executable, "-m", "pipelines.recommend",
               *config, "--features", str(features_dir / "part-*.csv"),
               "--listens", str(triplets), "--output", str(output), "--k", str(args.k),
               "--run_date", RUN_DATE]
    result["command"] = " ".join(command[2:])
    log = work / "job.log"
    job_started = time.monotonic()
    with open(log, "wb") as handle:
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        process = subprocess.Popen(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT,
                                   env=env, start_new_session=True)
        poller = TreeMemoryPoller(process.pid, limit=args.memory_limit_gib * 2**30)
        poller.start()
        process.wait()
        poller.stop()
    wall = time.monotonic() - job_started
    text = log.read_text(errors="replace")
    result["job"] = {
        "return_code": process.returncode, "wall_seconds": round(wall, 1),
        "peak_tree_rss_bytes": poller.peak_rss, "peak_tree_pss_bytes": poller.peak_pss,
        "peak_processes": poller.peak_processes,
        "memory_limit_gib": args.memory_limit_gib,
        "killed_over_memory_limit_at": (None if poller.killed_at is None else {
            "seconds": poller.killed_at[0], "tree_pss_bytes": poller.killed_at[1]}),
        "max_single_process_rss_bytes": int(time_v_value(text, "Maximum resident set size")
                                            or 0) * 1024,
        "user_cpu_seconds": float(time_v_value(text, "User time (seconds)") or 0),
        "system_cpu_seconds": float(time_v_value(text, "System time (seconds)") or 0),
        "memory_timeline": [{"seconds": s, "tree_rss_gib": round(r / 2**30, 2),
                             "tree_pss_gib": round(p / 2**30, 2), "processes": n}
                            for s, r, p, n in poller.timeline],
        "measured_with": "/proc/<pid>/smaps_rollup Rss and Pss summed over the job's process "
                         "tree every 0.5 s (PSS splits shared pages between processes); "
                         "largest single process from /usr/bin/time -v",
    }
    print(f"  job: return code {process.returncode}, {wall / 60:.1f} min, peak tree PSS "
          f"{poller.peak_pss / 2**30:.2f} GiB, RSS {poller.peak_rss / 2**30:.2f} GiB")
    if process.returncode == 0:
        summary = json.loads((output / "_reports" / f"run_date={RUN_DATE}" /
                              "run_summary.json").read_text())
        users_with_listens = int((lengths > 0).sum())
        result["users_with_listens"] = users_with_listens
        result["users_lost"] = users_with_listens - summary["users_written"] - summary[
            "users_rejected"]
        result["summary"] = {key: summary[key] for key in (
            "duration_seconds", "listen_lines_read", "listens_parsed", "listens_rejected",
            "listens_used", "users_scored", "users_fallback", "users_rejected",
            "users_written", "listens_reconcile")}
        result["check"] = check_sample(output, features, users, songs, args.users, args.k)
        result["check"]["rows_equal_users_written"] = (
            result["check"]["rows"] == summary["users_written"])
        result["output_bytes"] = sum(p.stat().st_size for p in output.rglob("*") if p.is_file())
        result["users_per_second"] = round(summary["users_written"] / wall, 1)
    else:
        result["log_tail"] = text[-3000:]
    if args.kernel_baseline:
        result["kernel_only"] = kernel_baseline(features, users, songs, args.users, args.k)
        if process.returncode == 0:
            result["job_over_kernel"] = round(wall / result["kernel_only"]["seconds"], 2)
        print(f"  kernel alone: {result['kernel_only']['seconds'] / 60:.1f} min "
              f"({result['kernel_only']['users_per_second']:.0f} users/s); job / kernel = "
              f"{result.get('job_over_kernel')}")
    result["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(),
                         "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
                         "python": platform.python_version()}
    if not args.keep:
        shutil.rmtree(output, ignore_errors=True)

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    everything = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    everything.setdefault("runs", {})[label] = result
    RESULTS.write_text(json.dumps(everything, indent=2, sort_keys=True) + "\n")
    print(f"  → {RESULTS} [{label}]")
    return 0 if process.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
