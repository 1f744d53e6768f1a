"""Builds a job with ``--runner=DataflowRunner --dry_run=True`` and returns what would be sent."""
from typing import Callable, Sequence
from unittest import mock

import apache_beam as beam

OFFLINE_DATAFLOW_ARGS = [
    "--project=my-project", "--region=us-central1", "--temp_location=gs://my-bucket/tmp",
    "--staging_location=gs://my-bucket/staging", "--dry_run=True", "--no_auth",
    "--sdk_location=container"]


def build_dataflow_job(run: Callable[[Sequence[str]], object], args: Sequence[str]):
    """Runs a job's ``run(argv)`` as a Dataflow dry run; returns the built (unsent) Dataflow job."""
    built = {}
    real_run = beam.Pipeline.run

    def run_and_keep(pipeline, *run_args, **kwargs):
        built["result"] = real_run(pipeline, *run_args, **kwargs)
        return built["result"]

    with mock.patch.object(beam.Pipeline, "run", run_and_keep):
        assert run(list(args) + OFFLINE_DATAFLOW_ARGS) is None  # a dry run returns no summary
    return built["result"].job
