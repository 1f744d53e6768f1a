"""The training job and trained models through the recommendation job and the evaluation:
real Taste Profile listening data, per-model partitions, a toy model plugged into the seam,
songs with several tracks, and the Dataflow graph of the training job."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from msd import listening
from pipelines import evaluate, recommend, train
from recommend import models
from recommend.models import base
from tests.conftest import sample_data_path
from tests.dataflow_dry_run import build_dataflow_job

RUN_DATE = "2026-11-30"
K = 50


def read_rows(output, model):
    table = pq.read_table(f"{output}/run_date={RUN_DATE}/model={model}")
    return {row["user_id"]: row for row in table.to_pylist()}


def histories_of(path):
    songs = {}
    for record in listening.read_listens(str(path)):
        songs.setdefault(record.user_id, set()).add(record.song_id)
    return songs


@pytest.fixture(scope="module")
def real_split(tmp_path_factory):
    """The real Taste Profile sample split in half per user (seed 1) and itemcf trained on the
    visible half."""
    triplets = sample_data_path("listening", "train_triplets_sample.head42739.txt")
    folder = tmp_path_factory.mktemp("real")
    assert evaluate.main(["--listens", str(triplets), "--holdout_fraction", "0.5", "--seed", "1",
                          "--write_split", str(folder / "split")]) == 0
    # q = 1: the best exponent on this 1,630-user sample (docs/evaluation.md); the default q = 3
    # (the MSD Challenge winner's, on 1M users) over-weights the chance co-occurrences of a
    # sample this small and beats popularity only by ~2 standard errors.
    summary = train.run(["--model", "itemcf", "--listens", str(folder / "split" / "visible.txt"),
                         "--output_dir", str(folder / "itemcf"), "--q", "1"])
    return triplets, folder, summary


def test_training_reconciles_and_writes_a_model_directory(real_split):
    _, folder, summary = real_split
    assert summary["listens_reconcile"] and summary["listens_parsed"] == summary["listens_used"]
    assert summary["users_in_model"] == 1630
    manifest = base.read_manifest(str(folder / "itemcf"))
    assert manifest["kind"] == "itemcf" and manifest["parameters"]["alpha"] == 0.15
    assert manifest["training"]["user_song_pairs"] == summary["listens_used"]
    model = models.load_model(str(folder / "itemcf"))
    assert model.num_songs() == manifest["songs"] > 7000
    assert (np.diff(model.neighbours.indptr) <= manifest["parameters"]["top_m"]).all()
    with pytest.raises(SystemExit, match="already holds a model; pass --overwrite"):
        train.run(["--listens", str(folder / "split" / "visible.txt"),
                   "--output_dir", str(folder / "itemcf")])


def test_republishing_a_model_switches_versions_at_model_json_and_keeps_the_previous(
        synthetic_sample, tmp_path):
    """model.json is the commit point: each training run publishes a new v-<version>/ folder
    and switches model.json to it; the previous version stays (a run that pinned it finishes),
    older ones go; a source pinned before a republish keeps reading its version."""
    model_dir = tmp_path / "model"
    args = ["--listens", synthetic_sample.triplets_path, "--output_dir", str(model_dir)]
    first = train.run(args)
    pinned = models.ModelSource(model_dir=str(model_dir)).pinned()
    second = train.run(args + ["--overwrite", "--top_m", "3"])
    assert first["version"] != second["version"]
    assert sorted(p.name for p in model_dir.iterdir()) == sorted(
        ["model.json", f"v-{first['version']}", f"v-{second['version']}"])
    assert base.read_manifest(str(model_dir))["version"] == second["version"]
    old, new = pinned.load(), models.load_model(str(model_dir))
    assert old.top_m == 200 and new.top_m == 3  # each reader its own version, whole
    third = train.run(args + ["--overwrite"])
    assert sorted(p.name for p in model_dir.iterdir()) == sorted(
        ["model.json", f"v-{second['version']}", f"v-{third['version']}"])
    # Each version has its own report: rejected/ and run_summary.json are never mixed.
    version = model_dir / f"v-{third['version']}"
    assert {p.name for p in version.iterdir()} >= {"run_summary.json", "rejected", "songs.txt"}


def test_an_output_dir_holding_the_users_files_is_refused(synthetic_sample, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match=r"holds files this product did not write \(notes.txt\)"):
        train.run(["--listens", synthetic_sample.triplets_path, "--output_dir", str(mine)])
    assert (mine / "notes.txt").read_text() == "mine"


# A process that holds the flock of a lock file (as a live run does) until it is killed.
HOLD_FLOCK = ("import fcntl, os, sys, time\n"
              "fd = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR, 0o644)\n"
              "fcntl.flock(fd, fcntl.LOCK_EX)\n"
              "print('held', flush=True)\n"
              "time.sleep(120)\n")


def hold_flock(path) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLD_FLOCK, str(path)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True).stdout)


def test_a_second_training_run_on_one_output_dir_is_refused_while_the_first_holds_it(tmp_path):
    """Two training runs on one --output_dir: the second would delete the first's live staging
    and publish over it. A run holds ``_staging/_train.lock`` (an flock for its whole life, the
    file naming its process): while it is held, a second run is refused naming the holder and
    touches nothing; once the holder is gone, the next run takes the lock over, publishes and
    leaves no staging."""
    listens = tmp_path / "listens.txt"
    listens.write_text("".join(f"{c * 40}\tSOAAAAAAAAAAAAAAAA\t1\n{c * 40}\tSOBBBBBBBBBBBBBBBB\t2\n"
                               for c in "abc"))
    output = tmp_path / "m"
    first_staging = output / train.STAGING / "20261130T000000Z-0123abcd"
    first_staging.mkdir(parents=True)
    (first_staging / "songs.txt").write_text("the first run's live staging\n")
    lock = output / train.STAGING / train.LOCK_FILE
    lock.write_text(json.dumps({"job": "train", "host": socket.gethostname(), "pid": 4242,
                                "token": "first", "started": "2026-11-30T00:00:00Z"}))
    holder = hold_flock(lock)
    try:
        args = ["--listens", str(listens), "--output_dir", str(output)]
        with pytest.raises(SystemExit, match=rf"train: another run holds {lock} \(pid "
                                             rf"4242 on .*started 2026-11-30T00:00:00Z"):
            train.run(args)
        assert json.loads(lock.read_text())["token"] == "first"
        assert (first_staging / "songs.txt").exists() and not (output / "model.json").exists()
    finally:
        holder.kill()
        holder.wait()
    summary = train.run(args)  # the holder is gone: its lock is taken over
    assert summary["users_in_model"] == 3 and (output / "model.json").exists()
    assert sorted(p.name for p in output.iterdir()) == ["model.json", f"v-{summary['version']}"]


def test_two_runs_taking_over_one_stale_lock_at_once_exactly_one_holds_it(tmp_path, monkeypatch):
    """F1: a lock left by a killed run (its pid not running on this host) and two runs taking
    it over at once, both past opening it before either locks it (a barrier in the flock):
    exactly one holds it, the other is refused naming it. The lock used to be judged stale by
    its pid and deleted without checking it still was that stale lock: both ran."""
    import threading
    import time

    from pipelines import launcher

    path = tmp_path / "out" / "_features.lock"
    path.parent.mkdir()
    path.write_text(json.dumps({"job": "features", "host": socket.gethostname(),
                                "pid": dead_pid(), "token": "x", "started": "2026"}))
    real_flock, barrier = launcher.fcntl.flock, threading.Barrier(2, timeout=30)

    def flock(fd, operation):
        racer = threading.current_thread().name.startswith("racer")
        if racer and operation & launcher.fcntl.LOCK_EX:
            barrier.wait()  # both racers have the same lock file open
        return real_flock(fd, operation)
    monkeypatch.setattr(launcher.fcntl, "flock", flock)
    # The race as it was (holders judged by pid): both racers judged the stale holder before
    # either deleted it, the second a moment later (it then deleted the first's new lock).
    real_stale, judged = launcher.RunLock._stale, threading.Barrier(2, timeout=30)

    def stale(self, holder):
        verdict = real_stale(self, holder)
        if verdict and threading.current_thread().name.startswith("racer"):
            judged.wait()
            time.sleep(0.3 if threading.current_thread().name == "racer1" else 0)
        return verdict
    monkeypatch.setattr(launcher.RunLock, "_stale", stale)
    results = {}

    def race(i):
        try:
            results[i] = launcher.RunLock(str(path), f"features#{i}").acquire()
        except SystemExit as refused:
            results[i] = str(refused)
    racers = [threading.Thread(target=race, args=(i,), name=f"racer{i}") for i in range(2)]
    [racer.start() for racer in racers]
    [racer.join(60) for racer in racers]
    winners = [r for r in results.values() if isinstance(r, launcher.RunLock)]
    refused = [r for r in results.values() if isinstance(r, str)]
    assert len(winners) == 1 and len(refused) == 1, results
    assert f"another run holds {path} (pid {os.getpid()} on {socket.gethostname()}" in refused[0]
    assert json.loads(path.read_text())["token"] == winners[0].token
    winners[0].release()
    assert not path.exists()


def test_a_run_that_locked_a_lock_file_deleted_meanwhile_starts_over(tmp_path, monkeypatch):
    """A run opens the lock file; before it locks it, the holder releases it (deletes it) and a
    third run makes and holds a new one. The first run's flock then succeeds on the deleted
    file: it sees the path is another file now, starts over and is refused by the third."""
    import threading

    from pipelines import launcher

    path = str(tmp_path / "_features.lock")
    first = launcher.RunLock(path, "features#1").acquire()
    real_flock, opened, go = launcher.fcntl.flock, threading.Event(), threading.Event()

    def flock(fd, operation):
        if threading.current_thread().name == "late" and not opened.is_set():
            opened.set()
            assert go.wait(30)
        return real_flock(fd, operation)
    monkeypatch.setattr(launcher.fcntl, "flock", flock)
    outcome = []

    def late():
        try:
            outcome.append(launcher.RunLock(path, "features#2").acquire())
        except SystemExit as refused:
            outcome.append(str(refused))
    thread = threading.Thread(target=late, name="late")
    thread.start()
    assert opened.wait(30)  # features#2 has the first lock file open, not locked
    first.release()
    third = launcher.RunLock(path, "features#3").acquire()
    go.set()
    thread.join(60)
    assert len(outcome) == 1 and isinstance(outcome[0], str), outcome
    assert "another run holds" in outcome[0]
    assert json.loads(open(path).read())["token"] == third.token
    third.release()
    assert not os.path.exists(path)


def test_a_lock_held_by_a_live_process_whose_pid_is_not_visible_is_refused(tmp_path):
    """F2: a run in another PID namespace (a container sharing the host name and the volume):
    its record names a pid that is not running here, but it holds the lock: refused, naming
    it. Once it is gone, the lock is taken over."""
    from pipelines import launcher

    path = tmp_path / "_staging" / "x.lock"
    path.parent.mkdir()
    gone = dead_pid()
    path.write_text(json.dumps({"job": "recommend", "host": socket.gethostname(), "pid": gone,
                                "token": "other", "started": "2026-11-30T01:00:00Z"}))
    holder = hold_flock(path)
    try:
        with pytest.raises(SystemExit, match=rf"another run holds {path} \(pid {gone} on "):
            launcher.RunLock(str(path), "recommend").acquire()
        assert json.loads(path.read_text())["token"] == "other"
    finally:
        holder.kill()
        holder.wait()
    lock = launcher.RunLock(str(path), "recommend").acquire()
    assert json.loads(path.read_text())["token"] == lock.token
    lock.release()
    assert not path.exists()


def test_an_empty_lock_file_is_taken_over_unless_it_is_held(tmp_path):
    """F9: a run killed between making its lock file and writing it leaves it empty: nobody
    holds it, it is taken over. An empty one that is held (its run is writing it) is refused,
    saying the record cannot be read (not ``pid ? on ?``)."""
    from pipelines import launcher

    path = tmp_path / "x.lock"
    path.write_bytes(b"")
    lock = launcher.RunLock(str(path), "features").acquire()
    assert json.loads(path.read_text())["pid"] == os.getpid()
    lock.release()
    assert not path.exists()
    path.write_bytes(b"")
    holder = hold_flock(path)
    try:
        with pytest.raises(SystemExit, match=r"another run holds .*x\.lock \(a live process "
                                             r"holds its lock; its record is empty or unreadable"):
            launcher.RunLock(str(path), "features").acquire()
    finally:
        holder.kill()
        holder.wait()
    assert path.read_bytes() == b""


def test_the_output_dir_is_checked_under_the_lock(tmp_path, monkeypatch):
    """F15: a run that passed the output check, then waited for the lock while another run
    published a model there, is refused once it holds the lock (no --overwrite): the other
    run's model is not published over."""
    from pipelines import launcher

    listens = tmp_path / "listens.txt"
    listens.write_text("".join(f"{c * 40}\tSOAAAAAAAAAAAAAAAA\t1\n{c * 40}\tSOBBBBBBBBBBBBBBBB\t2\n"
                               for c in "abc"))
    output = tmp_path / "m"
    args = ["--listens", str(listens), "--output_dir", str(output)]
    acquire, published = launcher.RunLock.acquire, []

    def acquire_after_another_run_published(self):
        if not published:  # the other run publishes between this run's check and its lock
            published.append(None)
            published.append(train.run(args))
        return acquire(self)
    monkeypatch.setattr(launcher.RunLock, "acquire", acquire_after_another_run_published)
    with pytest.raises(SystemExit, match="already holds a model; pass --overwrite"):
        train.run(args)
    assert base.read_manifest(str(output))["version"] == published[1]["version"]
    assert sorted(p.name for p in output.iterdir()) == [
        "model.json", f"v-{published[1]['version']}"]


