"""``python -m orchestration.deploy``: deploy the daily recommendation schedule from settings.

    python -m orchestration.deploy --settings orchestration/settings.yaml           # print the plan
    python -m orchestration.deploy --settings orchestration/settings.yaml --apply   # run it

Checks the settings offline first (template parameters against templates/recommend/metadata.json
and its regexes, the BigQuery table the job writes against the one the queries read, launch
environment fields against the Dataflow API), then, in order: builds the three images (Cloud
Build), writes both Flex Template spec files, uploads the named queries rendered for BigQuery by
``recommend.query`` (the SQL stays in recommend/queries/), deploys the workflow with its
configuration and creates the Cloud Scheduler job that starts it daily. Needs ``gcloud``
(authenticated) only with ``--apply``.
"""
import argparse
import json
import pathlib
import re
import shlex
import subprocess
import sys
from typing import Any, Optional, Sequence

import yaml

REPO = pathlib.Path(__file__).resolve().parents[1]
WORKFLOW_SOURCE = REPO / "orchestration" / "recommend_daily.workflow.yaml"
CLOUDBUILD_CONFIG = REPO / "orchestration" / "cloudbuild.yaml"
TEMPLATE_DIR = REPO / "templates"
# The named queries the workflow runs (files in recommend/queries/).
WORKFLOW_QUERIES = ("data_quality", "run_over_run")
# The script that publishes a run's staging table (transforms.write_recommendations), rendered
# beside them with "{{run_day}}" (YYYYMMDD) in the staging table's name for the workflow to fill.
PUBLISH_SCRIPT = "publish"
RUN_DAY_TOKEN = "{{run_day}}"
# Template parameters the workflow sets for each day itself.
PER_DAY_PARAMETERS = ("run_date", "report_dir")
IMAGE_NAMES = {"features_template": "msd-features-template",
               "recommend_template": "msd-recommend-template",
               "recommend_gpu_worker": "msd-recommend-gpu"}
_BQ_OUTPUT = re.compile(r"^(?:bq://)?(?P<project>(?:[a-z][a-z0-9.-]*[a-z0-9]:)?[a-z][a-z0-9-]+)"
                        r"[:.](?P<dataset>[A-Za-z0-9_]+)\.(?P<table>[A-Za-z0-9_-]+)$")


class SettingsError(ValueError):
    """Settings that cannot be deployed, with what to fix."""


