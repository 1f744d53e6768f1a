"""``python -m pipelines.features``: MSD HDF5 files → 90 timbre statistics per song →
tensorflow-transform normalisation → sharded TFRecord and CSV feature files.

    python -m pipelines.features --input data/ --output_dir out/features
    python -m pipelines.features --config configs/dataflow_cpu.yaml \\
        --input 'gs://bucket/msd/data/**.h5' --output_dir gs://bucket/features

Outputs in --output_dir: features/ (GZIP TFRecord of tf.train.Example), csv/ (header
track_id,song_id,f00..f89), songs/ (Parquet metadata for joins), rejected/ (JSON lines, one per
file or song not used, with the reason), transform_fn/ and transformed_metadata/ (TFT),
run_summary.json (counts that reconcile, options, duration).
"""
from pipelines import cli

if __name__ == "__main__":  # before anything imports TensorFlow
    cli.quiet_native_logs()

import argparse
import datetime
import logging
import os
import shutil
import tempfile
import time
import uuid
from typing import Optional, Sequence

import apache_beam as beam
import tensorflow_transform.beam as tft_beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import (GoogleCloudOptions, PipelineOptions,
                                                  StandardOptions, TestOptions)

from msd import hdf5_reader
from pipelines import config as config_lib
from pipelines import launcher
from transforms import preprocessing, read_msd, write_features

OUTPUT_SUBDIRS = ("features", "csv", "songs", "rejected", "transform_fn", "transformed_metadata")
SUMMARY_FILE = "run_summary.json"


class FeaturesOptions(PipelineOptions):
    """Options of the feature pipeline (Beam's own options pass through)."""

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--input", action="append", default=None,
            help="MSD HDF5 files: a file pattern or a folder (every *.h5 below it), local or "
                 "gs://. Repeat the flag for several.")
        config_lib.add_output_dir_argument(parser)
        parser.add_argument(
            "--normalization", default="l2", choices=sorted(preprocessing.PREPROCESSING_FNS),
            help="l2: scale each song's 90 statistics to unit length (cosine = dot product). "
                 "zscore_l2: standardise each dimension over the catalogue first, then l2.")
        parser.add_argument(
            "--min_segments", type=int, default=hdf5_reader.DEFAULT_MIN_SEGMENTS,
            help="Reject songs with fewer timbre segments (YearPredictionMSD used 10).")
        parser.add_argument(
            "--max_segments", type=int, default=hdf5_reader.DEFAULT_MAX_SEGMENTS,
            help="Reject files declaring more segments per song (real songs have ≤ ~3,300).")
        parser.add_argument(
            "--max_file_bytes", type=int, default=read_msd.DEFAULT_MAX_FILE_BYTES,
            help="Reject files larger than this without reading them (real files are < 1 MB; "
                 "raise it for aggregate files).")
        config_lib.add_overwrite_argument(parser)

    def validate_features_options(self) -> list[str]:
        """Problems with the options, as sentences; empty when they are usable."""
        problems = []
        if not self.input:
            problems.append("--input is required (a file pattern or folder of MSD .h5 files)")
        if not self.output_dir:
            problems.append("--output_dir is required")
        if self.min_segments < 2:
            problems.append(f"--min_segments must be at least 2 (a covariance needs two "
                            f"segments), got {self.min_segments}")
        if self.max_segments < self.min_segments:
            problems.append("--max_segments must be at least --min_segments")
        if self.max_file_bytes < 1:
            problems.append("--max_file_bytes must be positive")
        if self.view_as(config_lib.OutputOptions).num_shards < 0:
            problems.append("--num_shards must be 0 or more")
        return problems


def read_unique_songs(pipeline: beam.Pipeline, options: FeaturesOptions, patterns: Sequence[str],
                      output_dir: str) -> beam.PCollection:
    """Matched files → parsed songs, one per track id; every file or song not used goes to the
    dead-letter output under ``output_dir``."""
    parsed = pipeline | "ReadMsd" >> read_msd.ReadMsdSongs(
        patterns, options.min_segments, options.max_segments, options.max_file_bytes)
    unique = parsed[read_msd.SONGS] | "DropDuplicates" >> read_msd.DropDuplicateTracks()
    _ = ((parsed[read_msd.REJECTED], unique[read_msd.REJECTED])
         | "AllRejections" >> beam.Flatten()
         | "DeadLetter" >> write_features.WriteRejections(output_dir))
    return unique[read_msd.SONGS]


