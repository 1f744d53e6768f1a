"""The hybrid model and cold start on synthetic data: hybrid vs content vs als vs itemcf vs
popularity (and random), on all songs, on the warm songs and on the cold songs alone.

    python -m benchmarks.eval_hybrid_synthetic          # ~4 min on 2 cores

Data: ``python -m pipelines.synthesize`` (3,000 songs × 3,000 users, 12 styles, 30 co-listening
scenes across styles, --seed 7), features by ``python -m pipelines.features --normalization
zscore_l2``. ``pipelines.evaluate --holdout_fraction 0.5 --cold_songs 0.2 --seed 1
--write_split`` hides half of each user's songs and every listen of 20 % of the songs (the cold
songs); every model is trained with ``pipelines.train`` on that visible half only (itemcf with
--q 1, the better exponent on small data; als and hybrid with their defaults; a second hybrid
with --predicted_norm_quantile 0.25 as a sensitivity row, named hybrid_4 by the evaluation)
and all are scored by one ``pipelines.evaluate --cold_songs 0.2`` call on the same split
(mAP@500, recall@500 of the cold songs, share of recommendations that are cold songs, mAP@500
on the warm hidden songs). Only the documented commands are used, each in its own process.

Results: ``benchmarks/results/eval_hybrid_synthetic.json``.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile
import time

from benchmarks.machine import loadavg, machine_info

REPO = pathlib.Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "eval_hybrid_synthetic.json"
SONGS, USERS, DATA_SEED, SPLIT_SEED, COLD, K = 3000, 3000, 7, 1, 0.2, 500
TRAIN = {"hybrid": ["--model", "hybrid"], "als": ["--model", "als"],
         "itemcf": ["--model", "itemcf", "--q", "1"],
         "hybrid_q25": ["--model", "hybrid", "--predicted_norm_quantile", "0.25"]}


def run(args: list[str], log: pathlib.Path) -> float:
    started = time.monotonic()
    with open(log, "a") as handle:
        handle.write("$ " + " ".join(args) + "\n")
        handle.flush()
        subprocess.run([sys.executable, "-m", *args], cwd=REPO, check=True, stdout=handle,
                       stderr=subprocess.STDOUT)
    return round(time.monotonic() - started, 2)


def summary_of(name: str, entry: dict) -> dict:
    cold = entry["cold_start"]
    return {"map": entry["map"], "map_standard_error": entry["map_standard_error"],
            "precision_at_10": entry["precision"], "recall": entry["recall"],
            "coverage": entry["coverage"],
            "cold_recall": cold["cold"]["recall"], "cold_map": cold["cold"]["map"],
            "cold_share": cold["cold_share"], "warm_map": cold["warm"]["map"],
            "warm_recall": cold["warm"]["recall"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default=str(RESULTS))
    parser.add_argument("--work_dir", help="keep the data here (default: a temporary folder)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(args.work_dir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        log = work / "commands.log"
        seconds = {}
        seconds["synthesize"] = run(["pipelines.synthesize", "--output_dir", str(work / "syn"),
                                     "--num_songs", str(SONGS), "--num_users", str(USERS),
                                     "--seed", str(DATA_SEED), "--no_progress", "--overwrite"],
                                    log)
        seconds["features"] = run(["pipelines.features", "--input", str(work / "syn" / "data"),
                                   "--output_dir", str(work / "features"), "--normalization",
                                   "zscore_l2", "--overwrite"], log)
        listens = str(work / "syn" / "train_triplets.txt")
        split = ["--listens", listens, "--holdout_fraction", "0.5", "--seed", str(SPLIT_SEED),
                 "--cold_songs", str(COLD)]
        run(["pipelines.evaluate", *split, "--write_split", str(work / "split")], log)
        model_dirs = []
        for name, options in TRAIN.items():
            model_dir = work / "models" / name
            seconds[f"train_{name}"] = run(
                ["pipelines.train", *options, "--listens", str(work / "split" / "visible.txt"),
                 "--features", str(work / "features"), "--output_dir", str(model_dir),
                 "--overwrite"], log)
            model_dirs += ["--model_dir", str(model_dir)]
        seconds["evaluate"] = run(["pipelines.evaluate", *split, "--features",
                                   str(work / "features"), *model_dirs, "--k", str(K),
                                   "--blend", "", "--output_dir", str(work / "evaluation")], log)
        report = json.loads((work / "evaluation" / "metrics.json").read_text())
        hybrid_manifest = json.loads((work / "models" / "hybrid" / "model.json").read_text())
    models = {name: summary_of(name, entry) for name, entry in report["models"].items()}
    hybrid, content, als = models["hybrid"], models["content"], models["als"]
    targets = {
        "hybrid_map_gt_content_map": hybrid["map"] > content["map"],
        "hybrid_cold_recall_gt_0": hybrid["cold_recall"] > 0,
        "hybrid_cold_recall_ge_content": hybrid["cold_recall"] >= content["cold_recall"],
        "hybrid_warm_map_ge_0.9_als": hybrid["warm_map"] >= 0.9 * als["warm_map"],
        "hybrid_warm_map_over_als": hybrid["warm_map"] / als["warm_map"],
    }
    result = {
        "benchmark": "eval_hybrid_synthetic",
        "machine": machine_info(loadavg=loadavg()),
        "data": {"songs": SONGS, "users": USERS, "synthesize_seed": DATA_SEED,
                 "split_seed": SPLIT_SEED, "holdout_fraction": 0.5, "cold_songs": COLD,
                 "k": K, "normalization": "zscore_l2", **report["data"],
                 "cold": report["inputs"]["cold_songs"]},
        "train_options": TRAIN,
        "content_network": {key: hybrid_manifest["metrics"]["content_network"][key] for key in (
            "network_songs", "validation_songs", "validation_cosine",
            "validation_cosine_mean_direction", "predicted_norm",
            "songs_with_als_factors", "songs_with_predicted_factors")},
        "content_network_final_losses": {
            "training": hybrid_manifest["metrics"]["content_network"]["training_loss"][-1],
            "validation": hybrid_manifest["metrics"]["content_network"]["validation_loss"][-1]},
        "models": models,
        "targets_default_hybrid": targets,
        "seconds": seconds,
    }
    pathlib.Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    for name, m in models.items():
        print(f"{name:<12} mAP@{K} {m['map']:.4f}  warm mAP {m['warm_map'] or 0:.4f}  "
              f"cold recall {m['cold_recall'] or 0:.4f}  cold share {m['cold_share']:.1%}")
    print(json.dumps(targets))
    return 0


if __name__ == "__main__":
    sys.exit(main())