def load_settings(path: str) -> dict:
    """The settings file, parsed and checked (``check_settings``)."""
    try:
        settings = yaml.safe_load(pathlib.Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise SettingsError(f"cannot read {path}: {error}") from error
    if not isinstance(settings, dict):
        raise SettingsError(f"{path}: expected a mapping")
    check_settings(settings)
    return settings


def template_parameters(job: str) -> dict[str, dict]:
    """The parameters of templates/<job>/metadata.json by name."""
    metadata = json.loads((TEMPLATE_DIR / job / "metadata.json").read_text(encoding="utf-8"))
    return {parameter["name"]: parameter for parameter in metadata["parameters"]}


def _require(settings: dict, dotted: str) -> Any:
    value: Any = settings
    for part in dotted.split("."):
        if not isinstance(value, dict) or value.get(part) in (None, ""):
            raise SettingsError(f"setting {dotted} is missing")
        value = value[part]
    return value


def check_settings(settings: dict) -> None:
    """Raises SettingsError on anything a deployment would only discover at run time."""
    for key in ("project", "region", "images.features_template", "images.recommend_template",
                "images.recommend_gpu_worker", "template_specs.features",
                "template_specs.recommend", "schedule.cron", "schedule.time_zone",
                "schedule.scheduler_job", "schedule.workflow", "schedule.service_account",
                "job_parameters", "environment.tempLocation", "report_bucket", "report_prefix",
                "bigquery.dataset", "bigquery.location", "bigquery.recommendations_table",
                "bigquery.drift_table", "queries_bucket", "queries_prefix", "job_name_prefix",
                "poll_seconds", "max_wait_hours", "max_backfill_days"):
        _require(settings, key)
    parameters = template_parameters("recommend")
    given = {name: str(value) for name, value in settings["job_parameters"].items()}
    unknown = sorted(set(given) - set(parameters))
    if unknown:
        raise SettingsError(f"job_parameters {unknown} are not parameters of the recommend "
                            f"template (templates/recommend/metadata.json)")
    per_day = sorted(set(given) & set(PER_DAY_PARAMETERS))
    if per_day:
        raise SettingsError(f"job_parameters {per_day} are set by the workflow for each day")
    missing = sorted(name for name, p in parameters.items()
                     if not p["isOptional"] and name not in given and name not in PER_DAY_PARAMETERS)
    if missing:
        raise SettingsError(f"job_parameters lack the required template parameters {missing}")
    for name, value in given.items():
        for regex in parameters[name]["regexes"]:
            if not re.search(regex, value):
                raise SettingsError(f"job_parameters.{name}={value!r} fails the template's "
                                    f"validation {regex}")
    if given.get("model_dir") and not given.get("model"):
        raise SettingsError("job_parameters.model is required with model_dir: the workflow "
                            "checks and publishes the (run_date, model) partition by name")
    output = _BQ_OUTPUT.match(given["output"])
    bigquery = settings["bigquery"]
    if not output or (output["project"], output["dataset"], output["table"]) != (
            settings["project"], bigquery["dataset"], bigquery["recommendations_table"]):
        raise SettingsError(
            f"job_parameters.output {given['output']!r} must be the table the queries read: "
            f"{settings['project']}:{bigquery['dataset']}.{bigquery['recommendations_table']}")
    from google.cloud import dataflow_v1beta3

    fields = {field.json_name for field in
              dataflow_v1beta3.FlexTemplateRuntimeEnvironment.pb().DESCRIPTOR.fields}
    unknown_env = sorted(set(settings["environment"]) - fields)
    if unknown_env:
        raise SettingsError(f"environment {unknown_env} are not FlexTemplateRuntimeEnvironment "
                            f"fields (known: {', '.join(sorted(fields))})")
    if len(str(settings["schedule"]["cron"]).split()) != 5:
        raise SettingsError("schedule.cron must have 5 fields (minute hour day month weekday)")
    import zoneinfo
    try:
        zoneinfo.ZoneInfo(settings["schedule"]["time_zone"])
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as error:
        raise SettingsError(f"schedule.time_zone: {error}") from error
    image_prefix_and_tag(settings)


def image_prefix_and_tag(settings: dict) -> tuple[str, str]:
    """The Cloud Build substitutions that produce exactly the three configured images."""
    prefixes, tags = set(), set()
    for key, name in IMAGE_NAMES.items():
        image = settings["images"][key]
        match = re.fullmatch(rf"(?P<prefix>.+)/{re.escape(name)}:(?P<tag>[\w.-]+)", image)
        if not match:
            raise SettingsError(f"images.{key} must be PREFIX/{name}:TAG (orchestration/"
                                f"cloudbuild.yaml names it so), got {image!r}")
        prefixes.add(match["prefix"])
        tags.add(match["tag"])
    if len(prefixes) != 1 or len(tags) != 1:
        raise SettingsError("the three images must share one registry prefix and one tag")
    return prefixes.pop(), tags.pop()


def workflow_config(settings: dict) -> dict:
    """MSD_CONFIG, the workflow's only environment variable (every key it reads is here)."""
    bigquery, drift = settings["bigquery"], settings.get("drift") or {}
    max_share = drift.get("max_changed_share")
    return {
        "project": settings["project"],
        "region": settings["region"],
        "template_spec": settings["template_specs"]["recommend"],
        # Flex Template parameters are strings.
        "job_parameters": {name: str(value) for name, value in settings["job_parameters"].items()},
        # The partition the runs write: the content model's default name unless set.
        "model": str(settings["job_parameters"].get("model") or "timbre_cosine"),
        "environment": settings["environment"],
        "time_zone": settings["schedule"]["time_zone"],
        "job_name_prefix": settings["job_name_prefix"],
        "report_bucket": settings["report_bucket"],
        "report_prefix": settings["report_prefix"].strip("/"),
        "queries_bucket": settings["queries_bucket"],
        "queries_prefix": settings["queries_prefix"].strip("/"),
        "bigquery_dataset": bigquery["dataset"],
        "bigquery_location": bigquery["location"],
        "has_listens_table": "true" if bigquery.get("listens_table") else "false",
        "drift_table": bigquery["drift_table"],
        "drift_top_n": int(drift.get("top_n", 10)),
        "drift_limit": int(drift.get("limit", 100)),
        "max_changed_share": None if max_share is None else float(max_share),
        "poll_seconds": int(settings["poll_seconds"]),
        "max_wait_hours": float(settings["max_wait_hours"]),
        "max_backfill_days": int(settings["max_backfill_days"]),
    }


def render_queries(settings: dict) -> dict[str, str]:
    """The workflow's named queries as BigQuery SQL for the configured tables (via
    ``recommend.query``, which checks every table name); parameters stay ``@name``."""
    from recommend import query as query_lib

    bigquery = settings["bigquery"]
    tables = {"recommendations": bigquery["recommendations_table"],
              "listens": bigquery.get("listens_table")}
    rendered = {}
    for name in WORKFLOW_QUERIES:
        query = query_lib.load_query(name)
        refs = query_lib.bigquery_table_refs(query, settings["project"], bigquery["dataset"],
                                             tables)
        rendered[name] = query_lib.render_sql(query, refs)
    from transforms import write_recommendations as writers

    table = writers.BigQueryTable(settings["project"], bigquery["dataset"],
                                  bigquery["recommendations_table"])
    model = workflow_config(settings)["model"]
    rendered[PUBLISH_SCRIPT] = writers.bigquery_publish_script(
        table, table.staging_for_day(RUN_DAY_TOKEN, model))
    return rendered


def scheduler_message_body() -> str:
    """The Workflows executions API request: an empty argument means 'today'."""
    return json.dumps({"argument": json.dumps({}), "callLogLevel": "LOG_ERRORS_ONLY"})


def deploy_commands(settings: dict, build_dir: pathlib.Path, skip_build: bool = False,
                    scheduler_verb: str = "create") -> list[list[str]]:
    """The gcloud commands of a deployment, in order (nothing is run here)."""
    project, region = settings["project"], settings["region"]
    schedule = settings["schedule"]
    commands = []
    if not skip_build:
        prefix, tag = image_prefix_and_tag(settings)
        commands.append(["gcloud", "builds", "submit", f"--project={project}",
                         f"--config={CLOUDBUILD_CONFIG.relative_to(REPO)}",
                         f"--substitutions=_IMAGE_PREFIX={prefix},_TAG={tag}", "."])
    for job, image_key in (("features", "features_template"), ("recommend", "recommend_template")):
        commands.append(["gcloud", "dataflow", "flex-template", "build",
                         settings["template_specs"][job], f"--project={project}",
                         f"--image={settings['images'][image_key]}", "--sdk-language=PYTHON",
                         f"--metadata-file=templates/{job}/metadata.json"])
    queries_url = f"gs://{settings['queries_bucket']}/{settings['queries_prefix'].strip('/')}"
    for name in WORKFLOW_QUERIES + (PUBLISH_SCRIPT,):
        commands.append(["gcloud", "storage", "cp", "--content-type=text/plain",
                         str(build_dir / "queries" / f"{name}.sql"), f"{queries_url}/{name}.sql"])
    commands.append(["gcloud", "workflows", "deploy", schedule["workflow"], f"--project={project}",
                     f"--location={region}", f"--source={WORKFLOW_SOURCE.relative_to(REPO)}",
                     f"--env-vars-file={build_dir / 'workflow_env.yaml'}",
                     f"--service-account={schedule['service_account']}"])
    executions = (f"https://workflowexecutions.googleapis.com/v1/projects/{project}/locations/"
                  f"{region}/workflows/{schedule['workflow']}/executions")
    commands.append(["gcloud", "scheduler", "jobs", scheduler_verb, "http",
                     schedule["scheduler_job"], f"--project={project}", f"--location={region}",
                     f"--schedule={schedule['cron']}", f"--time-zone={schedule['time_zone']}",
                     f"--uri={executions}", "--http-method=POST",
                     f"--message-body={scheduler_message_body()}",
                     f"--oauth-service-account-email={schedule['service_account']}",
                     "--oauth-token-scope=https://www.googleapis.com/auth/cloud-platform"])
    return commands


def write_build_files(settings: dict, build_dir: pathlib.Path) -> None:
    """The rendered queries and the workflow's environment file, under ``build_dir``."""
    (build_dir / "queries").mkdir(parents=True, exist_ok=True)
    for name, sql in render_queries(settings).items():
        (build_dir / "queries" / f"{name}.sql").write_text(sql + "\n", encoding="utf-8")
    env = {"MSD_CONFIG": json.dumps(workflow_config(settings), sort_keys=True)}
    (build_dir / "workflow_env.yaml").write_text(yaml.safe_dump(env), encoding="utf-8")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestration.deploy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", required=True, help="e.g. orchestration/settings.yaml")
    parser.add_argument("--build_dir", default="build/orchestration",
                        help="where the rendered queries and the workflow environment go")
    parser.add_argument("--apply", action="store_true", help="run the commands (default: print)")
    parser.add_argument("--skip_build", action="store_true", help="images already pushed")
    parser.add_argument("--update_scheduler", action="store_true",
                        help="the scheduler job exists: update it instead of creating it")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.settings)
    except SettingsError as error:
        print(f"deploy: {error}", file=sys.stderr)
        return 2
    build_dir = pathlib.Path(args.build_dir).resolve()
    write_build_files(settings, build_dir)
    commands = deploy_commands(settings, build_dir, args.skip_build,
                               "update" if args.update_scheduler else "create")
    for command in commands:
        print(shlex.join(command))
        if args.apply:
            subprocess.run(command, check=True, cwd=REPO)
    return 0


if __name__ == "__main__":
    sys.exit(main())
