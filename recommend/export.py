"""``python -m recommend.export``: the catalogue + scoring as a TensorFlow SavedModel, so that
TF Serving answers online requests the way the batch job does (the seed service's signature).

    python -m recommend.export --features out/features --export_dir out/serving/1

Signature ``serving_default``: inputs ``listened_songs`` int32 [None] (catalogue rows, duplicates
count) and ``no_recom_songs`` int32 scalar (k); output ``recom_songs_ids`` int32 [k]: the k best
catalogue rows not listened to, by F·Σ listened vectors, ties by the lower row. Row numbers are
the catalogue's (track ids sorted; ``track_ids.txt`` is written beside the model to map them).

``--export_dir`` may be local or gs://. TensorFlow writes a SavedModel through its own file
system client, which has other credentials than Beam's and ignores a GCS emulator; so a gs://
export is saved into a local temporary folder first and copied file by file through Beam's
file systems (``track_ids.txt`` last).
"""
from pipelines import cli
from pipelines import launcher

if __name__ == "__main__":  # before TensorFlow is imported
    cli.quiet_native_logs()

import argparse
import logging
import sys
import tempfile
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf
from apache_beam.io.filesystems import FileSystems

from recommend import catalogue as catalogue_lib


class CatalogueRecommenderModule(tf.Module):
    """The catalogue as a variable and the seed's serving signature."""

    def __init__(self, features: np.ndarray):
        super().__init__()
        self.catalogue = tf.Variable(features, trainable=False, name="catalogue")

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int32, name="listened_songs"),
                                  tf.TensorSpec([], tf.int32, name="no_recom_songs")])
    def recommend(self, listened_songs: tf.Tensor, no_recom_songs: tf.Tensor) -> dict:
        num_songs = tf.shape(self.catalogue, out_type=tf.int32)[0]
        tf.debugging.assert_less(listened_songs, num_songs,
                                 message="listened_songs holds a row outside the catalogue")
        tf.debugging.assert_non_negative(listened_songs, message="negative song row")
        profile = tf.reduce_sum(tf.gather(self.catalogue, listened_songs), axis=0)
        scores = tf.linalg.matvec(self.catalogue, profile)
        listened = tf.unique(listened_songs).y
        scores = tf.tensor_scatter_nd_update(
            scores, listened[:, None], tf.fill(tf.shape(listened), -np.inf))
        available = num_songs - tf.size(listened)
        tf.debugging.assert_less_equal(
            no_recom_songs, available,
            message="no_recom_songs is larger than the number of songs not listened to")
        # top_k puts the lower index first among equal values: ties go to the lower row.
        _, rows = tf.math.top_k(scores, k=no_recom_songs, sorted=True)
        return {"recom_songs_ids": rows}


def export(features: str, export_dir: str) -> str:
    """Writes the SavedModel (and track_ids.txt) for the catalogue behind ``features``."""
    catalogue = catalogue_lib.load_catalogue(features)
    module = CatalogueRecommenderModule(catalogue.features)
    if "://" in export_dir:
        export_dir = export_dir.rstrip("/")
        with tempfile.TemporaryDirectory(prefix="saved_model_") as local:
            tf.saved_model.save(module, local, signatures={"serving_default": module.recommend})
            launcher.copy_local_folder(local, export_dir)
    else:
        tf.saved_model.save(module, export_dir,
                            signatures={"serving_default": module.recommend})
    with FileSystems.create(FileSystems.join(export_dir, "track_ids.txt")) as handle:
        handle.write(("\n".join(catalogue.track_ids.tolist()) + "\n").encode("utf-8"))
    return export_dir


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recommend.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", required=True,
                        help="The feature pipeline's --output_dir or a pattern of its shards.")
    parser.add_argument("--export_dir", required=True,
                        help="Where the SavedModel goes (e.g. a numbered version folder).")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    try:
        path = export(args.features, args.export_dir)
    except catalogue_lib.CatalogueError as error:
        raise SystemExit(f"export: {error}")
    print(f"export: SavedModel written to {path}")
    return 0


if __name__ == "__main__":
    cli.run_main("export", main)