@pytest.mark.parametrize("error", [KeyboardInterrupt, OSError])
def test_an_error_after_model_json_was_written_keeps_the_published_version(
        error, tmp_path, monkeypatch):
    """F5: an interrupt (Ctrl-C) or an error reported after model.json was written (a lost GCS
    response): model.json names the new version, so its folder stays and the model loads.
    An interrupt still ends the run; an error is logged and the run goes on as published."""
    from pipelines import launcher

    listens = tmp_path / "listens.txt"
    listens.write_text("".join(f"{c * 40}\tSOAAAAAAAAAAAAAAAA\t1\n{c * 40}\tSOBBBBBBBBBBBBBBBB\t2\n"
                               for c in "abc"))
    output = tmp_path / "m"
    args = ["--listens", str(listens), "--output_dir", str(output), "--overwrite"]
    previous = train.run(args)
    write = launcher.write_atomically

    def write_then_fail(path, data, *rest, **kwargs):
        result = write(path, data, *rest, **kwargs)
        if path.endswith(base.MODEL_FILE):
            raise error("injected right after model.json was written")
        return result
    monkeypatch.setattr(launcher, "write_atomically", write_then_fail)
    if error is KeyboardInterrupt:
        with pytest.raises(KeyboardInterrupt):
            train.run(args)
    else:
        summary = train.run(args)
        assert base.read_manifest(str(output))["version"] == summary["version"]
    version = base.read_manifest(str(output))["version"]
    assert version != previous["version"] and (output / f"v-{version}").is_dir()
    assert models.load_model(str(output)).num_songs() == 2
    assert not (output / train.STAGING / train.LOCK_FILE).exists()
    monkeypatch.undo()
    again = train.run(args)  # a clean run afterwards: no staging left, two versions
    assert sorted(p.name for p in output.iterdir()) == sorted(
        ["model.json", f"v-{version}", f"v-{again['version']}"])


