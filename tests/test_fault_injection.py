"""A failed run publishes nothing (issue 14, item 2), tested by failing every write in turn.

For the recommendation job (local Parquet output), the training job (a model directory) and
the feature job (an output folder of subfolders committed by its ``run_summary.json``):

1. one run over an existing good output records every mutating file-system call the product
   makes in this process outside the Beam pipeline: the launcher's checks and lock before the
   job, and the whole publish phase after it (``os.rename/replace/remove/unlink/rmdir/mkdir/
   makedirs``, ``shutil.rmtree/move/copy*``, ``os.open`` for writing, ``open``/``io.open`` for
   writing, the first ``write`` to each file opened for writing, ``os.fsync``; Beam's local
   file system and the launcher primitives reach the disk only through these). A call made
   inside another recorded call (``os.mkdir`` inside ``os.makedirs``) is part of it;
2. for each recorded call i, the job runs again with call i raising ``OSError(ENOSPC)``: the
   run must fail and leave the previous output exactly as it was (every byte, no file more or
   less outside ``_staging``; readers: ``launcher.partition_files``, ``recommend.query runs``,
   the report's run summary; ``model.json``, its version folder, the model loads; the feature
   catalogue and its run summary) — or, for a
   call after the commit point (deleting the previous version, the staging folder), succeed
   with the new output complete and current;
3. a clean run afterwards succeeds and leaves nothing behind (no ``_staging``, no temporary
   or ``.replaced`` names, exactly the published files).

The Beam pipeline itself runs once per job (the staged output it wrote is kept and copied
into each later run's staging instead of running the pipeline again: the launcher code that
follows is the real one). One more case per job fails a write inside the pipeline (a Parquet
shard, a model array) in a real run.
"""
import builtins
import contextlib
import errno
import io
import json
import os
import re
import shutil
import threading

import apache_beam as beam
import numpy as np
import pytest

from pipelines import features, launcher, recommend, train
from recommend import catalogue as catalogue_lib
from recommend import models
from recommend import query as query_lib
from recommend.models import base as model_base
from tests.test_train_pipeline import ReverseIdModel

RUN_DATE = "2026-11-24"
WRITE_MODES = set("wax+")
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


class FaultInjector:
    """Wraps the mutating file-system calls of ``os``, ``shutil`` and ``open``: records the
    top-level ones made by the main thread while ``recording``, and makes call number
    ``fail_at`` (or every call ``fail_when(kind, path)`` accepts, in any thread) raise
    ENOSPC."""

    NAMES = {os: ("rename", "replace", "remove", "unlink", "rmdir", "mkdir", "makedirs", "fsync"),
             shutil: ("rmtree", "move", "copy", "copy2", "copyfile", "copytree")}

    def __init__(self, root: str):
        self.root = root
        self.calls: list[str] = []
        self.recording = False
        self.fail_at = None
        self.fail_when = None
        self.fired: list[str] = []
        self._local = threading.local()

    # -- bookkeeping ---------------------------------------------------------------------------
    def label(self, kind: str, path) -> str:
        text = os.fsdecode(path) if isinstance(path, (str, bytes, os.PathLike)) else "<fd>"
        text = re.sub(r"(beam-pipeline-temp|/tmp)\w+", r"\1<random>", text)
        text = text.replace(self.root, "<out>")
        text = re.sub(r"\d{8}T\d{6}Z-[0-9a-f]{8}", "<version>", text)
        text = re.sub(r"[0-9a-f]{12}", "<run>", text)
        text = re.sub(r"[.]\d+[.]tmp", ".<pid>.tmp", text)
        return f"{kind} {text}"

    def _call(self, kind: str, path, function, *args, **kwargs):
        depth = getattr(self._local, "depth", 0)
        main = threading.current_thread() is threading.main_thread()
        if depth == 0:
            label = self.label(kind, path)
            fail = False
            if self.fail_when is not None and self.fail_when(kind, os.fsdecode(path) if isinstance(
                    path, (str, bytes, os.PathLike)) else ""):
                fail = True
            if self.recording and main:
                self.calls.append(label)
                fail = fail or len(self.calls) - 1 == self.fail_at
            if fail:
                self.fired.append(label)
                raise OSError(errno.ENOSPC, "No space left on device (injected)", str(path))
        self._local.depth = depth + 1
        try:
            return function(*args, **kwargs)
        finally:
            self._local.depth = depth

    def install(self, monkeypatch) -> None:
        for module, names in self.NAMES.items():
            for name in names:
                original = getattr(module, name)

                def wrapper(*args, _original=original, _kind=f"{module.__name__}.{name}",
                            **kwargs):
                    return self._call(_kind, args[0] if args else kwargs.get("path", "?"),
                                      _original, *args, **kwargs)
                monkeypatch.setattr(module, name, wrapper)

        original_os_open = os.open

        def os_open(path, flags, *args, **kwargs):
            if flags & WRITE_FLAGS:
                return self._call("os.open", path, original_os_open, path, flags, *args, **kwargs)
            return original_os_open(path, flags, *args, **kwargs)
        monkeypatch.setattr(os, "open", os_open)

        original_open = builtins.open

        def open_(file, mode="r", *args, **kwargs):
            if not WRITE_MODES & set(mode):
                return original_open(file, mode, *args, **kwargs)
            if isinstance(file, int):  # os.fdopen: the os.open before it is the call
                handle = original_open(file, mode, *args, **kwargs)
            else:
                handle = self._call("open", file, original_open, file, mode, *args, **kwargs)
            return _WriteOnce(handle, self, file)
        monkeypatch.setattr(builtins, "open", open_)
        monkeypatch.setattr(io, "open", open_)


