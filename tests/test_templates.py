"""The Flex Templates (templates/<job>/metadata.json and Dockerfile) against the code they launch.

A template launch passes each parameter as ``--name=value`` to the job's entry point; a parameter
the job does not know is silently ignored by Beam, and an option missing from the template cannot
be set by a template user at all. So the parameters are checked against the options parsers both
ways (names read from the options classes with a fresh argparse parser, not listed by hand), and
the defaults, choices, required flags and validation regexes against what the code does.
"""
import argparse
import json
import pathlib
import re
from unittest import mock

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines import config as config_lib
from pipelines import features, recommend, train

REPO = pathlib.Path(__file__).resolve().parents[1]
TEMPLATES = REPO / "templates"

# The options classes whose flags each job's template exposes.
OPTION_CLASSES = {
    "features": (features.FeaturesOptions, config_lib.OutputOptions),
    "recommend": (recommend.RecommendOptions, config_lib.OutputOptions),
    "train": (train.TrainOptions,),
}
VALIDATORS = {
    "features": (features.FeaturesOptions, "validate_features_options"),
    "recommend": (recommend.RecommendOptions, "validate_recommend_options"),
    "train": (train.TrainOptions, "validate_train_options"),
}
JOB_MODULES = {"features": features, "recommend": recommend, "train": train}
# Options deliberately left out of a template, with the reason (keep this short).
NOT_IN_TEMPLATE = {
    "features": {},
    # The recommend template writes BigQuery only (a Parquet partition is published by the
    # launching process after the job, which a template launch never waits for).
    "recommend": {"num_shards": "Parquet output only"},
    "train": {},
}