def test_every_used_listen_is_in_the_model_or_a_dead_letter(tmp_path):
    """--min_listeners drops rare songs: their listens (duplicate lines included) are counted
    and dead-lettered with how many listens each record stands for."""
    users = ["a" * 40, "b" * 40, "c" * 40]
    common, rare = "SOAAAAAAAAAAAAAAAA", "SOBBBBBBBBBBBBBBBB"
    listens = tmp_path / "listens.txt"
    listens.write_text(f"{users[0]}\t{common}\t1\n{users[1]}\t{common}\t2\n"
                       f"{users[2]}\t{common}\t1\n{users[2]}\t{rare}\t1\n"
                       f"{users[2]}\t{rare}\t4\n{users[2]}\t{rare}\t1\n")
    summary = train.run(["--listens", str(listens), "--output_dir", str(tmp_path / "m"),
                         "--min_listeners", "2"])
    assert summary["listens_used"] == 6 == summary["listens_in_model"] + summary["listens_rare_song"]
    assert (summary["listens_in_model"], summary["listens_rare_song"]) == (3, 3)
    assert summary["listens_in_model_reconcile"]
    letters = [json.loads(line) for path in (tmp_path / "m").rglob("rejected/*.jsonl")
               for line in open(path)]
    assert [(r["reason"], r["raw"]) for r in letters] == [("too_few_listeners",
                                                           f"{users[2]}\t{rare}")]
    assert "(3 listens of this user, play count 6)" in letters[0]["detail"]


