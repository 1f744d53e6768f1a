"""``python -m pipelines.train``: listening data → a trained recommendation model directory.

    python -m pipelines.train --model itemcf --listens train_triplets.txt --output_dir out/models/itemcf
    python -m pipelines.train --model als --factors 64 --listens train_triplets.txt --output_dir out/models/als
    python -m pipelines.train --config configs/dataflow_cpu.yaml --model itemcf \\
        --listens gs://b/train_triplets.txt --output_dir gs://b/models/itemcf/2026-11-30

Listens are read and parsed as by the recommendation job (the same dead letters and counters);
with ``--features`` only songs of the feature catalogue are used (joined through
``--song_to_tracks`` / ``--mismatches`` as there). The model is written to a staging folder
and moved into ``--output_dir`` only after the job succeeded, ``model.json`` last: a reader
sees the previous model, no model (a clear error), or the new one. ``--output_dir`` also gets
``run_summary.json`` and ``rejected/*.jsonl`` (every listen not in the model, with its reason).
"""
import argparse
import dataclasses
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
from recommend.models import itemcf_similarity
from transforms import listens as listens_lib
from transforms import training

SUMMARY_FILE = "run_summary.json"
STAGING = "_staging"
TRAINABLE = ("itemcf", "als")


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
        if (self.model or "itemcf") == "als":
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
        # Distinct (user, song) pairs of songs below --min_listeners: dead letters too.
        "user_songs_rare": get("listens_rare_song"),
        "users_in_model": get("users_in_model"),
        "users_without_model_song": get("users_without_model_song"),
    }


def publish_model(staging: str, output_dir: str) -> None:
    """Moves the staged model into ``output_dir``: the old ``model.json`` goes first (the folder
    is then not a model), every other file is replaced, the new ``model.json`` comes last."""
    manifest = FileSystems.join(output_dir, model_base.MODEL_FILE)
    if FileSystems.exists(manifest):
        FileSystems.delete([manifest])
    staged = sorted(m.path for m in FileSystems.match([FileSystems.join(staging, "**")])[0].metadata_list)
    last = [p for p in staged if p.endswith("/" + model_base.MODEL_FILE)]
    first = [p for p in staged if p not in last]
    for path in first + last:
        final = output_dir.rstrip("/") + path[len(staging.rstrip("/")):]
        if FileSystems.exists(final):
            FileSystems.delete([final])
        if "://" not in final:
            import os
            os.makedirs(os.path.dirname(final), exist_ok=True)
        FileSystems.rename([path], [final])
    FileSystems.delete([staging])
    launcher.remove_if_empty(FileSystems.join(output_dir, STAGING))


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
            empty = launcher.patterns_matching_nothing(
                [values] if isinstance(values, str) else values or [])
            if empty:
                raise SystemExit(f"train: --{flag}: no file matches {', '.join(empty)}")
        if FileSystems.exists(FileSystems.join(output_dir, model_base.MODEL_FILE)) \
                and not train_options.overwrite:
            raise SystemExit(f"train: {output_dir} already holds a model; pass --overwrite to "
                             "replace it")
        launcher.delete_matching(FileSystems.join(output_dir, STAGING, "*"))
    staging = FileSystems.join(output_dir, STAGING, uuid.uuid4().hex[:12])
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
    launcher.write_summary(summary, staging, SUMMARY_FILE)
    publish_model(staging, output_dir)
    summary["output_dir"] = output_dir
    return summary


def main() -> None:
    logging.getLogger().setLevel(logging.INFO)
    summary = run()
    if summary:
        print(f"train: {summary['model']} model of {summary['users_in_model']} users' listens "
              f"written to {summary['output_dir']} in {summary['duration_seconds']:.1f} s "
              f"({summary['listens_used']} listens used; dead letters in "
              f"{summary['output_dir']}/rejected/)")


if __name__ == "__main__":
    main()
