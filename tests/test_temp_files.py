"""Temporary files (issue 14): a command-line run leaves nothing in the user's temporary folder.

Every run used to leave Beam's ``multi_process_shared`` ``<hex>.address``/``.lock`` files,
``beam-temp*``, ``beam-requirements-cache`` and ``tmp*`` folders in /tmp (8 per recommendation
run, 4 per feature or training run, 24 per demo). ``pipelines.cli`` now gives each run its own
folder there (``msd-<job>-<pid>-…``, TMPDIR and ``tempfile.tempdir`` pointed at it before the
libraries are imported) and removes it at exit (a killed run's folder: the next run). Each case
runs the real CLI as a user would, with TMPDIR an empty folder, and looks at that folder
afterwards.
"""
import os
import signal
import subprocess
import sys
import time

import pytest

from pipelines import cli

RUN_DATE = "2026-02-03"


def run_cli(module, args, temp, timeout=300):
    """``python -m module args`` with TMPDIR=temp; the finished process."""
    env = dict(os.environ, TMPDIR=str(temp))
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=timeout)


def left_in(temp):
    return sorted(os.listdir(temp))


@pytest.fixture(scope="module")
def features_run(synthetic_sample, tmp_path_factory):
    """The feature CLI over conftest's synthetic sample: (its output folder, the TMPDIR it was
    given, the finished process)."""
    temp = tmp_path_factory.mktemp("features_tmpdir")
    output = tmp_path_factory.mktemp("features_out") / "features"
    result = run_cli("pipelines.features",
                     ["--input", synthetic_sample.data_dir, "--output_dir", output], temp)
    return output, temp, result


def test_the_feature_cli_leaves_nothing_in_the_temporary_folder(features_run):
    output, temp, result = features_run
    assert result.returncode == 0, result.stderr[-3000:]
    assert (output / "run_summary.json").exists()
    assert left_in(temp) == []


def test_a_failing_feature_run_leaves_nothing_in_the_temporary_folder(synthetic_sample, tmp_path):
    """The job runs (Beam and TFT make their temporary files), then the run is refused:
    zscore_l2 over one song."""
    one_song = next(os.path.join(folder, name) for folder, _, names in
                    sorted(os.walk(synthetic_sample.data_dir)) for name in sorted(names)
                    if name.endswith(".h5"))
    (tmp_path / "temp").mkdir()
    result = run_cli("pipelines.features", ["--input", one_song, "--output_dir",
                                            tmp_path / "out", "--normalization", "zscore_l2"],
                     tmp_path / "temp")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert left_in(tmp_path / "temp") == []


def recommend_args(features, listens, output):
    return ["--features", features, "--listens", listens, "--output", output, "--k", "5",
            "--run_date", RUN_DATE]


def test_the_recommend_cli_leaves_nothing_in_the_temporary_folder(features_run, synthetic_sample,
                                                                  tmp_path):
    """The content model's scoring shares its model across processes (Beam's
    multi_process_shared: ``<hex>.address``/``.lock`` files in the temporary folder)."""
    features, _, made = features_run
    assert made.returncode == 0, made.stderr[-3000:]
    (tmp_path / "temp").mkdir()
    args = recommend_args(features, synthetic_sample.triplets_path, tmp_path / "out")
    result = run_cli("pipelines.recommend", args, tmp_path / "temp")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "0 users written" not in result.stdout
    assert left_in(tmp_path / "temp") == []


def test_a_failing_recommend_run_leaves_nothing_and_debug_keeps_its_folder(synthetic_sample,
                                                                           tmp_path):
    (tmp_path / "not_a_model").mkdir()
    (tmp_path / "temp").mkdir()
    args = ["--model_dir", tmp_path / "not_a_model", "--listens", synthetic_sample.triplets_path,
            "--output", tmp_path / "out"]
    result = run_cli("pipelines.recommend", args, tmp_path / "temp")
    assert result.returncode == 1 and "holds no model.json" in result.stderr, result.stderr
    assert left_in(tmp_path / "temp") == []
    # --debug: the run's folder kept, where the last line says
    result = run_cli("pipelines.recommend", args + ["--debug"], tmp_path / "temp")
    assert result.returncode == 1
    kept = left_in(tmp_path / "temp")
    assert len(kept) == 1 and kept[0].startswith("msd-recommend-"), kept
    assert f"--debug: temporary files kept in {tmp_path / 'temp' / kept[0]}" in result.stderr