class _WriteOnce:
    """A file opened for writing whose first ``write`` is a call of its own (a full disk
    fails a write, not only an open)."""

    def __init__(self, handle, injector: FaultInjector, path):
        self._handle, self._injector, self._path = handle, injector, path
        self._written = False

    def write(self, data):
        if not self._written:
            self._written = True
            return self._injector._call("write", self._path, self._handle.write, data)
        return self._handle.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.close()

    def __iter__(self):
        return iter(self._handle)

    def __getattr__(self, name):
        return getattr(self._handle, name)


def glob_files(folder: str, suffix: str) -> list[str]:
    return sorted(os.path.join(d, name) for d, _, names in os.walk(folder) for name in names
                  if name.endswith(suffix))


class ReplayedPipeline:
    """Runs a job's Beam pipeline once for real and keeps what it staged; later runs copy that
    into their own staging instead of running the pipeline (``beam.Pipeline.run`` returns at
    once, ``launcher.counter_totals`` the first run's counters). ``staging_of(args)`` is where
    the job's ``build_pipeline`` call was told to write."""

    def __init__(self, module, staging_of, cache: str):
        self.module, self.staging_of, self.cache = module, staging_of, cache
        self.counters = None
        self.staging = None

    def install(self, monkeypatch, injector: FaultInjector) -> None:
        build, run, totals = self.module.build_pipeline, beam.Pipeline.run, launcher.counter_totals

        def capture(*args, **kwargs):
            self.staging = self.staging_of(args)
            if self.counters is None:
                build(*args, **kwargs)

        def replay(pipeline, *args, **kwargs):
            if self.counters is None or self.staging is None:  # not this job's run
                return run(pipeline, *args, **kwargs)
            recording, injector.recording = injector.recording, False
            try:
                shutil.copytree(self.cache, self.staging)
            finally:
                injector.recording = recording
            return _FinishedResult()

        def counters(result, namespace):
            if self.staging is None:  # not this job's run
                return totals(result, namespace)
            if self.counters is None:
                self.counters = totals(result, namespace)
                shutil.copytree(self.staging, self.cache)
            self.staging = None
            return dict(self.counters)

        monkeypatch.setattr(self.module, "build_pipeline", capture)
        monkeypatch.setattr(beam.Pipeline, "run", replay)
        monkeypatch.setattr(launcher, "counter_totals", counters)


@contextlib.contextmanager
def replayed_job(module, output: str, staging_of, cache: str):
    """The injector (watching ``output``) and the replayed pipeline of one job, installed for
    the cases of a module-scoped fixture: yields (injector, replayed, monkeypatch)."""
    with pytest.MonkeyPatch.context() as patch:
        injector = FaultInjector(output)
        injector.install(patch)
        replayed = ReplayedPipeline(module, staging_of, cache)
        replayed.install(patch, injector)
        yield injector, replayed, patch


class _FinishedResult:
    def wait_until_finish(self):
        return "DONE"


def snapshot(root: str, skip=("_staging",)) -> dict:
    """Every file (bytes) and folder below ``root``, outside ``skip``."""
    found = {}
    for directory, dirs, files in os.walk(root):
        rel = os.path.relpath(directory, root)
        if rel.split(os.sep)[0] in skip:
            continue
        found[rel + "/"] = None
        for name in files:
            with builtins.open(os.path.join(directory, name), "rb") as handle:
                found[os.path.join(rel, name)] = handle.read()
    return found


def leftovers(root: str) -> list[str]:
    """Temporary names anywhere below ``root``, and the staging folder."""
    bad = []
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            if (name == "_staging" or name.endswith((".tmp", ".replaced")) or "beam-temp" in name
                    or name.startswith(".")):
                bad.append(os.path.relpath(os.path.join(directory, name), root))
    return bad


