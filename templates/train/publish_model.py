"""The two steps around a templated training job that a template launch cannot do itself.

A Flex Template launch of ``python -m pipelines.train`` only builds the job: the launcher exits
before the job runs, so the checks a local run makes first and the publishing it does last are
left undone, and the model stays in ``OUTPUT_DIR/_staging/<version>/``. The training workflow
(orchestration/train_weekly.workflow.yaml) runs this script in the train template's image
(/template/publish_model.py, through Cloud Build) before and after the job, with the job's own
code:

    python /template/publish_model.py prepare --output_dir gs://b/models/itemcf --overwrite
        The model directory checked as a local run checks it (absent, empty, or a model this
        product wrote; a model is replaced only with --overwrite), and any staging left by an
        earlier, failed run deleted, so that after the job exactly one staged version exists.
    python /template/publish_model.py publish --output_dir gs://b/models/itemcf \\
            --job_parameters '{"model": "itemcf", ...}' --counters '{"listens_used": 7, ...}' \\
            --dataflow_job_id ID --dataflow_job_name NAME --duration_seconds 812
        The one staged version gets run_summary.json (the job's counters, with the fields a local
        run computes from them) and is published by ``pipelines.train.publish_model``:
        ``model.json``, written last in one write, names ``v-<version>/``; the previous version
        stays. A copy of the new model.json is kept as ``v-<version>/published_model.json``: to
        roll back, copy the previous version's copy over ``model.json``.
Prints one JSON line (what was done); exits non-zero with a one-line reason otherwise.
"""
import argparse
import json
import sys
from typing import Optional, Sequence

PUBLISHED_COPY = "published_model.json"


def staged_versions(output_dir: str) -> list[str]:
    """The staged versions under OUTPUT_DIR/_staging/ whose model.json was written (the job's
    last write: a version without it is a job that did not finish)."""
    from apache_beam.io.filesystems import FileSystems

    from pipelines import launcher, train
    from recommend.models import base as model_base

    staging = FileSystems.join(output_dir, train.STAGING)
    return [name for name in launcher.child_names(staging)
            if FileSystems.exists(FileSystems.join(staging, name, model_base.MODEL_FILE))]


def prepare(output_dir: str, overwrite: bool) -> dict:
    from apache_beam.io.filesystems import FileSystems

    from pipelines import launcher, train

    output_dir = output_dir.rstrip("/")
    train._check_output_dir(output_dir, overwrite)  # pylint: disable=protected-access
    launcher.delete_tree(FileSystems.join(output_dir, train.STAGING))
    return {"step": "prepare", "output_dir": output_dir}


def publish(output_dir: str, job_parameters: dict, counters: dict, dataflow_job_id: str,
            dataflow_job_name: str, duration_seconds: float) -> dict:
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipelines import launcher, train
    from recommend.models import base as model_base

    output_dir = output_dir.rstrip("/")
    versions = staged_versions(output_dir)
    if len(versions) != 1:
        raise SystemExit(
            f"publish: expected exactly one staged model in {output_dir}/{train.STAGING}/, found "
            f"{len(versions)} ({', '.join(versions) or 'none'}): "
            + ("did the job write no model (no listens of any known song)?" if not versions
               else "another training wrote to this model directory at the same time"))
    version = versions[0]
    staging = FileSystems.join(output_dir, train.STAGING, version)
    argv = [f"--{name}={value}" for name, value in sorted(job_parameters.items())]
    options = PipelineOptions(argv).view_as(train.TrainOptions)
    options.model = options.model or "itemcf"
    summary = train.run_summary({name: int(value) for name, value in counters.items()},
                                options, float(duration_seconds))
    summary.update(version=version, launch="flex_template", dataflow_job_id=dataflow_job_id,
                   dataflow_job_name=dataflow_job_name, counters=counters)
    launcher.write_summary(summary, staging, train.SUMMARY_FILE)
    version_dir = train.publish_model(staging, output_dir, version)
    with FileSystems.open(FileSystems.join(output_dir, model_base.MODEL_FILE)) as handle:
        manifest = handle.read()
    launcher.write_atomically(FileSystems.join(version_dir, PUBLISHED_COPY), manifest)
    return {"step": "publish", "output_dir": output_dir, "version": version,
            "version_dir": version_dir,
            "listens_in_model_reconcile": summary["listens_in_model_reconcile"]}


def _json_object(text: str) -> dict:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def parser() -> argparse.ArgumentParser:
    from pipelines import config as config_lib

    result = argparse.ArgumentParser(prog="publish_model.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    steps = result.add_subparsers(dest="step", required=True)
    before = steps.add_parser("prepare", help="check and clear the model directory")
    before.add_argument("--output_dir", required=True)
    before.add_argument("--overwrite", nargs="?", const=True, default=False,
                        type=config_lib.flag_value)
    after = steps.add_parser("publish", help="publish the one staged model")
    after.add_argument("--output_dir", required=True)
    after.add_argument("--job_parameters", type=_json_object, default={})
    after.add_argument("--counters", type=_json_object, default={})
    after.add_argument("--dataflow_job_id", default="")
    after.add_argument("--dataflow_job_name", default="")
    after.add_argument("--duration_seconds", type=float, default=0.0)
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parser().parse_args(argv)
    if args.step == "prepare":
        done = prepare(args.output_dir, args.overwrite)
    else:
        done = publish(args.output_dir, args.job_parameters, args.counters, args.dataflow_job_id,
                       args.dataflow_job_name, args.duration_seconds)
    print(json.dumps(done, sort_keys=True))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SystemExit:
        raise
    except Exception as error:  # one line in the build log, not a traceback only
        print(f"publish_model: {type(error).__name__}: {error}", file=sys.stderr)
        raise
