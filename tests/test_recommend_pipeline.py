"""The recommendation job end to end on the DirectRunner, and its Dataflow graph offline."""
import collections
import json
import numpy as np
import pyarrow.parquet as pq
import pytest

from msd import listening
from pipelines import recommend
from recommend import catalogue as catalogue_lib
from recommend import models
from tests.dataflow_dry_run import build_dataflow_job

RUN_DATE = "2026-11-23"


def read_rows(output, model="timbre_cosine"):
    table = pq.read_table(f"{output}/run_date={RUN_DATE}/model={model}")
    return {row["user_id"]: row for row in table.to_pylist()}


def listened_tracks(triplets_path, features_dir):
    catalogue = catalogue_lib.load_catalogue(str(features_dir))
    track_of_song = {s: t for t, s in zip(catalogue.track_ids, catalogue.song_ids)}
    histories = collections.defaultdict(collections.Counter)
    for record in listening.read_listens(triplets_path):
        histories[record.user_id][track_of_song[record.song_id]] += record.play_count
    return catalogue, histories


@pytest.fixture(scope="module")
def job_run(synthetic_sample, synthetic_features, tmp_path_factory):
    features_dir, _ = synthetic_features
    output = tmp_path_factory.mktemp("recs") / "out"
    args = ["--features", str(features_dir), "--listens", synthetic_sample.triplets_path,
            "--output", str(output), "--k", "20", "--run_date", RUN_DATE,
            "--weighting", "log_count"]
    return recommend.run(args), output, args


def test_every_user_gets_exactly_k_unlistened_ranked_songs(job_run, synthetic_sample,
                                                            synthetic_features):
    summary, output, _ = job_run
    rows = read_rows(output)
    catalogue, histories = listened_tracks(synthetic_sample.triplets_path, synthetic_features[0])
    too_heavy = {u for u, h in histories.items() if len(catalogue) - len(h) < 20}
    assert too_heavy  # the long tail: some users listened to nearly the whole small catalogue
    assert set(rows) == set(histories) - too_heavy
    assert summary["users_written"] == len(rows) and summary["users_rejected_by_reason"] == {
        "too_few_unlistened_songs": len(too_heavy)}
    for user_id, row in rows.items():
        recs = row["recommendations"]
        tracks = [r["track_id"] for r in recs]
        assert [r["rank"] for r in recs] == list(range(1, 21))
        assert len(set(tracks)) == 20 and not set(tracks) & set(histories[user_id])
        assert all(a["score"] >= b["score"] for a, b in zip(recs, recs[1:]))
        assert row["history_size"] == len(histories[user_id])
        assert row["popularity_filled"] == 0


def test_scores_equal_a_float64_brute_force(job_run, synthetic_sample, synthetic_features):
    _, output, _ = job_run
    rows = read_rows(output)
    catalogue, histories = listened_tracks(synthetic_sample.triplets_path, synthetic_features[0])
    row_of = catalogue.row_of_track()
    features = catalogue.features.astype(np.float64)
    for user_id in sorted(rows)[:25]:
        counts = histories[user_id]
        profile = sum(np.log1p(c) * features[row_of[t]] for t, c in counts.items())
        scores = features @ profile
        scores[[row_of[t] for t in counts]] = -np.inf
        best = np.argsort(-scores, kind="stable")[:20]
        got = rows[user_id]["recommendations"]
        np.testing.assert_allclose([r["score"] for r in got], scores[best], rtol=1e-4, atol=1e-4)
        assert [r["track_id"] for r in got] == [catalogue.track_ids[i] for i in best]


def test_counts_reconcile_and_reports_are_written(job_run):
    summary, output, _ = job_run
    assert summary["listens_reconcile"]
    assert summary["listens_rejected"] == 0 and summary["listens_unknown_song"] == 0
    assert summary["users_scored"] + summary["users_rejected"] == 200
    assert summary["users_fallback"] == 0
    with open(f"{output}/_reports/run_date={RUN_DATE}/model=timbre_cosine/run_summary.json") as handle:
        assert json.load(handle)["users_written"] == summary["users_written"]
    rejected = [json.loads(line) for path in (output / "_reports").rglob("part-*.jsonl")
                for line in open(path)]
    assert [r["reason"] for r in rejected] == ["too_few_unlistened_songs"] * summary["users_rejected"]


def test_a_rerun_of_the_date_replaces_it_and_gives_the_same_answer(job_run):
    summary, output, args = job_run
    before = read_rows(output)
    again = recommend.run(args)
    assert again["users_written"] == summary["users_written"]
    after = read_rows(output)
    assert after == before
    assert sorted(p.name for p in output.iterdir()) == ["_reports", f"run_date={RUN_DATE}"]
    assert [p.name for p in (output / f"run_date={RUN_DATE}").iterdir()] == ["model=timbre_cosine"]