def differences(before: dict, after: dict) -> str:
    changed = sorted(k for k in set(before) | set(after) if before.get(k, 0) != after.get(k, 0))
    state = lambda k: "gone" if k not in after else "new" if k not in before else "changed"
    return ", ".join(f"{k} ({state(k)})"
                     for k in changed[:6])


def previous_output_kept(output: str, state: dict, readers) -> list[str]:
    """Every byte and name outside ``_staging`` as before, and readers see what they saw."""
    problems = []
    now = snapshot(output)
    if now != state["files"]:
        problems.append(f"the previous output changed: {differences(state['files'], now)}")
    try:
        if readers() != state["readers"]:
            problems.append("readers see another version than the previous one")
    except Exception as error:  # noqa: BLE001
        problems.append(f"readers fail: {error!r}")
    return problems


def inject_each(injector: FaultInjector, run, remember, check_failed, check_published,
                check_clean):
    """Fails each recorded call in turn; returns (points, outcomes, problems)."""
    points = list(injector.calls)
    outcomes, problems = [], []
    for index, label in enumerate(points):
        injector.calls, injector.fired = [], []
        injector.fail_at, injector.recording = index, True
        try:
            run()
            error = None
        except (Exception, SystemExit) as caught:  # noqa: BLE001
            error = caught
        finally:
            injector.fail_at, injector.recording = None, False
        if injector.fired != [label]:
            problems.append(f"#{index} {label}: the rerun did not reach it "
                            f"(fired {injector.fired})")
        elif error is not None:
            outcomes.append((label, "failed, previous output kept"))
            problems += [f"#{index} {label}: {p}" for p in check_failed()]
        else:
            outcomes.append((label, "after the commit: logged, new output published"))
            problems += [f"#{index} {label}: {p}" for p in check_published()]
            remember()  # the new output is the previous one of the clean rerun
        try:
            run()
        except (Exception, SystemExit) as caught:  # noqa: BLE001
            problems.append(f"#{index} {label}: the clean rerun failed: {caught!r}")
            continue
        left = leftovers(injector.root)
        problems += [f"#{index} {label} (clean rerun): {p}" for p in check_clean()
                     + ([f"leftovers: {left}"] if left else [])]
        remember()
    return points, outcomes, problems


def report(job: str, points, outcomes, problems) -> None:
    print(f"\n{job}: {len(points)} injection points")
    for label, outcome in outcomes:
        print(f"  {label}: {outcome}")
    assert not problems, f"{job}: {len(problems)} problems:\n" + "\n".join(problems)


def every_write_fails_in_turn(job: str, injector: FaultInjector, run, checks,
                              commit_file: str) -> None:
    """Records the calls of one run over the good output, then fails each in turn
    (``inject_each``) and reports every point and every problem."""
    remember, check_failed, check_published, check_clean = checks
    # Once first: the output is then as every later run finds it (a training run over a model
    # of two versions also deletes the older one, which the run over the first model has not
    # to do): the recorded calls are those of each run below, in the same order.
    run()
    remember()
    injector.calls, injector.recording = [], True
    try:
        run()  # over the good output: every call it makes is an injection point
    finally:
        injector.recording = False
    remember()
    points, outcomes, problems = inject_each(injector, run, remember, check_failed,
                                             check_published, check_clean)
    assert len(points) >= 5 and any(commit_file in p for p in points), points
    report(job, points, outcomes, problems)


def a_write_inside_the_pipeline_fails(injector: FaultInjector, replayed, run, checks,
                                      suffix: str, monkeypatch) -> None:
    """A real pipeline run whose writes of ``suffix`` files fail: the run fails, the previous
    output stays, a rerun publishes and leaves nothing behind."""
    remember, check_failed, _, check_clean = checks
    remember()
    monkeypatch.setattr(replayed, "counters", None)  # this run's pipeline is real
    monkeypatch.setattr(replayed, "cache", replayed.cache + "_unused")
    injector.fail_when = lambda kind, path: kind == "open" and path.endswith(suffix)
    try:
        with pytest.raises(Exception, match="No space left"):
            run()
    finally:
        injector.fail_when = None
    assert injector.fired and not check_failed()
    monkeypatch.undo()
    run()
    assert not check_clean() and not leftovers(injector.root)


# -- the recommendation job ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def recommend_job(synthetic_sample, tmp_path_factory):
    """A toy model, a good published partition and report, the pipeline's staged output kept,
    and the injector installed (module scope: everything below reuses them)."""
    from msd import listening

    root = tmp_path_factory.mktemp("fault_recommend")
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(models.MODELS, ReverseIdModel.kind, ReverseIdModel)
        songs = sorted({r.song_id for r in listening.read_listens(synthetic_sample.triplets_path)})
        model_base.save_model(ReverseIdModel(np.array(songs, dtype=object)), str(root / "model"))
        output = str(root / "out")
        args = ["--model_dir", str(root / "model"), "--listens", synthetic_sample.triplets_path,
                "--output", output, "--k", "5", "--run_date", RUN_DATE]
        injector = FaultInjector(output)
        injector.install(patch)
        replayed = ReplayedPipeline(recommend, lambda a: os.path.dirname(a[3]),
                                    str(root / "staged_once"))
        replayed.install(patch, injector)
        recommend.run(args)  # the real pipeline: the previous output of every case below
        yield output, args, injector, replayed


