"""Benchmark of the feature pipeline (issue 5): songs/s of the whole job against the bound.

    python -m benchmarks.bench_features                    # 20,000 synthetic files
    python -m benchmarks.bench_features --songs 2000 --repeats 1 --no_stages   # a quick run

1. Generates ``--songs`` synthetic per-track MSD HDF5 files with the project's generator
   (``msd.synthetic.synthesize``, as ``python -m pipelines.synthesize``), cached in
   ``--work_dir/songs<N>_seed<S>`` (a rerun with the same sizes and seed reuses them), then reads
   every file once so that all measurements start with the files in the page cache.
2. The BOUND: ``multiprocessing.Pool(--workers)`` over the files; each task opens one file with
   h5py, reads ``analysis/segments_timbre`` and computes the 90 statistics with
   ``msd.timbre.timbre_statistics`` (the "plain h5py + numpy loop" of the issue). No validation,
   no metadata, no output: a lower bound on the work, so an upper bound on songs/s.
3. The WHOLE job: ``pipelines.features.run([...])`` on the DirectRunner over the same files
   (TFT and all writing included), once per runner mode: ``local`` = ``--config
   configs/local.yaml`` as committed, ``multi_processing`` = the same plus
   ``--direct_num_workers=<workers> --direct_running_mode=multi_processing``. songs/s = files /
   seconds of ``run()`` (pipeline construction, execution and publishing; not the interpreter
   start-up and imports, reported apart as ``process_seconds``). Ratio = pipeline / bound.
4. Stage shares, by DIFFERENCES of reduced pipelines built from the project's own PTransforms on
   the same files and runner mode: ``match`` (match + the file-level ``Distinct`` shuffle, which
   also spreads files over workers), ``read`` (``read_msd.ReadMsdSongs``: + read, parse,
   statistics), ``dedupe`` (+ ``DropDuplicateTracks`` and the dead-letter output), ``tft`` (+
   batching and ``AnalyzeAndTransformDataset`` with ``WriteTransformFn``), and ``full``. Each
   includes the same fixed cost (pipeline construction, runner start-up), which the ``match`` run
   carries; stage = difference of consecutive runs. As a cross-check each run also times every
   fused stage the runner executes (FnApiRunner runs them one after the other; each bundle is
   split over the workers), in ``fused_stages``.

Every measurement runs in a fresh subprocess, the variants interleaved within each repetition
so that load from other jobs on this shared machine hits all of them alike; the load average is
recorded before and after each. Peak memory: RSS and PSS summed over the subprocess tree
(``/proc/<pid>/smaps_rollup`` every 0.5 s; PSS splits shared pages, the honest total).
Results: ``benchmarks/results/features.json``.
"""
import argparse
import datetime
import hashlib
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.soak_recommend import TreeMemoryPoller  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "features.json"
MODES = ("local", "multi_processing")
STAGE_VARIANTS = ("match", "read", "dedupe", "tft")
STAGE_NAMES = {"read": "read_parse_statistics", "dedupe": "dedupe_shuffles",
               "tft": "tft_analyze_transform", "full": "write_tfrecord_csv_parquet"}


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine_info() -> dict:
    import apache_beam
    import h5py

    from benchmarks.bench_kernel import machine_info as kernel_machine_info
    info = kernel_machine_info()
    for key in ("faiss", "faiss_threads", "tf_gpus"):
        info.pop(key, None)
    info.update(apache_beam=apache_beam.__version__, h5py=h5py.__version__,
                hdf5=h5py.version.hdf5_version)
    try:
        info["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, text=True,
                                            capture_output=True).stdout.strip()
    except OSError:
        pass
    return info


# -- inputs ----------------------------------------------------------------------------------

def h5_files(data_dir: pathlib.Path) -> list[str]:
    return sorted(str(path) for path in data_dir.rglob("*.h5"))