# Documented examples (what users will type) and values that must be refused before a launch.
EXAMPLES = {
    "features": {
        "input": (["gs://my-bucket/msd/data/", "gs://my-bucket/msd/data/A/**.h5",
                   "gs://my-bucket/msd/data/A/X/L/TRAXLZU12903D05F94.h5", "gs://msd-2024.example/x"],
                  ["/home/me/msd/data", "msd/data", "s3://my-bucket/msd", "gs://", "gs://My-Bucket/x",
                   "gs://ab"]),
        "output_dir": (["gs://my-bucket/features", "gs://my-bucket/features/2024-05-01/"],
                       ["gs://my-bucket/features/*", "./out", "gs://my-bucket/out?"]),
        "normalization": (["l2", "zscore_l2"], ["L2", "zscore", ""]),
        "min_segments": (["10", "2", "100"], ["0", "1", "-5", "ten", "010"]),
        "max_segments": (["50000", "3300"], ["0", "-1", "1e5"]),
        "max_file_bytes": (["67108864", "1048576"], ["0", "64MiB", "-1"]),
        "num_shards": (["0", "16"], ["-1", "many"]),
        "overwrite": (["true", "false"], ["yes", "True", "1"]),
    },
    "recommend": {
        "features": (["gs://my-bucket/features", "gs://my-bucket/features/csv/part-*.csv"],
                     ["out/features", "/data/features"]),
        "listens": (["gs://my-bucket/listens/train_triplets.txt", "gs://my-bucket/listens/*.txt"],
                    ["gs://my-bucket/listens/", "train_triplets.txt"]),
        "output": (["my-project:music.recommendations", "bq://my-project.music.recommendations",
                    "example.com:my-project:music.recs-2024"],
                   ["gs://my-bucket/recommendations", "music.recommendations",
                    "My-Project:music.recommendations", "my-project:music", "bq://my-project:music.t"]),
        "run_date": (["2024-05-01", "2026-12-31"], ["2024-5-1", "2024-13-01", "20240501", "2024-05-32"]),
        "k": (["500", "10"], ["0", "-1", "500.0"]),
        "weighting": (["none", "log_count"], ["log", "None"]),
        "model": (["timbre_cosine", "itemcf_v2"], ["timbre cosine", "", "a;b", "Timbre",
                                                   "timbre-cosine.v2"]),
        "model_dir": (["gs://my-bucket/models/itemcf", "gs://my-bucket/models/itemcf/2026-11-30/"],
                      ["models/itemcf", "gs://my-bucket/models/*"]),
        "fallback": (["popularity", "none"], ["random"]),
        "song_to_tracks": (["gs://my-bucket/listens/taste_profile_song_to_tracks.txt"],
                           ["gs://my-bucket/listens/", "taste_profile_song_to_tracks.txt"]),
        "mismatches": (["gs://my-bucket/listens/sid_mismatches.txt"], ["sid_mismatches.txt"]),
        "users": (["gs://my-bucket/listens/kaggle_users.txt"], ["gs://my-bucket/listens/*.txt"]),
        "accelerator": (["type:nvidia-l4;count:1;install-nvidia-driver",
                         "type:nvidia-tesla-t4;count:2;install-nvidia-driver"],
                        ["nvidia-l4", "type:nvidia-l4", "type:nvidia-l4;count:0", "count:1"]),
        "batch_size": (["256", "1024"], ["0", "-256"]),
        "max_play_count": (["100000"], ["0", "1e5"]),
        "report_dir": (["gs://my-bucket/recommend_reports/run_date=2024-05-01"],
                       ["reports/", "gs://my-bucket/reports/*"]),
        "kaggle_submission": (["gs://my-bucket/submissions/2024-05-01.txt"],
                              ["gs://my-bucket/submissions/", "submission.txt"]),
        "kaggle_songs": (["gs://my-bucket/listens/kaggle_songs.txt"], ["kaggle_songs.txt"]),
    },
    "train": {
        "model": (["itemcf", "als", "hybrid"], ["content", "ItemCF", "", "timbre_cosine"]),
        "listens": (["gs://my-bucket/listens/train_triplets.txt", "gs://my-bucket/listens/*.txt"],
                    ["gs://my-bucket/listens/", "train_triplets.txt"]),
        "output_dir": (["gs://my-bucket/models/itemcf", "gs://my-bucket/models/als/"],
                       ["models/itemcf", "gs://my-bucket/models/*", "/tmp/models"]),
        "overwrite": (["true", "false"], ["yes", "True", "1"]),
        "features": (["gs://my-bucket/features", "gs://my-bucket/features/csv/part-*.csv"],
                     ["out/features", "/data/features"]),
        "song_to_tracks": (["gs://my-bucket/listens/taste_profile_song_to_tracks.txt"],
                           ["gs://my-bucket/listens/", "taste_profile_song_to_tracks.txt"]),
        "mismatches": (["gs://my-bucket/listens/sid_mismatches.txt"], ["sid_mismatches.txt"]),
        "max_play_count": (["100000"], ["0", "1e5"]),
        "min_listeners": (["1", "5"], ["0", "-1", "1.5"]),
        "alpha": (["0.15", "0", "1", "0.5", "1.0", ".3"], ["1.5", "-0.1", "2", "", "0.5.1"]),
        "q": (["3.0", "3", "1", "0.5"], ["0", "0.0", "-1", "3e"]),
        "top_m": (["200", "50"], ["0", "-5", "2.5"]),
        "pair_budget": (["60000000", "1000"], ["0", "6e7", "-1"]),
        "factors": (["64", "128"], ["0", "-64", "64.0"]),
        "regularization": (["10.0", "0.01", "1"], ["0", "0.0", "-1"]),
        "als_alpha": (["10.0", "40", "0.5"], ["0", "-10"]),
        "confidence": (["log", "linear"], ["Log", "sqrt", ""]),
        "iterations": (["15", "1"], ["0", "-1", "15.5"]),
        "seed": (["0", "42"], ["-1", "seed", "1.5"]),
        "validation_fraction": (["0.1", "0", "0.0", ".25"], ["1", "1.0", "-0.1", "0.5.0"]),

        "target_min_listeners": (["5", "1"], ["0", "-5", "5.0"]),
        "hidden_units": (["256", "64"], ["0", "-1", "256.0"]),
        "epochs": (["60", "1"], ["0", "-1", "6e1"]),
        "holdout_songs": (["0.1", "0", ".2"], ["1", "1.0", "-0.1"]),
        "warm_map_loss": (["0.05", "0.025", ".5", "0.999", "0.10"],
                          ["0", "0.0", "1", "1.0", "-0.05", "5", "0.5.1", ""]),
        "cold_share": (["0.2", "0", "1", ".5", "0.25", "1.0"],
                       ["-0.1", "1.5", "2", "0.5.1", ""]),
    },
}

# Regex features Dataflow's POSIX-egrep-style validation may not know (Python-only syntax),
# looked for outside bracket expressions.
_NON_POSIX = re.compile(r"\\[dDwWsSbB]|\(\?|[*+?}]\?")
_BRACKET = re.compile(r"\[\^?\]?[^\]]*\]")


def load_metadata(job: str) -> dict:
    return json.loads((TEMPLATES / job / "metadata.json").read_text(encoding="utf-8"))


