"""Hostile options and faults for the recommendation job (issue 14): the product writes only
where it owns the place, a failed run publishes nothing, inputs are what they claim, and an
expected failure ends with one line and a non-zero exit."""
import errno
import os
import subprocess
import sys

import pytest

from pipelines import cli, launcher, recommend
from recommend.models import base
from tests.test_train_pipeline import ReverseIdModel, hold_flock

RUN_DATE = "2026-11-24"


@pytest.fixture()
def toy_model(synthetic_sample, tmp_path, monkeypatch):
    """A tiny registered model over the synthetic listens' songs (no training needed)."""
    from msd import listening
    from recommend import models
    import numpy as np

    monkeypatch.setitem(models.MODELS, ReverseIdModel.kind, ReverseIdModel)
    songs = sorted({r.song_id for r in listening.read_listens(synthetic_sample.triplets_path)})
    base.save_model(ReverseIdModel(np.array(songs, dtype=object)), str(tmp_path / "model"))
    return str(tmp_path / "model")


def job_args(model_dir, listens, output, *extra):
    return ["--model_dir", model_dir, "--listens", listens, "--output", str(output), "--k", "5",
            "--run_date", RUN_DATE, *extra]


def test_a_report_dir_holding_the_users_files_is_refused_and_left_alone(
        toy_model, synthetic_sample, tmp_path):
    mine = tmp_path / "my_folder"
    (mine / "sub").mkdir(parents=True)
    (mine / "keep.txt").write_text("mine")
    (mine / "sub" / "notes.txt").write_text("also mine")
    with pytest.raises(SystemExit, match=r"holds files this product did not write \(keep.txt, sub\)"):
        recommend.run(job_args(toy_model, synthetic_sample.triplets_path, tmp_path / "out",
                               "--report_dir", str(mine)))
    assert (mine / "keep.txt").read_text() == "mine" and (mine / "sub" / "notes.txt").exists()
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("where", ["model_dir", "output", "listens_folder"])
def test_a_report_dir_overlapping_an_input_or_the_output_is_refused(
        where, toy_model, synthetic_sample, tmp_path):
    output = tmp_path / "out"
    report_dir = {"model_dir": toy_model, "output": str(output),
                  "listens_folder": os.path.dirname(synthetic_sample.triplets_path)}[where]
    before = sorted(os.listdir(report_dir)) if os.path.isdir(report_dir) else None
    with pytest.raises(SystemExit, match="--report_dir .* overlaps"):
        recommend.run(job_args(toy_model, synthetic_sample.triplets_path, output,
                               "--report_dir", report_dir))
    if before is not None:
        assert sorted(os.listdir(report_dir)) == before


def test_a_rerun_replaces_its_own_report_dir(toy_model, synthetic_sample, tmp_path):
    reports = tmp_path / "reports"
    args = job_args(toy_model, synthetic_sample.triplets_path, tmp_path / "out",
                    "--report_dir", str(reports))
    first = recommend.run(args)
    again = recommend.run(args)
    assert first["users_written"] == again["users_written"] > 0
    assert sorted(os.listdir(reports)) == ["rejected", "run_summary.json"]


