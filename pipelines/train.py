"""``python -m pipelines.train``: listening data → a trained recommendation model directory.

    python -m pipelines.train --model itemcf --listens train_triplets.txt --output_dir out/models/itemcf
    python -m pipelines.train --model als --factors 64 --listens train_triplets.txt --output_dir out/models/als
    python -m pipelines.train --model hybrid --features out/features --listens train_triplets.txt --output_dir out/models/hybrid
    python -m pipelines.train --config configs/dataflow_cpu.yaml --model itemcf \\
        --listens gs://b/train_triplets.txt --output_dir gs://b/models/itemcf/2026-11-30

Listens are read and parsed as by the recommendation job (the same dead letters and counters);
with ``--features`` only songs of the feature catalogue are used (joined through
``--song_to_tracks`` / ``--mismatches`` as there). The model is written to a staging folder
and moved into ``--output_dir`` only after the job succeeded, ``model.json`` last: a reader
sees the previous model, no model (a clear error), or the new one. ``--output_dir`` also gets
``run_summary.json`` and ``rejected/*.jsonl`` (every listen not in the model, with its reason).
"""
from pipelines import cli

if __name__ == "__main__":  # before anything imports TensorFlow
    cli.quiet_native_logs()

import argparse
import dataclasses
import datetime
import json
import logging
import time
import uuid
from typing import Optional, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from msd import listening
from pipelines import config as config_lib
from pipelines import launcher
from recommend import models
from recommend.models import als as als_lib
from recommend.models import base as model_base
from recommend.models import hybrid as hybrid_lib
from recommend.models import itemcf_similarity
from transforms import listens as listens_lib
from transforms import training

SUMMARY_FILE = "run_summary.json"
STAGING = "_staging"
TRAINABLE = ("itemcf", "als", "hybrid")
ALS_KINDS = ("als", "hybrid")  # the models fitted by ALS (with its options)


