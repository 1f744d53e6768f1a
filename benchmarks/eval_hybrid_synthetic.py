"""The hybrid model and cold start on synthetic data: hybrid vs content vs als vs itemcf vs
popularity (and random), on all songs, on the warm songs and on the cold songs alone, on a
development or a test set of synthetic data sets.

    python -m benchmarks.eval_hybrid_synthetic --seeds test     # the reported evaluation
    python -m benchmarks.eval_hybrid_synthetic --seeds dev --warm_map_losses 0.05,0.025,0.02

Seeds (``--seeds``): ``dev`` = (7, 1), (8, 2), (9, 3), the development sets on which the hybrid's
default ``--warm_map_loss`` was chosen; ``test`` = (16, 10), (17, 11), (18, 12), never used for
any choice, the reported result; ``test_v1`` = (10, 4), (11, 5), (12, 6) and ``test_v2`` = (13,
7), (14, 8), (15, 9), earlier test sets (earlier versions of the hybrid were reported on them
and the next designed after, so they are no longer a test); or explicit pairs ``"7,1 8,2"``
(synthesize --seed, evaluate --seed), recorded as the set ``custom``. Each set's results go
into the JSON under ``sets.<name>``; the file's other sets are kept, labelled.

For each seed: ``python -m pipelines.synthesize`` (3,000 songs × 3,000 users, 12 styles, 30
co-listening scenes across styles), features by ``python -m pipelines.features --normalization
zscore_l2``. ``pipelines.evaluate --holdout_fraction 0.5 --cold_songs 0.2 --write_split`` hides
half of each user's songs and every listen of 20 % of the songs (the cold songs); every model is
trained with ``pipelines.train`` on that visible half only (itemcf with --q 1, the better
exponent on small data; als and ``hybrid`` with their defaults; one more hybrid per value of
``--warm_map_losses``, named ``hybrid_loss<value>``) and all are scored by one
``pipelines.evaluate --cold_songs 0.2`` call on the same split (mAP@500, recall@500 of the cold
songs, share of recommendations that are cold songs, mAP@500 on the warm hidden songs). Only
the documented commands are used, each in its own process. The report gives every seed's
metrics, the issue's three targets per seed and hybrid row (with the ratios), and per model
the mean and the spread (min, max) over the seeds.

A set takes ~3-5 min per seed on 2 busy cores (more with more hybrid rows).
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
from recommend.models.hybrid import DEFAULT_WARM_MAP_LOSS

REPO = pathlib.Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "eval_hybrid_synthetic.json"
SONGS, USERS, COLD, K = 3000, 3000, 0.2, 500
# (synthesize --seed, evaluate --seed). dev: the default was chosen on these; test: never used
# for a choice.
# test_v1, test_v2: earlier test sets, each reported once for an earlier version of the hybrid
# (v1: the scale alone; v2: a validated cold share); the next version was designed after
# seeing them, so the current hybrid is reported on fresh ones.
SEED_SETS = {"dev": ((7, 1), (8, 2), (9, 3)), "test": ((16, 10), (17, 11), (18, 12)),
             "test_v1": ((10, 4), (11, 5), (12, 6)), "test_v2": ((13, 7), (14, 8), (15, 9))}
SET_LABELS = {"dev": "development", "test": "test", "test_v1": "test_v1", "test_v2": "test_v2",
              "custom": "custom"}
BASE_TRAIN = {"hybrid": ["--model", "hybrid"], "als": ["--model", "als"],
              "itemcf": ["--model", "itemcf", "--q", "1"]}
TARGET_KEYS = ("hybrid_map_gt_content_map", "hybrid_cold_recall_gt_0",
               "hybrid_cold_recall_ge_content", "hybrid_warm_map_ge_0.9_als")
RATIO_KEYS = ("map_over_content", "cold_recall_over_content", "warm_map_over_als")
SCALE_KEYS = ("network_songs", "validation_songs", "validation_cosine",
              "validation_cosine_mean_direction", "median_target_norm", "content_weight",
              "cold_scale", "validation_warm_map_by_content_weight",
              "predicted_norm", "validation_warm_map_ratio", "songs_with_als_factors",
              "songs_with_predicted_factors")


def run(args: list[str], log: pathlib.Path) -> float:
    started = time.monotonic()
    with open(log, "a") as handle:
        handle.write("$ " + " ".join(args) + "\n")
        handle.flush()
        subprocess.run([sys.executable, "-m", *args], cwd=REPO, check=True, stdout=handle,
                       stderr=subprocess.STDOUT)
    return round(time.monotonic() - started, 2)


def train_options(losses: list[float]) -> dict:
    """Model name → pipelines.train options: the base models, then one hybrid per loss."""
    train = dict(BASE_TRAIN)
    for loss in losses:
        train[f"hybrid_loss{loss:g}"] = ["--model", "hybrid", "--warm_map_loss", f"{loss:g}"]
    return train


def evaluation_names(train: dict) -> dict:
    """Our model name → the name pipelines.evaluate gives it (a repeated kind becomes
    ``<kind>_<position>``, as in pipelines.evaluate)."""
    names, seen = {}, set()
    for position, (name, options) in enumerate(train.items(), start=1):
        kind = options[options.index("--model") + 1]
        names[name] = f"{kind}_{position}" if kind in seen else kind
        seen.add(kind)
    return names


def summary_of(entry: dict) -> dict:
    cold = entry["cold_start"]
    return {"map": entry["map"], "map_standard_error": entry["map_standard_error"],
            "precision_at_10": entry["precision"], "recall": entry["recall"],
            "coverage": entry["coverage"],
            "cold_recall": cold["cold"]["recall"], "cold_map": cold["cold"]["map"],
            "cold_share": cold["cold_share"], "warm_map": cold["warm"]["map"],
            "warm_recall": cold["warm"]["recall"]}


def one_seed(work: pathlib.Path, data_seed: int, split_seed: int, train: dict) -> dict:
    """Synthesizes, splits, trains and evaluates one seed in ``work``; its report."""
    work.mkdir(parents=True, exist_ok=True)
    log = work / "commands.log"
    seconds = {}
    seconds["synthesize"] = run(["pipelines.synthesize", "--output_dir", str(work / "syn"),
                                 "--num_songs", str(SONGS), "--num_users", str(USERS),
                                 "--seed", str(data_seed), "--no_progress", "--overwrite"], log)
    seconds["features"] = run(["pipelines.features", "--input", str(work / "syn" / "data"),
                               "--output_dir", str(work / "features"), "--normalization",
                               "zscore_l2", "--overwrite"], log)
    listens = str(work / "syn" / "train_triplets.txt")
    split = ["--listens", listens, "--holdout_fraction", "0.5", "--seed", str(split_seed),
             "--cold_songs", str(COLD)]
    run(["pipelines.evaluate", *split, "--write_split", str(work / "split")], log)
    model_dirs = []
    for name, options in train.items():
        model_dir = work / "models" / name
        seconds[f"train_{name}"] = run(
            ["pipelines.train", *options, "--listens", str(work / "split" / "visible.txt"),
             "--features", str(work / "features"), "--output_dir", str(model_dir),
             "--overwrite"], log)
        model_dirs += ["--model_dir", str(model_dir)]
    seconds["evaluate"] = run(["pipelines.evaluate", *split, "--features", str(work / "features"),
                               *model_dirs, "--k", str(K), "--blend", "", "--output_dir",
                               str(work / "evaluation")], log)
    report = json.loads((work / "evaluation" / "metrics.json").read_text())
    ours = {evaluated: name for name, evaluated in evaluation_names(train).items()}
    models = {ours.get(name, name): summary_of(entry)
              for name, entry in report["models"].items()}
    hybrids = [name for name in train if name.startswith("hybrid")]
    networks = {}
    for name in hybrids:
        network = json.loads((work / "models" / name / "model.json").read_text()
                             )["metrics"]["content_network"]
        networks[name] = {key: network.get(key) for key in SCALE_KEYS}
        networks[name]["final_losses"] = {"training": network["training_loss"][-1],
                                          "validation": network["validation_loss"][-1]}
    return {"synthesize_seed": data_seed, "split_seed": split_seed,
            "data": {**report["data"], "cold": report["inputs"]["cold_songs"]},
            "content_networks": networks, "models": models,
            "targets": {name: targets(models, name) for name in hybrids},
            "seconds": seconds}


def targets(models: dict, name: str) -> dict:
    hybrid, content, als = models[name], models["content"], models["als"]
    return {"hybrid_map_gt_content_map": hybrid["map"] > content["map"],
            "hybrid_cold_recall_gt_0": hybrid["cold_recall"] > 0,
            "hybrid_cold_recall_ge_content": hybrid["cold_recall"] >= content["cold_recall"],
            "hybrid_warm_map_ge_0.9_als": hybrid["warm_map"] >= 0.9 * als["warm_map"],
            "map_over_content": hybrid["map"] / content["map"],
            "cold_recall_over_content": hybrid["cold_recall"] / content["cold_recall"],
            "warm_map_over_als": hybrid["warm_map"] / als["warm_map"]}


def selection(seeds: list, hybrids: list) -> dict:
    """How the default ``--warm_map_loss`` is chosen on the development sets (fixed before their
    grid was run): per hybrid row, the (seed, target) pairs met over the three targets (hybrid
    > content on all songs; cold recall > 0 and ≥ content's; warm mAP ≥ 0.9 × als's); the most
    wins, ties going to the larger worst-seed margin min(warm ratio / 0.9, cold recall ratio)."""
    rows = {}
    for name in hybrids:
        met, margins = 0, []
        for seed in seeds:
            t = seed["targets"][name]
            met += bool(t["hybrid_map_gt_content_map"]) + bool(
                t["hybrid_cold_recall_gt_0"] and t["hybrid_cold_recall_ge_content"]) + bool(
                t["hybrid_warm_map_ge_0.9_als"])
            margins.append(min(t["warm_map_over_als"] / 0.9, t["cold_recall_over_content"]))
        rows[name] = {"targets_met": met, "of": 3 * len(seeds),
                      "worst_seed_margin": min(margins)}
    best = max(rows, key=lambda name: (rows[name]["targets_met"],
                                       rows[name]["worst_seed_margin"]))
    return {"rows": rows, "best": best}


def spread(values: list) -> dict:
    values = [float(v or 0.0) for v in values]
    return {"mean": sum(values) / len(values), "min": min(values), "max": max(values)}


def parse_seeds(text: str) -> tuple[str, tuple]:
    """``dev``, ``test``, ``test_v1``, ``test_v2`` or pairs ``"7,1 8,2"`` → (set name,
    ((synthesize seed, split seed), …))."""
    if text in SEED_SETS:
        return text, SEED_SETS[text]
    try:
        pairs = tuple(tuple(int(x) for x in pair.split(",")) for pair in text.split())
    except ValueError:
        pairs = ()
    if not pairs or any(len(pair) != 2 for pair in pairs):
        raise argparse.ArgumentTypeError(
            f"--seeds: 'dev', 'test', 'test_v1', 'test_v2' or pairs like '7,1 8,2', got {text!r}")
    return "custom", pairs


def parse_losses(text: str) -> list[float]:
    losses = [float(x) for x in text.replace(",", " ").split()]
    if any(not 0.0 < x < 1.0 for x in losses):
        raise argparse.ArgumentTypeError(f"--warm_map_losses: values in (0, 1), got {text!r}")
    return losses


def evaluate_set(set_name: str, pairs: tuple, losses: list[float], work: pathlib.Path) -> dict:
    train = train_options(losses)
    seeds = [one_seed(work / f"seed_{data_seed}", data_seed, split_seed, train)
             for data_seed, split_seed in pairs]
    names = list(seeds[0]["models"])
    hybrids = list(seeds[0]["targets"])
    metrics = ("map", "warm_map", "cold_recall", "cold_share", "cold_map")
    summary = {name: {m: spread([s["models"][name][m] for s in seeds]) for m in metrics}
               for name in names}
    ratios = {name: {key: [s["targets"][name][key] for s in seeds] for key in RATIO_KEYS}
              for name in hybrids}
    per_seed = {name: {key: [bool(s["targets"][name][key]) for s in seeds]
                       for key in TARGET_KEYS} for name in hybrids}
    met = {name: {key: sum(values) for key, values in per_seed[name].items()}
           for name in hybrids}
    all_met = {name: [all(per_seed[name][key][i] for key in TARGET_KEYS)
                      for i in range(len(seeds))] for name in hybrids}
    result = {
        "seed_set": set_name, "label": SET_LABELS[set_name],
        "seed_pairs": [list(pair) for pair in pairs],
        "machine": machine_info(loadavg=loadavg()),
        "data": {"songs": SONGS, "users": USERS, "holdout_fraction": 0.5, "cold_songs": COLD,
                 "k": K, "normalization": "zscore_l2"},
        "default_warm_map_loss": DEFAULT_WARM_MAP_LOSS,
        "warm_map_loss_by_model": {"hybrid": DEFAULT_WARM_MAP_LOSS,
                                   **{f"hybrid_loss{x:g}": x for x in losses}},
        "train_options": train,
        "summary_over_seeds": summary,
        "target_ratios_per_seed": ratios,
        "targets_per_seed": per_seed,
        "all_targets_met_per_seed": all_met,
        f"targets_met_seeds_of_{len(seeds)}": met,
        "seeds": seeds,
    }
    if set_name == "dev":  # the choice of the default; the test sets choose nothing
        result["selection"] = selection(seeds, hybrids)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=parse_seeds, default=parse_seeds("test"),
                        help="'dev' (7,1 8,2 9,3: where the default was chosen), 'test' (16,10 "
                        "17,11 18,12: the reported result), 'test_v1' / 'test_v2' (earlier "
                        "test sets, used) or pairs '7,1 8,2' (synthesize seed, split seed). "
                        "Default: test.")
    parser.add_argument("--warm_map_losses", type=parse_losses, default=[],
                        help="extra hybrid rows, one per --warm_map_loss value ('0.03,0.02'); "
                        "the row 'hybrid' is always the default.")
    parser.add_argument("--output", default=str(RESULTS),
                        help="the JSON; its other seed sets are kept")
    parser.add_argument("--work_dir", help="keep the data here (default: a temporary folder)")
    args = parser.parse_args(argv)
    set_name, pairs = args.seeds
    with tempfile.TemporaryDirectory() as tmp:
        result = evaluate_set(set_name, pairs, args.warm_map_losses,
                              pathlib.Path(args.work_dir or tmp))
    output = pathlib.Path(args.output)
    previous = json.loads(output.read_text()) if output.exists() else {}
    sets = previous.get("sets", {}) if isinstance(previous.get("sets"), dict) else {}
    sets[SET_LABELS[set_name]] = result
    output.write_text(json.dumps({"benchmark": "eval_hybrid_synthetic", "reported_set": "test",
                                  "sets": sets}, indent=2) + "\n")
    summary = result["summary_over_seeds"]
    print(f"seed set {result['label']}: {result['seed_pairs']}")
    for name, m in summary.items():
        print(f"{name:<18} " + "  ".join(
            f"{key} {m[key]['mean']:.4f} [{m[key]['min']:.4f}, {m[key]['max']:.4f}]"
            for key in ("map", "warm_map", "cold_recall", "cold_share")))
    print(json.dumps({"ratios": result["target_ratios_per_seed"],
                      "targets_per_seed": result["targets_per_seed"]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