def test_itemcf_recommends_k_new_songs_to_every_real_user(real_split):
    _, folder, _ = real_split
    visible = folder / "split" / "visible.txt"
    output = folder / "recs"
    summary = recommend.run(["--model_dir", str(folder / "itemcf"), "--listens", str(visible),
                             "--output", str(output), "--k", str(K), "--run_date", RUN_DATE])
    rows = read_rows(output, "itemcf")
    listened = histories_of(visible)
    assert set(rows) == set(listened) and summary["users_written"] == len(listened)
    assert summary["listens_reconcile"] and summary["model"] == "itemcf"
    for user_id, row in rows.items():
        songs = [r["song_id"] for r in row["recommendations"]]
        assert len(songs) == K == len(set(songs)) and not set(songs) & listened[user_id]
        assert all(r["track_id"] is None for r in row["recommendations"])  # no track source
    assert any(row["popularity_filled"] for row in rows.values())  # short lists were filled


def test_on_real_listening_itemcf_beats_popularity_which_beats_random(real_split):
    triplets, folder, _ = real_split
    out = folder / "evaluation"
    assert evaluate.main(["--listens", str(triplets), "--holdout_fraction", "0.5", "--seed", "1",
                          "--model_dir", str(folder / "itemcf"), "--output_dir", str(out)]) == 0
    report = json.loads((out / evaluate.METRICS_FILE).read_text())
    itemcf, popular, chance = (report["models"][key] for key in ("itemcf", "popularity", "random"))
    assert itemcf["users"] == popular["users"] == chance["users"] > 1500
    difference = itemcf["vs_popularity"]
    assert difference["map_difference"] > 2 * difference["standard_error"]
    assert popular["map"] > 10 * chance["map"]
    assert "itemcf" in (out / evaluate.REPORT_FILE).read_text()