def normalise(songs: beam.PCollection, normalization: str, temp_dir: str, output_dir: str):
    """Songs → (transformed RecordBatches, their schema); the TFT graph goes to ``output_dir``
    (written by TensorFlow's own file system client, like everything under ``temp_dir``)."""
    record_batches = (
        songs
        | "Batch" >> beam.BatchElements(min_batch_size=64, max_batch_size=2048)
        | "ToRecordBatch" >> beam.Map(preprocessing.songs_to_record_batch))
    with tft_beam.Context(temp_dir=temp_dir):
        (transformed, transformed_metadata), transform_fn = (
            (record_batches, preprocessing.tensor_adapter_config())
            | "Normalise" >> tft_beam.AnalyzeAndTransformDataset(
                preprocessing.PREPROCESSING_FNS[normalization], output_record_batches=True))
        _ = transform_fn | "WriteTransformFn" >> tft_beam.WriteTransformFn(output_dir)
    batches = transformed | "DropPassthrough" >> beam.Map(lambda batch_and_extra: batch_and_extra[0])
    return batches, transformed_metadata.dataset_metadata.schema


def build_pipeline(pipeline: beam.Pipeline, options: FeaturesOptions, patterns: Sequence[str],
                   temp_dir: str, output_dir: str, tft_output_dir: Optional[str] = None) -> None:
    """Adds the whole feature job to ``pipeline``, writing its outputs under ``output_dir``
    (TFT's ``transform_fn/`` and ``transformed_metadata/`` under ``tft_output_dir`` when given:
    a local folder the caller copies them from)."""
    songs = read_unique_songs(pipeline, options, patterns, output_dir)
    batches, schema = normalise(songs, options.normalization, temp_dir,
                                tft_output_dir or output_dir)
    _ = batches | "Write" >> write_features.WriteFeatures(
        output_dir, schema, options.view_as(config_lib.OutputOptions).num_shards)


def run_summary(counters: dict[str, int], options: FeaturesOptions, patterns: Sequence[str],
                seconds: float, symlinks: Optional[dict] = None) -> dict:
    """The run summary: counts that reconcile, the options used and the duration (and the
    symlinked folders under a local input that were followed or skipped, with why)."""
    get = lambda name: counters.get(name, 0)
    by_prefix = lambda prefix: {name[len(prefix):]: value for name, value
                                in sorted(counters.items()) if name.startswith(prefix)}
    rejected = by_prefix("rejected_")
    return {
        "job": "features",
        "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "duration_seconds": round(seconds, 3),
        "input_patterns": list(patterns),
        "symlinked_folders": symlinks or {"followed": [], "skipped": []},
        "files_matched": get("files_matched"),
        "files_parsed": get("files_parsed"),
        "files_rejected": get("files_rejected"),
        "bytes_read": get("bytes_read"),
        "songs_seen": get("songs_seen"),
        "songs_written": get("songs_written"),
        "songs_rejected": get("songs_rejected"),
        "rejected_by_reason": rejected,
        # Songs written with a missing or nonsensical analysis field stored as unknown, by field
        # (preprocessing.songs_to_record_batch: song_field_replaced_<field>).
        "song_fields_replaced": by_prefix("song_field_replaced_"),
        "files_reconcile": get("files_matched") == get("files_parsed") + get("files_rejected"),
        "songs_reconcile": get("songs_seen") == get("songs_written") + get("songs_rejected"),
        "options": {name: value for name, value in options.get_all_options(drop_default=True).items()},
    }


STAGING = "_staging"
TFT_ARTEFACTS = ("transform_fn", "transformed_metadata")
# Runners that execute the job in (or beside) this process, on this machine's file system.
LOCAL_RUNNERS = ("directrunner", "bundlebaseddirectrunner", "switchingdirectrunner",
                 "prismrunner")


