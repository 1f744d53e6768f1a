"""Every option set in configs/ loads with ``--config`` and builds a valid job for each job it
applies to: Dataflow configs as an offline Dataflow dry run (the job graph Dataflow would get),
DirectRunner configs as a tiny real run. A config key that no job or Beam knows (a typo Beam would
silently ignore) fails here."""
import argparse
import functools
import pathlib

import pytest
import yaml
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines import config as config_lib
from pipelines import features, recommend
from tests.dataflow_dry_run import build_dataflow_job

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
JOB_OPTIONS = {"features": (features.FeaturesOptions, config_lib.OutputOptions),
               "recommend": (recommend.RecommendOptions, config_lib.OutputOptions)}
JOB_RUN = {"features": features.run, "recommend": recommend.run}
# Job inputs for a Dataflow dry run (nothing is read in a dry run).
DRY_RUN_INPUTS = {
    "features": ["--input", "gs://my-bucket/msd/data/", "--output_dir", "gs://my-bucket/features"],
    "recommend": ["--features", "gs://my-bucket/features", "--listens",
                  "gs://my-bucket/train_triplets.txt", "--output",
                  "my-project:music.recommendations", "--run_date", "2024-05-01"],
}


def _flags(options_classes) -> set[str]:
    parser = argparse.ArgumentParser(add_help=False)
    for options_class in options_classes:
        options_class._add_argparse_args(parser)
    return {flag[2:] for action in parser._actions for flag in action.option_strings
            if flag.startswith("--")}


def _all_subclasses(cls):
    for subclass in cls.__subclasses__():
        yield subclass
        yield from _all_subclasses(subclass)


BEAM_FLAGS = _flags({c for c in _all_subclasses(PipelineOptions)
                     if c.__module__.startswith("apache_beam.")})