def prepare_data(work_dir: pathlib.Path, songs: int, seed: int) -> tuple[pathlib.Path, dict]:
    """The cached synthetic data set (generated when its manifest is missing)."""
    from msd import synthetic

    folder = work_dir / f"songs{songs}_seed{seed}"
    manifest = folder / synthetic.MANIFEST_FILENAME
    info = {"folder": str(folder), "generated_now": False}
    if not manifest.exists():
        print(f"[bench_features] generating {songs:,} synthetic files in {folder} ...", flush=True)
        started = time.monotonic()
        synthetic.synthesize(str(folder), songs, seed=seed, overwrite=True, progress=True)
        info.update(generated_now=True, generate_seconds=round(time.monotonic() - started, 1))
    data_dir = folder / synthetic.DATA_DIRNAME
    paths = h5_files(data_dir)
    if len(paths) != songs:
        raise SystemExit(f"{data_dir} holds {len(paths)} files, expected {songs}; delete {folder}")
    started = time.monotonic()
    size = 0
    for path in paths:  # page cache warm-up: every measurement starts from cached files
        with open(path, "rb") as handle:
            size += len(handle.read())
    info.update(files=len(paths), bytes=size, warm_read_seconds=round(time.monotonic() - started, 1))
    return data_dir, info


# -- the child runs (one measurement per subprocess) -------------------------------------------

def _bound_task(path: str):
    import h5py

    from msd import timbre
    with h5py.File(path, "r") as h5:
        matrix = h5["analysis/segments_timbre"][()]
    return timbre.timbre_statistics(matrix)


def child_bound(data_dir: str, workers: int) -> dict:
    import multiprocessing

    import numpy as np
    started = time.perf_counter()
    paths = h5_files(pathlib.Path(data_dir))
    with multiprocessing.Pool(workers) as pool:
        rows = list(pool.imap_unordered(_bound_task, paths, chunksize=16))
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "songs": len(rows),
            "statistics_sum": float(np.sum(rows, dtype=np.float64))}


class _FusedStageTimer:
    """Wall time of every fused stage the FnApiRunner executes (it runs them one at a time)."""

    def __init__(self):
        from apache_beam.runners.portability.fn_api_runner import fn_runner
        self.seconds: dict[str, float] = {}
        original = fn_runner.FnApiRunner._execute_bundle
        timer = self

        def timed(runner, context, bundle_context_manager, bundle_input):
            started = time.perf_counter()
            try:
                return original(runner, context, bundle_context_manager, bundle_input)
            finally:
                name = bundle_context_manager.stage.name
                timer.seconds[name] = timer.seconds.get(name, 0.0) + time.perf_counter() - started

        fn_runner.FnApiRunner._execute_bundle = timed

    def top(self, count: int = 12) -> list[dict]:
        ranked = sorted(self.seconds.items(), key=lambda item: -item[1])[:count]
        return [{"stage": _short_stage(name), "seconds": round(value, 2)} for name, value in ranked]


def _short_stage(name: str) -> str:
    """``((ref_AppliedPTransform_ReadMsd-Parse_12)+(...))`` → ``ReadMsd-Parse + ...``."""
    parts = [part.strip("()") for part in name.split(")+(")]
    parts = [part.replace("ref_AppliedPTransform_", "").rsplit("_", 1)[0] for part in parts]
    return " + ".join(parts)[:300]


def _partial_pipeline(variant: str, argv: list[str], output_dir: str) -> None:
    """The job cut after a stage, from the job's own building blocks (see the module doc)."""
    import apache_beam as beam
    from apache_beam.io import fileio

    from pipelines import features, launcher
    from transforms import read_msd

    options, job = launcher.parse_job_options(
        "features", argv, features.FeaturesOptions, features.FeaturesOptions.validate_features_options)
    patterns = [read_msd.expand_input(item) for item in job.input]
    os.makedirs(output_dir, exist_ok=True)
    with beam.Pipeline(options=options) as pipeline:
        if variant == "match":  # ReadMsdSongs up to its file-level Distinct
            last = (pipeline | "Patterns" >> beam.Create(patterns)
                    | "Match" >> fileio.MatchAll(fileio.EmptyMatchTreatment.ALLOW)
                    | "PathAndSize" >> beam.Map(lambda m: (m.path, m.size_in_bytes))
                    | "DistinctFiles" >> beam.Distinct())
        elif variant == "read":
            parsed = pipeline | "ReadMsd" >> read_msd.ReadMsdSongs(
                patterns, job.min_segments, job.max_segments, job.max_file_bytes)
            _ = parsed[read_msd.REJECTED] | "DropRejected" >> beam.Filter(lambda item: False)
            last = parsed[read_msd.SONGS]
        else:
            last = features.read_unique_songs(pipeline, job, patterns, output_dir)
            if variant == "tft":
                last, _schema = features.normalise(last, job.normalization,
                                                   os.path.join(output_dir, "tft_tmp"), output_dir)
            else:
                assert variant == "dedupe", variant
        _ = last | "Drop" >> beam.Filter(lambda item: False)


