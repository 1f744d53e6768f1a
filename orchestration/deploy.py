"""``python -m orchestration.deploy``: deploy the daily recommendation schedule (and, optionally,
the training schedule) from settings.

    python -m orchestration.deploy --settings orchestration/settings.yaml           # print the plan
    python -m orchestration.deploy --settings orchestration/settings.yaml --apply   # run it

Checks the settings offline first (template parameters against templates/recommend/metadata.json
and its regexes, the BigQuery table the job writes against the one the queries read, launch
environment fields against the Dataflow API), then, in order: builds the four images (Cloud
Build), writes the three Flex Template spec files, uploads the named queries rendered for BigQuery
by ``recommend.query`` (the SQL stays in recommend/queries/), deploys the workflow with its
configuration and creates the Cloud Scheduler job that starts it daily. With a ``training:``
section it also deploys the training workflow (orchestration/train_weekly.workflow.yaml: the
train template into one model directory, published after the job) and its own Cloud Scheduler
job; the daily runs then score with that directory's current model (``job_parameters.model_dir``
must be it). Needs ``gcloud`` (authenticated) only with ``--apply``.
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
TRAIN_WORKFLOW_SOURCE = REPO / "orchestration" / "train_weekly.workflow.yaml"
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
# Train template parameters the training workflow sets itself (it always replaces the model:
# the model directory keeps the previous version).
TRAIN_RUN_PARAMETERS = ("overwrite",)
IMAGE_NAMES = {"features_template": "msd-features-template",
               "recommend_template": "msd-recommend-template",
               "recommend_gpu_worker": "msd-recommend-gpu",
               "train_template": "msd-train-template"}
# The settings of the optional training schedule (all required when `training:` is present).
TRAINING_KEYS = ("cron", "scheduler_job", "workflow", "job_name_prefix", "job_parameters",
                 "environment.tempLocation", "environment.serviceAccountEmail",
                 "max_wait_hours", "max_scoring_wait_hours")
_JOB_NAME_PREFIX = re.compile(r"^[a-z]([-a-z0-9]{0,40}[a-z0-9])?$")
_GCS_FOLDER = re.compile(r"^gs://(?P<bucket>[a-z0-9][-_.a-z0-9]{1,220}[a-z0-9])(/(?P<path>.*))?$")
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


def _require(settings: dict, dotted: str, section: str = "") -> Any:
    value: Any = settings
    for part in dotted.split("."):
        if not isinstance(value, dict) or value.get(part) in (None, ""):
            raise SettingsError(f"setting {section}{dotted} is missing")
        value = value[part]
    return value


def check_settings(settings: dict) -> None:
    """Raises SettingsError on anything a deployment would only discover at run time."""
    for key in ("project", "region", "images.features_template", "images.recommend_template",
                "images.recommend_gpu_worker", "images.train_template", "template_specs.features",
                "template_specs.recommend", "template_specs.train", "schedule.cron", "schedule.time_zone",
                "schedule.scheduler_job", "schedule.workflow", "schedule.service_account",
                "job_parameters", "environment.tempLocation", "report_bucket", "report_prefix",
                "bigquery.dataset", "bigquery.location", "bigquery.recommendations_table",
                "bigquery.drift_table", "queries_bucket", "queries_prefix", "job_name_prefix",
                "poll_seconds", "max_wait_hours", "max_backfill_days"):
        _require(settings, key)
    given = check_job_parameters(settings["job_parameters"], "recommend", PER_DAY_PARAMETERS,
                                 "job_parameters", "for each day")
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
    check_environment(settings["environment"], "environment")
    check_cron(settings["schedule"]["cron"], "schedule.cron")
    import zoneinfo
    try:
        zoneinfo.ZoneInfo(settings["schedule"]["time_zone"])
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as error:
        raise SettingsError(f"schedule.time_zone: {error}") from error
    image_prefix_and_tag(settings)
    if settings.get("training") is not None:  # `training:` left empty or out: no training
        check_training(settings)


def check_job_parameters(job_parameters: Any, job: str, set_by_workflow: Sequence[str],
                         where: str, when: str) -> dict[str, str]:
    """A workflow's fixed template parameters against templates/<job>/metadata.json (names,
    required ones, regexes); returns them as the strings a launch passes."""
    if not isinstance(job_parameters, dict):
        raise SettingsError(f"{where} must be a mapping of {job} template parameters")
    parameters = template_parameters(job)
    given = {name: str(value) for name, value in job_parameters.items()}
    unknown = sorted(set(given) - set(parameters))
    if unknown:
        raise SettingsError(f"{where} {unknown} are not parameters of the {job} "
                            f"template (templates/{job}/metadata.json)")
    by_workflow = sorted(set(given) & set(set_by_workflow))
    if by_workflow:
        raise SettingsError(f"{where} {by_workflow} are set by the workflow {when}")
    missing = sorted(name for name, p in parameters.items()
                     if not p["isOptional"] and name not in given and name not in set_by_workflow)
    if missing:
        raise SettingsError(f"{where} lack the required template parameters {missing}")
    for name, value in given.items():
        for regex in parameters[name]["regexes"]:
            if not re.search(regex, value):
                raise SettingsError(f"{where}.{name}={value!r} fails the template's "
                                    f"validation {regex}")
    return given


def check_environment(environment: Any, where: str) -> None:
    from google.cloud import dataflow_v1beta3

    if not isinstance(environment, dict):
        raise SettingsError(f"{where} must be a mapping of FlexTemplateRuntimeEnvironment fields")
    fields = {field.json_name for field in
              dataflow_v1beta3.FlexTemplateRuntimeEnvironment.pb().DESCRIPTOR.fields}
    unknown_env = sorted(set(environment) - fields)
    if unknown_env:
        raise SettingsError(f"{where} {unknown_env} are not FlexTemplateRuntimeEnvironment "
                            f"fields (known: {', '.join(sorted(fields))})")


def check_cron(cron: Any, where: str) -> None:
    if len(str(cron).split()) != 5:
        raise SettingsError(f"{where} must have 5 fields (minute hour day month weekday)")


def check_training(settings: dict) -> None:
    """The optional training schedule: the train template's parameters, one model directory
    shared with the daily runs, names that cannot collide with the daily schedule's."""
    training = settings["training"]
    if not isinstance(training, dict):
        raise SettingsError("training must be a mapping (or leave it out: no training schedule)")
    for key in TRAINING_KEYS:
        _require(training, key, "training.")
    given = check_job_parameters(training["job_parameters"], "train", TRAIN_RUN_PARAMETERS,
                                 "training.job_parameters", "for each training run")
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipelines import train

    # What the job itself would refuse at launch (e.g. hybrid without features).
    argv = [f"--{name}={value}" for name, value in given.items()] + ["--overwrite=true"]
    problems = PipelineOptions(argv).view_as(train.TrainOptions).validate_train_options()
    if problems:
        raise SettingsError(f"training.job_parameters: {'; '.join(problems)}")
    check_environment(training["environment"], "training.environment")
    check_cron(training["cron"], "training.cron")
    model_dir = settings["job_parameters"].get("model_dir")
    if not model_dir or str(model_dir).rstrip("/") != given["output_dir"].rstrip("/"):
        raise SettingsError(
            f"job_parameters.model_dir must be training.job_parameters.output_dir "
            f"({given['output_dir']!r}): the daily runs score with the model the training "
            f"publishes there, got {model_dir!r}")
    folder = _GCS_FOLDER.match(given["output_dir"].rstrip("/"))
    if not folder or not folder["path"]:
        raise SettingsError("training.job_parameters.output_dir must be a folder inside a "
                            f"bucket (gs://BUCKET/models/NAME), got {given['output_dir']!r}")
    prefixes = (str(training["job_name_prefix"]), str(settings["job_name_prefix"]))
    for prefix in prefixes:
        if not _JOB_NAME_PREFIX.match(prefix):
            raise SettingsError(f"job name prefix {prefix!r}: lower-case letters, digits and "
                                "'-' (a Dataflow job name), at most 42 characters")
    if (prefixes[0] + "-").startswith(prefixes[1] + "-") or \
            (prefixes[1] + "-").startswith(prefixes[0] + "-"):
        raise SettingsError(f"training.job_name_prefix {prefixes[0]!r} and job_name_prefix "
                            f"{prefixes[1]!r} must not start one another: the workflows tell "
                            "training and scoring jobs apart by name")
    for key in ("scheduler_job", "workflow"):
        if training[key] == settings["schedule"][key]:
            raise SettingsError(f"training.{key} must differ from schedule.{key} "
                                f"({training[key]!r}): they are two schedules")
    for key in ("max_wait_hours", "max_scoring_wait_hours"):
        if not float(training[key]) > 0:
            raise SettingsError(f"training.{key} must be positive, got {training[key]!r}")


