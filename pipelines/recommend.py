"""``python -m pipelines.recommend``: listening data → user histories → exact top-k
recommendations of any model (``recommend.models``) against its whole catalogue → BigQuery or
local Parquet, one partition per (run_date, model).

    python -m pipelines.recommend --features out/features --listens listens.txt \\
        --output out/recommendations --k 500                      # the content model
    python -m pipelines.recommend --model_dir out/models/itemcf --listens listens.txt \\
        --output out/recommendations --k 500                      # a trained model
    python -m pipelines.recommend --config configs/dataflow_gpu.yaml --features gs://b/features \\
        --listens gs://b/train_triplets.txt --output my-project:music.recommendations

Besides the rows, a run writes to --report_dir (default ``<output>/_reports/run_date=D/model=M/``):
``rejected/`` (JSON lines: every listen, side-file line or user not used, with the reason) and
``run_summary.json`` (counts that reconcile, k, model, timings).
"""
from pipelines import cli

if __name__ == "__main__":  # before anything imports TensorFlow
    cli.quiet_native_logs()

import argparse
import datetime
import json
import logging
import time
from typing import Optional, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions

from msd import listening
from pipelines import config as config_lib
from pipelines import launcher
from recommend import catalogue as catalogue_lib
from recommend import models
from transforms import listens as listens_lib
from transforms import scoring
from transforms import write_recommendations as writers

SUMMARY_FILE = "run_summary.json"


class RecommendOptions(PipelineOptions):
    """Options of the recommendation job (Beam's own options pass through)."""

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--model_dir", default=None,
                            help="A trained model (python -m pipelines.train): its model.json "
                            "and arrays, local or gs://. Without it, --features gives the "
                            "content model.")
        config_lib.add_listening_arguments(parser)
        parser.add_argument("--output", help="PROJECT:DATASET.TABLE or bq://PROJECT.DATASET.TABLE "
                            "for BigQuery; otherwise a folder (local or gs://) for Parquet.")
        parser.add_argument("--users", default=None,
                            help="One user id per line (e.g. kaggle_users.txt): only these users.")
        parser.add_argument("--k", type=int, default=500, help="Recommendations per user.")
        parser.add_argument("--weighting", default="none", choices=["none", "log_count"],
                            help="Listen weights in the profile sum: none, or log(1+play_count).")
        parser.add_argument("--run_date", default=None,
                            help="The partition this run writes (default: today, UTC).")
        parser.add_argument("--fallback", default="popularity", choices=["popularity", "none"],
                            help="Users with no known song: most-listened songs (the row's "
                            "popularity_filled = k), or none (dead-letter).")
        parser.add_argument("--accelerator", default=None,
                            help="A Dataflow accelerator for the scoring step only, e.g. "
                            "type:nvidia-l4;count:1;install-nvidia-driver.")
        parser.add_argument("--batch_size", type=int, default=256,
                            help="Users scored together (one matrix product per batch).")
        parser.add_argument("--report_dir", default=None,
                            help="Where the dead letters and run summary go (default: "
                            "<output>/_reports/run_date=D/model=M for Parquet; required for "
                            "BigQuery "
                            "unless --temp_location is set).")
        parser.add_argument("--kaggle_submission", default=None,
                            help="Also write the MSD Challenge submission file here (needs "
                            "--kaggle_songs and --users).")
        parser.add_argument("--kaggle_songs", default=None,
                            help="kaggle_songs.txt: song id → 1-based index, for the submission.")

    def validate_recommend_options(self) -> list[str]:
        problems = []
        for name in ("listens", "output"):
            if not getattr(self, name):
                problems.append(f"--{name} is required")
        if not (self.features or self.model_dir):
            problems.append("--model_dir (a trained model) or --features (the content model) "
                            "is required")
        if self.model:
            try:
                models.base.check_model_name(self.model)
            except models.ModelError as error:
                problems.append(f"--model: {error}")
        if self.run_date:
            try:
                datetime.date.fromisoformat(self.run_date)
            except ValueError:
                problems.append(f"--run_date {self.run_date!r} is not a date YYYY-MM-DD")
        if self.k < 1:
            problems.append(f"--k must be at least 1, got {self.k}")
        if self.batch_size < 1:
            problems.append("--batch_size must be at least 1")
        if self.max_play_count < 1:
            problems.append(f"--max_play_count must be at least 1, got {self.max_play_count}")
        if self.view_as(config_lib.OutputOptions).num_shards < 0:
            problems.append("--num_shards must be 0 (the runner decides) or more")
        if self.kaggle_submission and not (self.kaggle_songs and self.users):
            problems.append("--kaggle_submission needs --kaggle_songs and --users")
        if self.output and writers.looks_like_bigquery(self.output):
            try:
                writers.parse_bigquery_table(self.output)
            except ValueError as error:
                problems.append(str(error))
        return problems