def _csv_digest(output_dir: str) -> str:
    """SHA-256 of the sorted CSV rows: equal outputs across runner modes, whatever the sharding."""
    lines = []
    for path in sorted(pathlib.Path(output_dir, "csv").glob("part-*.csv")):
        with open(path, encoding="utf-8") as handle:
            next(handle)
            lines.extend(handle.read().splitlines())
    lines.sort()
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def child_pipeline(variant: str, argv: list[str], output_dir: str) -> dict:
    timer = _FusedStageTimer()
    started = time.perf_counter()
    result = {}
    if variant == "full":
        from pipelines import features
        summary = features.run(argv)
        result["summary"] = {key: summary[key] for key in (
            "files_matched", "files_parsed", "files_rejected", "songs_seen", "songs_written",
            "songs_rejected", "files_reconcile", "songs_reconcile", "rejected_by_reason")}
    else:
        _partial_pipeline(variant, argv, output_dir)
    result["seconds"] = time.perf_counter() - started
    result["fused_stages"] = timer.top()
    if variant == "full":
        result["csv_sha256"] = _csv_digest(output_dir)
    return result


def child_main(spec: dict) -> int:
    if spec["variant"] == "bound":
        result = child_bound(spec["data_dir"], spec["workers"])
    else:
        import logging
        logging.getLogger().setLevel(logging.WARNING)
        result = child_pipeline(spec["variant"], spec["argv"], spec["output_dir"])
    print("RESULT " + json.dumps(result), flush=True)
    return 0


# -- the parent ------------------------------------------------------------------------------

def mode_flags(mode: str, workers: int) -> list[str]:
    flags = ["--config", str(REPO / "configs" / "local.yaml")]
    if mode == "multi_processing":
        flags += [f"--direct_num_workers={workers}", "--direct_running_mode=multi_processing"]
    return flags


def run_child(spec: dict, log_path: pathlib.Path) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO))
    load_before = loadavg()
    started = time.monotonic()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.bench_features", "--child", json.dumps(spec)],
            cwd=REPO, stdout=subprocess.PIPE, stderr=log, env=env, start_new_session=True)
        poller = TreeMemoryPoller(process.pid, interval=0.5)
        poller.start()
        stdout, _ = process.communicate()
        poller.stop()
    wall = time.monotonic() - started
    lines = [line for line in stdout.decode(errors="replace").splitlines()
             if line.startswith("RESULT ")]
    if process.returncode != 0 or not lines:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise SystemExit(f"[bench_features] {spec['variant']} failed "
                         f"(return code {process.returncode}); log {log_path}:\n{tail}")
    result = json.loads(lines[-1][len("RESULT "):])
    result.update(process_seconds=round(wall, 2), peak_tree_rss_bytes=poller.peak_rss,
                  peak_tree_pss_bytes=poller.peak_pss, peak_processes=poller.peak_processes,
                  loadavg_before=load_before, loadavg_after=loadavg())
    result["seconds"] = round(result["seconds"], 2)
    return result


def summarise(runs: list[dict], songs: int) -> dict:
    seconds = [run["seconds"] for run in runs]
    median = statistics.median(seconds)
    return {"seconds_median": round(median, 2), "seconds_min": round(min(seconds), 2),
            "songs_per_second": round(songs / median, 1),
            "peak_tree_pss_mb": round(max(r["peak_tree_pss_bytes"] for r in runs) / 2**20, 1),
            "peak_tree_rss_mb": round(max(r["peak_tree_rss_bytes"] for r in runs) / 2**20, 1),
            "runs": runs}