def recommend_checks(output: str):
    partition = os.path.join(output, f"run_date={RUN_DATE}", "model=toy_reverse")
    report_dir = os.path.join(output, "_reports", f"run_date={RUN_DATE}", "model=toy_reverse")
    runs = query_lib.load_query("runs")

    def readers() -> tuple:
        with builtins.open(os.path.join(report_dir, "run_summary.json")) as handle:
            summary = json.load(handle)
        return (launcher.partition_files(partition),
                query_lib.run_local(runs, {}, recommendations_dir=output).rows,
                summary["users_written"])

    state = {}

    def remember():
        state["files"], state["readers"] = snapshot(output), readers()

    def check_failed():
        problems = previous_output_kept(output, state, readers)
        if os.path.isdir(os.path.join(output, "_staging")) and any(
                name.endswith(".lock") for name in os.listdir(os.path.join(output, "_staging"))):
            problems.append("the lock was left behind")
        return problems

    def check_published():
        problems = []
        try:
            files, _, users = readers()
        except Exception as error:  # noqa: BLE001
            return [f"readers fail: {error!r}"]
        if not all(os.path.isfile(path) for path in files):
            problems.append("the marker names missing files")
        if files == state["readers"][0]:
            problems.append("succeeded but the previous version is still current")
        if users != state["readers"][2]:
            problems.append("the report does not match the rows")
        return problems

    def check_clean():
        problems = []
        files = launcher.partition_files(partition)
        names = sorted(os.listdir(partition))
        if names != sorted([os.path.basename(p) for p in files] + [launcher.PUBLISHED_MARKER]):
            problems.append(f"partition holds more than its version: {names}")
        if sorted(os.listdir(report_dir)) != ["rejected", "run_summary.json"]:
            problems.append(f"report holds {sorted(os.listdir(report_dir))}")
        return problems

    return remember, check_failed, check_published, check_clean


def test_every_write_of_a_recommendation_run_fails_in_turn(recommend_job):
    output, args, injector, _ = recommend_job
    every_write_fails_in_turn("recommend", injector, lambda: recommend.run(args),
                              recommend_checks(output), "_SUCCESS.json")


def test_a_write_failing_inside_the_recommendation_pipeline_publishes_nothing(
        recommend_job, monkeypatch):
    """A full disk while Beam writes a Parquet shard (a real pipeline run): the job fails, the
    previous partition and report stay, the lock is released, a rerun publishes."""
    output, args, injector, replayed = recommend_job
    a_write_inside_the_pipeline_fails(injector, replayed, lambda: recommend.run(args),
                                      recommend_checks(output), ".parquet", monkeypatch)


# -- the training job ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def train_job(synthetic_sample, tmp_path_factory):
    root = tmp_path_factory.mktemp("fault_train")
    output = str(root / "model")
    with replayed_job(train, output, lambda a: a[2], str(root / "staged_once")) as (
            injector, replayed, _):
        args = ["--listens", synthetic_sample.triplets_path, "--output_dir", output, "--top_m", "5"]
        train.run(args)  # the real pipeline: the previous model of every case below
        yield output, args + ["--overwrite"], injector, replayed


def train_checks(output: str):
    state = {}

    def readers() -> tuple:
        manifest = model_base.read_manifest(output)
        model = models.load_model(output)
        return manifest["version"], model.num_songs(), manifest

    def remember():
        state["files"], state["readers"] = snapshot(output), readers()

    def check_failed():
        return previous_output_kept(output, state, readers)

    def check_published():
        try:
            version, songs, manifest = readers()
        except Exception as error:  # noqa: BLE001
            return [f"the new model does not load: {error}"]
        problems = []
        if version == state["readers"][0]:
            problems.append("succeeded but the previous version is still current")
        if not os.path.isfile(os.path.join(output, manifest["report"]["run_summary"])):
            problems.append("the new version has no run summary")
        return problems

    def check_clean():
        problems = []
        version = readers()[0]
        names = sorted(os.listdir(output))
        previous = state["readers"][0]
        if names != sorted(["model.json", f"v-{version}", f"v-{previous}"]):
            problems.append(f"the model directory holds {names}")
        return problems

    return remember, check_failed, check_published, check_clean


