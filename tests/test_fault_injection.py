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
    import tensorflow as tf

    output, args, _, replayed, retired_copy = features_job
    remember, *_ = features_checks(output, retired_copy)
    remember()
    before = catalogue_lib.load_catalogue(output)
    # The next run's staged output: one song fewer (its rows and its counters).
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
