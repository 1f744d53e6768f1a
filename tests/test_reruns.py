"""Faults and reruns: each job is killed with SIGKILL part-way (a real ``python -m pipelines.…``
subprocess), run again with the same arguments, and compared with an uninterrupted run. While
the jobs run, their output folders are watched the way a reader would see them.

Contract checked (issue 6):
- after a kill, a rerun with the same arguments gives exactly the uninterrupted run's output;
- a reader never sees a partial output: the recommendation job's ``<output>/run_date=D/model=M/`` is
  absent or complete, and the feature job's outputs appear all together or not at all;
- no duplicate rows; a rerun of a run_date replaces it, a new run_date adds one;
- two runs over the same inputs give identical recommendations (same songs, same order, same
  scores) and identical feature files (content, not sharding).

The whole module takes about 1.5 minutes (five job subprocesses, a few in-process runs).
"""
import glob
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

from msd import synthetic
from pipelines import features, recommend
from recommend import catalogue as catalogue_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
D1, D2 = "2026-03-01", "2026-03-02"
MODEL = "timbre_cosine"  # the partition the content model writes (run_date=D/model=M)
K = 5
FINAL_FEATURE_OUTPUTS = ("features/part-*", "csv/part-*", "songs/part-*", "rejected/part-*",
                         "run_summary.json", "transform_fn/saved_model.pb")


# -- helpers -------------------------------------------------------------------------------

def listing(root: pathlib.Path) -> list[str]:
    """Every file and folder below ``root``, relative, folders ending in '/'."""
    found = []
    for directory, dirs, files in os.walk(root):
        rel = os.path.relpath(directory, root)
        prefix = "" if rel == "." else rel + "/"
        found += [prefix + name + "/" for name in dirs] + [prefix + name for name in files]
    return sorted(found)


def start(module: str, args: list[str], log: pathlib.Path) -> subprocess.Popen:
    """Starts ``python -m module args`` in its own process group (so SIGKILL reaches every
    process it started, and only those)."""
    handle = open(log, "wb")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.Popen([sys.executable, "-m", module] + args, cwd=REPO, stdout=handle,
                            stderr=subprocess.STDOUT, start_new_session=True, env=env)


def watch(process: subprocess.Popen, root: pathlib.Path, kill_when=None, timeout: float = 240):
    """Polls ``root`` every few ms while ``process`` runs; SIGKILLs its process group as soon
    as ``kill_when(listing)`` is true. Returns (killed, snapshots seen)."""
    snapshots = []
    deadline = time.monotonic() + timeout
    while process.poll() is None:
        if time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            pytest.fail(f"{process.args} did not finish in {timeout} s")
        state = listing(root) if root.exists() else []
        if not snapshots or snapshots[-1] != state:
            snapshots.append(state)
        if kill_when is not None and kill_when(state):
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return True, snapshots
        time.sleep(0.005)
    final = listing(root) if root.exists() else []
    if not snapshots or snapshots[-1] != final:
        snapshots.append(final)
    return False, snapshots


def matching(state: list[str], pattern: str) -> list[str]:
    import fnmatch
    return [path for path in state if fnmatch.fnmatch(path, pattern)]


def writing_started(state: list[str], under: str = "") -> bool:
    """A data file exists inside one of Beam's temporary write folders (below ``under``)."""
    return any(path.startswith(under) and "/beam-temp-" in path and not path.endswith("/")
               for path in state)


LEFTOVERS = ("*beam-temp*", "tft_tmp*", "transform_tmp*", "_staging*")


def assert_same_recommendations(got: list[dict], want: list[dict]) -> None:
    """Same users, same songs in the same order; scores equal to float32 rounding."""
    assert [r["user_id"] for r in got] == [r["user_id"] for r in want]
    for a, b in zip(got, want):
        assert (a["popularity_filled"], a["history_size"]) == (b["popularity_filled"],
                                                               b["history_size"])
        assert [(x["rank"], x["track_id"], x["song_id"]) for x in a["recommendations"]] == [
            (x["rank"], x["track_id"], x["song_id"]) for x in b["recommendations"]], a["user_id"]
        np.testing.assert_allclose([x["score"] for x in a["recommendations"]],
                                   [x["score"] for x in b["recommendations"]], rtol=1e-6)