def test_listens_from_a_pipe_or_a_folder_are_refused_not_read_as_empty(
        toy_model, tmp_path):
    fifo = tmp_path / "listens.fifo"
    os.mkfifo(fifo)
    with pytest.raises(SystemExit, match="--listens: .*listens.fifo is a pipe, not a regular file"):
        recommend.run(job_args(toy_model, str(fifo), tmp_path / "out"))
    with pytest.raises(SystemExit, match="--listens: .* is a folder; give a file, or a pattern"):
        recommend.run(job_args(toy_model, str(tmp_path), tmp_path / "out"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("failing_step", ["write_summary", "write_atomically"])
def test_a_run_that_fails_while_publishing_leaves_the_previous_output(
        failing_step, toy_model, synthetic_sample, tmp_path, monkeypatch):
    """A full disk while the summary is staged, or while the partition's marker is switched
    (the new files already copied in): the previous version stays what readers see, whole,
    with its report; a rerun publishes and removes the leftovers."""
    from pipelines.launcher import partition_files

    output = tmp_path / "out"
    args = job_args(toy_model, synthetic_sample.triplets_path, output)
    recommend.run(args)
    partition = output / f"run_date={RUN_DATE}" / "model=toy_reverse"
    report = output / "_reports" / f"run_date={RUN_DATE}" / "model=toy_reverse"
    published = partition_files(str(partition))
    snapshot = {p: p.read_bytes() for p in list(partition.rglob("*")) + list(report.rglob("*"))
                if p.is_file()}

    def disk_full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(output))

    working = getattr(launcher, failing_step)
    monkeypatch.setattr(launcher, failing_step, disk_full)
    with pytest.raises(OSError, match="No space left"):
        recommend.run(args + ["--num_shards", "2"])
    assert partition_files(str(partition)) == published
    assert {p: p.read_bytes() for p in snapshot} == snapshot  # nothing of it changed
    monkeypatch.setattr(launcher, failing_step, working)
    repaired = recommend.run(args)
    assert repaired["users_written"] > 0 and not list((output / "_staging").glob("*"))
    assert sorted(p.name for p in partition.iterdir()) == sorted(
        [os.path.basename(p) for p in partition_files(str(partition))] + ["_SUCCESS.json"])


def test_a_bigquery_output_without_a_temp_location_is_refused_before_the_job(toy_model, tmp_path):
    with pytest.raises(SystemExit, match="BigQuery --output needs --temp_location"):
        recommend.run(["--model_dir", toy_model, "--listens", "x.txt",
                       "--output", "my-project:music.recommendations"])


def test_native_start_up_noise_is_recognised_and_everything_else_kept():
    noise = [b"I0000 00:00:1796025614.116757   10799 port.cc:153] oneDNN custom operations are on.\n",
             b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
             b"E0000 00:00:1796025621.286852   10799 cuda_platform.cc:52] failed call to cuInit: "
             b"INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)\n",
             b"W1130 07:22:31.123456  1234 some_file.cc:12] a warning\n"]
    kept = [b"recommend: 10 users written\n",
            b"E1130 07:22:31.123456  1234 tf_record_dataset_op.cc:1] DATA_LOSS: corrupted record\n",
            b"Traceback (most recent call last):\n"]
    assert all(cli.is_noise(line) for line in noise)
    bar = b"\rMSD files:   0%|          | 0/2000 [00:00<?, ?song/s]"
    assert cli.without_noise(bar + noise[1]) == bar  # a worker's line after a progress bar
    assert cli.without_noise(noise[0]) == b"" and cli.without_noise(kept[0]) == kept[0]
    assert not any(cli.is_noise(line) for line in kept)
    assert cli.one_line(OSError(errno.EACCES, "Permission denied", "/x/y")) == "/x/y: Permission denied"
    assert cli.one_line(RuntimeError("long text\n  File x\nValueError: the cause")) == (
        "ValueError: the cause")


def test_the_cli_prints_one_line_and_no_native_noise(tmp_path):
    """As a user runs it: a bad --model_dir ends with one line naming it, exit status 1, no
    traceback and no TensorFlow/absl start-up lines."""
    (tmp_path / "model").mkdir()
    (tmp_path / "listens.txt").write_text(f"{'a' * 40}\tSOAAAAAAAAAAAAAAAA\t1\n")
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.recommend", "--model_dir", str(tmp_path / "model"),
         "--listens", str(tmp_path / "listens.txt"), "--output", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300,
        env={k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"})
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [f"recommend: --model_dir: {tmp_path / 'model'} holds no model.json: not a "
                     "model directory (or its training run did not finish)"], result.stderr


def write_feature_csv(path, rows):
    with open(path, "w") as handle:
        handle.write("track_id,song_id," + ",".join(f"f{d:02d}" for d in range(3)) + "\n")
        for track, song, vector in rows:
            handle.write(f"{track},{song}," + ",".join(f"{v:.9g}" for v in vector) + "\n")


GOOD_ROWS = [(f"TR{i:016d}", f"SO{i:016d}", [0.6, 0.8, 0.0]) for i in range(4)]


@pytest.mark.parametrize("change, message", [
    (lambda rows: rows.__setitem__(1, (rows[1][0], rows[1][1], [30.0, 40.0, 0.0])),
     r"1 vectors that are not of unit length \(e.g. track TR0000000000000001: length 50\)"),
    (lambda rows: rows.__setitem__(2, ("TRÄÖ💥", rows[2][1], rows[2][2])),
     "a track id that is not of the MSD shape: 'TRÄÖ💥'"),
    (lambda rows: rows.__setitem__(2, ("", rows[2][1], rows[2][2])),
     "a track id that is not of the MSD shape"),
    (lambda rows: rows.append(rows[0]), r"1 track ids more than once \(e.g. TR0000000000000000\)"),
])
def test_catalogue_rows_are_checked_before_use(change, message, tmp_path):
    from recommend import catalogue as catalogue_lib

    rows = list(GOOD_ROWS)
    change(rows)
    write_feature_csv(tmp_path / "part-0.csv", rows)
    with pytest.raises(catalogue_lib.CatalogueError, match=message):
        catalogue_lib.load_catalogue(str(tmp_path / "part-*.csv"))


def test_a_feature_folder_that_no_longer_matches_its_summary_is_refused(
        synthetic_features, tmp_path):
    import json
    import shutil

    from recommend import catalogue as catalogue_lib

    copy = tmp_path / "features"
    shutil.copytree(synthetic_features[0], copy)
    summary = json.loads((copy / "run_summary.json").read_text())
    summary["songs_written"] += 1
    (copy / "run_summary.json").write_text(json.dumps(summary))
    with pytest.raises(catalogue_lib.CatalogueError,
                       match=r"hold 300 songs but its run_summary.json says 301"):
        catalogue_lib.load_catalogue(str(copy), with_features=False)


def test_a_second_run_of_the_same_partition_is_refused_while_the_first_holds_it(
        toy_model, synthetic_sample, tmp_path):
    """Two runs of one (output, run_date, model): the second would delete the first's live
    staging and publish over it; it is refused, naming the first. The first holds the lock
    file's flock for its whole life (its pid need not be visible here: another PID namespace);
    a lock file nobody holds (its process is gone) is taken over."""
    import json
    import socket

    output = tmp_path / "out"
    lock = output / "_staging" / f"run_date={RUN_DATE}-toy_reverse.lock"
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"job": "recommend", "host": socket.gethostname(),
                                "pid": 4242, "started": "2026-11-24T03:00:00Z"}))
    holder = hold_flock(lock)
    try:
        with pytest.raises(SystemExit, match=rf"another run holds .*{lock.name} \(pid 4242 on "):
            recommend.run(job_args(toy_model, synthetic_sample.triplets_path, output))
        assert lock.exists()
    finally:
        holder.kill()
        holder.wait()
    assert recommend.run(job_args(toy_model, synthetic_sample.triplets_path, output))[
        "users_written"] > 0
    assert not lock.exists()