def runs_on_this_machine(options: PipelineOptions) -> bool:
    """True for the direct and Prism runners (the default): the workers are this machine."""
    runner = options.view_as(StandardOptions).runner
    if runner is None:
        return True
    name = runner if isinstance(runner, str) else type(runner).__name__
    name = name.rsplit(".", 1)[-1].lower()
    return name in LOCAL_RUNNERS or f"{name}runner" in LOCAL_RUNNERS


# A run stages its outputs in _staging/features-<run id>/: recognisably the feature job's (the
# recommendation and training jobs stage in <output>/_staging/ too, under names of their own).
STAGED_RUN_PREFIX = "features-"
STAGED_RUN_PATTERN = r"features-[0-9a-f]{12}"


def own_patterns() -> tuple[str, ...]:
    """What a feature run leaves in its output folder before it publishes, its own whatever the
    folder holds (``launcher.foreign_entries``): its lock, its staging folder, and the temporary
    file of the atomic summary write (left only by a run killed during it)."""
    import re

    return (re.escape(LOCK_FILE), rf"\.{re.escape(SUMMARY_FILE)}\.\d+\.tmp",
            f"{STAGING}/{STAGED_RUN_PATTERN}")


def _check_output_dir(output_dir: str, overwrite: bool) -> None:
    """The output folder must be the feature job's own: absent, empty, or holding only what
    this job writes: a finished run's outputs (replaced only with --overwrite), its lock, and
    the staging folders ``_staging/features-<run id>/`` of runs that did not publish. Anything
    else (the user's files, another job's: a recommendation output's ``run_date=…/``, another
    job's ``_staging/…`` entries and locks) is refused naming it, and nothing is deleted.
    Then clears what killed feature runs left (never visible to readers): only entries of the
    feature job's own shape, none of which is live (the feature lock, held by this run, keeps
    every other feature run off this folder)."""
    import re

    output_dir = output_dir.rstrip("/")
    foreign = launcher.foreign_entries(output_dir, OUTPUT_SUBDIRS + (SUMMARY_FILE,), "features",
                                       own_patterns())
    if foreign == [output_dir]:
        raise SystemExit(f"features: --output_dir {output_dir} is a file, not a folder")
    if foreign:
        shown = ", ".join(foreign[:8]) + (f", … ({len(foreign) - 8} more)" if len(foreign) > 8
                                          else "")
        raise SystemExit(
            f"features: --output_dir {output_dir} holds files this job did not write ({shown}); "
            "it replaces its outputs and clears its staging there, so it does not run in a "
            "folder holding anything else: choose a new or empty folder (a feature output "
            "without its run_summary.json is a run killed while publishing: delete it)")
    existing = [name for name in OUTPUT_SUBDIRS + (SUMMARY_FILE,)
                if launcher.path_exists(FileSystems.join(output_dir, name))]
    if existing and not overwrite:
        raise SystemExit(
            f"features: {output_dir} already holds outputs of an earlier run "
            f"({', '.join(existing)}); pass --overwrite to replace them")
    staging_root = FileSystems.join(output_dir, STAGING)
    for name in launcher.child_names(staging_root):
        if re.fullmatch(STAGED_RUN_PATTERN, name):
            launcher.delete_matching(FileSystems.join(staging_root, name))
    temporary = re.compile(own_patterns()[1])
    for name in launcher.child_names(output_dir):
        if temporary.fullmatch(name):
            launcher.delete_matching(FileSystems.join(output_dir, name))