def model_source(options: "RecommendOptions") -> models.ModelSource:
    return models.ModelSource(options.model_dir, options.features, options.song_to_tracks,
                              options.mismatches, options.weighting, options.batch_size)


SIDE_FILE_COUNTER = "side_file_rejected"


def side_file_flags(options: "RecommendOptions") -> dict[str, str]:
    """Side file path → its flag, to count each dead letter under its source."""
    return {getattr(options, flag): flag for flag in ("song_to_tracks", "mismatches", "users")
            if getattr(options, flag)}


def count_side_file_rejection(rejection: listening.Rejection, flags: dict[str, str]
                              ) -> listening.Rejection:
    """Counts a side file's dead letter as ``side_file_rejected.<flag>.<reason>`` (so the run
    summary reconciles with ``rejected/``) and passes it on."""
    flag = flags.get(rejection.source, "other")
    listens_lib.counter(f"{SIDE_FILE_COUNTER}.{flag}.{rejection.reason}").inc()
    return rejection


def catalogue_index(source: models.ModelSource) -> tuple[list, frozenset, list]:
    """Built on one worker: (the catalogue's songs, sorted; songs lost to mismatches; the side
    files' rejections)."""
    catalogue, rejections = source.catalogue()
    return catalogue.song_ids.tolist(), catalogue.mismatched, rejections


def _requested_users(path: str) -> tuple[list[str], list[listening.Rejection]]:
    parsed = listening.read_kaggle_users(path)
    return parsed.data, parsed.rejections


def keep_requested(user_and_groups, fallback_counter=None):
    """CoGroupByKey(histories, requested) → the requested users' histories (empty if none)."""
    user_id, groups = user_and_groups
    histories, requested = list(groups["histories"]), list(groups["requested"])
    if not requested:
        beam.metrics.Metrics.counter(listens_lib.METRICS_NAMESPACE, "users_not_requested").inc()
        return
    if histories:
        yield histories[0]
    else:
        beam.metrics.Metrics.counter(listens_lib.METRICS_NAMESPACE,
                                     "requested_users_without_listens").inc()
        yield listens_lib.UserHistory(user_id, (), (), 0)


def submission_lines(rows_by_user: dict[str, list[str]], users: Sequence[str],
                     index_of_song: dict[str, int]) -> tuple[list[str], int, int]:
    """MSD Challenge submission: one line per user in ``users`` order, 1-based song indices.

    Returns the lines, the users without recommendations (empty line) and the recommended songs
    missing from kaggle_songs (left out of their line).
    """
    lines, users_missing, songs_missing = [], 0, 0
    for user_id in users:
        song_ids = rows_by_user.get(user_id)
        if song_ids is None:
            users_missing += 1
            lines.append("")
            continue
        indices = [index_of_song.get(song_id) for song_id in song_ids]
        songs_missing += sum(index is None for index in indices)
        lines.append(" ".join(str(index) for index in indices if index is not None))
    return lines, users_missing, songs_missing


def write_submission(rows_by_user: dict, users_path: str, kaggle_songs_path: str,
                     output_path: str) -> dict:
    users = listening.read_kaggle_users(users_path).data
    index_of_song = listening.read_kaggle_songs(kaggle_songs_path).data
    lines, users_missing, songs_missing = submission_lines(rows_by_user, users, index_of_song)
    with FileSystems.create(output_path) as handle:
        handle.write(("\n".join(lines) + "\n").encode("utf-8"))
    return {"users": len(users), "users_without_recommendations": users_missing,
            "songs_not_in_kaggle_songs": songs_missing}