def test_unknown_songs_bad_lines_fallback_users_and_the_submission(
        synthetic_sample, synthetic_features, tmp_path):
    features_dir, _ = synthetic_features
    catalogue = catalogue_lib.load_catalogue(str(features_dir))
    known_song = catalogue.song_ids[0]
    u_known, u_unknown, u_silent = "1" * 40, "2" * 40, "3" * 40
    listens = tmp_path / "listens.txt"
    listens.write_text(
        f"{u_known}\t{known_song}\t2\n{u_known}\tSOZZZZZZZZZZZZZZZZ\t1\n"
        f"{u_unknown}\tSOYYYYYYYYYYYYYYYY\t4\nnot a listen\n")
    users = tmp_path / "users.txt"
    users.write_text(f"{u_silent}\n{u_unknown}\n{u_known}\n")
    kaggle_songs = tmp_path / "kaggle_songs.txt"
    kaggle_songs.write_text("".join(f"{s} {i}\n" for i, s in enumerate(catalogue.song_ids, 1)))
    submission = tmp_path / "submission.txt"
    output = tmp_path / "out"
    summary = recommend.run([
        "--features", str(features_dir), "--listens", str(listens),
        "--listens", synthetic_sample.triplets_path, "--users", str(users),
        "--output", str(output), "--k", "5", "--run_date", RUN_DATE,
        "--kaggle_submission", str(submission), "--kaggle_songs", str(kaggle_songs)])
    rows = read_rows(output)
    assert set(rows) == {u_known, u_unknown, u_silent}
    assert rows[u_known]["popularity_filled"] == 0 and rows[u_known]["history_size"] == 1
    assert rows[u_unknown]["popularity_filled"] == rows[u_silent]["popularity_filled"] == 5
    assert summary["users_scored"] == 1 and summary["users_fallback"] == 2
    assert summary["users_not_requested"] == 200 and summary["requested_users_without_listens"] == 1
    assert summary["listens_unknown_song"] == 2 and summary["listens_rejected"] == 1
    assert summary["listens_reconcile"]
    rejected = [json.loads(line) for path in (output / "_reports").rglob("part-*.jsonl")
                for line in open(path)]
    assert sorted(r["reason"] for r in rejected) == ["unknown_song", "unknown_song",
                                                     "wrong_field_count"]
    index_of_song = {s: i for i, s in enumerate(catalogue.song_ids, 1)}
    lines = submission.read_text().splitlines()
    assert len(lines) == 3
    for user_id, line in zip([u_silent, u_unknown, u_known], lines):
        assert line.split() == [str(index_of_song[r["song_id"]])
                                for r in rows[user_id]["recommendations"]]


def test_fallback_none_dead_letters_users_without_known_songs(synthetic_features, tmp_path):
    features_dir, _ = synthetic_features
    listens = tmp_path / "listens.txt"
    listens.write_text(f"{'4' * 40}\tSOYYYYYYYYYYYYYYYY\t4\n")
    summary = recommend.run(["--features", str(features_dir), "--listens", str(listens),
                             "--output", str(tmp_path / "out"), "--k", "5",
                             "--run_date", RUN_DATE, "--fallback", "none"])
    assert summary["users_written"] == 0 and summary["users_rejected_by_reason"] == {
        "no_known_song": 1}


@pytest.mark.parametrize("args, message", [
    (["--k", "0"], "--k must be at least 1"),
    (["--output", "Bad:proj.x"], "not a BigQuery table"),
    (["--run_date", "2026-13-01"], "is not a date"),
    (["--kaggle_submission", "s.txt"], "needs --kaggle_songs and --users"),
])
def test_bad_options_are_explained(args, message, tmp_path):
    base = {"--features": str(tmp_path), "--listens": "l.txt", "--output": str(tmp_path / "o")}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    with pytest.raises(SystemExit, match=message):
        recommend.run([item for pair in base.items() for item in pair])


def test_missing_inputs_are_named_before_the_job_starts(synthetic_features, tmp_path):
    with pytest.raises(SystemExit, match="--listens: no file matches .*nope.txt"):
        recommend.run(["--features", str(synthetic_features[0]), "--listens",
                       str(tmp_path / "nope.txt"), "--output", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="--features: .* has no run_summary.json"):
        recommend.run(["--features", str(tmp_path), "--listens", "x", "--output", "o"])


def test_dataflow_graph_with_bigquery_and_a_gpu_hint_on_scoring_only():
    job = build_dataflow_job(recommend.run, [
        "--config", "configs/dataflow_gpu.yaml", "--features", "gs://my-bucket/features",
        "--listens", "gs://my-bucket/train_triplets.txt",
        "--output", "my-project:music.recommendations", "--run_date", RUN_DATE])
    proto = job.proto_pipeline
    hinted = {t.unique_name for t in proto.components.transforms.values()
              if proto.components.environments[t.environment_id].resource_hints}
    assert hinted and all(name.startswith("Score/RunInference") for name in hinted)
    hints = {bytes(v) for e in proto.components.environments.values()
             for v in e.resource_hints.values()}
    assert hints == {b"type:nvidia-l4;count:1;install-nvidia-driver"}
    names = {t.unique_name for t in proto.components.transforms.values()}
    assert "WriteRows/WriteToBigQuery/BigQueryBatchFileLoads/TriggerLoadJobsWithoutTempTables" in names
    options = job.options.get_all_options()
    assert options["accelerator"] == "type:nvidia-l4;count:1;install-nvidia-driver"


def test_the_ids_only_catalogue_has_the_rows_of_the_full_one(synthetic_features):
    """The join and the writers read ids only; the model reads everything. Row numbers travel
    between them, so both must give the same rows, from TFRecord and from CSV shards."""
    features_dir = str(synthetic_features[0])
    for features in (features_dir, f"{features_dir}/csv/part-*.csv"):
        full = catalogue_lib.load_catalogue(features)
        ids = catalogue_lib.load_catalogue(features, with_features=False)
        assert full.features.shape[0] == len(full) > 0 and ids.features.shape == (len(full), 0)
        assert ids.track_ids.tolist() == full.track_ids.tolist()
        assert ids.song_ids.tolist() == full.song_ids.tolist()
        source = models.ModelSource(features=features)
        catalogue, _ = source.catalogue()
        assert source.load().song_ids.tolist() == catalogue.song_ids.tolist()