def test_every_write_of_a_training_run_fails_in_turn(train_job):
    output, args, injector, _ = train_job
    every_write_fails_in_turn("train", injector, lambda: train.run(args), train_checks(output),
                              "model.json")


def test_a_write_failing_inside_the_training_pipeline_publishes_nothing(train_job, monkeypatch):
    """A full disk while the Save step writes a model array (a real pipeline run)."""
    output, args, injector, replayed = train_job
    a_write_inside_the_pipeline_fails(injector, replayed, lambda: train.run(args),
                                      train_checks(output), ".npy", monkeypatch)


# -- the feature job -----------------------------------------------------------------------------

RETIRED = "csv"  # a format the previous run wrote and the new runs no longer do


@pytest.fixture(scope="module")
def features_job(synthetic_sample, tmp_path_factory):
    """A good feature output over six synthetic songs, the pipeline's staged output kept
    without its ``csv/`` (the new runs no longer write that format: publishing must move the
    previous one aside before the commit and delete it after), and the injector installed."""
    root = tmp_path_factory.mktemp("fault_features")
    tiny = root / "input"
    for path in glob_files(synthetic_sample.data_dir, ".h5")[:6]:
        tiny.mkdir(exist_ok=True)
        shutil.copy(path, tiny / os.path.basename(path))
    output = str(root / "out")
    with replayed_job(features, output, lambda a: a[4], str(root / "staged_once")) as (
            injector, replayed, _):
        args = ["--input", str(tiny), "--output_dir", output, "--overwrite"]
        features.run(args)  # the real pipeline: the previous output of every case below
        shutil.copytree(os.path.join(output, RETIRED), str(root / "retired"))
        shutil.rmtree(os.path.join(replayed.cache, RETIRED))
        yield output, args, injector, replayed, str(root / "retired")


def features_checks(output: str, retired_copy: str):
    state = {}

    def readers() -> tuple:
        with builtins.open(os.path.join(output, features.SUMMARY_FILE), "rb") as handle:
            summary = handle.read()
        catalogue = catalogue_lib.load_catalogue(output)
        return tuple(catalogue.track_ids), catalogue.features.tobytes(), summary

    def remember():
        # The previous output always holds the retired format (restored after a run that
        # published without it), so that every run has it to move aside.
        if not os.path.isdir(os.path.join(output, RETIRED)):
            shutil.copytree(retired_copy, os.path.join(output, RETIRED))
        state["files"], state["readers"] = snapshot(output), readers()

    def check_failed():
        problems = previous_output_kept(output, state, readers)
        if os.path.exists(os.path.join(output, features.LOCK_FILE)):
            problems.append("the lock was left behind")
        return problems

    def check_published():
        try:
            track_ids, _, summary = readers()
        except Exception as error:  # noqa: BLE001
            return [f"readers fail: {error!r}"]
        problems = []
        if os.path.isdir(os.path.join(output, RETIRED)):
            problems.append(f"the previous run's {RETIRED}/ stays beside the new output")
        if json.loads(summary)["songs_written"] != len(track_ids):
            problems.append("the run summary does not match the rows")
        return problems

    def check_clean():
        names = sorted(os.listdir(output))
        expected = sorted(set(features.OUTPUT_SUBDIRS) - {RETIRED} | {features.SUMMARY_FILE})
        return [] if names == expected else [f"the output holds {names}"]

    return remember, check_failed, check_published, check_clean


def test_every_write_of_a_feature_run_fails_in_turn(features_job):
    """Every write of the publish phase (staging the summary, moving each folder aside and in,
    moving the retired csv/ aside, the commit: run_summary.json written atomically, deleting
    what was replaced and the staging) and of the checks and lock before it fails in turn."""
    output, args, injector, _, retired_copy = features_job
    every_write_fails_in_turn("features", injector, lambda: features.run(args),
                              features_checks(output, retired_copy), "run_summary.json")