def build_pipeline(pipeline: beam.Pipeline, options: RecommendOptions,
                   rows_destination: beam.PTransform, report_dir: str, model: str,
                   source: models.ModelSource) -> None:
    """Adds the whole recommendation job to ``pipeline``."""
    context = scoring.RunContext(model=model, k=options.k)
    index = (pipeline
             | "ModelSource" >> beam.Create([source])
             | "CatalogueIndex" >> beam.Map(catalogue_index))
    catalogue_songs = index | "CatalogueSongs" >> beam.Map(lambda i: frozenset(i[0]))
    mismatched = index | "Mismatched" >> beam.Map(lambda i: i[1])
    flags = side_file_flags(options)
    side_file_rejections = (index | "SideFileRejections" >> beam.FlatMap(lambda i: i[2])
                            | "CountSideFileRejections" >> beam.Map(count_side_file_rejection,
                                                                    flags))

    parsed = pipeline | "ReadListens" >> listens_lib.ReadListens(options.listens,
                                                                 options.max_play_count)
    histories, unresolved = parsed[listens_lib.LISTENS] | "Histories" >> listens_lib.GroupHistories(
        catalogue_songs, mismatched)
    rejections = [parsed[listens_lib.REJECTED], unresolved, side_file_rejections]

    all_histories = histories
    if options.users:
        requested = (pipeline | "UsersFile" >> beam.Create([options.users])
                     | "ReadUsers" >> beam.Map(_requested_users))
        rejections.append(requested | "UsersRejections" >> beam.FlatMap(lambda r: r[1])
                          | "CountUsersRejections" >> beam.Map(count_side_file_rejection, flags))
        requested_keys = requested | "UserKeys" >> beam.FlatMap(lambda r: [(u, True) for u in r[0]])
        histories = (
            {"histories": histories | "KeyHistory" >> beam.Map(lambda h: (h.user_id, h)),
             "requested": requested_keys}
            | "JoinRequested" >> beam.CoGroupByKey()
            | "KeepRequested" >> beam.FlatMap(keep_requested))

    known, without = histories | "HasKnownSong" >> beam.Partition(
        lambda history, _: 0 if history.size else 1, 2)
    handler = scoring.RecommenderModelHandler(source, context, options.batch_size,
                                              require_gpu=bool(options.accelerator))
    scored = known | "Score" >> scoring.ScoreUsers(handler, options.accelerator)

    popularity = (all_histories
                  | "Listeners" >> beam.CombineGlobally(scoring.ListenerCountsFn())
                  | "Popularity" >> beam.Map(lambda counts, index: scoring.popularity_over(
                      index[0], counts), beam.pvalue.AsSingleton(index)))
    fallback = without | "Fallback" >> beam.ParDo(
        scoring.PopularityFallbackFn(context, options.fallback == "popularity"),
        beam.pvalue.AsSingleton(popularity)).with_outputs(scoring.REJECTED, main="rows")

    rows = (scored[scoring.SCORED], fallback["rows"]) | "AllRows" >> beam.Flatten()
    rejections += [scored[scoring.REJECTED], fallback[scoring.REJECTED]]
    _ = rows | "WriteRows" >> rows_destination
    _ = (rejections
         | "AllRejections" >> beam.Flatten()
         | "RejectionJson" >> beam.Map(
             lambda r: json.dumps(r.to_json_dict(), ensure_ascii=False, sort_keys=True))
         | "WriteRejected" >> beam.io.WriteToText(FileSystems.join(report_dir, "rejected", "part"),
                                                  file_name_suffix=".jsonl"))
    if options.kaggle_submission:
        _ = (rows
             | "SubmissionSongs" >> beam.ParDo(writers.SongIdsOfUserFn(source))
             | "AllUsers" >> beam.combiners.ToDict()
             | "WriteSubmission" >> beam.Map(write_submission, options.users, options.kaggle_songs,
                                             options.kaggle_submission))


def parquet_row_count(folder: str) -> int:
    """Rows in every Parquet file of ``folder``, from the footers (nothing else is read)."""
    import pyarrow.parquet as pq

    paths = [m.path for m in FileSystems.match([FileSystems.join(folder, "*.parquet")])[0].metadata_list]
    total = 0
    for path in paths:
        with FileSystems.open(path) as handle:
            total += pq.ParquetFile(handle).metadata.num_rows
    return total


