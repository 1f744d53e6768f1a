"""The daily schedule (orchestration/), checked offline: the Workflows definition's structure, the
template parameters and named queries it uses against templates/ and recommend/queries/, and the
deployment command's settings checks and plan. Nothing here reaches Google Cloud."""
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
EXAMPLE_SETTINGS = REPO / "orchestration" / "settings.example.yaml"
# Standard-library functions the workflow may call (everything else must be a subworkflow).
STDLIB_CALLS = {"http.get", "http.post", "http.put", "sys.log", "sys.sleep"}


@pytest.fixture(scope="module")
def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))


@pytest.fixture()
def settings() -> dict:
    return deploy.load_settings(str(EXAMPLE_SETTINGS))


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


def test_every_call_is_the_standard_library_or_a_subworkflow_with_its_parameters(workflow):
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


def test_step_names_are_unique_and_every_next_names_a_step(workflow):
    for subworkflow, definition in workflow.items():
        names = [name for name, _ in steps_of(definition["steps"])]
        assert len(names) == len(set(names)), subworkflow
        for name, body in steps_of(definition["steps"]):
            targets = [body.get("next")] + [c.get("next") for c in body.get("switch", [])]
            for target in filter(None, targets):
                assert target in names or target in ("end", "break", "continue"), (
                    f"{subworkflow}.{name}: next {target}")


def test_expressions_are_whole_values_with_balanced_brackets(workflow):
    expressions = [s for s in strings_in(workflow) if "${" in s]
    assert len(expressions) > 50
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
    assert "`my-project.music.recommendations__staging_timbre_cosine_{{run_day}}`" in publish
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


def test_the_deployment_plan(settings, tmp_path):
    commands = deploy.deploy_commands(settings, tmp_path)
    joined = [" ".join(c) for c in commands]
    build = next(c for c in commands if c[:3] == ["gcloud", "builds", "submit"])
    assert "--config=orchestration/cloudbuild.yaml" in build
    specs = [c for c in commands if c[:4] == ["gcloud", "dataflow", "flex-template", "build"]]
    for job, command in zip(("features", "recommend"), specs):
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
    assert printed[0].startswith("gcloud builds submit") and len(printed) == 8
    env = yaml.safe_load((tmp_path / "workflow_env.yaml").read_text())
    assert json.loads(env["MSD_CONFIG"])["template_spec"] == "gs://my-bucket/templates/msd-recommend.json"
    for name in deploy.WORKFLOW_QUERIES:
        assert "@run_date" in (tmp_path / "queries" / f"{name}.sql").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text("project: p\n")
    assert deploy.main(["--settings", str(bad), "--build_dir", str(tmp_path)]) == 2
