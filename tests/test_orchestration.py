"""The daily schedule and the optional training schedule (orchestration/), checked offline: the
Workflows definitions' structure, the template parameters and named queries they use against
templates/ and recommend/queries/, the deployment command's settings checks and plan, and the
training workflow's prepare/publish script run on local folders. Nothing here reaches Google
Cloud."""
import copy
import json
import pathlib
import re

import pytest
import yaml

from orchestration import deploy
from recommend import query as query_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
WORKFLOW = REPO / "orchestration" / "recommend_daily.workflow.yaml"
TRAIN_WORKFLOW = REPO / "orchestration" / "train_weekly.workflow.yaml"
WORKFLOWS = {"daily": WORKFLOW, "train": TRAIN_WORKFLOW}
EXAMPLE_SETTINGS = REPO / "orchestration" / "settings.example.yaml"
# Standard-library functions the workflow may call (everything else must be a subworkflow).
STDLIB_CALLS = {"http.get", "http.post", "http.put", "sys.log", "sys.sleep"}


@pytest.fixture(scope="module")
def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))


@pytest.fixture(scope="module", params=sorted(WORKFLOWS))
def any_workflow(request) -> dict:
    return yaml.safe_load(WORKFLOWS[request.param].read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def train_workflow() -> dict:
    return yaml.safe_load(TRAIN_WORKFLOW.read_text(encoding="utf-8"))


@pytest.fixture()
def settings() -> dict:
    return deploy.load_settings(str(EXAMPLE_SETTINGS))


@pytest.fixture()
def daily_only_settings(settings) -> dict:
    """The example without its training section (a model_dir trained by hand stays allowed)."""
    daily = copy.deepcopy(settings)
    daily.pop("training")
    deploy.check_settings(daily)
    return daily


def steps_of(steps: list):
    """Every (name, body) in a step list, nested steps included (switch, for, try, except)."""
    for step in steps:
        (name, body), = step.items()
        yield name, body
        for nested in _nested_step_lists(body):
            yield from steps_of(nested)


def _nested_step_lists(body: dict):
    if "steps" in body:
        yield body["steps"]
    for condition in body.get("switch", []):
        if "steps" in condition:
            yield condition["steps"]
    if "for" in body:
        yield body["for"]["steps"]
    if isinstance(body.get("try"), dict) and "steps" in body["try"]:
        yield body["try"]["steps"]
    if isinstance(body.get("except"), dict):
        yield body["except"]["steps"]


def all_steps(workflow: dict):
    for subworkflow, definition in workflow.items():
        for name, body in steps_of(definition["steps"]):
            yield subworkflow, name, body


def call_of(body: dict):
    """(target, args) of a call step, also when wrapped in try/retry."""
    inner = body["try"] if isinstance(body.get("try"), dict) and "call" in body["try"] else body
    return inner.get("call"), inner.get("args", {})


def strings_in(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from strings_in(key)
            yield from strings_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings_in(item)


def test_every_call_is_the_standard_library_or_a_subworkflow_with_its_parameters(any_workflow):
    workflow = any_workflow
    assert "main" in workflow and workflow["main"]["params"] == ["args"]
    calls = 0
    for subworkflow, name, body in all_steps(workflow):
        target, args = call_of(body)
        if target is None:
            continue
        calls += 1
        if target in STDLIB_CALLS:
            continue
        assert target in workflow, f"{subworkflow}.{name} calls unknown {target}"
        assert set(args) == set(workflow[target]["params"]), f"{subworkflow}.{name} → {target}"
    assert calls >= 10


def test_step_names_are_unique_and_every_next_names_a_step(any_workflow):
    workflow = any_workflow
    for subworkflow, definition in workflow.items():
        names = [name for name, _ in steps_of(definition["steps"])]
        assert len(names) == len(set(names)), subworkflow
        for name, body in steps_of(definition["steps"]):
            targets = [body.get("next")] + [c.get("next") for c in body.get("switch", [])]
            for target in filter(None, targets):
                assert target in names or target in ("end", "break", "continue"), (
                    f"{subworkflow}.{name}: next {target}")


def test_expressions_are_whole_values_with_balanced_brackets(any_workflow):
    expressions = [s for s in strings_in(any_workflow) if "${" in s]
    assert len(expressions) > 40
    for text in expressions:
        assert text.startswith("${") and text.endswith("}"), text
        body = re.sub(r'"(?:[^"\\]|\\.)*"', "S", text[2:-1])  # string literals out
        assert body.count('"') == 0, text
        for opening, closing in ("()", "[]", "{}"):
            assert body.count(opening) == body.count(closing), text


def test_the_configuration_deploy_writes_is_what_the_workflow_reads(workflow, settings):
    text = WORKFLOW.read_text(encoding="utf-8")
    read = set(re.findall(r"\bconfig\.(\w+)", text))
    written = set(deploy.workflow_config(settings))
    assert read == written
    assert 'json.decode(sys.get_env("MSD_CONFIG"))' in text


def test_the_configuration_deploy_writes_is_what_the_training_workflow_reads(settings):
    text = TRAIN_WORKFLOW.read_text(encoding="utf-8")
    read = set(re.findall(r"\bconfig\.(\w+)", text))
    assert read == set(deploy.training_config(settings))
    assert 'json.decode(sys.get_env("MSD_CONFIG"))' in text


def launch_step(workflow: dict) -> dict:
    launches = [body for _, _, body in all_steps(workflow)
                if call_of(body)[0] == "http.post" and "flexTemplates:launch" in call_of(body)[1]["url"]]
    assert len(launches) == 1
    return call_of(launches[0])[1]


def test_the_launch_passes_only_template_parameters_and_every_required_one(workflow, settings):
    from google.cloud import dataflow_v1beta3

    body = launch_step(workflow)["body"]["launchParameter"]
    known = {f.json_name for f in dataflow_v1beta3.LaunchFlexTemplateParameter.pb().DESCRIPTOR.fields}
    assert set(body) <= known
    assert body["parameters"] == "${parameters}"
    assigned = [item["parameters"] for _, _, step in all_steps(workflow)
                for item in step.get("assign", []) if "parameters" in item]
    assert len(assigned) == 1 and assigned[0].startswith("${map.merge(config.job_parameters, {")
    per_day = set(re.findall(r'"(\w+)": ', assigned[0]))
    assert per_day == set(deploy.PER_DAY_PARAMETERS)
    parameters = deploy.template_parameters("recommend")
    passed = per_day | set(settings["job_parameters"])
    assert passed <= set(parameters)
    assert {n for n, p in parameters.items() if not p["isOptional"]} <= passed
    assert "run_date" in per_day  # the day's partition is the schedule's day


def bq_query_calls(workflow: dict) -> dict[str, list[dict]]:
    calls = {}
    for _, _, body in all_steps(workflow):
        target, args = call_of(body)
        if target == "bq_query":
            calls[args["query"]] = args["parameters"]
    return calls


def test_named_queries_get_exactly_their_declared_parameters_and_types(workflow):
    calls = bq_query_calls(workflow)
    assert set(calls) == set(deploy.WORKFLOW_QUERIES) | {deploy.PUBLISH_SCRIPT} == {
        "data_quality", "run_over_run", "publish"}
    publish = calls.pop(deploy.PUBLISH_SCRIPT)
    assert {(p["name"], p["type"]) for p in publish} == {
        ("run_date", "DATE"), ("model", "STRING"), ("expected_rows", "INT64")}
    for name, passed in calls.items():
        query = query_lib.load_query(name)  # the file exists and its header is consistent
        declared = {(p.name, p.type) for p in query.parameters}
        declared |= {(automatic, "BOOL") for automatic in query.automatic_parameters}
        assert {(p["name"], p["type"]) for p in passed} == declared, name


def result_columns(name: str) -> list[str]:
    import sqlglot

    query = query_lib.load_query(name)
    sql = query_lib.render_sql(query, {t: t for t in query.tables + query.optional_tables})
    return sqlglot.parse_one(sql, read="bigquery").named_selects


def test_the_result_columns_the_workflow_reads_exist():
    text = WORKFLOW.read_text(encoding="utf-8")
    quality = set(re.findall(r"\bcheck\.(\w+)", text))
    assert quality == {"passed", "check_name", "failing_users", "example_user_id"}
    assert quality <= set(result_columns("data_quality"))
    drift = set(re.findall(r"drift_rows\[0\]\.(\w+)", text))
    assert drift == {"users_compared", "users_changed"}
    assert drift <= set(result_columns("run_over_run"))


def test_rendered_queries_read_the_configured_tables_and_keep_their_parameters(settings):
    rendered = deploy.render_queries(settings)
    publish = rendered.pop(deploy.PUBLISH_SCRIPT)
    # The publish script: the configured table, the staging table of the day the workflow
    # fills in (run_day) for the configured model, and the run's values as parameters.
    assert "DELETE FROM `my-project.music.recommendations` WHERE run_date = @run_date AND " \
           "model = @model" in publish
    assert "`my-project.music.recommendations__staging_itemcf_{{run_day}}`" in publish
    assert set(re.findall(r"@(\w+)", publish)) == {"run_date", "model", "expected_rows"}
    for name, sql in rendered.items():
        assert "{{" not in sql and "`my-project.music.recommendations`" in sql
        query = query_lib.load_query(name)
        expected = {p.name for p in query.parameters} | set(query.automatic_parameters)
        assert query_lib.sql_parameters(sql) == expected
    # No listens table configured: the optional table becomes an empty relation.
    assert query_lib.EMPTY_TABLES["listens"] in rendered["data_quality"]
    assert deploy.workflow_config(settings)["has_listens_table"] == "false"


def test_the_example_settings_are_deployable(settings):
    config = deploy.workflow_config(settings)
    assert config["time_zone"] == settings["schedule"]["time_zone"]
    assert all(isinstance(value, str) for value in config["job_parameters"].values())
    json.dumps(config)  # MSD_CONFIG is JSON


@pytest.mark.parametrize("change, message", [
    (lambda s: s["job_parameters"].update(topk="5"), "not parameters of the recommend template"),
    (lambda s: s["job_parameters"].update(run_date="2024-05-01"), "set by the workflow"),
    (lambda s: s["job_parameters"].pop("listens"), "required template parameters"),
    (lambda s: s["job_parameters"].update(k=0), "fails the template's validation"),
    (lambda s: s["job_parameters"].update(output="my-project:other.recommendations"),
     "must be the table the queries read"),
    (lambda s: s["environment"].update(max_workers=3), "not FlexTemplateRuntimeEnvironment"),
    (lambda s: s["schedule"].update(time_zone="Mars/Olympus"), "schedule.time_zone"),
    (lambda s: s["schedule"].update(cron="daily"), "5 fields"),
    (lambda s: s["images"].update(recommend_gpu_worker="elsewhere/msd-recommend-gpu:0.2.0"),
     "share one registry prefix"),
    (lambda s: s.pop("report_bucket"), "report_bucket is missing"),
])
def test_settings_mistakes_are_refused_before_anything_is_deployed(settings, change, message):
    broken = copy.deepcopy(settings)
    change(broken)
    with pytest.raises(deploy.SettingsError, match=message):
        deploy.check_settings(broken)


def test_the_deployment_plan(daily_only_settings, tmp_path):
    settings = daily_only_settings
    commands = deploy.deploy_commands(settings, tmp_path)
    joined = [" ".join(c) for c in commands]
    build = next(c for c in commands if c[:3] == ["gcloud", "builds", "submit"])
    assert "--config=orchestration/cloudbuild.yaml" in build
    specs = [c for c in commands if c[:4] == ["gcloud", "dataflow", "flex-template", "build"]]
    assert len(specs) == 3  # the train template is deployed with or without its schedule
    for job, command in zip(("features", "recommend", "train"), specs):
        assert command[4] == settings["template_specs"][job]
        metadata = next(a for a in command if a.startswith("--metadata-file="))
        assert (REPO / metadata.split("=", 1)[1]).is_file()
        assert "--sdk-language=PYTHON" in command
    scheduler = next(c for c in commands if c[:4] == ["gcloud", "scheduler", "jobs", "create"])
    flags = dict(a[2:].split("=", 1) for a in scheduler if a.startswith("--"))
    assert flags["uri"].endswith(f"/workflows/{settings['schedule']['workflow']}/executions")
    assert flags["time-zone"] == deploy.workflow_config(settings)["time_zone"]
    assert json.loads(json.loads(flags["message-body"])["argument"]) == {}  # "today"
    deploy_step = next(j for j in joined if j.startswith("gcloud workflows deploy"))
    assert "--source=orchestration/recommend_daily.workflow.yaml" in deploy_step
    uploads = [c[-1] for c in commands if c[:3] == ["gcloud", "storage", "cp"]]
    assert uploads == [f"gs://my-bucket/orchestration/queries/{n}.sql"
                       for n in deploy.WORKFLOW_QUERIES + (deploy.PUBLISH_SCRIPT,)]


def test_cloud_build_makes_exactly_the_configured_images(settings):
    build = yaml.safe_load((REPO / "orchestration" / "cloudbuild.yaml").read_text())
    prefix, tag = deploy.image_prefix_and_tag(settings)
    substitute = lambda s: s.replace("${_IMAGE_PREFIX}", prefix).replace("${_TAG}", tag)
    assert {substitute(i) for i in build["images"]} == set(settings["images"].values())
    for step in build["steps"]:
        args = step["args"]
        assert args[0] == "build" and (REPO / args[args.index("-f") + 1]).is_file()
        assert substitute(args[args.index("-t") + 1]) in settings["images"].values()


def test_main_prints_the_plan_and_writes_the_build_files(tmp_path, capsys):
    assert deploy.main(["--settings", str(EXAMPLE_SETTINGS), "--build_dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out.splitlines()
    # 1 build, 3 template specs, 3 query uploads, 2 workflows, 2 scheduler jobs
    assert printed[0].startswith("gcloud builds submit") and len(printed) == 11
    assert (tmp_path / "train_workflow_env.yaml").is_file()
    env = yaml.safe_load((tmp_path / "workflow_env.yaml").read_text())
    assert json.loads(env["MSD_CONFIG"])["template_spec"] == "gs://my-bucket/templates/msd-recommend.json"
    for name in deploy.WORKFLOW_QUERIES:
        assert "@run_date" in (tmp_path / "queries" / f"{name}.sql").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text("project: p\n")
    assert deploy.main(["--settings", str(bad), "--build_dir", str(tmp_path)]) == 2


# ---- the optional training schedule -------------------------------------------------------------

def test_the_training_launch_passes_only_train_template_parameters_and_every_required_one(
        train_workflow, settings):
    from google.cloud import dataflow_v1beta3

    body = launch_step(train_workflow)["body"]["launchParameter"]
    known = {f.json_name for f in dataflow_v1beta3.LaunchFlexTemplateParameter.pb().DESCRIPTOR.fields}
    assert set(body) <= known
    assert body["parameters"] == "${parameters}"
    assert body["containerSpecGcsPath"] == "${config.template_spec}"
    assigned = [item["parameters"] for _, _, step in all_steps(train_workflow)
                for item in step.get("assign", []) if "parameters" in item]
    assert len(assigned) == 1 and assigned[0].startswith("${map.merge(config.job_parameters, {")
    by_workflow = dict(re.findall(r'"(\w+)": "(\w+)"', assigned[0]))
    assert by_workflow == {"overwrite": "true"}  # a new version replaces the current model
    assert set(by_workflow) == set(deploy.TRAIN_RUN_PARAMETERS)
    parameters = deploy.template_parameters("train")
    passed = set(by_workflow) | set(settings["training"]["job_parameters"])
    assert passed <= set(parameters)
    assert {n for n, p in parameters.items() if not p["isOptional"]} <= passed
    for name, value in by_workflow.items():
        assert all(re.search(regex, value) for regex in parameters[name]["regexes"])
    # The model directory the job writes is the one every later daily run scores with.
    config = deploy.training_config(settings)
    assert config["job_parameters"]["output_dir"] == \
        deploy.workflow_config(settings)["job_parameters"]["model_dir"]


def test_a_failed_training_job_fails_the_execution_and_publishes_nothing(train_workflow, workflow):
    steps = dict((name, body) for _, name, body in all_steps(train_workflow))
    states = steps["job_state"]["switch"]
    assert states[0]["condition"].endswith('== "JOB_STATE_DONE"}') and states[0]["next"] == "counters"
    # The same terminal states as the daily workflow's, each raising with the job named.
    daily = dict((name, body) for _, name, body in all_steps(workflow))["job_state"]["switch"]
    assert states[1]["condition"] == daily[1]["condition"]
    assert "raise" in states[1] and "nothing was published" in states[1]["raise"]
    assert "raise" in states[2] and "max_wait_hours" in states[2]["condition"]
    # Publishing comes only after a DONE job: every path to the publish step passes "counters".
    order = [name for name, _ in steps_of(train_workflow["main"]["steps"])]
    assert order.index("prepare") < order.index("launch") < order.index("counters") \
        < order.index("running_scoring") < order.index("publish") < order.index("read_model_json")


def build_bodies(workflow: dict) -> list[dict]:
    return [call_of(body)[1]["body"] for _, _, body in all_steps(workflow)
            if call_of(body)[0] == "http.post" and "cloudbuild.googleapis.com" in call_of(body)[1]["url"]]


def test_the_prepare_and_publish_builds_are_valid_cloud_build_requests(train_workflow):
    from google.cloud.devtools import cloudbuild_v1

    fields = lambda message: {f.json_name for f in message.pb().DESCRIPTOR.fields}
    bodies = build_bodies(train_workflow)
    assert len(bodies) == 1  # one subworkflow runs both steps
    body = bodies[0]
    assert set(body) <= fields(cloudbuild_v1.Build)
    assert all(set(step) <= fields(cloudbuild_v1.BuildStep) for step in body["steps"])
    assert set(body["options"]) <= fields(cloudbuild_v1.BuildOptions)
    # A user-chosen service account requires logs outside the default bucket.
    assert body["options"]["logging"] in cloudbuild_v1.BuildOptions.LoggingMode.__members__
    assert body["serviceAccount"].startswith('${"projects/" + config.project + "/serviceAccounts/"')
    (step,) = body["steps"]
    assert step == {"name": "${config.image}", "entrypoint": "python", "args": "${script_args}"}
    steps = dict((name, b) for _, name, b in all_steps(train_workflow))
    final = steps["build_state"]["switch"]
    assert final[0]["condition"].endswith('== "SUCCESS"}') and "return" in final[0]
    failed = set(re.findall(r'"([A-Z_]+)"', final[1]["condition"]))
    terminal = {s.name for s in cloudbuild_v1.Build.Status} - {"SUCCESS", "STATUS_UNKNOWN",
                                                                "PENDING", "QUEUED", "WORKING"}
    assert failed == terminal and "raise" in final[1]


def load_publish_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "publish_model", REPO / "templates" / "train" / "publish_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def script_calls(workflow: dict) -> dict[str, str]:
    """step → the script_args expression the training workflow passes to run_in_image."""
    return {args["label"]: args["script_args"] for _, _, body in all_steps(workflow)
            for target, args in [call_of(body)] if target == "run_in_image"}


def test_the_workflow_runs_the_publish_script_with_flags_it_accepts(train_workflow):
    calls = script_calls(train_workflow)
    assert set(calls) == {"prepare", "publish"}
    subcommands = load_publish_script().parser()._subparsers._group_actions[0].choices
    for step, expression in calls.items():
        assert expression.startswith(f'${{["/template/publish_model.py", "{step}", ')
        flags = set(re.findall(r'"--(\w+)=', expression))
        accepted = {a.dest for a in subcommands[step]._actions if a.option_strings} - {"help"}
        assert flags <= accepted, step
        assert {a.dest for a in subcommands[step]._actions if a.required} <= flags
    assert '"--overwrite=true"' in calls["prepare"]


LISTENS = "".join(f"{'%040x' % user}\tSO{'%016d' % song}\t{1 + (user + song) % 3}\n"
                  for user in range(12) for song in range(8) if (user * 7 + song * 3) % 4)


def stage_like_a_template_launch(output_dir, listens):
    """What the Dataflow job of a template launch leaves: the model in _staging/<version>/."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipelines import train

    options = PipelineOptions([f"--listens={listens}", f"--output_dir={output_dir}",
                               "--model=itemcf", "--overwrite=true"]).view_as(train.TrainOptions)
    staging = f"{output_dir}/{train.STAGING}/20260101T000000Z-{len(list(pathlib.Path(output_dir).glob('v-*')))}aaaaaaa"
    with beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"])) as pipeline:
        train.build_pipeline(pipeline, options, staging, staging)
    return staging


def test_prepare_then_publish_publishes_the_staged_model_and_keeps_the_previous(tmp_path, capsys):
    from recommend import models
    from recommend.models import base

    script = load_publish_script()
    listens = tmp_path / "listens.txt"
    listens.write_text(LISTENS)
    model_dir = str(tmp_path / "models" / "itemcf")
    parameters = {"model": "itemcf", "listens": str(listens), "output_dir": model_dir,
                  "overwrite": "true"}
    versions = []
    for run in range(2):
        assert script.main(["prepare", f"--output_dir={model_dir}", "--overwrite=true"]) == 0
        stage_like_a_template_launch(model_dir, listens)
        counters = {"listens_used": 5, "listens_in_model": 5, "listens_parsed": 5}
        assert script.main(["publish", f"--output_dir={model_dir}",
                            f"--job_parameters={json.dumps(parameters)}",
                            f"--counters={json.dumps(counters)}", "--dataflow_job_id=2026-01-04_1",
                            "--dataflow_job_name=msd-train-itemcf-20260104",
                            "--duration_seconds=12.5"]) == 0
        done = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        versions.append(done["version"])
        manifest = base.read_manifest(model_dir)
        assert manifest["version"] == done["version"] and manifest["kind"] == "itemcf"
        summary = json.loads((tmp_path / "models" / "itemcf" / f"v-{done['version']}" /
                              "run_summary.json").read_text())
        assert summary["launch"] == "flex_template" and summary["listens_in_model"] == 5
        assert summary["parameters"]["alpha"] == 0.15 and summary["duration_seconds"] == 12.5
        assert models.load_model(model_dir).num_songs() == 8
        assert not (tmp_path / "models" / "itemcf" / "_staging").exists()
    assert versions[0] != versions[1]
    kept = sorted(p.name for p in (tmp_path / "models" / "itemcf").glob("v-*"))
    assert kept == sorted(f"v-{v}" for v in versions)  # the previous version is kept
    # Roll back: the previous version's copy of its model.json, copied over model.json.
    previous = tmp_path / "models" / "itemcf" / f"v-{versions[0]}" / script.PUBLISHED_COPY
    (tmp_path / "models" / "itemcf" / "model.json").write_bytes(previous.read_bytes())
    assert base.read_manifest(model_dir)["version"] == versions[0]
    assert models.load_model(model_dir).num_songs() == 8


def test_prepare_refuses_what_a_local_run_refuses_and_publish_needs_one_staged_model(tmp_path):
    script = load_publish_script()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="did not write"):
        script.main(["prepare", f"--output_dir={foreign}", "--overwrite=true"])
    empty = tmp_path / "empty"
    with pytest.raises(SystemExit, match="found 0 .none.: did the job write no model"):
        script.main(["publish", f"--output_dir={empty}"])
    listens = tmp_path / "listens.txt"
    listens.write_text(LISTENS)
    model_dir = tmp_path / "model"
    stage_like_a_template_launch(str(model_dir), listens)
    script.main(["publish", f"--output_dir={model_dir}"])
    with pytest.raises(SystemExit, match="already holds a model; pass --overwrite"):
        script.main(["prepare", f"--output_dir={model_dir}"])
    # Two staged versions (prepare skipped, two jobs at once): nothing is guessed.
    stage_like_a_template_launch(str(model_dir), listens)
    (model_dir / "_staging" / "20260101T000000Z-9bbbbbbb").mkdir()
    import shutil
    staged = sorted((model_dir / "_staging").iterdir())
    shutil.copytree(staged[0], model_dir / "_staging" / "20260102T000000Z-cccccccc")
    with pytest.raises(SystemExit, match="exactly one staged model .* found 2"):
        script.main(["publish", f"--output_dir={model_dir}"])


def test_the_training_schedule_is_deployed_only_when_configured(settings, daily_only_settings,
                                                                tmp_path):
    with_training = deploy.deploy_commands(settings, tmp_path)
    without = deploy.deploy_commands(daily_only_settings, tmp_path)
    schedulers = [c for c in with_training if c[:3] == ["gcloud", "scheduler", "jobs"]]
    assert len(schedulers) == 2
    assert len([c for c in without if c[:3] == ["gcloud", "scheduler", "jobs"]]) == 1
    assert len(with_training) == len(without) + 2
    training = settings["training"]
    flags = dict(a[2:].split("=", 1) for a in schedulers[1] if a.startswith("--"))
    assert schedulers[1][5] == training["scheduler_job"]
    assert flags["schedule"] == training["cron"]
    assert flags["time-zone"] == settings["schedule"]["time_zone"]
    assert flags["uri"].endswith(f"/workflows/{training['workflow']}/executions")
    train_deploy = next(c for c in with_training if c[:3] == ["gcloud", "workflows", "deploy"]
                        and c[3] == training["workflow"])
    assert "--source=orchestration/train_weekly.workflow.yaml" in train_deploy
    assert f"--env-vars-file={tmp_path / 'train_workflow_env.yaml'}" in train_deploy
    assert not any("train_weekly" in " ".join(c) for c in without)
    update = deploy.deploy_commands(settings, tmp_path, training_scheduler_verb="update")
    assert [c[3] for c in update if c[:3] == ["gcloud", "scheduler", "jobs"]] == ["create", "update"]
    # The build files follow: no training environment file for a deployment without training.
    deploy.write_build_files(settings, tmp_path)
    env = json.loads(yaml.safe_load((tmp_path / "train_workflow_env.yaml").read_text())["MSD_CONFIG"])
    assert env == deploy.training_config(settings)
    assert env["model_bucket"] == "my-bucket" and env["model_json_object"] == "models/itemcf/model.json"
    deploy.write_build_files(daily_only_settings, tmp_path)
    assert not (tmp_path / "train_workflow_env.yaml").exists()


def test_training_left_empty_means_no_training(daily_only_settings, tmp_path):
    daily = copy.deepcopy(daily_only_settings)
    daily["training"] = None
    deploy.check_settings(daily)
    assert len(deploy.deploy_commands(daily, tmp_path)) == len(
        deploy.deploy_commands(daily_only_settings, tmp_path))


@pytest.mark.parametrize("change, message", [
    (lambda s: s["training"]["job_parameters"].update(factor="5"),
     "not parameters of the train template"),
    (lambda s: s["training"]["job_parameters"].update(overwrite="true"),
     "set by the workflow for each training run"),
    (lambda s: s["training"]["job_parameters"].pop("listens"), "required template parameters"),
    (lambda s: s["training"]["job_parameters"].update(model="timbre_cosine"),
     "fails the template's validation"),
    (lambda s: s["training"]["job_parameters"].update(model="hybrid"), "needs --features"),
    (lambda s: s["training"]["job_parameters"].update(song_to_tracks="gs://my-bucket/s2t.txt"),
     "give --features too"),
    (lambda s: s["training"]["job_parameters"].update(output_dir="gs://my-bucket/models/als"),
     "job_parameters.model_dir must be training.job_parameters.output_dir"),
    (lambda s: s["job_parameters"].pop("model_dir"),
     "job_parameters.model_dir must be training.job_parameters.output_dir"),
    (lambda s: (s["training"]["job_parameters"].update(output_dir="gs://my-bucket"),
                s["job_parameters"].update(model_dir="gs://my-bucket")), "a folder inside a bucket"),
    (lambda s: s["training"]["environment"].update(workerMachine="n2"),
     "not FlexTemplateRuntimeEnvironment"),
    (lambda s: s["training"]["environment"].pop("serviceAccountEmail"),
     "training.environment.serviceAccountEmail is missing"),
    (lambda s: s["training"].update(cron="weekly"), "training.cron must have 5 fields"),
    (lambda s: s["training"].update(job_name_prefix="msd-recommend-train"), "must not start one another"),
    (lambda s: s["training"].update(job_name_prefix="MSD_train"), "a Dataflow job name"),
    (lambda s: s["training"].update(scheduler_job=s["schedule"]["scheduler_job"]),
     "training.scheduler_job must differ"),
    (lambda s: s["training"].update(workflow=s["schedule"]["workflow"]), "training.workflow must differ"),
    (lambda s: s["training"].update(max_scoring_wait_hours=0), "must be positive"),
    (lambda s: s["training"].pop("max_wait_hours"), "training.max_wait_hours is missing"),
    (lambda s: s.update(training=["weekly"]), "training must be a mapping"),
    (lambda s: s["images"].pop("train_template"), "images.train_template is missing"),
    (lambda s: s["images"].update(train_template="elsewhere/msd-train-template:0.1.0"),
     "share one registry prefix"),
    (lambda s: s["template_specs"].pop("train"), "template_specs.train is missing"),
])
def test_training_settings_mistakes_are_refused(settings, change, message):
    broken = copy.deepcopy(settings)
    change(broken)
    with pytest.raises(deploy.SettingsError, match=message):
        deploy.check_settings(broken)
