"""``python -m pipelines.demo`` (what ``python3 dev.py demo`` runs): the product end to end on
this machine, with no cloud account.

1. synthesizes an MSD-like sample (HDF5 songs in planted timbre styles + Taste Profile listens);
2. runs the feature pipeline on it (DirectRunner);
3. runs the recommendation job (DirectRunner, Parquet output);
4. prints what was written and a few users' recommendations as artist – title, next to the
   styles they listen to, read back with DuckDB (the local twin of the BigQuery table).
"""
import argparse
import collections
import csv
import logging
import os
import pathlib
import sys
from typing import Optional, Sequence

from msd import synthetic
from pipelines import features as features_job
from pipelines import recommend as recommend_job


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


def show_recommendations(recommendations: str, songs: str, listens: pathlib.Path,
                         styles_csv: pathlib.Path, run_date: str, show_users: int) -> None:
    """Prints a few users' top recommendations joined to song metadata, with DuckDB."""
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

    con = duckdb.connect()
    rows = con.execute(f"""
        SELECT r.user_id, r.model, r.history_size, rec.rank, s.artist_name, s.title,
               rec.track_id, rec.score
        FROM read_parquet('{recommendations}/run_date=*/*.parquet', hive_partitioning = true) r,
             UNNEST(r.recommendations) AS t(rec)
        JOIN read_parquet('{songs}/*.parquet') s ON s.track_id = rec.track_id
        WHERE r.run_date = DATE '{run_date}' AND r.user_id IN (
            SELECT user_id FROM read_parquet('{recommendations}/run_date=*/*.parquet',
                                             hive_partitioning = true)
            WHERE run_date = DATE '{run_date}' ORDER BY user_id LIMIT {show_users})
        ORDER BY r.user_id, rec.rank""").fetchall()
    by_user = collections.defaultdict(list)
    for row in rows:
        by_user[row[0]].append(row)
    agreement = []
    for user_id, user_rows in by_user.items():
        taste = collections.Counter(listened[user_id])
        top_styles = {style for style, _ in taste.most_common(3)}
        recommended = [style_of_track[row[6]] for row in user_rows]
        share = sum(style in top_styles for style in recommended) / len(recommended)
        agreement.append(share)
        print(f"\nuser {user_id[:12]}… ({user_rows[0][2]} songs; listens mostly to styles "
              f"{', '.join(f'{s} ({n})' for s, n in taste.most_common(3))}); model {user_rows[0][1]}")
        for _, _, _, rank, artist, title, track_id, score in user_rows[:5]:
            print(f"  {rank:>2}. {artist} – {title}  [style {style_of_track[track_id]}, "
                  f"score {score:.3f}]")
        print(f"  … {share:.0%} of the {len(user_rows)} recommendations are in the user's top 3 "
              "styles")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.ERROR)  # the demo prints its own account of each step
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    out = pathlib.Path(args.output_dir).resolve()
    sample = out / "synthetic"
    print(f"1/3 synthesizing {args.num_songs} songs and {args.num_users} users → {sample}")
    summary = synthetic.synthesize(str(sample), num_songs=args.num_songs,
                                   num_users=args.num_users, seed=args.seed, overwrite=True)
    listens = pathlib.Path(summary.triplets_path)

    print("2/3 feature pipeline (DirectRunner)")
    features = features_job.run(["--input", str(sample / "data"),
                                 "--output_dir", str(out / "features"), "--overwrite",
                                 "--config", "configs/local.yaml"])
    print(f"    {features['songs_written']} songs written, {features['songs_rejected']} rejected "
          f"(of {features['files_matched']} files); counts reconcile: "
          f"{features['songs_reconcile'] and features['files_reconcile']}")
    for name in ("features", "csv", "songs", "rejected"):
        shards = sorted(os.listdir(out / "features" / name))
        print(f"    {out / 'features' / name}/: {len(shards)} file(s), e.g. {shards[0]}")

    print(f"3/3 recommendation job (DirectRunner, k={args.k}, Parquet)")
    recommend = recommend_job.run([
        "--features", str(out / "features"), "--listens", str(listens),
        "--output", str(out / "recommendations"), "--k", str(args.k),
        "--run_date", args.run_date, "--config", "configs/local.yaml"])
    print(f"    {recommend['users_written']} users written ({recommend['users_scored']} scored, "
          f"{recommend['users_fallback']} by popularity, {recommend['users_rejected']} rejected) → "
          f"{recommend['output']}")
    print(f"    run summary and dead letters: {recommend['report_dir']}")

    show_recommendations(str(out / "recommendations"), str(out / "features" / "songs"), listens,
                         sample / synthetic.STYLES_FILENAME, args.run_date, args.show_users)
    print(f"\nEverything is under {out}. Query it with DuckDB, e.g.\n"
          f"  .venv/bin/python -c \"import duckdb; print(duckdb.sql(\\\"SELECT model, count(*) "
          f"FROM read_parquet('{out}/recommendations/run_date=*/*.parquet', "
          f"hive_partitioning=true) GROUP BY model\\\"))\"")
    return 0


if __name__ == "__main__":
    sys.exit(main())