class TrainOptions(PipelineOptions):
    """Options of the training job (Beam's own options pass through)."""

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        config_lib.add_listening_arguments(parser)
        config_lib.add_output_dir_argument(parser)
        parser.add_argument("--min_listeners", type=int, default=1,
                            help="Songs with fewer listeners are left out of the model.")
        parser.add_argument("--alpha", type=float, default=itemcf_similarity.DEFAULT_ALPHA,
                            help="itemcf: asymmetric cosine exponent α in [0, 1].")
        parser.add_argument("--q", type=float, default=itemcf_similarity.DEFAULT_Q,
                            help="itemcf: locality exponent q > 0 (score = Σ sim^q).")
        parser.add_argument("--top_m", type=int, default=itemcf_similarity.DEFAULT_TOP_M,
                            help="itemcf: neighbours kept per song.")
        parser.add_argument("--pair_budget", type=int,
                            default=itemcf_similarity.DEFAULT_PAIR_BUDGET,
                            help="itemcf: co-occurrence pairs per work block (≈ 25 bytes each: "
                            "bounds a worker's memory).")
        parser.add_argument("--factors", type=int, default=als_lib.DEFAULT_FACTORS,
                            help="als: latent factors per user and song.")
        parser.add_argument("--regularization", type=float,
                            default=als_lib.DEFAULT_REGULARIZATION,
                            help="als: λ, the L2 penalty on every factor vector (not scaled "
                            "by the number of listens, as in implicit).")
        parser.add_argument("--als_alpha", type=float, default=als_lib.DEFAULT_ALPHA,
                            help="als: α of the confidence of a listen with play count r "
                            "(c = 1 + α·r, or 1 + α·log(1 + r) with --confidence log). Not "
                            "itemcf's --alpha.")
        parser.add_argument("--confidence", default=als_lib.DEFAULT_CONFIDENCE,
                            help=f"als: confidence of a listen, one of "
                            f"{', '.join(als_lib.CONFIDENCES)}.")
        parser.add_argument("--iterations", type=int, default=als_lib.DEFAULT_ITERATIONS,
                            help="als: alternating least squares sweeps.")
        parser.add_argument("--seed", type=int, default=0,
                            help="als: seed of the initial factors and the validation split "
                            "(the same data and seed give the same model).")
        parser.add_argument("--validation_fraction", type=float,
                            default=als_lib.DEFAULT_VALIDATION_FRACTION,
                            help=f"als: share of the users (at most "
                            f"{als_lib.MAX_VALIDATION_USERS}) half of whose songs are held out "
                            "of the fit to report a validation mAP@500 while training (at "
                            f"{als_lib.VALIDATION_POINTS} evenly spaced iterations); 0 fits "
                            "every listen.")
        parser.add_argument("--target_min_listeners", type=int,
                            default=hybrid_lib.DEFAULT_TARGET_MIN_LISTENERS,
                            help="hybrid: songs whose ALS factors the content network learns "
                            "from need at least this many listeners.")
        parser.add_argument("--hidden_units", type=int, default=hybrid_lib.DEFAULT_HIDDEN_UNITS,
                            help="hybrid: units of each of the content network's two hidden "
                            "layers.")
        parser.add_argument("--epochs", type=int, default=hybrid_lib.DEFAULT_EPOCHS,
                            help="hybrid: training epochs of the content network.")
        parser.add_argument("--holdout_songs", type=float, default=hybrid_lib.DEFAULT_HOLDOUT,
                            help="hybrid: share of the network's songs held out of its training "
                            "to report its validation loss and cosine (seeded by --seed).")
        parser.add_argument("--warm_map_loss", type=float,
                            default=hybrid_lib.DEFAULT_WARM_MAP_LOSS,
                            help="hybrid: songs without ALS factors get the predicted direction "
                            "times the median norm of the network's targets times the largest "
                            "scale that costs ALS's validation users (--validation_fraction) "
                            "at most this share of their mAP@500 on their held-out songs (with "
                            "the --cold_share floor, against the blend without cold songs), in "
                            "(0, 1) (lower: fewer new songs win places above the floor).")
        parser.add_argument("--cold_share", type=float, default=None,
                            help="hybrid: every list holds at least this share of the catalogue "
                            "(as a share of the songs the user has not heard) of songs without "
                            "ALS factors (new songs), the best of them by score, in [0, 1]; "
                            "default: those songs' share of the catalogue (the exposure a "
                            "content-only model gives them); 0: none reserved.")
        config_lib.add_overwrite_argument(parser)

    def validate_train_options(self) -> list[str]:
        problems = [f"--{name} is required" for name in ("listens", "output_dir")
                    if not getattr(self, name)]
        if (self.model or "itemcf") not in TRAINABLE:
            problems.append(f"--model {self.model!r}: this job trains {', '.join(TRAINABLE)}")
        if self.min_listeners < 1:
            problems.append(f"--min_listeners must be at least 1, got {self.min_listeners}")
        if not 0.0 <= self.alpha <= 1.0:
            problems.append(f"--alpha must be in [0, 1], got {self.alpha}")
        if not self.q > 0:
            problems.append(f"--q must be positive, got {self.q}")
        if self.top_m < 1:
            problems.append(f"--top_m must be at least 1, got {self.top_m}")
        if (self.model or "itemcf") == "hybrid":
            if not self.features:
                problems.append("--model hybrid needs --features (the feature output whose "
                                "songs it predicts factors for)")
            problems.extend(hybrid_lib.check_hybrid_parameters(hybrid_parameters(self)))
            if not self.validation_fraction > 0:
                problems.append("--model hybrid needs --validation_fraction > 0 (the songs "
                                "without ALS factors are scaled on those users)")
        if (self.model or "itemcf") in ALS_KINDS:
            problems.extend(als_lib.check_parameters(self.factors, self.regularization,
                                                     self.als_alpha, self.confidence,
                                                     self.iterations))
            if not 0.0 <= self.validation_fraction < 1.0:
                problems.append(f"--validation_fraction must be in [0, 1), got "
                                f"{self.validation_fraction}")
        if self.pair_budget < 1:
            problems.append(f"--pair_budget must be at least 1, got {self.pair_budget}")
        if self.max_play_count < 1:
            problems.append(f"--max_play_count must be at least 1, got {self.max_play_count}")
        if (self.song_to_tracks or self.mismatches) and not self.features:
            problems.append("--song_to_tracks and --mismatches join listens to --features; "
                            "give --features too")
        return problems


