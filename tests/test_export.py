"""The serving SavedModel gives the batch job's answer for the same user."""
import numpy as np
import pytest
import tensorflow as tf

from recommend import catalogue as catalogue_lib
from recommend import export, kernel


@pytest.fixture(scope="module")
def exported(synthetic_features, tmp_path_factory):
    features_dir, _ = synthetic_features
    export_dir = tmp_path_factory.mktemp("serving") / "1"
    export.main(["--features", str(features_dir), "--export_dir", str(export_dir)])
    return catalogue_lib.load_catalogue(str(features_dir)), tf.saved_model.load(str(export_dir)), export_dir


def test_the_signature_is_the_seed_services(exported):
    _, model, export_dir = exported
    signature = model.signatures["serving_default"]
    inputs = signature.structured_input_signature[1]
    assert inputs["listened_songs"].dtype == tf.int32 and inputs["listened_songs"].shape.as_list() == [None]
    assert inputs["no_recom_songs"].dtype == tf.int32 and inputs["no_recom_songs"].shape.rank == 0
    assert list(signature.structured_outputs) == ["recom_songs_ids"]
    assert (export_dir / "track_ids.txt").read_text().split() == list(exported[0].track_ids)


def test_the_saved_model_answers_like_the_batch_kernel(exported):
    catalogue, model, _ = exported
    rng = np.random.default_rng(3)
    histories = [rng.choice(len(catalogue), size=size, replace=True) for size in (1, 5, 30, 120)]
    indices, _ = kernel.recommend(catalogue.features, histories, k=20)
    serve = model.signatures["serving_default"]
    for history, expected in zip(histories, indices):
        got = serve(listened_songs=tf.constant(history, tf.int32),
                    no_recom_songs=tf.constant(20))["recom_songs_ids"].numpy()
        assert got.tolist() == expected.tolist()
        assert not set(got.tolist()) & set(history.tolist())


def test_asking_for_more_songs_than_are_left_is_refused(exported):
    catalogue, model, _ = exported
    serve = model.signatures["serving_default"]
    with pytest.raises(tf.errors.InvalidArgumentError, match="not listened to"):
        serve(listened_songs=tf.constant([0, 1], tf.int32),
              no_recom_songs=tf.constant(len(catalogue) - 1))