def feature_content(output_dir: pathlib.Path) -> dict:
    """What the feature job wrote, independent of sharding: sorted rows of every output."""
    examples = []
    for path in sorted(glob.glob(f"{output_dir}/features/part-*.tfrecord.gz")):
        for record in tf.data.TFRecordDataset(path, compression_type="GZIP"):
            example = tf.train.Example.FromString(record.numpy())
            examples.append({name: list(getattr(value, value.WhichOneof("kind")).value)
                             for name, value in example.features.feature.items()})
    csv_rows, headers = [], set()
    for path in sorted(glob.glob(f"{output_dir}/csv/part-*.csv")):
        lines = pathlib.Path(path).read_text().splitlines()
        headers.add(lines[0])
        csv_rows += lines[1:]
    songs = pq.read_table(f"{output_dir}/songs").to_pylist() if glob.glob(
        f"{output_dir}/songs/part-*") else []
    rejected = sorted(line for path in glob.glob(f"{output_dir}/rejected/part-*")
                      for line in pathlib.Path(path).read_text().splitlines())
    return {"examples": sorted(examples, key=lambda e: e["track_id"]),
            "csv": sorted(csv_rows), "csv_headers": headers,
            "songs": sorted(songs, key=lambda s: s["track_id"]), "rejected": rejected}


def partition_rows(output: pathlib.Path, run_date: str) -> list[dict]:
    rows = pq.read_table(output / f"run_date={run_date}" / f"model={MODEL}").to_pylist()
    return sorted(rows, key=lambda row: row["user_id"])


# -- shared inputs and the uninterrupted runs ----------------------------------------------

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("reruns")
    sample = synthetic.synthesize(str(root / "syn"), num_songs=60, num_users=80, seed=21,
                                  workers=1, progress=False)
    return root, sample


@pytest.fixture(scope="module")
def features_reference(data):
    """The uninterrupted feature run, as a subprocess whose output folder is watched."""
    root, sample = data
    output = root / "features_ref"
    args = ["--input", sample.data_dir, "--output_dir", str(output), "--num_shards", "3"]
    process = start("pipelines.features", args, root / "features_ref.log")
    killed, snapshots = watch(process, output)
    assert not killed and process.returncode == 0, (root / "features_ref.log").read_text()[-2000:]
    return output, args, snapshots, feature_content(output)


@pytest.fixture(scope="module")
def features_killed(data, features_reference):
    """A feature run SIGKILLed once its writers have started (a beam-temp folder exists)."""
    root, sample = data
    output = root / "features_killed"
    args = ["--input", sample.data_dir, "--output_dir", str(output), "--num_shards", "3"]
    process = start("pipelines.features", args, root / "features_killed.log")
    killed, snapshots = watch(process, output, kill_when=writing_started)
    assert killed, "the feature run finished before it could be killed"
    return output, args, listing(output)


def recommend_args(features_dir, sample, output, run_date):
    return ["--features", str(features_dir), "--listens", sample.triplets_path,
            "--output", str(output), "--k", str(K), "--run_date", run_date]


@pytest.fixture(scope="module")
def recommend_reference(data, features_reference):
    root, sample = data
    output = root / "recs_ref"
    summary = recommend.run(recommend_args(features_reference[0], sample, output, D1))
    return output, summary, partition_rows(output, D1)


# -- the feature job -------------------------------------------------------------------------

def test_feature_reference_run_reconciles(features_reference):
    output, _, _, content = features_reference
    summary = json.loads((output / "run_summary.json").read_text())
    assert summary["files_reconcile"] and summary["songs_reconcile"]
    assert len(content["examples"]) == len(content["csv"]) == summary["songs_written"]
    assert len({e["track_id"][0] for e in content["examples"]}) == summary["songs_written"]


def test_feature_run_summary_is_written_only_over_a_complete_set(features_reference):
    """Watched every few ms during the uninterrupted run. The outputs are moved into place
    one folder after the other, so for a few ms a reader can see some of them (or, on a
    rerun with --overwrite, new and old side by side); run_summary.json is the marker that
    the set is complete: whenever it is visible, every output must be there."""
    _, _, snapshots, _ = features_reference
    for state in snapshots:
        if "run_summary.json" in state:
            missing = [p for p in FINAL_FEATURE_OUTPUTS if not matching(state, p)]
            assert not missing, f"run_summary.json visible while {missing} are not"


def test_the_recommendation_job_refuses_a_feature_output_without_its_summary(
        features_reference, tmp_path):
    """A feature folder without run_summary.json is an unfinished run (killed, or caught
    while it publishes). The recommendation job must not take it as its catalogue: today
    ``recommend.catalogue.feature_files`` reads ``features/part-*`` whatever the state."""
    output = tmp_path / "features"
    shutil.copytree(features_reference[0], output)
    (output / "run_summary.json").unlink()
    with pytest.raises(catalogue_lib.CatalogueError, match="run_summary"):
        catalogue_lib.feature_files(str(output))


def test_a_killed_feature_run_exposes_no_final_output(features_killed):
    _, _, left = features_killed
    assert not [p for p in FINAL_FEATURE_OUTPUTS if matching(left, p)], left