def catalogue_filter(options: TrainOptions):
    """(songs that may enter the model, songs lost to mismatches, side-file rejections)."""
    if not options.features:
        return training.AnySong(), frozenset(), []
    source = models.ModelSource(features=options.features,
                                song_to_tracks=options.song_to_tracks,
                                mismatches=options.mismatches)
    catalogue, rejections = source.catalogue()
    return frozenset(catalogue.song_ids.tolist()), catalogue.mismatched, rejections


def save_itemcf(fitted, options: TrainOptions, model_dir: str) -> int:
    """Writes the fitted model; returns its number of songs."""
    from recommend.models.itemcf import ItemCFModel

    song_ids, listeners, neighbours = fitted
    if not len(song_ids):
        return 0  # nothing to model: the launcher reports it and publishes nothing
    model = ItemCFModel(song_ids, listeners, neighbours, alpha=options.alpha, q=options.q,
                        top_m=options.top_m, min_listeners=options.min_listeners)
    model_base.save_model(model, model_dir, training={
        "listens": list(options.listens), "features": options.features,
        "songs": len(song_ids), "user_song_pairs": int(listeners.sum()),
        "neighbours": int(neighbours.nnz)})
    return len(song_ids)


def als_parameters(options: TrainOptions) -> als_lib.ALSParameters:
    return als_lib.ALSParameters(
        factors=options.factors, regularization=options.regularization,
        alpha=options.als_alpha, confidence=options.confidence, iterations=options.iterations,
        seed=options.seed, validation_fraction=options.validation_fraction)


def hybrid_parameters(options: TrainOptions) -> hybrid_lib.HybridParameters:
    return hybrid_lib.HybridParameters(
        target_min_listeners=options.target_min_listeners, hidden_units=options.hidden_units,
        epochs=options.epochs, holdout=options.holdout_songs,
        warm_map_loss=options.warm_map_loss, cold_share=options.cold_share,
        seed=options.seed)


def save_hybrid(fitted, options: TrainOptions, model_dir: str) -> int:
    """Writes the fitted hybrid model (ALS's and the content network's metrics in model.json);
    returns its number of songs."""
    song_ids, listeners, item_factors, content, trained, metrics = fitted
    if item_factors is None:
        return 0  # nothing to model: the launcher reports it and publishes nothing
    network = metrics["content_network"]
    model = hybrid_lib.HybridModel(
        song_ids, item_factors, listeners, trained, content,
        hybrid={**dataclasses.asdict(hybrid_parameters(options)),
                "predicted_norm": network["predicted_norm"],
                "cold_scale": network["cold_scale"],
                "cold_share": network["cold_share"],
                "content_weight": network["content_weight"]},
        regularization=options.regularization, alpha=options.als_alpha,
        confidence_variant=options.confidence, iterations=options.iterations, seed=options.seed,
        min_listeners=options.min_listeners)
    model_base.save_model(model, model_dir, training={
        "listens": list(options.listens), "features": options.features,
        "songs": len(song_ids), "songs_with_als_factors": int(trained.sum()),
        "user_song_pairs": int(listeners.sum()),
        "validation_fraction": options.validation_fraction}, metrics=metrics)
    return len(song_ids)


