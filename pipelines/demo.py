"""``python -m pipelines.demo`` (what ``python3 dev.py demo`` runs): the product end to end on
this machine, with no cloud account.

1. synthesizes an MSD-like sample (HDF5 songs in planted timbre styles + Taste Profile listens
   with co-listening scenes across styles);
2. runs the feature pipeline on it (DirectRunner);
3. trains the item-based CF model on the listens (DirectRunner);
4. runs the recommendation job twice on one day, content (timbre) and itemcf: two partitions;
5. evaluates both against popularity and random (half of each user's songs hidden, itemcf
   trained again on the visible half only);
then prints a user's lists from both models side by side as artist – title, read back with
DuckDB (the local twin of the BigQuery table), and the evaluation's headline numbers.
"""
from pipelines import cli

if __name__ == "__main__":  # before anything imports TensorFlow
    cli.quiet_native_logs()

import argparse
import collections
import csv
import logging
import os
import pathlib
import sys
from typing import Optional, Sequence

from msd import synthetic
from pipelines import evaluate as evaluate_job
from pipelines import features as features_job
from pipelines import recommend as recommend_job
from pipelines import train as train_job


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python3 dev.py demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="demo_output", help="Where everything goes.")
    parser.add_argument("--num_songs", type=int, default=2000)
    parser.add_argument("--num_users", type=int, default=1000)
    parser.add_argument("--k", type=int, default=50, help="Recommendations per user.")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--run_date", default="2026-01-01")
    parser.add_argument("--show_users", type=int, default=3, help="Users to print.")
    return parser.parse_args(argv)


def _styles(path: pathlib.Path) -> dict[str, int]:
    with open(path) as handle:
        return {row["track_id"]: int(row["style"]) for row in csv.DictReader(handle)}