def publish_parquet_partition(staging: str, output: str, report_dir: str,
                              run_date: datetime.date, model: str, run_id: str,
                              rows: Optional[int] = None) -> str:
    """Publishes a finished run: its ``rows`` become the current version of
    ``run_date=…/model=…`` and its ``report`` replaces ``report_dir``, all or nothing
    (``launcher.publish_version``: the rows move in under new names, the report replaces the
    previous one, then the partition's ``_SUCCESS.json`` switches to the new files in one
    write, on local disks and GCS alike; a failure before that write puts the previous report
    back and removes the new files). An earlier run of the same (run_date, model) is replaced,
    nothing else is touched. Removing the staging folder comes after the switch: a failure
    there is logged, and the next run removes what is left."""
    final = writers.partition_dir(output, run_date, model)
    report = FileSystems.join(staging, "report")
    launcher.publish_version(
        FileSystems.join(staging, "rows"), final, run_id,
        {"rows": rows, "run_date": run_date.isoformat(), "model": model},
        with_folders=[(report, report_dir)] if launcher.child_names(report) else [])
    launcher.after_commit(f"deleting {staging}", lambda: launcher.delete_tree(staging))
    launcher.after_commit("removing the empty staging folder",
                          lambda: launcher.remove_if_empty(staging.rstrip("/").rsplit("/", 1)[0]))
    return final


def publish_bigquery_run(table: writers.BigQueryTable, staging: writers.BigQueryTable,
                         run_date: datetime.date, model: str, expected_rows: int,
                         client=None) -> None:
    """Runs ``writers.bigquery_publish_script``: one transaction replaces the (run_date, model)
    rows with the staged ones, unless the staged count differs from the job's counters."""
    from google.api_core import exceptions as api_exceptions
    from google.cloud import bigquery

    client = client or bigquery.Client(project=table.project)
    config = bigquery.QueryJobConfig(query_parameters=[
        bigquery.ScalarQueryParameter("run_date", "DATE", run_date),
        bigquery.ScalarQueryParameter("model", "STRING", model),
        bigquery.ScalarQueryParameter("expected_rows", "INT64", expected_rows)])
    try:
        client.query(writers.bigquery_publish_script(table, staging), job_config=config).result()
    except api_exceptions.GoogleAPIError as error:
        raise SystemExit(f"recommend: publishing {staging.spec()} into {table.spec()} failed, "
                         f"nothing was published: {getattr(error, 'message', error)}")


def run_summary(counters: dict[str, int], options: RecommendOptions, run_date: datetime.date,
                model: str, output_location: str, seconds: float) -> dict:
    """Counts that reconcile (listens and users), the run's parameters and its duration."""
    get = lambda name: counters.get(name, 0)
    users_rejected = listens_lib.counters_by_prefix(counters, "users_rejected_")
    side_files: dict[str, dict[str, int]] = {}
    for name, value in listens_lib.counters_by_prefix(counters, SIDE_FILE_COUNTER + ".").items():
        flag, reason = name.split(".", 1)
        side_files.setdefault(flag, {})[reason] = value
    return {
        "job": "recommend",
        "run_date": run_date.isoformat(),
        "model": model,
        "model_dir": options.model_dir,
        "k": options.k,
        "weighting": options.weighting,
        "output": output_location,
        "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "duration_seconds": round(seconds, 3),
        **listens_lib.listens_summary(counters),
        "users_scored": get("users_scored"),
        "users_fallback": get("users_fallback"),
        "users_rejected": sum(users_rejected.values()),
        "users_rejected_by_reason": users_rejected,
        "users_written": get("users_scored") + get("users_fallback"),
        "users_not_requested": get("users_not_requested"),
        "requested_users_without_listens": get("requested_users_without_listens"),
        # Dead letters of --song_to_tracks, --mismatches and --users, by file and reason.
        "side_files_rejected_by_source": side_files,
        "side_files_rejected": sum(n for reasons in side_files.values() for n in reasons.values()),
    }