def publish_outputs(staging: str, output_dir: str, summary: dict) -> None:
    """Publishes a finished run's outputs from ``staging`` into ``output_dir``, replacing an
    earlier run's: all or nothing (``launcher.replace_folders``).

    The summary is staged first; then every staged folder replaces its previous version (each
    previous one moved aside into the staging), the previous run's folders that this run did
    not write are moved aside too, and ``run_summary.json`` is written over the previous one in
    one atomic write: the commit point. A failure before or at it puts every folder back, so
    the previous output stays whole (its summary never left); what was moved aside and the
    staging are deleted only after it. Once the published summary is this run's, nothing is
    put back: an error reported by its write is logged, and a Ctrl-C or SIGTERM arriving then
    stops the run after the clean-up, the new output published whole.

    What a concurrent reader can see: locally each folder swap is one rename, so a reader sees
    each folder whole (or, for an instant, absent: "no feature files match"), but between
    swaps it may see new folders beside old ones under the previous run_summary.json. The
    ``features/`` folder, the only one the catalogue reads, moves last, just before the commit:
    the catalogue always reads one run's whole ``features/``; read in the window between that
    move and the commit, its rows meet the previous summary, and ``catalogue.check_rows``
    refuses them when their count is not the summary's (rerun the reader: it then sees the new
    output whole). On GCS a folder moves object by object: a reader racing the publish can see
    part of ``features/``, and the same row-count check refuses it (unless the part happens
    to hold as many rows as the summary it meets says)."""
    launcher.write_summary(summary, staging, SUMMARY_FILE)
    with FileSystems.open(FileSystems.join(staging, SUMMARY_FILE)) as handle:
        summary_bytes = handle.read()
    # features/ last: the window in which the catalogue's folder is newer than the summary is
    # the time of one commit write.
    names = sorted(OUTPUT_SUBDIRS, key=lambda name: name == "features")
    staged = [name for name in names if launcher.path_exists(FileSystems.join(staging, name))]
    published_summary = FileSystems.join(output_dir, SUMMARY_FILE)

    def committed() -> bool:
        """The published run_summary.json is the one this run wrote (the commit took effect,
        also when its write reported an error or an interrupt came just after it)."""
        try:
            with FileSystems.open(published_summary) as handle:
                return handle.read() == summary_bytes
        except Exception:  # noqa: BLE001 - missing or unreadable: not this run's
            return False

    def clean_up() -> None:
        launcher.after_commit(f"deleting {staging}", lambda: launcher.delete_tree(staging))
        launcher.after_commit("removing the empty staging folder",
                              lambda: launcher.remove_if_empty(FileSystems.join(output_dir,
                                                                                STAGING)))

    try:
        launcher.replace_folders(
            [(FileSystems.join(staging, name), FileSystems.join(output_dir, name))
             for name in staged],
            commit=lambda: launcher.write_atomically(published_summary, summary_bytes),
            retire=[(FileSystems.join(output_dir, name),
                     FileSystems.join(staging, f"{name}.replaced"))
                    for name in names if name not in staged],
            committed=committed)
    except BaseException:
        # Raised after the commit only for Ctrl-C / SIGTERM (replace_folders finished the
        # publication): the staging is removed as after a success, then the run stops.
        if committed():
            clean_up()
        raise
    clean_up()


def run(argv: Optional[Sequence[str]] = None) -> Optional[dict]:
    """Runs the feature pipeline; returns the run summary (None for a Dataflow dry run or a
    template launch, where the job runs elsewhere)."""
    options, features_options = launcher.parse_job_options(
        "features", argv, FeaturesOptions, FeaturesOptions.validate_features_options)
    patterns = [read_msd.expand_input(item) for item in features_options.input]
    staging_only = config_lib.is_staging_only(options)
    lock = symlinks = None
    if not staging_only:
        problems = launcher.unreadable_inputs(features_options.input, allow_folders=True)
        if problems:
            raise SystemExit(f"features: --input: {'; '.join(problems)}")
        empty = [pattern for pattern in launcher.patterns_matching_nothing(patterns)
                 if not _matches_through_symlinks(pattern)]
        if empty:
            raise SystemExit(f"features: no file matches {', '.join(empty)}")
        symlinks = report_symlinked_folders(patterns)
        # One run per output folder at a time: a second would delete the first's live staging.
        lock = launcher.RunLock(FileSystems.join(features_options.output_dir.rstrip("/"),
                                                 LOCK_FILE), "features").acquire()
    try:
        return _run(options, features_options, patterns, staging_only, symlinks)
    finally:
        if lock:
            lock.release()


LOCK_FILE = "_features.lock"


def _matches_through_symlinks(pattern: str) -> bool:
    """Whether a pattern Beam's listing finds nothing for matches files in symlinked folders."""
    if "://" in pattern:
        return False
    return next(read_msd.match_pattern(pattern), None) is not None