def test_two_models_on_one_day_and_a_rerun_of_one(synthetic_sample, synthetic_features,
                                                  tmp_path):
    features_dir, _ = synthetic_features
    triplets = synthetic_sample.triplets_path
    train.run(["--listens", triplets, "--output_dir", str(tmp_path / "itemcf"),
               "--features", str(features_dir)])
    output = tmp_path / "out"
    common = ["--listens", triplets, "--output", str(output), "--k", "10", "--run_date", RUN_DATE]
    recommend.run(["--features", str(features_dir)] + common)
    content_files = {p: p.read_bytes() for p in (output / f"run_date={RUN_DATE}").rglob("*")
                     if p.is_file()}
    itemcf_args = ["--model_dir", str(tmp_path / "itemcf"), "--features", str(features_dir)]
    first = recommend.run(itemcf_args + common)
    again = recommend.run(itemcf_args + common)
    assert again["users_written"] == first["users_written"] > 0
    assert sorted(p.name for p in (output / f"run_date={RUN_DATE}").iterdir()) == [
        "model=itemcf", "model=timbre_cosine"]
    assert {p: p.read_bytes() for p in content_files} == content_files  # untouched
    rows = read_rows(output, "itemcf")
    assert all(r["track_id"] and r["track_id"].startswith("TR")  # tracks from the features
               for row in rows.values() for r in row["recommendations"])
    assert len(read_rows(output, "timbre_cosine")) > 0