def run(argv: Optional[Sequence[str]] = None) -> Optional[dict]:
    """Runs the recommendation job; returns the run summary (None for a Dataflow dry run or a
    template launch, where the job runs elsewhere)."""
    options, recommend_options = launcher.parse_job_options(
        "recommend", argv, RecommendOptions, RecommendOptions.validate_recommend_options)
    run_date = (datetime.date.fromisoformat(recommend_options.run_date)
                if recommend_options.run_date
                else datetime.datetime.now(datetime.timezone.utc).date())
    staging_only = config_lib.is_staging_only(options)
    temp_location = options.view_as(GoogleCloudOptions).temp_location
    output = recommend_options.output

    source = model_source(recommend_options)
    try:
        if not staging_only:
            # Every step of the run reads the model.json of now: a model republished during
            # the run cannot be mixed into it (a template launch reads it when the job starts).
            source = source.pinned()
        model = recommend_options.model or ("timbre_cosine" if not source.model_dir
                                            else source.kind)
    except models.ModelError as error:
        raise SystemExit(f"recommend: --model_dir: {error}")
    partition = f"run_date={run_date.isoformat()}/model={model}"
    staging_table = None
    run_id = writers.new_run_id()
    bigquery = writers.looks_like_bigquery(output)
    if bigquery:
        table = writers.parse_bigquery_table(output)
        staging_table = table.staging(run_date, model)
        destination = writers.WriteRecommendationsToBigQuery(
            staging_table, run_date, source, temp_location)
        if not temp_location:
            raise SystemExit("recommend: a BigQuery --output needs --temp_location (gs://…): "
                             "BigQuery loads the rows from files there")
        report_dir = recommend_options.report_dir or FileSystems.join(
            temp_location, "recommend_reports", partition)
        # The report is staged under --temp_location, and moved to --report_dir once the rows
        # are published (a template launch writes it in place: nothing here waits for the job).
        staging = FileSystems.join(temp_location, "recommend_staging",
                                   f"run_date={run_date.isoformat()}-{model}-{run_id}")
        output_location = f"{table.spec()} (run_date={run_date.isoformat()}, model={model})"
    else:
        if options.view_as(GoogleCloudOptions).template_location:
            raise SystemExit("recommend: a template launch writes to BigQuery only: the Parquet "
                             "partition is published by this launcher after the job, which a "
                             "template launch does not wait for")
        # Rows and reports are written to a staging folder and moved into place together once
        # the job succeeded: a killed run leaves the previous partition and its reports intact.
        staging = writers.staging_dir(output, run_date, model, run_id)
        destination = writers.WriteRecommendationsToParquet(
            FileSystems.join(staging, "rows"), source,
            options.view_as(config_lib.OutputOptions).num_shards)
        report_dir = recommend_options.report_dir or FileSystems.join(
            output.rstrip("/"), "_reports", partition)
        output_location = writers.partition_dir(output, run_date, model)

    # One run per (output, run_date, model) at a time: a second would delete the first's live
    # staging below and publish over it.
    lock = (launcher.RunLock(FileSystems.join(output.rstrip("/"), writers.STAGING,
                                              f"run_date={run_date.isoformat()}-{model}.lock"),
                             "recommend", options)
            if not staging_only and not bigquery else None)
    if not staging_only:
        _check_inputs_exist(recommend_options)
        _check_outputs(recommend_options, report_dir)
    if lock:
        lock.acquire()
    try:
        if lock:  # what a killed run of this (run_date, model) left in staging
            launcher.delete_matching(FileSystems.join(
                output.rstrip("/"), writers.STAGING, f"run_date={run_date.isoformat()}-{model}-*"))

        started = time.monotonic()
        pipeline = beam.Pipeline(options=options)
        staged_report = FileSystems.join(staging, "report")
        build_pipeline(pipeline, recommend_options, destination,
                       report_dir if staging_only else staged_report, model, source)
        result = pipeline.run()
        if staging_only:
            logging.info("recommend: the job was built (dry run) or staged (template launch)")
            return None
        result.wait_until_finish()
        summary = run_summary(launcher.counter_totals(result, listens_lib.METRICS_NAMESPACE),
                              recommend_options, run_date, model, output_location,
                              time.monotonic() - started)
        # Everything the run writes is complete in staging before anything becomes visible: a
        # failure up to here (a short count, a full disk writing the summary) publishes nothing.
        if not bigquery:
            staged_rows = parquet_row_count(FileSystems.join(staging, "rows"))
            if staged_rows != summary["users_written"]:
                raise SystemExit(
                    f"recommend: the job counted {summary['users_written']} users written but the "
                    f"staged Parquet holds {staged_rows} rows; nothing was published (staging left "
                    f"in {staging} for inspection)")
        launcher.write_summary(summary, staged_report, SUMMARY_FILE)
        if bigquery:
            publish_bigquery_run(table, staging_table, run_date, model, summary["users_written"])
            launcher.replace_folder(staged_report, report_dir)
            launcher.after_commit(f"deleting {staging}", lambda: launcher.delete_tree(staging))
        else:
            publish_parquet_partition(staging, output, report_dir, run_date, model, run_id,
                                      summary["users_written"])
        summary["report_dir"] = report_dir
        return summary
    finally:
        if lock:  # never raises: a failure here must not hide the run's own outcome
            lock.release()
            try:
                launcher.remove_if_empty(FileSystems.join(output.rstrip("/"), writers.STAGING))
                launcher.remove_if_empty(output.rstrip("/"))
            except OSError as error:
                logging.warning("recommend: could not remove an empty staging folder: %s", error)