def parameters(job: str) -> dict[str, dict]:
    return {p["name"]: p for p in load_metadata(job)["parameters"]}


def option_actions(job: str) -> dict[str, argparse.Action]:
    """Every flag the job's options classes define, from a fresh parser (dest → action)."""
    parser = argparse.ArgumentParser(add_help=False)
    for options_class in OPTION_CLASSES[job]:
        options_class._add_argparse_args(parser)
    return {action.dest: action for action in parser._actions if action.option_strings}


def required_options(job: str) -> set[str]:
    """The flags the job's own validation reports as required when nothing is given."""
    options_class, method = VALIDATORS[job]
    problems = getattr(PipelineOptions([]).view_as(options_class), method)()
    return {match for problem in problems for match in re.findall(r"--(\w+) is required", problem)}


def matches(parameter: dict, value: str) -> bool:
    """Dataflow accepts a value that matches the parameter's regexes (all of them)."""
    return all(re.search(regex, value) for regex in parameter["regexes"])


JOBS = sorted(OPTION_CLASSES)


@pytest.mark.parametrize("job", JOBS)
def test_metadata_is_valid_dataflow_template_metadata(job):
    from google.cloud import dataflow_v1beta3

    text = (TEMPLATES / job / "metadata.json").read_text(encoding="utf-8")
    metadata = dataflow_v1beta3.TemplateMetadata.from_json(text, ignore_unknown_fields=False)
    assert metadata.name and metadata.description and not metadata.streaming
    names = [p.name for p in metadata.parameters]
    assert len(names) == len(set(names))
    for parameter in metadata.parameters:
        assert parameter.label and len(parameter.help_text) >= 20, parameter.name
        assert parameter.regexes, f"{parameter.name} has no validation regex"
        assert parameter.param_type, f"{parameter.name} has no paramType"


@pytest.mark.parametrize("job", JOBS)
def test_every_option_is_a_template_parameter_and_every_parameter_an_option(job):
    options = set(option_actions(job))
    in_template = set(parameters(job))
    left_out = set(NOT_IN_TEMPLATE[job])
    assert options - in_template - left_out == set(), "options a template user cannot set"
    assert in_template - options == set(), "template parameters the job does not know"
    assert left_out <= options and not left_out & in_template


@pytest.mark.parametrize("job", JOBS)
def test_required_parameters_are_what_the_job_requires(job):
    required = required_options(job)
    assert required  # the job does require some flags; an empty set would test nothing
    assert {name for name, p in parameters(job).items() if not p["isOptional"]} == required


@pytest.mark.parametrize("job", JOBS)
def test_defaults_and_choices_match_the_options_parser(job):
    actions = option_actions(job)
    for name, parameter in parameters(job).items():
        action = actions[name]
        default = action.default
        if default is None:
            assert "defaultValue" not in parameter, name
        else:
            expected = str(default).lower() if isinstance(default, bool) else str(default)
            assert parameter.get("defaultValue") == expected, name
            assert matches(parameter, expected), f"{name}: the default fails its own regex"
        if action.choices:
            assert parameter["paramType"] == "ENUM"
            assert [o["value"] for o in parameter["enumOptions"]] == list(action.choices)
            for choice in action.choices:
                assert matches(parameter, choice)
        if isinstance(action, argparse._StoreTrueAction):
            assert parameter["paramType"] == "BOOLEAN", name


@pytest.mark.parametrize("job", JOBS)
def test_regexes_use_only_posix_syntax_and_are_anchored(job):
    for name, parameter in parameters(job).items():
        for regex in parameter["regexes"]:
            re.compile(regex)
            assert regex.startswith("^") and regex.endswith("$"), name
            assert not _NON_POSIX.search(_BRACKET.sub("", regex)), f"{name}: {regex} is not POSIX"


@pytest.mark.parametrize("job", JOBS)
def test_regexes_accept_the_documented_examples_and_reject_bad_values(job):
    params = parameters(job)
    assert set(EXAMPLES[job]) == set(params), "every parameter needs examples here"
    for name, (good, bad) in EXAMPLES[job].items():
        for value in good:
            assert matches(params[name], value), f"{name} refuses {value!r}"
        for value in bad:
            assert not matches(params[name], value), f"{name} accepts {value!r}"