class ReverseIdModel(models.Recommender):
    """A toy model for the seam test: ranks songs by descending song id."""
    kind = "toy_reverse"
    stored_arrays = {}

    def recommend(self, histories, play_counts, k):
        rows = np.zeros((len(histories), k), np.int32)
        for user, history in enumerate(histories):
            candidates = np.setdiff1d(np.arange(self.num_songs()), history)[::-1]
            rows[user] = candidates[:k]
        return models.Recommendations(rows, -rows.astype(np.float64),
                                      np.zeros(len(histories), np.int32))

    @classmethod
    def from_arrays(cls, song_ids, arrays, parameters):
        return cls(song_ids)


def test_a_model_registered_in_the_seam_runs_through_the_job_and_the_evaluation(
        synthetic_sample, tmp_path, monkeypatch):
    monkeypatch.setitem(models.MODELS, ReverseIdModel.kind, ReverseIdModel)
    triplets = synthetic_sample.triplets_path
    song_ids = sorted({r.song_id for r in listening.read_listens(triplets)})
    base.save_model(ReverseIdModel(np.array(song_ids, dtype=object)), str(tmp_path / "toy"))
    output = tmp_path / "out"
    recommend.run(["--model_dir", str(tmp_path / "toy"), "--listens", triplets,
                   "--output", str(output), "--k", "5", "--run_date", RUN_DATE])
    rows = read_rows(output, "toy_reverse")
    listened = histories_of(triplets)
    for user_id, row in rows.items():
        expected = [s for s in reversed(song_ids) if s not in listened[user_id]][:5]
        assert [r["song_id"] for r in row["recommendations"]] == expected
    out = tmp_path / "evaluation"
    assert evaluate.main(["--listens", triplets, "--holdout_fraction", "0.5", "--seed", "2",
                          "--model_dir", str(tmp_path / "toy"), "--k", "20",
                          "--output_dir", str(out)]) == 0
    report = json.loads((out / evaluate.METRICS_FILE).read_text())
    assert set(report["models"]) == {"toy_reverse", "popularity", "random"}


def test_a_song_with_two_tracks_is_one_catalogue_row(tmp_path):
    """The catalogue is keyed by song: a listened song never comes back through its other
    track, no song is recommended twice, and each shows its lowest track id."""
    rng = np.random.default_rng(4)
    vectors = rng.normal(size=(12, 5))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors[1] = vectors[0]  # the second track of song 0: its best match under a track catalogue
    tracks = [f"TR{i:016d}" for i in range(12)]
    songs = [f"SO{max(i - 1, 0):016d}" for i in range(12)]  # tracks 0 and 1 are song 0
    shards = tmp_path / "features"
    shards.mkdir()
    with open(shards / "part-0.csv", "w") as handle:
        handle.write("track_id,song_id," + ",".join(f"f{d:02d}" for d in range(5)) + "\n")
        for track, song, vector in zip(tracks, songs, vectors):
            handle.write(f"{track},{song}," + ",".join(f"{v:.9g}" for v in vector) + "\n")
    listens = tmp_path / "listens.txt"
    listens.write_text(f"{'a' * 40}\t{songs[0]}\t3\n{'b' * 40}\t{songs[5]}\t1\n")
    output = tmp_path / "out"
    recommend.run(["--features", str(shards / "part-*.csv"), "--listens", str(listens),
                   "--output", str(output), "--k", "10", "--run_date", RUN_DATE])
    rows = read_rows(output, "timbre_cosine")
    for user_id, listened_song in (("a" * 40, songs[0]), ("b" * 40, songs[5])):
        recommended = rows[user_id]["recommendations"]
        song_ids = [r["song_id"] for r in recommended]
        assert len(song_ids) == len(set(song_ids)) == 10 and listened_song not in song_ids
        shown = {r["song_id"]: r["track_id"] for r in recommended}
        if songs[0] in shown:
            assert shown[songs[0]] == tracks[0]