def load(path: pathlib.Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def jobs_for(path: pathlib.Path) -> list[str]:
    """The jobs whose flags (plus Beam's) cover every key of the config."""
    keys = set(load(path))
    return [job for job, classes in JOB_OPTIONS.items() if keys <= BEAM_FLAGS | _flags(classes)]


CASES = [(path.name, job) for path in CONFIGS for job in jobs_for(path)]


def test_the_expected_configs_exist_and_each_applies_to_a_job():
    assert {p.name for p in CONFIGS} >= {"local.yaml", "dataflow_cpu.yaml", "dataflow_gpu.yaml"}
    for path in CONFIGS:
        config = load(path)
        unknown = set(config) - BEAM_FLAGS - _flags(
            {c for classes in JOB_OPTIONS.values() for c in classes})
        assert not unknown, f"{path.name}: no job or Beam knows {sorted(unknown)}"
        assert jobs_for(path), f"{path.name} applies to no job"
    assert {job for _, job in CASES} == set(JOB_OPTIONS)  # both jobs have configs
    assert set(jobs_for(REPO / "configs" / "dataflow_cpu.yaml")) == {"features", "recommend"}
    assert "recommend" in jobs_for(REPO / "configs" / "dataflow_gpu.yaml")


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_expand_config_turns_every_key_into_a_flag_and_explicit_flags_win(path):
    config = load(path)
    argv = config_lib.expand_config(["--config", str(path)])
    named = {flag[2:].split("=", 1)[0] for flag in argv}
    assert named == {key for key, value in config.items() if value is not False}
    some_key = sorted(config)[0]
    overridden = config_lib.expand_config(["--config", str(path), f"--{some_key}=OVERRIDE"])
    assert [f for f in overridden if f.startswith(f"--{some_key}")] == [f"--{some_key}=OVERRIDE"]


# Config values the built job does not get, and why; a fixed one must be removed from here.
KNOWN_NOT_REACHING_THE_JOB: set[tuple[str, str, str]] = set()
DATAFLOW_CASES = [c for c in CASES if load(REPO / "configs" / c[0]).get("runner") == "DataflowRunner"]


@functools.lru_cache(maxsize=None)
def dataflow_job(config_name: str, job: str):
    """The Dataflow job a config builds (built once per config and job)."""
    path = REPO / "configs" / config_name
    return build_dataflow_job(JOB_RUN[job], ["--config", str(path)] + DRY_RUN_INPUTS[job])


def _actions() -> dict[str, argparse.Action]:
    """Flag name → argparse action, over Beam's and both jobs' options."""
    parser = argparse.ArgumentParser(add_help=False)
    classes = {c for c in _all_subclasses(PipelineOptions) if c.__module__.startswith("apache_beam.")}
    for options_class in classes | {c for cs in JOB_OPTIONS.values() for c in cs}:
        options_class._add_argparse_args(parser)
    return {s[2:]: a for a in parser._actions for s in a.option_strings if s.startswith("--")}


def values_not_reaching_the_job(config: dict, options: dict) -> set[str]:
    """Keys of the config whose value is not the job's option value."""
    actions = _actions()
    missed = set()
    for key, value in config.items():
        action = actions[key]
        actual = options.get(action.dest)
        if isinstance(action, argparse._StoreFalseAction):  # e.g. no_save_main_session: true
            actual, value = not actual, bool(value)
        if isinstance(actual, list):  # e.g. experiments: the runner adds its own
            wanted = value if isinstance(value, list) else [value]
            if not set(wanted) <= set(actual):
                missed.add(key)
        elif actual != value:
            missed.add(key)
    return missed


@pytest.mark.parametrize("config_name, job", DATAFLOW_CASES)
def test_dataflow_config_builds_a_valid_job_graph_offline(config_name, job):
    config = load(REPO / "configs" / config_name)
    built = dataflow_job(config_name, job)
    assert built.proto.type == 1  # JOB_TYPE_BATCH
    proto = built.proto_pipeline
    names = {t.unique_name for t in proto.components.transforms.values()}
    expected = {"features": ["ReadMsd/Parse", "Normalise", "Write/WriteTFRecord", "DeadLetter"],
                "recommend": ["ReadListens", "Score/RunInference", "WriteRows", "WriteRejected"]}
    for step in expected[job]:
        assert any(name.startswith(step) for name in names), step
    hinted = {t.unique_name for t in proto.components.transforms.values()
              if proto.components.environments[t.environment_id].resource_hints}
    hints = {bytes(v).decode() for e in proto.components.environments.values()
             for v in e.resource_hints.values()}
    if job == "recommend" and config.get("accelerator"):
        assert hinted and all(name.startswith("Score/RunInference") for name in hinted)
        assert hints == {config["accelerator"]}
    else:
        assert not hinted and not hints


@pytest.mark.parametrize("config_name, job", DATAFLOW_CASES)
def test_every_value_of_a_dataflow_config_reaches_the_job(config_name, job):
    config = load(REPO / "configs" / config_name)
    missed = values_not_reaching_the_job(config, dataflow_job(config_name, job).options.get_all_options())
    known = {key for name, known_job, key in KNOWN_NOT_REACHING_THE_JOB
             if (name, known_job) == (config_name, job)}
    assert missed == known


@pytest.fixture(scope="module")
def tiny_listens(real_msd_dir, tmp_path_factory) -> pathlib.Path:
    """Three users listening to songs of the real sample (so the catalogue knows them)."""
    import h5py

    song_ids = []
    for path in sorted(real_msd_dir.rglob("*.h5"))[:4]:
        with h5py.File(path) as h5:
            song_ids.append(h5["metadata/songs"]["song_id"][0].decode())
    lines = [f"{user * 40}\t{song}\t{count}"
             for user, songs in (("a", song_ids[:1]), ("b", song_ids[1:3]), ("c", song_ids[2:4]))
             for count, song in enumerate(songs, 1)]
    path = tmp_path_factory.mktemp("listens") / "triplets.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("config_name", sorted({c for c, _ in CASES
                                                if load(REPO / "configs" / c).get("runner")
                                                == "DirectRunner"}))
def test_local_config_runs_both_jobs_for_real(config_name, real_msd_dir, tiny_listens, tmp_path):
    path = REPO / "configs" / config_name
    config = load(path)
    assert set(jobs_for(path)) == {"features", "recommend"}
    summary = features.run(["--config", str(path), "--input", str(real_msd_dir),
                            "--output_dir", str(tmp_path / "features")])
    assert summary["songs_written"] >= 4 and summary["songs_reconcile"]
    assert {k: summary["options"][k] for k in config} == config  # the config was used
    summary = recommend.run(["--config", str(path), "--features", str(tmp_path / "features"),
                             "--listens", str(tiny_listens), "--output", str(tmp_path / "recs"),
                             "--k", "2", "--run_date", "2024-05-01"])
    assert summary["users_scored"] == 3 and summary["listens_reconcile"]
    assert list((tmp_path / "recs" / "run_date=2024-05-01" / "model=timbre_cosine").glob("*.parquet"))