def image_prefix_and_tag(settings: dict) -> tuple[str, str]:
    """The Cloud Build substitutions that produce exactly the four configured images."""
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
        raise SettingsError("the four images must share one registry prefix and one tag")
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


def training_config(settings: dict) -> dict:
    """The training workflow's MSD_CONFIG (every key it reads is here)."""
    training = settings["training"]
    parameters = {name: str(value) for name, value in training["job_parameters"].items()}
    folder = _GCS_FOLDER.match(parameters["output_dir"].rstrip("/"))
    return {
        "project": settings["project"],
        "region": settings["region"],
        "template_spec": settings["template_specs"]["train"],
        "image": settings["images"]["train_template"],
        "build_service_account": training["environment"]["serviceAccountEmail"],
        "build_timeout_seconds": int(training.get("build_timeout_seconds", 1800)),
        "job_parameters": parameters,
        "environment": training["environment"],
        "time_zone": settings["schedule"]["time_zone"],
        "job_name_prefix": training["job_name_prefix"],
        "scoring_job_name_prefix": settings["job_name_prefix"],
        "model_bucket": folder["bucket"],
        "model_json_object": f"{folder['path']}/model.json",
        "poll_seconds": int(settings["poll_seconds"]),
        "max_wait_hours": float(training["max_wait_hours"]),
        "max_scoring_wait_hours": float(training["max_scoring_wait_hours"]),
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


def scheduler_command(settings: dict, verb: str, job: str, workflow: str, cron: str) -> list[str]:
    """The Cloud Scheduler job that starts ``workflow`` (an execution with no argument)."""
    project, region = settings["project"], settings["region"]
    schedule = settings["schedule"]
    executions = (f"https://workflowexecutions.googleapis.com/v1/projects/{project}/locations/"
                  f"{region}/workflows/{workflow}/executions")
    return ["gcloud", "scheduler", "jobs", verb, "http", job, f"--project={project}",
            f"--location={region}", f"--schedule={cron}", f"--time-zone={schedule['time_zone']}",
            f"--uri={executions}", "--http-method=POST",
            f"--message-body={scheduler_message_body()}",
            f"--oauth-service-account-email={schedule['service_account']}",
            "--oauth-token-scope=https://www.googleapis.com/auth/cloud-platform"]


def deploy_commands(settings: dict, build_dir: pathlib.Path, skip_build: bool = False,
                    scheduler_verb: str = "create",
                    training_scheduler_verb: str = "create") -> list[list[str]]:
    """The gcloud commands of a deployment, in order (nothing is run here)."""
    project, region = settings["project"], settings["region"]
    schedule = settings["schedule"]
    commands = []
    if not skip_build:
        prefix, tag = image_prefix_and_tag(settings)
        commands.append(["gcloud", "builds", "submit", f"--project={project}",
                         f"--config={CLOUDBUILD_CONFIG.relative_to(REPO)}",
                         f"--substitutions=_IMAGE_PREFIX={prefix},_TAG={tag}", "."])
    for job, image_key in (("features", "features_template"), ("recommend", "recommend_template"),
                           ("train", "train_template")):
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
    commands.append(scheduler_command(settings, scheduler_verb, schedule["scheduler_job"],
                                      schedule["workflow"], schedule["cron"]))
    training = settings.get("training")
    if training:
        commands.append(["gcloud", "workflows", "deploy", training["workflow"],
                         f"--project={project}", f"--location={region}",
                         f"--source={TRAIN_WORKFLOW_SOURCE.relative_to(REPO)}",
                         f"--env-vars-file={build_dir / 'train_workflow_env.yaml'}",
                         f"--service-account={schedule['service_account']}"])
        commands.append(scheduler_command(settings, training_scheduler_verb,
                                          training["scheduler_job"], training["workflow"],
                                          training["cron"]))
    return commands


def write_build_files(settings: dict, build_dir: pathlib.Path) -> None:
    """The rendered queries and the workflow's environment file, under ``build_dir``."""
    (build_dir / "queries").mkdir(parents=True, exist_ok=True)
    for name, sql in render_queries(settings).items():
        (build_dir / "queries" / f"{name}.sql").write_text(sql + "\n", encoding="utf-8")
    env = {"MSD_CONFIG": json.dumps(workflow_config(settings), sort_keys=True)}
    (build_dir / "workflow_env.yaml").write_text(yaml.safe_dump(env), encoding="utf-8")
    train_env = build_dir / "train_workflow_env.yaml"
    if settings.get("training"):
        env = {"MSD_CONFIG": json.dumps(training_config(settings), sort_keys=True)}
        train_env.write_text(yaml.safe_dump(env), encoding="utf-8")
    elif train_env.exists():
        train_env.unlink()  # a file of an earlier deployment with training: not this one's


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
    parser.add_argument("--update_training_scheduler", action="store_true",
                        help="the training scheduler job exists: update it instead of creating it")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.settings)
    except SettingsError as error:
        print(f"deploy: {error}", file=sys.stderr)
        return 2
    build_dir = pathlib.Path(args.build_dir).resolve()
    write_build_files(settings, build_dir)
    commands = deploy_commands(settings, build_dir, args.skip_build,
                               "update" if args.update_scheduler else "create",
                               "update" if args.update_training_scheduler else "create")
    for command in commands:
        print(shlex.join(command))
        if args.apply:
            subprocess.run(command, check=True, cwd=REPO)
    return 0


if __name__ == "__main__":
    sys.exit(main())