def test_a_catalogue_read_during_a_feature_publish_sees_one_run_whole_or_is_refused(
        features_job, monkeypatch):
    """A reader of the feature folder racing a publish (here: after every folder move and at
    the commit) that replaces 6 songs by 5: it reads the previous catalogue whole, the new one
    whole, or is refused by the catalogue's checks (features/ absent for an instant, or the new
    rows under the previous run_summary.json: the row count does not match) — never a mix."""
    output, args, _, replayed, retired_copy = features_job
    remember, *_ = features_checks(output, retired_copy)
    remember()
    before = catalogue_lib.load_catalogue(output)
    _one_song_fewer(replayed, monkeypatch)  # the next run's staged output
    seen = []

    def read_catalogue(what):
        try:
            catalogue = catalogue_lib.load_catalogue(output)
        except catalogue_lib.CatalogueError as error:
            seen.append((what, "refused", str(error)))
            return
        ids = list(catalogue.track_ids)
        seen.append((what, "previous" if ids == list(before.track_ids) else "new"
                     if len(ids) == len(before) - 1 and set(ids) < set(before.track_ids)
                     else f"a mix of {len(ids)} rows", ""))

    move, commit = launcher.move_folder, launcher.write_atomically

    def moved(source, destination):
        move(source, destination)
        read_catalogue(f"after moving {os.path.relpath(source, output)}")

    def committed(path, data):
        commit(path, data)
        read_catalogue("after the commit")

    monkeypatch.setattr(launcher, "move_folder", moved)
    monkeypatch.setattr(launcher, "write_atomically", committed)
    features.run(args)
    outcomes = {outcome for _, outcome, _ in seen}
    assert outcomes <= {"previous", "new", "refused"}, seen
    assert seen[-1][1] == "new" and len(catalogue_lib.load_catalogue(output)) == len(before) - 1
    print("\n".join(f"{what}: {outcome} {detail[:90]}" for what, outcome, detail in seen))
    refused = [detail for _, outcome, detail in seen if outcome == "refused"]
    assert any("run_summary.json says 6" in detail for detail in refused), seen
    monkeypatch.undo()
    features.run(args)  # back to the six songs for any later case
    remember()


# -- an interrupt or a lost reply right after the commit (issue F6/F7/F8) ----------------------
#
# The commit write took effect, then an error came: Ctrl-C (KeyboardInterrupt), SIGTERM
# (cli.Terminated, a SystemExit), or an OSError for a write that was stored (a GCS upload whose
# reply was lost). Nothing may be put back under the new commit: the new output is published
# whole and consistent; Ctrl-C / SIGTERM still stop the run, an OSError is logged.

def _stop_after(write, stop):
    """``launcher.write_atomically`` that writes, then raises ``stop()`` when ``write`` says so
    for the path written."""
    commit = launcher.write_atomically

    def written_then_stopped(path, data):
        commit(path, data)
        if write(path):
            raise stop()
    return written_then_stopped


STOPS = {
    "ctrl-c": (lambda: KeyboardInterrupt(), KeyboardInterrupt),
    "sigterm": (lambda: __import__("pipelines.cli").cli.Terminated(), SystemExit),
    "stored but reported failed": (
        lambda: OSError(errno.EIO, "upload reported failed (injected) after it was stored"),
        None),
}


def _one_song_fewer(replayed, monkeypatch) -> None:
    """The next replayed feature run stages one song fewer (its rows and its counters)."""
    import tensorflow as tf

    smaller = replayed.cache + "_smaller"
    if not os.path.isdir(smaller):
        shutil.copytree(replayed.cache, smaller)
        (shard,) = glob_files(os.path.join(smaller, "features"), ".tfrecord.gz")
        records = list(catalogue_lib.tfrecord_records(shard))
        with tf.io.TFRecordWriter(shard, options="GZIP") as writer:
            for record in records[1:]:
                writer.write(record)
    monkeypatch.setattr(replayed, "cache", smaller)
    counters = dict(replayed.counters)
    counters["songs_seen"] -= 1
    counters["songs_written"] -= 1
    monkeypatch.setattr(replayed, "counters", counters)


@pytest.mark.parametrize("stop", sorted(STOPS))
def test_a_stop_right_after_the_feature_commit_leaves_the_new_output_whole(
        features_job, monkeypatch, caplog, stop):
    """run_summary.json written (the commit), then Ctrl-C / SIGTERM / a reported failure: the
    new summary over the NEW folders (the retired csv/ gone, 5 rows as the summary says), the
    staging and what was replaced deleted, the lock released; Ctrl-C and SIGTERM are raised
    again, a reported failure is logged and the run succeeds."""
    output, args, _, replayed, retired_copy = features_job
    remember, *_ = features_checks(output, retired_copy)
    remember()
    before = catalogue_lib.load_catalogue(output)
    _one_song_fewer(replayed, monkeypatch)
    make, raised = STOPS[stop]
    committed = []

    def is_commit(path):
        if path == os.path.join(output, features.SUMMARY_FILE):
            with builtins.open(path, "rb") as handle:
                committed.append(handle.read())
            return True
        return False

    monkeypatch.setattr(launcher, "write_atomically", _stop_after(is_commit, make))
    if raised:
        with pytest.raises(raised):
            features.run(args)
    else:
        with caplog.at_level("WARNING"):
            features.run(args)
        assert "took effect" in caplog.text and "published" in caplog.text, caplog.text
    assert len(committed) == 1
    with builtins.open(os.path.join(output, features.SUMMARY_FILE), "rb") as handle:
        assert handle.read() == committed[0]
    catalogue = catalogue_lib.load_catalogue(output)  # checks rows against the summary
    assert len(catalogue) == len(before) - 1 == json.loads(committed[0])["songs_written"]
    assert not os.path.isdir(os.path.join(output, RETIRED)), "the previous csv/ was put back"
    assert not leftovers(output) and not os.path.exists(os.path.join(output, features.LOCK_FILE))
    monkeypatch.undo()
    features.run(args)  # back to the six songs for any later case
    remember()