@pytest.mark.parametrize("job", JOBS)
def test_examples_written_in_help_texts_pass_their_regex(job):
    found = 0
    for name, parameter in parameters(job).items():
        written = re.search(r"Example: (.+)$", parameter["helpText"])
        for example in written.group(1).split(" or ") if written else []:
            found += 1
            assert matches(parameter, example), f"{name}: help text example {example!r}"
    assert found >= 3


def launch_argv(job: str, include_booleans: bool) -> list[str]:
    """``--name=value`` for every parameter, as the Flex Template launcher passes them."""
    argv = []
    for name, parameter in parameters(job).items():
        if parameter["paramType"] == "BOOLEAN" and not include_booleans:
            continue
        argv.append(f"--{name}={EXAMPLES[job][name][0][0]}")
    return argv


@pytest.mark.parametrize("job", JOBS)
def test_a_launch_with_the_documented_examples_parses_and_passes_validation(job):
    argv = launch_argv(job, include_booleans=False)
    options_class, method = VALIDATORS[job]
    options = PipelineOptions(argv)
    assert getattr(options.view_as(options_class), method)() == []
    parsed_options = options.get_all_options()
    actions = option_actions(job)
    for flag in argv:
        name, value = flag[2:].split("=", 1)
        parsed = parsed_options[name]
        parsed = parsed[0] if isinstance(parsed, list) else parsed  # append flags
        expected = actions[name].type(value) if actions[name].type else value
        assert parsed == expected, name


def test_boolean_parameters_parse_in_the_launchers_name_equals_value_form():
    options = PipelineOptions(["--overwrite=true"]).view_as(features.FeaturesOptions)
    assert options.overwrite is True
    assert PipelineOptions(["--overwrite=false"]).view_as(features.FeaturesOptions).overwrite is False


def test_a_flex_template_launch_returns_once_the_job_is_staged(tmp_path):
    """The launcher runs the entry point with --template_location=…/job_object and submits the
    staged job itself after the process exits 0; here the Dataflow client is a mock."""
    from apache_beam.options.pipeline_options import GoogleCloudOptions
    from apache_beam.runners.dataflow.internal import apiclient

    (tmp_path / "features" / "features").mkdir(parents=True)
    (tmp_path / "features" / "features" / "part-00000-of-00001.tfrecord.gz").write_bytes(b"")
    (tmp_path / "listens.txt").write_text("a" * 40 + "\tSOAAAAAAAAAAAAAAAA\t1\n")
    client = mock.MagicMock()
    client.return_value.create_job.return_value = None  # what a template launch returns
    with mock.patch.object(apiclient, "DataflowApplicationClient", client), \
            mock.patch.object(GoogleCloudOptions, "_warn_if_soft_delete_policy_enabled",
                              lambda self, name: None):
        try:
            result = recommend.run([
                "--runner=DataflowRunner", "--project=my-project", "--region=us-central1",
                "--temp_location=gs://my-bucket/tmp", "--staging_location=gs://my-bucket/staging",
                "--no_auth", "--sdk_location=container",
                "--template_location=gs://my-bucket/template_launches/1/job_object",
                "--features", str(tmp_path / "features"), "--listens", str(tmp_path / "listens.txt"),
                "--output", "my-project:music.recommendations",
                "--report_dir", str(tmp_path / "reports"), "--run_date", "2024-05-01"])
        finally:
            assert client.return_value.create_job.called, "the job was not even built"
    assert result is None


def dockerfile(job: str) -> str:
    return (TEMPLATES / job / "Dockerfile").read_text(encoding="utf-8")


def pinned(name: str) -> str:
    """The version constraints.txt pins for a distribution."""
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.lower().startswith(name.lower() + "=="):
            return line.split("==", 1)[1]
    raise AssertionError(f"{name} is not pinned in constraints.txt")


def python_minor() -> str:
    match = re.search(r'python_requires=">=(3\.\d+),<', (REPO / "setup.py").read_text())
    return match.group(1)


@pytest.mark.parametrize("job", JOBS)
def test_dockerfile_pins_the_launcher_and_the_beam_sdk_image_of_setup_py(job):
    text = dockerfile(job)
    beam = pinned("apache-beam")
    assert f'"apache-beam[gcp]=={beam}"' in (REPO / "setup.py").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, flags=re.M))
    assert args["BEAM_SDK_IMAGE"] == f"apache/beam_python{python_minor()}_sdk:{beam}"
    launcher = args["LAUNCHER_IMAGE"]
    version = python_minor().replace(".", "")
    assert launcher.startswith(f"gcr.io/dataflow-templates-base/python{version}-template-launcher-base")
    assert re.search(r"(:[\w.-]+|@sha256:[0-9a-f]{64})$", launcher) and not launcher.endswith(":latest")
    assert "FROM ${LAUNCHER_IMAGE} AS launcher" in text and "FROM ${BEAM_SDK_IMAGE}" in text
    assert ("COPY --from=launcher /opt/google/dataflow/python_template_launcher "
            "/opt/google/dataflow/python_template_launcher") in text
    assert 'ENTRYPOINT ["/opt/apache/beam/boot"]' in text  # the image is also the worker image
    assert "pip install --no-cache-dir -c constraints.txt ." in text and "pip check" in text