def show_side_by_side(recommendations: str, songs: str, listens: pathlib.Path,
                      styles_csv: pathlib.Path, run_date: str, show_users: int,
                      shown: int = 8) -> None:
    """Prints a few users' top songs from every model of the day, joined to song metadata with
    DuckDB, next to the styles they listen to."""
    import duckdb

    style_of_track = _styles(styles_csv)
    track_of_song = {}
    with open(styles_csv) as handle:
        for row in csv.DictReader(handle):
            track_of_song[row["song_id"]] = row["track_id"]
    listened = collections.defaultdict(list)
    with open(listens) as handle:
        for line in handle:
            user_id, song_id, _ = line.rstrip("\n").split("\t")
            listened[user_id].append(style_of_track[track_of_song[song_id]])
    partitions = f"{recommendations}/run_date=*/model=*/*.parquet"
    rows = duckdb.connect().execute(f"""
        SELECT r.user_id, r.model, r.history_size, rec.rank, s.artist_name, s.title,
               rec.song_id, rec.score
        FROM read_parquet('{partitions}', hive_partitioning = true) r,
             UNNEST(r.recommendations) AS t(rec)
        JOIN read_parquet('{songs}/*.parquet') s ON s.song_id = rec.song_id
        WHERE r.run_date = DATE '{run_date}' AND rec.rank <= {shown} AND r.user_id IN (
            SELECT DISTINCT user_id FROM read_parquet('{partitions}', hive_partitioning = true)
            WHERE run_date = DATE '{run_date}' AND popularity_filled = 0
            ORDER BY user_id LIMIT {show_users})
        ORDER BY r.user_id, r.model, rec.rank""").fetchall()
    by_user = collections.defaultdict(lambda: collections.defaultdict(list))
    for row in rows:
        by_user[row[0]][row[1]].append(row)
    for user_id, lists in by_user.items():
        taste = collections.Counter(listened[user_id])
        print(f"\nuser {user_id[:12]}… ({len(listened[user_id])} songs; listens mostly to styles "
              f"{', '.join(f'{s} ({n})' for s, n in taste.most_common(3))})")
        models = sorted(lists)
        print("    " + "".join(f"{model:<46}" for model in models))
        for rank in range(shown):
            cells = []
            for model in models:
                if rank < len(lists[model]):
                    _, _, _, _, artist, title, song_id, score = lists[model][rank]
                    text = f"{artist} – {title}"[:30]
                    cells.append(f"{text:<30} st {style_of_track[track_of_song[song_id]]:>2} "
                                 f"{score:7.3f}  ")
                else:
                    cells.append(" " * 46)
            print(f"{rank + 1:>2}. " + "".join(cells))


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.ERROR)  # the demo prints its own account of each step
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    out = pathlib.Path(args.output_dir).resolve()
    sample = out / "synthetic"
    print(f"1/5 synthesizing {args.num_songs} songs and {args.num_users} users → {sample}")
    summary = synthetic.synthesize(str(sample), num_songs=args.num_songs,
                                   num_users=args.num_users, seed=args.seed, overwrite=True)
    listens = pathlib.Path(summary.triplets_path)

    print("2/5 feature pipeline (DirectRunner)")
    features = features_job.run(["--input", str(sample / "data"),
                                 "--output_dir", str(out / "features"), "--overwrite",
                                 "--config", "configs/local.yaml"])
    print(f"    {features['songs_written']} songs written, {features['songs_rejected']} rejected "
          f"(of {features['files_matched']} files); counts reconcile: "
          f"{features['songs_reconcile'] and features['files_reconcile']}")
    for name in ("features", "csv", "songs", "rejected"):
        shards = sorted(os.listdir(out / "features" / name))
        print(f"    {out / 'features' / name}/: {len(shards)} file(s), e.g. {shards[0]}")

    print("3/5 training item-based CF on the listens (DirectRunner)")
    trained = train_job.run(["--model", "itemcf", "--listens", str(listens),
                             "--output_dir", str(out / "models" / "itemcf"), "--overwrite"])
    print(f"    {trained['users_in_model']} users' listens → {trained['output_dir']} "
          f"(counts reconcile: {trained['listens_reconcile']})")

    print(f"4/5 recommendation job (DirectRunner, k={args.k}, Parquet), content and itemcf")
    for model_args in (["--features", str(out / "features")],
                       ["--model_dir", str(out / "models" / "itemcf"),
                        "--features", str(out / "features")]):
        recommend = recommend_job.run(model_args + [
            "--listens", str(listens), "--output", str(out / "recommendations"),
            "--k", str(args.k), "--run_date", args.run_date, "--config", "configs/local.yaml"])
        print(f"    {recommend['model']}: {recommend['users_written']} users written "
              f"({recommend['users_scored']} scored, {recommend['users_fallback']} by popularity, "
              f"{recommend['users_rejected']} rejected) → {recommend['output']}")

    print("5/5 evaluation: half of each user's songs hidden (seed 1); itemcf trained on the "
          "visible half")
    split = out / "evaluation" / "split"
    if evaluate_job.main(["--listens", str(listens), "--holdout_fraction", "0.5", "--seed", "1",
                          "--write_split", str(split)]):
        return 1  # the evaluation printed why
    train_job.run(["--listens", str(split / "visible.txt"), "--output_dir",
                   str(out / "evaluation" / "itemcf_visible"), "--overwrite"])
    if evaluate_job.main(["--listens", str(listens), "--holdout_fraction", "0.5", "--seed", "1",
                          "--features", str(out / "features"), "--blend", "none",
                          "--model_dir", str(out / "evaluation" / "itemcf_visible"),
                          "--k", str(args.k), "--output_dir", str(out / "evaluation")]):
        return 1

    show_side_by_side(str(out / "recommendations"), str(out / "features" / "songs"), listens,
                      sample / synthetic.STYLES_FILENAME, args.run_date, args.show_users)
    print(f"\nEverything is under {out} (evaluation report: {out / 'evaluation' / 'report.html'}). "
          f"Query it with DuckDB, e.g.\n"
          f"  .venv/bin/python -c \"import duckdb; print(duckdb.sql(\\\"SELECT model, count(*) "
          f"FROM read_parquet('{out}/recommendations/run_date=*/model=*/*.parquet', "
          f"hive_partitioning=true) GROUP BY model\\\"))\"")
    return 0


if __name__ == "__main__":
    cli.run_main("demo", main)