def print_table(results: dict) -> None:
    songs = results["data"]["files"]
    bound = results["bound"]
    print()
    header = f"{'measurement':<34} {'s (median)':>10} {'songs/s':>9} {'x bound':>8} {'PSS MB':>8} {'RSS MB':>8}"
    print(header)
    print("-" * len(header))
    print(f"{'bound (Pool, h5py + numpy)':<34} {bound['seconds_median']:>10.1f} "
          f"{bound['songs_per_second']:>9.1f} {1:>8.3f} {bound['peak_tree_pss_mb']:>8.0f} "
          f"{bound['peak_tree_rss_mb']:>8.0f}")
    for mode, entry in results["pipeline"].items():
        print(f"{'pipeline ' + mode:<34} {entry['seconds_median']:>10.1f} "
              f"{entry['songs_per_second']:>9.1f} {entry['ratio_to_bound']:>8.3f} "
              f"{entry['peak_tree_pss_mb']:>8.0f} {entry['peak_tree_rss_mb']:>8.0f}")
    print(f"fastest mode: {results['fastest_mode']} (goal: pipeline >= 0.7 x bound, "
          f"{'met' if results['goal_met'] else 'not met'})")
    for mode, shares in results.get("stage_shares", {}).items():
        print(f"\nstage shares, {mode} ({songs:,} songs; differences of reduced pipelines):")
        for name, entry in shares["stages"].items():
            print(f"  {name:<34} {entry['seconds']:>8.1f} s {100 * entry['share']:>6.1f} %")
    print(f"\nload average {results['loadavg_start']} -> {results['loadavg_end']}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--songs", type=int, default=20_000, help="synthetic files (one song each)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=os.cpu_count(),
                        help="processes of the bound and of the multi_processing runner")
    parser.add_argument("--work_dir", default="/tmp/msd_bench_features",
                        help="cache of generated data sets and scratch outputs")
    parser.add_argument("--repeats", type=int, default=1,
                        help="repetitions of bound and whole pipeline, interleaved")
    parser.add_argument("--modes", default=",".join(MODES), help="runner modes, comma-separated")
    parser.add_argument("--stage_modes", default=None,
                        help="modes to break into stages (default: the same as --modes)")
    parser.add_argument("--no_stages", action="store_true", help="skip the stage breakdown")
    parser.add_argument("--normalization", default="l2")
    parser.add_argument("--output", default=str(RESULTS))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child_main(json.loads(args.child))

    modes = [mode for mode in args.modes.split(",") if mode]
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error(f"unknown mode(s) {sorted(unknown)}; choose from {MODES}")
    stage_modes = [] if args.no_stages else (
        modes if args.stage_modes is None else [m for m in args.stage_modes.split(",") if m])
    work_dir = pathlib.Path(args.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    results = {"started_at": datetime.datetime.now(datetime.timezone.utc).isoformat(
                   timespec="seconds"),
               "machine": machine_info(), "loadavg_start": loadavg(),
               "parameters": {"songs": args.songs, "seed": args.seed, "workers": args.workers,
                              "repeats": args.repeats, "modes": modes,
                              "stage_modes": stage_modes, "normalization": args.normalization}}
    data_dir, results["data"] = prepare_data(work_dir, args.songs, args.seed)
    songs = results["data"]["files"]
    print(f"[bench_features] {songs:,} files, {results['data']['bytes'] / 1e9:.2f} GB in {data_dir} "
          f"(page cache warmed in {results['data']['warm_read_seconds']} s)", flush=True)

    scratch = work_dir / "runs"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()

    def pipeline_spec(variant: str, mode: str) -> dict:
        output_dir = scratch / f"{variant}_{mode}"
        shutil.rmtree(output_dir, ignore_errors=True)
        argv = [*mode_flags(mode, args.workers), "--input", str(data_dir),
                "--output_dir", str(output_dir), "--normalization", args.normalization]
        return {"variant": variant, "argv": argv, "output_dir": str(output_dir)}

    plan = []
    for rep in range(args.repeats):
        plan.append(("bound", None, rep))
        plan += [("full", mode, rep) for mode in modes]
    for mode in stage_modes:
        plan += [(variant, mode, 0) for variant in STAGE_VARIANTS]
    measured: dict = {}
    for index, (variant, mode, rep) in enumerate(plan, 1):
        label = variant if mode is None else f"{variant}/{mode}"
        print(f"[bench_features] {index}/{len(plan)} {label} (repetition {rep + 1}) ...",
              flush=True)
        spec = ({"variant": "bound", "data_dir": str(data_dir), "workers": args.workers}
                if variant == "bound" else pipeline_spec(variant, mode))
        result = run_child(spec, scratch / f"{variant}_{mode}_{rep}.log")
        print(f"    {result['seconds']:.1f} s ({songs / result['seconds']:.1f} songs/s), "
              f"process {result['process_seconds']:.1f} s, peak PSS "
              f"{result['peak_tree_pss_bytes'] / 2**20:.0f} MB, load {result['loadavg_before']} "
              f"-> {result['loadavg_after']}", flush=True)
        if variant == "full":
            summary = result["summary"]
            if not (summary["songs_written"] == songs and summary["files_reconcile"]
                    and summary["songs_reconcile"]):
                raise SystemExit(f"[bench_features] {label}: unexpected summary {summary}")
            shutil.rmtree(spec["output_dir"], ignore_errors=True)
        measured.setdefault((variant, mode), []).append(result)

    results["bound"] = summarise(measured[("bound", None)], songs)
    results["bound"]["method"] = (
        f"multiprocessing.Pool({args.workers}).imap_unordered over the sorted file list "
        "(chunksize 16); per file h5py.File(path)['analysis/segments_timbre'][()] and "
        "msd.timbre.timbre_statistics; seconds from listing the files to the last result")
    results["pipeline"] = {}
    for mode in modes:
        entry = summarise(measured[("full", mode)], songs)
        entry["flags"] = mode_flags(mode, args.workers)
        entry["ratio_to_bound"] = round(entry["songs_per_second"] /
                                        results["bound"]["songs_per_second"], 3)
        results["pipeline"][mode] = entry
    digests = {run["csv_sha256"] for mode in modes for run in measured[("full", mode)]}
    # Byte-identical CSV rows in every run and mode (the l2 features are computed in float64
    # so that batch sizes, which depend on timing, do not change their last bit).
    results["outputs_identical_across_runs"] = len(digests) == 1
    results["fastest_mode"] = max(modes, key=lambda m: results["pipeline"][m]["songs_per_second"])
    results["best_ratio_to_bound"] = results["pipeline"][results["fastest_mode"]]["ratio_to_bound"]
    results["goal_met"] = results["best_ratio_to_bound"] >= 0.7

    if stage_modes:
        results["stage_method"] = (
            "differences of reduced pipelines run in separate processes on the same files and "
            "runner mode (module docstring): match = match + file Distinct shuffle + fixed costs; "
            "read_parse_statistics = read - match; dedupe_shuffles = dedupe - read "
            "(DropDuplicateTracks' GroupByKey + dead letters); tft_analyze_transform = tft - "
            "dedupe (BatchElements, RecordBatches, AnalyzeAndTransformDataset, WriteTransformFn); "
            "write_tfrecord_csv_parquet = full (median) - tft. Single runs: differences of "
            "noisy timings, a few seconds either way on this shared machine.")
        results["stage_shares"] = {}
        for mode in stage_modes:
            times = {variant: measured[(variant, mode)][0]["seconds"] for variant in STAGE_VARIANTS}
            times["full"] = results["pipeline"][mode]["seconds_median"]
            stages = {"fixed_costs_match_and_file_distinct": times["match"]}
            order = list(STAGE_VARIANTS) + ["full"]
            for previous, variant in zip(order, order[1:]):
                stages[STAGE_NAMES[variant]] = times[variant] - times[previous]
            total = times["full"]
            results["stage_shares"][mode] = {
                "total_seconds": total,
                "stages": {name: {"seconds": round(value, 2), "share": round(value / total, 3)}
                           for name, value in stages.items()},
                "runs": {variant: measured[(variant, mode)][0] for variant in STAGE_VARIANTS}}
    results["loadavg_end"] = loadavg()
    print_table(results)
    out = pathlib.Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {out}")
    shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