def save_als(fitted, options: TrainOptions, model_dir: str) -> int:
    """Writes the fitted ALS model (its training loss and validation mAP per iteration in
    model.json's metrics); returns its number of songs."""
    song_ids, listeners, item_factors, metrics = fitted
    if item_factors is None:
        return 0  # nothing to model: the launcher reports it and publishes nothing
    model = als_lib.ALSModel(song_ids, item_factors, listeners,
                             regularization=options.regularization, alpha=options.als_alpha,
                             confidence_variant=options.confidence,
                             iterations=options.iterations, seed=options.seed,
                             min_listeners=options.min_listeners)
    model_base.save_model(model, model_dir, training={
        "listens": list(options.listens), "features": options.features,
        "songs": len(song_ids), "user_song_pairs": int(listeners.sum()),
        "validation_fraction": options.validation_fraction}, metrics=metrics)
    return len(song_ids)


def build_pipeline(pipeline: beam.Pipeline, options: TrainOptions, model_dir: str,
                   report_dir: str) -> None:
    index = (pipeline
             | "Options" >> beam.Create([None])
             | "CatalogueFilter" >> beam.Map(lambda _: catalogue_filter(options)))
    parsed = pipeline | "ReadListens" >> listens_lib.ReadListens(options.listens,
                                                                 options.max_play_count)
    histories, unresolved = parsed[listens_lib.LISTENS] | "Histories" >> listens_lib.GroupHistories(
        index | "Songs" >> beam.Map(lambda i: i[0]),
        index | "Mismatched" >> beam.Map(lambda i: i[1]))
    if options.model == "als":
        fitted = histories | "Fit" >> training.FitALS(options.min_listeners,
                                                      als_parameters(options))
        _ = fitted["model"] | "Save" >> beam.Map(save_als, options, model_dir)
    elif options.model == "hybrid":
        content_source = models.ModelSource(features=options.features,
                                            song_to_tracks=options.song_to_tracks,
                                            mismatches=options.mismatches)
        fitted = histories | "Fit" >> training.FitHybrid(
            options.min_listeners, als_parameters(options), content_source,
            hybrid_parameters(options))
        _ = fitted["model"] | "Save" >> beam.Map(save_hybrid, options, model_dir)
    else:
        fitted = histories | "Fit" >> training.FitItemCF(
            options.min_listeners, options.alpha, options.q, options.top_m,
            options.pair_budget)
        _ = fitted["model"] | "Save" >> beam.Map(save_itemcf, options, model_dir)
    _ = ((parsed[listens_lib.REJECTED], unresolved, fitted["rejected"],
          index | "SideFileRejections" >> beam.FlatMap(lambda i: i[2]))
         | "AllRejections" >> beam.Flatten()
         | "RejectionJson" >> beam.Map(
             lambda r: json.dumps(r.to_json_dict(), ensure_ascii=False, sort_keys=True))
         | "WriteRejected" >> beam.io.WriteToText(FileSystems.join(report_dir, "rejected", "part"),
                                                  file_name_suffix=".jsonl"))


def model_parameters(options: TrainOptions) -> dict:
    """The options that shape the trained model (those of ``--model``)."""
    if options.model == "hybrid":
        return {**dataclasses.asdict(als_parameters(options)),
                "min_listeners": options.min_listeners,
                "hybrid": dataclasses.asdict(hybrid_parameters(options))}
    if options.model == "als":
        return {**dataclasses.asdict(als_parameters(options)),
                "min_listeners": options.min_listeners}
    return {"alpha": options.alpha, "q": options.q, "top_m": options.top_m,
            "min_listeners": options.min_listeners}


def run_summary(counters: dict[str, int], options: TrainOptions, seconds: float) -> dict:
    get = lambda name: counters.get(name, 0)
    return {
        "job": "train",
        "model": options.model,
        "parameters": model_parameters(options),
        "duration_seconds": round(seconds, 3),
        **listens_lib.listens_summary(counters),
        # Every used listen is in the model or in a too_few_listeners dead letter (one per
        # user and song, naming its number of listens).
        "listens_in_model": get("listens_in_model"),
        "listens_rare_song": get("listens_rare_song"),
        "listens_in_model_reconcile": get("listens_used") == (
            get("listens_in_model") + get("listens_rare_song")),
        "users_in_model": get("users_in_model"),
        "users_without_model_song": get("users_without_model_song"),
    }