def test_dataflow_graph_of_the_training_job():
    job = build_dataflow_job(train.run, [
        "--config", "configs/dataflow_cpu.yaml", "--model", "itemcf",
        "--listens", "gs://my-bucket/train_triplets.txt",
        "--output_dir", "gs://my-bucket/models/itemcf"])
    names = {t.unique_name for t in job.proto_pipeline.components.transforms.values()}
    assert {"Fit/SpreadBlocks", "Fit/Neighbours", "ReadListens/Read"} <= {
        name.split("/ParDo")[0].rsplit("/", 0)[0] for name in names} | names


@pytest.mark.parametrize("args, message", [
    (["--top_m", "0"], "--top_m must be at least 1"),
    (["--alpha", "1.5"], "--alpha must be in"),
    (["--min_listeners", "0"], "--min_listeners must be at least 1"),
    (["--song_to_tracks", "x.txt"], "give --features too"),
])
def test_bad_training_options_are_explained(args, message, tmp_path):
    with pytest.raises(SystemExit, match=message):
        train.run(["--listens", "l.txt", "--output_dir", str(tmp_path / "m")] + args)


# --- the training job deletes only what it created (issue 14, F4) ---------------------------

def tiny_listens(folder):
    listens = folder / "listens.txt"
    listens.write_text("".join(f"{c * 40}\tSOAAAAAAAAAAAAAAAA\t1\n{c * 40}\tSOBBBBBBBBBBBBBBBB\t2\n"
                               for c in "abc"))
    return str(listens)


@pytest.mark.parametrize("entry", ["v-1.0/NOTES.txt", "_staging/thesis.txt",
                                   "v-20261130T113916Z-bedc1dfc-mine/NOTES.txt",
                                   "_staging/run_date=2026-11-30-itemcf.lock",
                                   "_staging/20261130T113916Z/notes.txt"])
def test_entries_not_of_the_jobs_own_shape_are_refused_and_kept(entry, tmp_path):
    """Any ``v-*`` folder and everything in ``_staging/`` used to count as the job's own (and
    be deleted without --overwrite): only ``v-<version>`` and ``_staging/<version>`` of the
    shape the job makes (20261130T113916Z-bedc1dfc) and its lock are."""
    import re

    output = tmp_path / "proj"
    path = output / entry
    path.parent.mkdir(parents=True)
    path.write_text("mine")
    shown = entry.split("/")[0] if entry.startswith("v-") else "/".join(entry.split("/")[:2])
    with pytest.raises(SystemExit, match=rf"holds files this product did not write "
                                         rf"\({re.escape(shown)}\)"):
        train.run(["--listens", tiny_listens(tmp_path), "--output_dir", str(output)])
    assert path.read_text() == "mine"
    assert sorted(str(p.relative_to(output)) for p in output.rglob("*")) == sorted(
        {entry} | {str(parent.relative_to(output)) for parent in path.parents
                   if parent != output and output in parent.parents})


def test_a_foreign_entry_beside_a_model_is_refused_even_with_overwrite(tmp_path):
    output = tmp_path / "model"
    args = ["--listens", tiny_listens(tmp_path), "--output_dir", str(output)]
    first = train.run(args)
    (output / "v-old").mkdir()
    with pytest.raises(SystemExit, match=r"did not write \(v-old\)"):
        train.run(args + ["--overwrite"])
    assert (output / "v-old").is_dir() and (output / f"v-{first['version']}").is_dir()
    assert train.is_version_name(f"v-{first['version']}") and not train.is_version_name("v-old")


def test_a_killed_runs_own_staging_is_cleared_by_the_next_run(tmp_path):
    output = tmp_path / "model"
    killed = output / train.STAGING / "20261130T000000Z-0123abcd"
    killed.mkdir(parents=True)
    (killed / "songs.txt").write_text("a killed run's staging\n")
    (output / ".model.json.4242.tmp").write_text("{")
    summary = train.run(["--listens", tiny_listens(tmp_path), "--output_dir", str(output)])
    assert sorted(p.name for p in output.iterdir()) == ["model.json", f"v-{summary['version']}"]