def test_a_terminated_recommend_run_removes_its_temporary_folder(features_run, synthetic_sample,
                                                                 tmp_path):
    """SIGTERM while the job runs (its temporary files made): the run unwinds as after Ctrl-C
    (cli.Terminated), the folder goes, and the process ends with one line and status 143
    (128 + SIGTERM)."""
    features, _, made = features_run
    assert made.returncode == 0, made.stderr[-3000:]
    temp = tmp_path / "temp"
    temp.mkdir()
    stderr = open(tmp_path / "stderr.txt", "w+")
    process = subprocess.Popen(
        [sys.executable, "-m", "pipelines.recommend",
         *map(str, recommend_args(features, synthetic_sample.triplets_path, tmp_path / "out"))],
        env=dict(os.environ, TMPDIR=str(temp)), stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            runs = [name for name in os.listdir(temp) if name.startswith("msd-recommend-")]
            if runs and os.listdir(temp / runs[0]):  # the libraries have started writing
                break
            time.sleep(0.05)
        assert process.poll() is None, "the run ended before it made temporary files"
        process.send_signal(signal.SIGTERM)
        status = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        stderr.seek(0)
        said = stderr.read()
        stderr.close()
    assert status == 128 + signal.SIGTERM, said[-3000:]
    assert "recommend: terminated" in said, said[-3000:]
    assert left_in(temp) == []


def test_the_run_folder_is_made_once_in_the_users_temporary_folder(tmp_path, monkeypatch):
    """In-process: the folder's name and place, TMPDIR and tempfile pointed at it, removed by
    ``remove_run_temp_dir`` (which atexit calls), and only by the process that made it."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(cli, "_run_temp", None)
    monkeypatch.setattr(cli, "_keep_run_temp", False)
    monkeypatch.setattr(cli.atexit, "register", lambda function: None)
    monkeypatch.setattr(cli.signal, "signal", lambda *args: None)
    path = cli.use_run_temp_dir("probe")
    assert os.path.dirname(path) == str(tmp_path)
    assert os.path.basename(path).startswith(f"msd-probe-{os.getpid()}-")
    assert tempfile.gettempdir() == path == os.environ["TMPDIR"]
    assert cli.use_run_temp_dir("other") == path
    (tempfile.NamedTemporaryFile(delete=False)).close()
    monkeypatch.setattr(cli, "_run_temp_owner", -1)  # as in a forked worker
    cli.remove_run_temp_dir()
    assert os.path.isdir(path)
    monkeypatch.setattr(cli, "_run_temp_owner", os.getpid())
    cli.remove_run_temp_dir()
    assert not os.path.exists(path) and cli._run_temp is None


def test_a_killed_runs_folder_is_removed_by_the_next_run_and_no_other(tmp_path):
    """SIGKILL leaves no chance to clean up: the next run removes the folder, once no process
    holds its lock. A live run's folder, a folder --debug kept (no lock) and anything else are
    left alone."""
    env = dict(os.environ, TMPDIR=str(tmp_path))
    make = "from pipelines import cli; import os, sys; cli.use_run_temp_dir(sys.argv[1]); "
    live = subprocess.Popen([sys.executable, "-c", make + "print(1, flush=True); "
                             "sys.stdin.read()", "live"], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    try:
        assert live.stdout.readline().strip() == b"1"
        killed = subprocess.run([sys.executable, "-c", make + "os.kill(os.getpid(), 9)",
                                 "killed"], env=env, timeout=60)
        assert killed.returncode == -signal.SIGKILL
        (tmp_path / "msd-kept-123-abc").mkdir()  # as --debug leaves it
        (tmp_path / "msd-notes.txt").write_text("mine")
        names = left_in(tmp_path)
        dead = [name for name in names if name.startswith("msd-killed-")]
        assert len(dead) == 1 and any(name.startswith("msd-live-") for name in names)
        assert cli.remove_dead_runs_temp_dirs(str(tmp_path)) == [str(tmp_path / dead[0])]
        assert left_in(tmp_path) == [name for name in names if name != dead[0]]
    finally:
        live.stdin.close()
        assert live.wait(timeout=60) == 0
    # the live run ended normally: its folder went with it
    assert left_in(tmp_path) == ["msd-kept-123-abc", "msd-notes.txt"]