def _inputs(options: RecommendOptions) -> list[tuple[str, str]]:
    """(flag, path) of every input the job reads."""
    found = []
    for flag in ("model_dir", "features", "listens", "song_to_tracks", "mismatches", "users",
                 "kaggle_songs"):
        values = getattr(options, flag)
        for value in [values] if isinstance(values, str) else values or []:
            found.append((flag, value))
    return found


def _check_outputs(options: RecommendOptions, report_dir: str) -> None:
    """Where the run writes is its own: the output is not inside an input; the report folder,
    replaced by each run, is the product's own (absent, or a recommend report) and does not
    hold or sit inside an input, or the rows' output."""
    output = options.output
    for flag, path in _inputs(options):
        if not writers.looks_like_bigquery(output) and launcher.is_inside(output, path):
            raise SystemExit(f"recommend: --output {output} is inside --{flag} {path}: the job "
                             "writes partitions and staging there; choose a folder of its own")
        if launcher.paths_overlap(report_dir, path):
            raise SystemExit(f"recommend: --report_dir {report_dir} overlaps --{flag} {path}: "
                             "the report folder is replaced by every run; choose another")
    if not writers.looks_like_bigquery(output) and launcher.paths_overlap(report_dir, output) \
            and not launcher.is_inside(report_dir, FileSystems.join(output.rstrip("/"), "_reports")):
        raise SystemExit(f"recommend: --report_dir {report_dir} overlaps --output {output}: "
                         f"use a folder outside it, or under {output.rstrip('/')}/_reports/")
    foreign = launcher.foreign_entries(report_dir, ("run_summary.json", "rejected"), "recommend")
    if foreign:
        raise SystemExit(f"recommend: --report_dir {report_dir} holds files this product did not "
                         f"write ({', '.join(foreign[:3])}{', …' if len(foreign) > 3 else ''}); "
                         "each run replaces that folder: choose a new or empty one")


def _check_inputs_exist(options: RecommendOptions) -> None:
    """Fails before the job starts when an input matches nothing, naming it."""
    if options.features:
        try:
            catalogue_lib.feature_files(options.features)
        except catalogue_lib.CatalogueError as error:
            raise SystemExit(f"recommend: --features: {error}")
    for flag in ("listens", "song_to_tracks", "mismatches", "users", "kaggle_songs"):
        values = getattr(options, flag)
        values = [values] if isinstance(values, str) else values or []
        problems = launcher.unreadable_inputs(values)
        if problems:
            raise SystemExit(f"recommend: --{flag}: {'; '.join(problems)}")
        empty = launcher.patterns_matching_nothing(values)
        if empty:
            raise SystemExit(f"recommend: --{flag}: no file matches {', '.join(empty)}")


def main() -> None:
    cli.configure_logging()
    summary = run()
    if summary:
        print(f"recommend: {summary['users_written']} users written ({summary['users_scored']} "
              f"scored, {summary['users_fallback']} by popularity), {summary['users_rejected']} "
              f"users and {summary['listens_rejected'] + summary['listens_unknown_song'] + summary['listens_mismatched']} "
              f"listens rejected, in {summary['duration_seconds']:.1f} s → {summary['output']}; "
              f"report: {summary['report_dir']}")


if __name__ == "__main__":
    cli.run_main("recommend", main)