@pytest.mark.parametrize("job", JOBS)
def test_dockerfile_copies_every_package_and_runs_the_jobs_main(job):
    text = dockerfile(job)
    env = dict(re.findall(r"(FLEX_TEMPLATE_PYTHON_\w+)=(\S+)", text))
    assert env["FLEX_TEMPLATE_PYTHON_SETUP_FILE"] == "/template/setup.py"
    main_file = env["FLEX_TEMPLATE_PYTHON_PY_FILE"]
    assert main_file == "/template/main.py" and f"> {main_file}" in text
    assert f"from pipelines.{job} import main" in text
    assert callable(getattr(JOB_MODULES[job], "main"))
    includes = re.search(r"find_packages\(include=\[([^\]]*)\]", (REPO / "setup.py").read_text())
    packages = {name.strip(' "*') for name in includes.group(1).split(",")}
    copied = set(re.findall(r"^COPY (\w+) \./\1$", text, flags=re.M))
    assert packages == copied, "the image must hold every package setup.py ships"
    assert "COPY setup.py constraints.txt ./" in text


def test_gpu_worker_image_matches_the_template_images():
    """The GPU image runs the scoring step of a template launch: same Beam and TensorFlow."""
    text = (REPO / "docker" / "Dockerfile.gpu").read_text(encoding="utf-8")
    beam, tensorflow = pinned("apache-beam"), pinned("tensorflow")
    assert re.search(rf"^FROM apache/beam_python{python_minor()}_sdk:{beam}$", text, flags=re.M)
    assert f'"tensorflow[and-cuda]=={tensorflow}"' in text
    # CUDA and cuDNN are pinned exactly (TensorFlow's and-cuda extra only gives ranges).
    for library in ("nvidia-cudnn-cu12", "nvidia-cuda-runtime-cu12", "nvidia-cublas-cu12"):
        assert re.search(rf'"{library}==[0-9.]+"', text), library
    assert "-c constraints.txt" in text and "pip check" in text


def test_the_train_template_offers_exactly_the_trainable_models():
    model = parameters("train")["model"]
    assert [o["value"] for o in model["enumOptions"]] == list(train.TRAINABLE)
    assert all(matches(model, name) for name in train.TRAINABLE)


def test_a_train_template_launch_returns_once_the_job_is_staged(tmp_path):
    """As for recommend: the launcher builds the training job and exits; the model is staged in
    OUTPUT_DIR/_staging/<version>/ by the job and published afterwards by the training workflow
    (templates/train/publish_model.py, tested in tests/test_orchestration.py)."""
    from apache_beam.options.pipeline_options import GoogleCloudOptions
    from apache_beam.runners.dataflow.internal import apiclient

    client = mock.MagicMock()
    client.return_value.create_job.return_value = None
    with mock.patch.object(apiclient, "DataflowApplicationClient", client), \
            mock.patch.object(GoogleCloudOptions, "_warn_if_soft_delete_policy_enabled",
                              lambda self, name: None):
        result = train.run([
            "--runner=DataflowRunner", "--project=my-project", "--region=us-central1",
            "--temp_location=gs://my-bucket/tmp", "--staging_location=gs://my-bucket/staging",
            "--no_auth", "--sdk_location=container",
            "--template_location=gs://my-bucket/template_launches/1/job_object",
            "--model=itemcf", "--listens=gs://my-bucket/listens/train_triplets.txt",
            "--output_dir=gs://my-bucket/models/itemcf", "--overwrite=true"])
    assert client.return_value.create_job.called, "the job was not even built"
    assert result is None


def test_the_train_image_holds_and_checks_the_publish_script():
    text = dockerfile("train")
    assert "COPY templates/train/publish_model.py /template/publish_model.py" in text
    assert "python /template/publish_model.py --help" in text
    assert (TEMPLATES / "train" / "publish_model.py").is_file()
