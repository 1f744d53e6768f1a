"""``python -m pipelines.synthesize``: writes a synthetic Million Song Dataset (per-track HDF5
files in the real schema and layout, Taste Profile listening data, ground-truth styles and
co-listening scenes).

    python -m pipelines.synthesize --output_dir demo_data --num_songs 2000 --num_users 1000
    python -m pipelines.synthesize --output_dir agg --num_songs 20000 --songs_per_file 500

The same --seed gives the same files (byte for byte). All the logic is in ``msd.synthetic``.
"""
from pipelines import cli

if __name__ == "__main__":  # before anything imports TensorFlow
    cli.quiet_native_logs()

import argparse
import sys
from typing import Optional, Sequence

from msd import synthetic


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command-line options (kept separate so tests and docs can inspect them)."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.synthesize",
        description="Write a synthetic Million Song Dataset: HDF5 files in the real MSD schema "
                    "below OUTPUT_DIR/data (data/A/B/C/TRABC….h5), Taste Profile triplets and "
                    "side files, and styles.csv and scenes.csv (the planted ground truth).")
    parser.add_argument("--output_dir", required=True,
                        help="Folder to write into (created if missing).")
    parser.add_argument("--num_songs", required=True, type=_positive_int,
                        help="Number of songs (= tracks) to generate.")
    parser.add_argument("--num_users", type=_non_negative_int, default=0,
                        help="Number of listeners in train_triplets.txt / kaggle_users.txt "
                             "(0: no listening data). Default: 0.")
    parser.add_argument("--seed", type=_non_negative_int, default=0,
                        help="Random seed; the same seed gives byte-identical files. Default: 0.")
    parser.add_argument("--num_styles", type=_positive_int, default=12,
                        help="Number of latent styles (timbre clusters users prefer). Default: 12.")
    parser.add_argument("--num_scenes", type=_positive_int, default=None,
                        help="Number of co-listening scenes (groups of songs across styles that "
                             "users listen to together; scenes.csv). Default: one per 100 "
                             "songs.")
    parser.add_argument("--songs_per_file", type=_positive_int, default=1,
                        help="1 (default): one file per track in the MSD folder layout. More: "
                             "aggregate files data/aggregate-NNNNN-of-MMMMM.h5 holding that "
                             "many songs each, indexed like the MSD's own aggregate files.")
    parser.add_argument("--workers", type=_positive_int, default=None,
                        help="Processes writing HDF5 files. Default: the number of CPUs, at "
                             "most one per 200 songs. The output does not depend on it.")
    parser.add_argument("--overwrite", action="store_true",
                        help="Delete .h5 files an earlier run left in OUTPUT_DIR/data first "
                             "(without it, the command refuses to mix runs).")
    parser.add_argument("--no_progress", action="store_true",
                        help="Do not show progress bars.")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parses the options, writes the data set and prints what was written."""
    args = build_parser().parse_args(argv)
    try:
        summary = synthetic.synthesize(
            args.output_dir, args.num_songs, num_users=args.num_users, seed=args.seed,
            num_styles=args.num_styles, songs_per_file=args.songs_per_file,
            workers=args.workers, progress=not args.no_progress, overwrite=args.overwrite,
            num_scenes=args.num_scenes)
    except (FileExistsError, ValueError) as error:
        print(f"synthesize: {error}", file=sys.stderr)
        return 2
    print(summary.describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())