def report_symlinked_folders(patterns: Sequence[str]) -> dict:
    """The symlinked folders that matching the local ``patterns`` follows or skips (a loop, a
    folder read through another path, a link to nothing), each on the console; for the run
    summary (``symlinked_folders``)."""
    symlinks = read_msd.symlinked_folders(patterns)
    for item in symlinks["followed"]:
        logging.info("features: following the symlinked folder %s → %s (%d files)",
                     item["path"], item["target"], item["files"])
    for item in symlinks["skipped"]:
        logging.warning("features: not following %s → %s: %s", item["path"], item["target"],
                        item["reason"])
    return symlinks


def _run(options, features_options, patterns, staging_only, symlinks=None) -> Optional[dict]:
    if not staging_only:
        _check_output_dir(features_options.output_dir, features_options.overwrite)
    output_dir = features_options.output_dir.rstrip("/")
    # Outputs are written to a staging folder and moved into place once the job succeeded,
    # unless nothing here waits for the job (a template launch writes in place).
    staging = None if staging_only else FileSystems.join(
        output_dir, STAGING, STAGED_RUN_PREFIX + uuid.uuid4().hex[:12])
    temp_location = options.view_as(GoogleCloudOptions).temp_location
    temp_dir = FileSystems.join(temp_location or staging or output_dir, "tft_tmp")
    # TFT writes its temporary files and transform_fn through TensorFlow's own file system
    # client, not Beam's. On Dataflow that must be a shared location (gs://), as above. When the
    # job runs on this machine, TFT works in a local folder and its artefacts are copied to a
    # remote output through Beam's file systems after the run (TensorFlow's gs:// client
    # ignores STORAGE_EMULATOR_HOST and has other credentials than Beam's).
    local_tft = dry_run_temp = None
    if options.view_as(TestOptions).dry_run:
        # TFT creates its temp dir while the job is built; a dry run has no GCS to create it on.
        temp_dir = dry_run_temp = tempfile.mkdtemp(prefix="tft_dry_run_")
    elif (not staging_only and runs_on_this_machine(options)
          and ("://" in temp_dir or "://" in output_dir)):
        local_tft = tempfile.mkdtemp(prefix="tft_local_")
        temp_dir = os.path.join(local_tft, "tft_tmp")
    tft_output_dir = os.path.join(local_tft, "artefacts") if local_tft and "://" in output_dir \
        else None

    started = time.monotonic()
    try:
        pipeline = beam.Pipeline(options=options)
        build_pipeline(pipeline, features_options, patterns, temp_dir, staging or output_dir,
                       tft_output_dir)
        result = pipeline.run()
        if staging_only:
            logging.info("features: the job was built (dry run) or staged (template launch)")
            return None
        result.wait_until_finish()
        summary = run_summary(launcher.counter_totals(result, read_msd.METRICS_NAMESPACE),
                              features_options, patterns, time.monotonic() - started, symlinks)
        if tft_output_dir:
            for name in TFT_ARTEFACTS:
                launcher.copy_local_folder(os.path.join(tft_output_dir, name),
                                           FileSystems.join(staging, name))
    finally:
        for local in (local_tft, dry_run_temp):
            if local:
                shutil.rmtree(local, ignore_errors=True)
    if not temp_location and not local_tft and FileSystems.exists(temp_dir):
        FileSystems.delete([temp_dir])
    if features_options.normalization == "zscore_l2" and summary["songs_written"] < 2:
        raise SystemExit(
            f"features: --normalization zscore_l2 standardises every dimension over the "
            f"catalogue: over {summary['songs_written']} song(s) every vector is zero; use l2, or "
            f"more songs. Nothing was published (staging left in {staging})")
    publish_outputs(staging, output_dir, summary)
    return summary


def main() -> None:
    cli.configure_logging()
    summary = run()
    if summary:
        print(f"features: {summary['songs_written']} songs written, "
              f"{summary['songs_rejected']} songs and {summary['files_rejected']} files rejected "
              f"(of {summary['files_matched']} files) in {summary['duration_seconds']:.1f} s "
              f"→ {FileSystems.join(summary['options']['output_dir'], SUMMARY_FILE)}")


if __name__ == "__main__":
    cli.run_main("features", main)