def test_a_killed_feature_run_is_rerun_with_the_same_arguments(features_killed,
                                                                features_reference, tmp_path):
    """The killed run left tft_tmp/ and beam-temp-* folders (no finished output). A rerun with
    the same arguments must just work; today it stops with "already holds outputs of an
    earlier run …; pass --overwrite", although that "earlier run" never finished."""
    killed_dir, args, left = features_killed
    output = tmp_path / "out"
    shutil.copytree(killed_dir, output)
    args = [a if a != str(killed_dir) else str(output) for a in args]
    try:
        features.run(args)
    except SystemExit as stop:
        pytest.fail(f"the rerun refused to start: {stop}; the killed run left {left}")
    assert feature_content(output) == features_reference[3]
    left = listing(output)
    assert not [p for pattern in LEFTOVERS for p in matching(left, pattern)], left


def test_after_a_kill_an_overwrite_rerun_gives_the_uninterrupted_output(
        features_killed, features_reference, tmp_path):
    killed_dir, args, _ = features_killed
    output = tmp_path / "out"
    shutil.copytree(killed_dir, output)
    args = [a if a != str(killed_dir) else str(output) for a in args] + ["--overwrite"]
    summary = features.run(args)
    content = feature_content(output)
    assert content == features_reference[3]  # same rows in every output: deterministic
    assert summary["songs_written"] == len(content["examples"]) == len(content["csv"])


def test_an_overwrite_rerun_after_a_kill_leaves_no_temporary_folders(features_killed, tmp_path):
    """Whatever the killed run left (Beam's beam-temp-* folders, TFT's tft_tmp/,
    WriteTransformFn's transform_tmp/, a staging folder) is gone after a successful rerun."""
    killed_dir, args, left_by_kill = features_killed
    output = tmp_path / "out"
    shutil.copytree(killed_dir, output)
    features.run([a if a != str(killed_dir) else str(output) for a in args] + ["--overwrite"])
    left = listing(output)
    stale = [p for pattern in LEFTOVERS for p in matching(left, pattern)]
    assert not stale, f"left by the kill: {left_by_kill[:8]}; still there: {stale[:5]}"


def test_a_killed_overwrite_run_leaves_the_previous_outputs_readable(data, features_reference):
    """--overwrite deletes the previous run's outputs before the new job starts; killed
    part-way, the folder then holds no catalogue at all. Expected (like the recommendation
    job's partitions): the previous outputs stay readable until the new ones replace them."""
    root, _ = data
    previous, args, _, content = features_reference
    output = root / "features_overwrite_killed"
    shutil.copytree(previous, output)
    args = [a if a != str(previous) else str(output) for a in args] + ["--overwrite"]
    process = start("pipelines.features", args, root / "features_overwrite_killed.log")
    killed, _ = watch(process, output, kill_when=writing_started)
    assert killed, "the run finished before it could be killed"
    left = listing(output)
    assert (output / "run_summary.json").exists(), f"the previous run's outputs are gone: {left}"
    catalogue = catalogue_lib.load_catalogue(str(output))
    assert sorted(catalogue.track_ids) == [e["track_id"][0].decode() for e in content["examples"]]


# -- the recommendation job ------------------------------------------------------------------

@pytest.fixture(scope="module")
def recommend_killed_then_rerun(data, features_reference, recommend_reference):
    """A first run of D1 into an empty output, SIGKILLed once it has started writing its
    Parquet under _staging/; then the same command again, in-process."""
    root, sample = data
    output = root / "recs_killed"
    args = recommend_args(features_reference[0], sample, output, D1)
    process = start("pipelines.recommend", args, root / "recs_killed.log")
    killed, snapshots = watch(process, output,
                              kill_when=lambda s: writing_started(s, "_staging/"))
    assert killed, "the recommendation run finished before it could be killed"
    after_kill = listing(output)
    summary = recommend.run(args)
    return output, snapshots, after_kill, summary


def test_a_killed_recommend_run_never_shows_a_partition(recommend_killed_then_rerun):
    _, snapshots, after_kill, _ = recommend_killed_then_rerun
    assert not any(matching(state, f"run_date={D1}*") for state in snapshots)
    assert not matching(after_kill, f"run_date={D1}*"), after_kill


def test_the_rerun_after_a_kill_equals_the_uninterrupted_run(recommend_killed_then_rerun,
                                                             recommend_reference):
    output, _, _, summary = recommend_killed_then_rerun
    rows = partition_rows(output, D1)
    assert_same_recommendations(rows, recommend_reference[2])
    assert len({row["user_id"] for row in rows}) == len(rows) == summary["users_written"]
    assert summary["listens_reconcile"]