@pytest.mark.parametrize("args, message", [
    (["--max_play_count", "0"], "--max_play_count must be at least 1"),
    (["--num_shards", "-1"], "--num_shards must be 0"),
    (["--batch_size", "0"], "--batch_size must be at least 1"),
    (["--k", "-5"], "--k must be at least 1"),
])
def test_numbers_that_make_no_sense_are_refused_before_the_job(args, message, tmp_path):
    with pytest.raises(SystemExit, match=message):
        recommend.run(["--features", str(tmp_path), "--listens", "l.txt",
                       "--output", str(tmp_path / "o")] + args)


@pytest.mark.parametrize("module, args, message", [
    ("pipelines.features", ["--input", "{tmp}/nothing/*.h5", "--output_dir", "{tmp}/out"],
     "features: no file matches {tmp}/nothing/*.h5"),
    ("pipelines.train", ["--listens", "{tmp}", "--output_dir", "{tmp}/model"],
     "train: --listens: {tmp} is a folder; give a file, or a pattern such as {tmp}/*.txt"),
])
def test_the_other_clis_print_one_line_and_no_native_noise(module, args, message, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", module] + [a.format(tmp=tmp_path) for a in args],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [message.format(tmp=tmp_path)], result.stderr


def test_an_output_inside_an_input_is_refused_and_the_input_left_alone(toy_model,
                                                                      synthetic_sample):
    before = sorted(os.listdir(toy_model))
    with pytest.raises(SystemExit, match=r"--output .* is inside --model_dir"):
        recommend.run(job_args(toy_model, synthetic_sample.triplets_path, toy_model))
    assert sorted(os.listdir(toy_model)) == before


def test_library_tracebacks_are_left_out_of_the_log_unless_debug(monkeypatch):
    """Beam logs a failing worker's whole stack (ERROR with exc_info) before the job fails and
    the CLI prints the cause in one line: the log keeps the message, not the traceback;
    ``--debug`` keeps both."""
    import io
    import logging

    def logged(argv):
        monkeypatch.setattr(sys, "argv", argv)
        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        root = logging.getLogger()
        monkeypatch.setattr(root, "handlers", [handler])
        cli.configure_logging()
        try:
            raise ValueError("the file ends inside record 999")
        except ValueError:
            logging.getLogger("apache_beam.runners.common").exception("x.tfrecord.gz: broken")
        return stream.getvalue()

    quiet = logged(["recommend"])
    assert quiet == "x.tfrecord.gz: broken\n"
    loud = logged(["recommend", "--debug"])
    assert loud.startswith("x.tfrecord.gz: broken\nTraceback (most recent call last):")
    assert "ValueError: the file ends inside record 999" in loud