VERSION_PREFIX = "v-"


def _relative_files(folder: str) -> list[str]:
    prefix = folder.rstrip("/") + "/"
    return sorted(m.path[len(prefix):] for m in FileSystems.match([prefix + "**"])[0].metadata_list)


def publish_model(staging: str, output_dir: str, version: str) -> str:
    """Publishes the staged model as version ``version`` of ``output_dir``.

    The staged files (arrays, songs.txt, run_summary.json, rejected/) move into
    ``v-<version>/``, where nothing reads them yet; then ``model.json`` naming them is written
    in one write: the commit point (a reader sees the previous model or this one, never a mix,
    on local disks and on GCS alike). The previous version stays, so a recommendation run that
    pinned it finishes with it; older versions and files of the first layout are deleted last.
    A crash before model.json leaves the previous model current and an unreferenced folder that
    the next publish deletes."""
    output_dir = output_dir.rstrip("/")
    manifest_path = FileSystems.join(output_dir, model_base.MODEL_FILE)
    previous = model_base.read_manifest(output_dir) if FileSystems.exists(manifest_path) else None
    folder = f"{VERSION_PREFIX}{version}"
    with FileSystems.open(FileSystems.join(staging, model_base.MODEL_FILE)) as handle:
        manifest = json.loads(handle.read().decode("utf-8"))
    files = [name for name in _relative_files(staging) if name != model_base.MODEL_FILE]
    manifest["version"] = version
    manifest["songs_file"] = f"{folder}/{model_base.SONGS_FILE}"
    for described in manifest["arrays"].values():
        described["file"] = f"{folder}/{described['file']}"
    manifest["report"] = {"run_summary": f"{folder}/{SUMMARY_FILE}", "rejected": f"{folder}/rejected/"}
    version_dir = FileSystems.join(output_dir, folder)
    try:
        for name in files:
            launcher.move_file(FileSystems.join(staging, name), FileSystems.join(version_dir, name))
        launcher.write_atomically(manifest_path,
                                  json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8"))
    except BaseException as error:
        def published_version() -> Optional[str]:
            try:
                with FileSystems.open(manifest_path) as handle:
                    return json.loads(handle.read().decode("utf-8")).get("version")
            except Exception:  # noqa: BLE001 - no model.json, or unreadable
                return None

        if published_version() != version:
            # Not published: the previous model.json and its version are untouched; the new
            # version folder (nothing names it) goes, so nothing half-new stays beside them.
            try:
                launcher.delete_tree(version_dir)
            except Exception as undo_error:  # noqa: BLE001 - the next publish deletes it
                logging.error("train: could not remove %s after a failed publish: %s",
                              version_dir, undo_error)
            raise
        # model.json names the new version (the error came after its write: an interrupt, a
        # lost GCS response): the new model is published, and its folder stays.
        if not isinstance(error, Exception):  # KeyboardInterrupt, SystemExit: still ends the run
            logging.warning("train: %s was published before the run was interrupted; the next "
                            "run deletes what is left in %s", version_dir, staging)
            raise
        logging.warning("train: writing %s reported an error (%s) but it names the new version: "
                        "%s is published", manifest_path, error, version_dir)
    # Published. What follows only tidies up: a failure is logged, the next publish retries.
    launcher.after_commit(f"deleting {staging}", lambda: launcher.delete_tree(staging))
    launcher.after_commit("removing the empty staging folder", lambda: launcher.remove_if_empty(
        FileSystems.join(output_dir, STAGING)))
    keep = {folder, f"{VERSION_PREFIX}{previous.get('version')}" if previous else None}
    for name in launcher.child_names(output_dir):
        if is_version_name(name) and name not in keep:
            launcher.after_commit(f"deleting the old version {name}", lambda n=name: (
                launcher.delete_tree(FileSystems.join(output_dir, n))))
    if previous and not previous.get("version"):  # the first layout: files at the top
        legacy = [described["file"] for described in previous.get("arrays", {}).values()]
        legacy += [model_base.SONGS_FILE, SUMMARY_FILE]
        for name in legacy:
            path = FileSystems.join(output_dir, name)
            if "/" not in name and FileSystems.exists(path):
                launcher.after_commit(f"deleting {path} of the first layout",
                                      lambda p=path: FileSystems.delete([p]))
        launcher.after_commit("deleting rejected/ of the first layout", lambda: (
            launcher.delete_tree(FileSystems.join(output_dir, "rejected"))))
    return version_dir


# The versions this job makes (``_run``): 20261130T113916Z-bedc1dfc, UTC time and 8 hex digits.
VERSION_PATTERN = r"[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}"
# The entries of a folder holding a model (model.json) that are that model's: model.json and
# the files of the first layout (beside its arrays, named in model.json).
OWN_ENTRIES = (model_base.MODEL_FILE, model_base.SONGS_FILE, SUMMARY_FILE, "rejected")


def is_version_name(name: str) -> bool:
    """``name`` is a published version folder of the shape this job makes (``v-<version>``)."""
    import re

    return re.fullmatch(re.escape(VERSION_PREFIX) + VERSION_PATTERN, name) is not None


def is_stale_own_entry(name: str, in_staging: bool) -> bool:
    """What a run that did not finish leaves and the next run (holding the lock, so none of it
    is live) deletes: in ``_staging/`` a staged version; in the model directory the temporary
    file of model.json's atomic write. Never anything of another shape."""
    import re

    return re.fullmatch(own_patterns()[-1].split("/", 1)[1] if in_staging else own_patterns()[1],
                        name) is not None


def own_patterns() -> tuple[str, ...]:
    """What is this job's in a model directory whatever else it holds
    (``launcher.foreign_entries``): its versions ``v-<version>/``, and in ``_staging/`` its
    lock and its staged versions; the temporary file of model.json's atomic write, left only
    by a run killed during it. Nothing of another shape (``v-1.0``, another job's
    ``_staging/…``) is this job's."""
    import re

    return (re.escape(VERSION_PREFIX) + VERSION_PATTERN,
            rf"\.{re.escape(model_base.MODEL_FILE)}\.\d+\.tmp",
            f"{STAGING}/{re.escape(LOCK_FILE)}", f"{STAGING}/{VERSION_PATTERN}")


def _check_output_dir(output_dir: str, overwrite: bool) -> None:
    """The model directory must be the product's: absent, empty, or holding only what this job
    writes: a model (replaced only with --overwrite), its versions ``v-<version>/``, and in
    ``_staging/`` its lock and the staged versions of runs that did not publish. Anything else,
    ``v-…`` or ``_staging/…`` of another shape included, is refused naming it: the job deletes
    old versions and stale staged ones, and never what it did not write."""
    output_dir = output_dir.rstrip("/")
    own = set()
    if FileSystems.exists(FileSystems.join(output_dir, model_base.MODEL_FILE)):
        if not overwrite:
            raise SystemExit(f"train: {output_dir} already holds a model; pass --overwrite to "
                             "replace it")
        manifest = model_base.read_manifest(output_dir)
        own = set(OWN_ENTRIES) | {d["file"] for d in manifest.get("arrays", {}).values()}
    foreign = [name for name in launcher.foreign_entries(output_dir, (), "train", own_patterns())
               if name not in own]
    if foreign == [output_dir]:
        raise SystemExit(f"train: --output_dir {output_dir} is a file, not a folder")
    if foreign:
        shown = ", ".join(foreign[:8]) + (f", … ({len(foreign) - 8} more)" if len(foreign) > 8
                                          else "")
        raise SystemExit(f"train: --output_dir {output_dir} holds files this product did not "
                         f"write ({shown}); nothing was changed: choose a new or empty folder")


def run(argv: Optional[Sequence[str]] = None) -> Optional[dict]:
    """Runs the training job; returns the run summary (None for a Dataflow dry run)."""
    options, train_options = launcher.parse_job_options(
        "train", argv, TrainOptions, TrainOptions.validate_train_options)
    train_options.model = train_options.model or "itemcf"
    output_dir = train_options.output_dir.rstrip("/")
    staging_only = config_lib.is_staging_only(options)
    if not staging_only:
        for flag in ("listens", "features", "song_to_tracks", "mismatches"):
            values = getattr(train_options, flag)
            values = [values] if isinstance(values, str) else values or []
            problems = launcher.unreadable_inputs(values) if flag != "features" else []
            if problems:
                raise SystemExit(f"train: --{flag}: {'; '.join(problems)}")
            empty = launcher.patterns_matching_nothing(values)
            if empty:
                raise SystemExit(f"train: --{flag}: no file matches {', '.join(empty)}")
        # Refused before anything is made in it (the lock's folder); checked again below.
        _check_output_dir(output_dir, train_options.overwrite)
    # One run per model directory at a time: a second would delete the first's live staging
    # and publish over it. The lock lives in the staging folder (the product's own). The
    # output folder is checked (again) under the lock: a run publishing between the first
    # check and the lock would otherwise be published over by a run that check let through.
    lock = None if staging_only else launcher.RunLock(
        FileSystems.join(output_dir, STAGING, LOCK_FILE), "train", options).acquire()
    try:
        if not staging_only:
            _check_output_dir(output_dir, train_options.overwrite)
        return _run(options, train_options, output_dir, staging_only)
    finally:
        if lock:  # never raises: a failure here must not hide the run's own outcome
            lock.release()
            for folder in (FileSystems.join(output_dir, STAGING), output_dir):
                try:
                    launcher.remove_if_empty(folder)
                except OSError as error:
                    logging.warning("train: could not remove the empty %s: %s", folder, error)


LOCK_FILE = "_train.lock"


def _run(options, train_options, output_dir: str, staging_only: bool) -> Optional[dict]:
    """The job and the publication, under the run's lock."""
    if not staging_only:  # what killed runs left: staged versions (none live: the lock)
        staging_root = FileSystems.join(output_dir, STAGING)
        for name in launcher.child_names(staging_root):
            if is_stale_own_entry(name, in_staging=True):
                launcher.delete_matching(FileSystems.join(staging_root, name))
        for name in launcher.child_names(output_dir):
            if is_stale_own_entry(name, in_staging=False):
                launcher.delete_matching(FileSystems.join(output_dir, name))
    version = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ-") + \
        uuid.uuid4().hex[:8]
    staging = FileSystems.join(output_dir, STAGING, version)
    started = time.monotonic()
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, train_options, staging, staging)
    result = pipeline.run()
    if staging_only:
        logging.info("train: the job was built (dry run) or staged (template launch)")
        return None
    result.wait_until_finish()
    summary = run_summary(launcher.counter_totals(result, listens_lib.METRICS_NAMESPACE),
                          train_options, time.monotonic() - started)
    if not FileSystems.exists(FileSystems.join(staging, model_base.MODEL_FILE)):
        raise SystemExit(f"train: the job wrote no model (no listens of any known song?); "
                         f"nothing was published (staging left in {staging})")
    summary["version"] = version
    launcher.write_summary(summary, staging, SUMMARY_FILE)
    summary["version_dir"] = publish_model(staging, output_dir, version)
    summary["output_dir"] = output_dir
    return summary


def main() -> None:
    cli.configure_logging()
    summary = run()
    if summary:
        print(f"train: {summary['model']} model of {summary['users_in_model']} users' listens "
              f"written to {summary['output_dir']} in {summary['duration_seconds']:.1f} s "
              f"(version {summary['version']}; {summary['listens_used']} listens used; "
              f"summary and dead letters in {summary['version_dir']}/)")


if __name__ == "__main__":
    cli.run_main("train", main)