@pytest.mark.parametrize("stop", ["ctrl-c", "sigterm"])
def test_a_stop_right_after_the_partition_marker_leaves_the_new_run_whole(
        recommend_job, monkeypatch, stop):
    """_SUCCESS.json naming this run written (the commit), then Ctrl-C / SIGTERM: it is raised
    again (not swallowed), the partition is the new version alone and the report beside it is
    the new run's (not the previous one put back, nor deleted with the staging); a rerun
    cleans what the stop left in _staging."""
    output, args, _, _ = recommend_job
    partition = os.path.join(output, f"run_date={RUN_DATE}", "model=toy_reverse")
    report_dir = os.path.join(output, "_reports", f"run_date={RUN_DATE}", "model=toy_reverse")
    remember, _, _, check_clean = recommend_checks(output)
    remember()
    previous = launcher.partition_files(partition)
    # This run's report says k=4: it can be told from the previous one (k=5) by its content.
    args_k4 = list(args)
    args_k4[args_k4.index("--k") + 1] = "4"
    at_commit = []

    def is_commit(path):
        if path == os.path.join(partition, launcher.PUBLISHED_MARKER):
            with builtins.open(os.path.join(report_dir, "run_summary.json"), "rb") as handle:
                at_commit.append(handle.read())
            return True
        return False

    make, raised = STOPS[stop]
    monkeypatch.setattr(launcher, "write_atomically", _stop_after(is_commit, make))
    with pytest.raises(raised):
        recommend.run(args_k4)
    monkeypatch.undo()
    assert len(at_commit) == 1 and json.loads(at_commit[0])["k"] == 4
    files = launcher.partition_files(partition)
    assert files != previous and all(os.path.isfile(path) for path in files)
    assert sorted(os.listdir(partition)) == sorted(
        [os.path.basename(path) for path in files] + [launcher.PUBLISHED_MARKER])
    with builtins.open(os.path.join(report_dir, "run_summary.json"), "rb") as handle:
        assert handle.read() == at_commit[0], "the report is not the run the partition holds"
    assert not check_clean()
    assert [name for name in leftovers(output) if not name.startswith("_staging")] == []
    staging = os.path.join(output, "_staging")
    assert not any(name.endswith(".lock") for name in os.listdir(staging)), "lock left"
    recommend.run(args)  # back to k=5; removes what the stop left in _staging
    assert not check_clean() and not leftovers(output)
    remember()


def _publish(root, run_id: str, rows: bytes, report: bytes) -> tuple[str, str]:
    staged = os.path.join(root, "_staging", run_id)
    os.makedirs(os.path.join(staged, "rows"))
    os.makedirs(os.path.join(staged, "report"))
    with builtins.open(os.path.join(staged, "rows", "part-00000-of-00001.parquet"), "wb") as h:
        h.write(rows)
    with builtins.open(os.path.join(staged, "report", "run_summary.json"), "wb") as h:
        h.write(report)
    return os.path.join(staged, "rows"), os.path.join(staged, "report")