def test_the_rerun_after_a_kill_cleans_up_the_killed_runs_staging(recommend_killed_then_rerun):
    """The killed run's ``_staging/run_date=D-M-<id>/`` (its half-written Parquet) stays
    forever: the publish step removes only its own staging folder. Readers do not look there,
    but every killed run leaks a folder (at scale: GBs on GCS). Expected: a run removes
    stale staging folders of its run_date once it has published."""
    output, _, after_kill, _ = recommend_killed_then_rerun
    left = listing(output)
    assert not matching(left, "_staging/*"), (
        f"after the kill: {matching(after_kill, '_staging/*')[:3]}; after the rerun: "
        f"{matching(left, '_staging/*')[:3]}")


def test_a_killed_rerun_of_a_date_keeps_the_previous_partition_and_its_report(
        data, features_reference, recommend_reference):
    """The previous D1 partition stays (it is swapped only on success), but its report does
    not: the job deletes ``_reports/run_date=D1/model=M/`` before it starts, so after a kill the
    partition has no run_summary.json and a half-written rejected/ beside it. Expected: the
    report is replaced together with the partition (staged the same way)."""
    root, sample = data
    reference_output, _, reference_rows = recommend_reference
    output = root / "recs_rerun_killed"
    shutil.copytree(reference_output, output)
    report = output / "_reports" / f"run_date={D1}" / f"model={MODEL}"
    report_before = sorted(p.relative_to(report).as_posix() for p in report.rglob("*"))
    summary_before = (report / "run_summary.json").read_text()
    args = recommend_args(features_reference[0], sample, output, D1)
    process = start("pipelines.recommend", args, root / "recs_rerun_killed.log")
    killed, snapshots = watch(process, output,
                              kill_when=lambda s: writing_started(s, "_staging/"))
    assert killed, "the run finished before it could be killed"
    for state in snapshots:  # the partition was there, whole, the whole time
        assert matching(state, f"run_date={D1}/model={MODEL}/part-*.parquet")
    assert partition_rows(output, D1) == reference_rows
    report_after = (sorted(p.relative_to(report).as_posix() for p in report.rglob("*"))
                    if report.exists() else [])
    assert report_after == report_before, f"report before {report_before}, after {report_after}"
    assert (report / "run_summary.json").read_text() == summary_before


def test_a_new_date_adds_a_partition_and_a_rerun_replaces_only_its_own(
        data, features_reference, recommend_reference, tmp_path):
    _, sample = data
    reference_output, _, reference_rows = recommend_reference
    output = tmp_path / "recs"
    shutil.copytree(reference_output, output)
    args = recommend_args(features_reference[0], sample, output, D2)
    first = recommend.run(args)
    rows_d2 = partition_rows(output, D2)
    assert partition_rows(output, D1) == reference_rows
    again = recommend.run(args)
    assert_same_recommendations(partition_rows(output, D2), rows_d2)
    assert partition_rows(output, D1) == reference_rows
    assert sorted(p.name for p in output.iterdir() if p.name.startswith("run_date=")) == [
        f"run_date={D1}", f"run_date={D2}"]
    assert len(pq.read_table(output / f"run_date={D2}" / f"model={MODEL}")) == again[
        "users_written"] == first[
        "users_written"]
    # Same inputs on another date: the very same recommendations.
    assert_same_recommendations(rows_d2, reference_rows)
    summary_d1 = json.loads((output / "_reports" / f"run_date={D1}" / f"model={MODEL}"
                             / "run_summary.json")
                            .read_text())
    assert summary_d1["run_date"] == D1


def test_two_runs_give_identical_recommendations_with_two_worker_threads(
        data, features_reference, recommend_reference, tmp_path):
    """The same inputs with the local config (2 worker threads: bundles, and so the batches
    users are scored in, differ from the single-threaded reference run)."""
    _, sample = data
    output = tmp_path / "recs"
    recommend.run(recommend_args(features_reference[0], sample, output, D1)
                  + ["--config", str(REPO / "configs" / "local.yaml"), "--batch_size", "16"])
    rows = partition_rows(output, D1)
    assert_same_recommendations(rows, recommend_reference[2])


def test_scores_are_bitwise_identical_between_runs(data, features_reference,
                                                   recommend_reference, tmp_path):
    """Same inputs, another batch size: every user's row is identical, scores to the bit.
    (Before the kernel's float64 re-ranking, float32 scores differed in the last bits between
    batch compositions, e.g. 13.945720672607422 vs 13.945719718933105.)"""
    _, sample = data
    output = tmp_path / "recs"
    recommend.run(recommend_args(features_reference[0], sample, output, D1)
                  + ["--batch_size", "3"])
    rows = partition_rows(output, D1)
    differing = [a["user_id"] for a, b in zip(rows, recommend_reference[2]) if a != b]
    assert not differing, f"{len(differing)} of {len(rows)} users' rows differ"
