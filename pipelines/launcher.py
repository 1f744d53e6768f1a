"""What the job entry points share: option parsing with validation, counters, the summary."""
import json
import sys
from typing import Callable, Optional, Sequence, TypeVar

from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines import config as config_lib

JobOptions = TypeVar("JobOptions", bound=PipelineOptions)


def parse_job_options(job: str, argv: Optional[Sequence[str]], options_class: type[JobOptions],
                      problems: Callable[[JobOptions], list[str]],
                      ) -> tuple[PipelineOptions, JobOptions]:
    """``--config`` expanded, options parsed and validated; bad options stop the launcher with
    one message naming every problem (no traceback)."""
    try:
        argv = config_lib.expand_config(sys.argv[1:] if argv is None else argv)
    except config_lib.ConfigError as error:
        raise SystemExit(f"{job}: {error}")
    options = PipelineOptions(argv)
    job_options = options.view_as(options_class)
    found = problems(job_options)
    if found:
        raise SystemExit(f"{job}: " + "; ".join(found))
    return options, job_options


def counter_totals(result, namespace: str) -> dict[str, int]:
    """The job's counters in ``namespace`` by name (committed values where the runner has them)."""
    query = result.metrics().query(MetricsFilter().with_namespace(namespace))
    totals: dict[str, int] = {}
    for counter in query["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[counter.key.metric.name] = totals.get(counter.key.metric.name, 0) + value
    return totals


def write_summary(summary: dict, folder: str, name: str = "run_summary.json") -> str:
    """Writes the run summary JSON (local or gs://) and returns its path."""
    path = FileSystems.join(folder, name)
    with FileSystems.create(path) as handle:
        handle.write(json.dumps(summary, indent=2, sort_keys=True).encode("utf-8"))
    return path