@pytest.mark.parametrize("stop", sorted(STOPS) + ["not stored"])
def test_publish_version_never_rolls_back_a_marker_that_took_effect(tmp_path, monkeypatch,
                                                                    caplog, stop):
    """publish_version's commit (the marker) reports an error or is interrupted after it was
    stored (GCS: an upload stored, its reply lost): the new version and its report are
    current, the previous version is deleted; Ctrl-C / SIGTERM are raised again, the lost
    reply is logged. A marker write that did not take effect puts everything back."""
    folder, report_dir = str(tmp_path / "out" / "part"), str(tmp_path / "out" / "report")
    rows, report = _publish(tmp_path, "aaaaaaaaaaaa", b"old rows", b"old report")
    launcher.publish_version(rows, folder, "aaaaaaaaaaaa", with_folders=[(report, report_dir)])
    previous = launcher.partition_files(folder)
    rows, report = _publish(tmp_path, "bbbbbbbbbbbb", b"new rows", b"new report")
    marker = os.path.join(folder, launcher.PUBLISHED_MARKER)
    if stop == "not stored":
        def failing(path, data):
            raise OSError(errno.EIO, "upload failed (injected)")
        monkeypatch.setattr(launcher, "write_atomically", failing)
        with pytest.raises(OSError):
            launcher.publish_version(rows, folder, "bbbbbbbbbbbb",
                                     with_folders=[(report, report_dir)])
        assert launcher.partition_files(folder) == previous
        assert sorted(os.listdir(folder)) == sorted(
            [os.path.basename(p) for p in previous] + [launcher.PUBLISHED_MARKER])
        with builtins.open(os.path.join(report_dir, "run_summary.json"), "rb") as handle:
            assert handle.read() == b"old report"
        return
    make, raised = STOPS[stop]
    monkeypatch.setattr(launcher, "write_atomically", _stop_after(lambda p: p == marker, make))
    with caplog.at_level("WARNING"):
        if raised:
            with pytest.raises(raised):
                launcher.publish_version(rows, folder, "bbbbbbbbbbbb",
                                         with_folders=[(report, report_dir)])
        else:
            launcher.publish_version(rows, folder, "bbbbbbbbbbbb",
                                     with_folders=[(report, report_dir)])
    assert "published" in caplog.text
    if not raised:
        assert "reported an error" in caplog.text and "upload reported failed" in caplog.text
    files = launcher.partition_files(folder)
    assert [os.path.basename(p) for p in files] == ["part-bbbbbbbbbbbb-00000-of-00001.parquet"]
    assert sorted(os.listdir(folder)) == sorted(
        [os.path.basename(p) for p in files] + [launcher.PUBLISHED_MARKER])
    with builtins.open(files[0], "rb") as handle:
        assert handle.read() == b"new rows"
    assert sorted(os.listdir(report_dir)) == ["run_summary.json"]
    with builtins.open(os.path.join(report_dir, "run_summary.json"), "rb") as handle:
        assert handle.read() == b"new report", "the previous report was put back"
    assert not [name for name in leftovers(str(tmp_path / "out"))]


# A feature CLI run that sends itself SIGTERM right after the Nth call of a launcher function
# whose first argument contains a text (the signal is real; its handler is pipelines.cli's).
SIGTERM_HOOK = """
import os, signal, sys
from pipelines import cli
cli.quiet_native_logs()
from pipelines import launcher
function, text, nth = sys.argv[1], sys.argv[2], int(sys.argv[3])
original, calls = getattr(launcher, function), []
def hooked(*args, **kwargs):
    result = original(*args, **kwargs)
    if text in str(args[0]):
        calls.append(args[0])
        if len(calls) == nth:
            os.kill(os.getpid(), signal.SIGTERM)
    return result
setattr(launcher, function, hooked)
sys.argv = ["features"] + sys.argv[4:]
from pipelines import features
cli.run_main("features", features.main)
"""


@pytest.mark.parametrize("function, text, nth, after", [
    ("move_folder", "", 3, "mid-publish"),
    ("write_atomically", "run_summary.json", 1, "after the commit")])
def test_a_sigterm_during_a_feature_publish_unwinds_and_exits_143(
        features_job, tmp_path, function, text, nth, after):
    """A real SIGTERM to a feature CLI run while it publishes: mid-publish (a folder moved in,
    the next previous one moved aside), the previous output is put back whole; right after the
    commit, the new output (5 songs) is published whole. Either way: one line "features:
    terminated", status 143, no temporary folder left, the lock released."""
    output, args, _, _, _ = features_job
    copy = str(tmp_path / "out")
    shutil.copytree(output, copy)
    before = snapshot(copy)
    previous_rows = len(catalogue_lib.load_catalogue(copy))
    fewer = tmp_path / "input"
    fewer.mkdir()
    for path in glob_files(args[args.index("--input") + 1], ".h5")[1:]:
        shutil.copy(path, fewer / os.path.basename(path))
    hook = tmp_path / "hook.py"
    hook.write_text(SIGTERM_HOOK)
    temp = tmp_path / "temp"
    temp.mkdir()
    repo = os.path.dirname(os.path.dirname(os.path.abspath(features.__file__)))
    env = dict(os.environ, TMPDIR=str(temp),
               PYTHONPATH=os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")])))
    import subprocess
    import sys
    done = subprocess.run(
        [sys.executable, str(hook), function, text, str(nth), "--input", str(fewer),
         "--output_dir", copy, "--overwrite"],
        env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 143, done.stderr[-3000:]
    assert done.stderr.rstrip().endswith("features: terminated"), done.stderr[-3000:]
    assert os.listdir(temp) == [], "the temporary folder was left"
    assert not os.path.exists(os.path.join(copy, features.LOCK_FILE)), "the lock was left"
    if after == "mid-publish":
        now = snapshot(copy)
        assert now == before, differences(before, now)
        assert len(catalogue_lib.load_catalogue(copy)) == previous_rows
    else:
        catalogue = catalogue_lib.load_catalogue(copy)  # checks rows against the summary
        assert len(catalogue) == previous_rows - 1
        assert not leftovers(copy)
