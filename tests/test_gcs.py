"""Every job on gs:// paths against a local Cloud Storage emulator (``gcs_emulator`` in
conftest.py), compared row for row with the same run on local paths: features (input and
output), training (the command line, in a fresh process), recommend (a trained model and the
content model), evaluate (inputs), query (Parquet) and the serving export."""
import io
import json
import os
import subprocess
import sys
import threading
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf
from apache_beam.io.filesystems import FileSystems

from pipelines import evaluate, features, recommend, train
from recommend import catalogue as catalogue_lib
from recommend import export
from recommend import query as query_lib
from tests.conftest import REPO

RUN_DATE = "2026-02-01"
K = 10
VOLATILE_KEYS = {"duration_seconds", "finished_at", "seconds", "created", "options",
                 "input_patterns", "version", "version_dir"}


@pytest.fixture(scope="module")
def gcs_env(gcs_emulator):
    """The emulator's variables set for this module (module-scoped fixtures use GCS too)."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in gcs_emulator.env.items():
            patch.setenv(name, value)
        yield gcs_emulator


def upload_file(local: str, url: str) -> None:
    with open(local, "rb") as handle, FileSystems.create(url) as out:
        out.write(handle.read())


def upload_tree(local_dir: str, url: str) -> int:
    count = 0
    for root, _, names in os.walk(local_dir):
        for name in names:
            path = os.path.join(root, name)
            upload_file(path, url + "/" + os.path.relpath(path, local_dir).replace(os.sep, "/"))
            count += 1
    return count


def read_bytes(path: str) -> bytes:
    with FileSystems.open(path, compression_type="uncompressed") as handle:
        return handle.read()


def files_below(folder: str) -> dict[str, str]:
    """relative path → full path of every file below a local or gs:// folder."""
    root = folder.rstrip("/")
    return {m.path[len(root) + 1:].replace(os.sep, "/"): m.path
            for m in FileSystems.match([FileSystems.join(root, "**")])[0].metadata_list}


def is_path(value) -> bool:
    if isinstance(value, list) and value:
        return all(is_path(item) for item in value)
    return isinstance(value, str) and ("/" in value or os.sep in value)


def stable(summary):
    """A run summary without what differs between two runs of the same data: durations,
    timestamps, options and paths."""
    if isinstance(summary, dict):
        return {key: stable(value) for key, value in summary.items()
                if key not in VOLATILE_KEYS and not is_path(value)}
    if isinstance(summary, list):
        return [stable(value) for value in summary]
    return summary


def examples(folder: str) -> list[dict]:
    """Every tf.train.Example of a feature output's TFRecord shards, as plain dicts."""
    rows = []
    for path in sorted(files_below(folder + "/features").values()):
        for record in catalogue_lib.tfrecord_records(path):
            example = tf.train.Example.FromString(record)
            row = {}
            for name, feature in example.features.feature.items():
                kind = feature.WhichOneof("kind")
                row[name] = list(getattr(feature, kind).value)
            rows.append(row)
    return sorted(rows, key=lambda row: row["track_id"])


def parquet_rows(folder: str, sort_key: str) -> list[dict]:
    rows = []
    for path in sorted(p for p in files_below(folder).values() if p.endswith(".parquet")):
        rows.extend(pq.read_table(io.BytesIO(read_bytes(path))).to_pylist())
    return sorted(rows, key=lambda row: row[sort_key])


@pytest.fixture(scope="module")
def inputs(gcs_env, synthetic_sample):
    """The synthetic sample's HDF5 files and listening files, uploaded under a fresh prefix."""
    root = gcs_env.url(f"run-{uuid.uuid4().hex[:8]}")
    uploaded = upload_tree(synthetic_sample.data_dir, root + "/input/data")
    assert uploaded == len(synthetic_sample.h5_paths)
    for path in (synthetic_sample.triplets_path, synthetic_sample.song_to_tracks_path):
        upload_file(path, root + "/input/" + os.path.basename(path))
    return root


@pytest.fixture(scope="module")
def gcs_features(inputs):
    output = inputs + "/features"
    summary = features.run(["--input", inputs + "/input/data/", "--output_dir", output])
    return output, summary


def test_features_on_gcs_match_the_local_run(gcs_features, synthetic_features):
    """gs:// input and output: the same counts, rows, CSV bytes, songs, dead letters and TFT
    schema as the local run over the same files; nothing left in _staging."""
    output, summary = gcs_features
    local, local_summary = synthetic_features
    assert summary["files_reconcile"] and summary["songs_reconcile"]
    assert summary["files_matched"] == local_summary["files_matched"] > 0
    assert stable(summary) == stable(local_summary)
    assert stable(json.loads(read_bytes(output + "/run_summary.json"))) == stable(local_summary)
    remote, here = files_below(output), files_below(str(local))
    assert sorted(remote) == sorted(here)  # the same files, no _staging or tft_tmp left
    assert any(name.startswith("transform_fn/") and name.endswith("saved_model.pb")
               for name in remote)
    rows = examples(output)
    assert len(rows) == summary["songs_written"] and rows == examples(str(local))
    for name in remote:  # rows in a shard come in processing order: compared sorted
        if name.startswith(("csv/", "rejected/")):
            a, b = (read_bytes(files[name]).splitlines() for files in (remote, here))
            assert a[:1] == b[:1] and sorted(a) == sorted(b), name
        elif name.startswith("transformed_metadata/"):
            assert read_bytes(remote[name]) == read_bytes(here[name]), name
    assert parquet_rows(output + "/songs", "track_id") == parquet_rows(str(local / "songs"),
                                                                      "track_id")


def test_a_second_features_run_on_gcs_refuses_without_overwrite(gcs_features, inputs):
    output, _ = gcs_features
    with pytest.raises(SystemExit, match="already holds outputs of an earlier run"):
        features.run(["--input", inputs + "/input/data/", "--output_dir", output])


def test_the_catalogue_reads_gcs_shards_like_local_ones(gcs_features, synthetic_features):
    output, _ = gcs_features
    local, _ = synthetic_features
    for remote, here in ((output, str(local)),
                         (output + "/csv/part-*.csv", str(local / "csv" / "part-*.csv"))):
        a, b = catalogue_lib.load_catalogue(remote), catalogue_lib.load_catalogue(here)
        assert a.track_ids.tolist() == b.track_ids.tolist()
        assert a.song_ids.tolist() == b.song_ids.tolist()
        np.testing.assert_array_equal(a.features, b.features)


def test_a_damaged_gcs_feature_shard_is_a_one_line_error(gcs_features, tmp_path):
    output, _ = gcs_features
    shard = sorted(p for p in files_below(output + "/features").values())[0]
    data = read_bytes(shard)
    import gzip

    broken = gcs_features[0] + f"-broken-{uuid.uuid4().hex[:6]}/part-00000.tfrecord.gz"
    with FileSystems.create(broken, compression_type="uncompressed") as out:
        out.write(gzip.compress(gzip.decompress(data)[:-7]))
    with pytest.raises(catalogue_lib.CatalogueError) as error:
        catalogue_lib.load_catalogue(broken)
    message = str(error.value)
    assert broken in message and "truncated" in message and "\n" not in message


@pytest.fixture(scope="module")
def models(inputs, synthetic_sample, tmp_path_factory):
    """itemcf trained on the same listens: locally in this process, and on gs:// through the
    command line in a fresh process (only the environment tells it about the emulator)."""
    local = tmp_path_factory.mktemp("itemcf") / "model"
    local_summary = train.run(["--model", "itemcf", "--listens", synthetic_sample.triplets_path,
                               "--output_dir", str(local)])
    remote = inputs + "/models/itemcf"
    completed = subprocess.run(
        [sys.executable, "-m", "pipelines.train", "--model", "itemcf",
         "--listens", inputs + "/input/train_triplets.txt", "--output_dir", remote],
        cwd=REPO, env={**os.environ}, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert f"written to {remote}" in completed.stdout
    return str(local), local_summary, remote


def test_training_on_gcs_matches_the_local_model(models):
    local, local_summary, remote = models
    remote_manifest = json.loads(read_bytes(remote + "/model.json"))
    local_manifest = json.loads(read_bytes(local + "/model.json"))
    version = lambda manifest: f"v-{manifest['version']}/"
    without_version = lambda files, manifest: {
        name.replace(version(manifest), ""): path for name, path in files.items()}
    remote_files = without_version(files_below(remote), remote_manifest)
    local_files = without_version(files_below(local), local_manifest)
    assert sorted(remote_files) == sorted(local_files)
    assert "model.json" in remote_files and "songs.txt" in remote_files
    for name in remote_files:
        if name.endswith((".npy", ".txt", ".jsonl")):
            assert read_bytes(remote_files[name]) == read_bytes(local_files[name]), name
    summary = json.loads(read_bytes(remote_files["run_summary.json"]))
    assert summary["listens_reconcile"] and stable(summary) == stable(local_summary)
    unversioned = lambda manifest: json.loads(
        json.dumps(manifest).replace(version(manifest), "").replace(manifest["version"], "V"))
    assert stable(unversioned(remote_manifest)) == stable(unversioned(local_manifest))


def recommend_args(source: list[str], listens: str, output: str) -> list[str]:
    return source + ["--listens", listens, "--output", output, "--k", str(K),
                     "--run_date", RUN_DATE]


@pytest.fixture(scope="module")
def recommendations(inputs, gcs_features, synthetic_features, models, synthetic_sample,
                    tmp_path_factory):
    """Both models into one gs:// output and one local output."""
    local_model, _, remote_model = models
    local_out = str(tmp_path_factory.mktemp("recommendations") / "out")
    remote_out = inputs + "/recommendations"
    summaries = {}
    for model, remote_source, local_source in (
            ("itemcf", ["--model_dir", remote_model], ["--model_dir", local_model]),
            ("timbre_cosine", ["--features", gcs_features[0]],
             ["--features", str(synthetic_features[0])])):
        summaries[model] = (
            recommend.run(recommend_args(remote_source, inputs + "/input/train_triplets.txt",
                                         remote_out)),
            recommend.run(recommend_args(local_source, synthetic_sample.triplets_path,
                                         local_out)))
    return remote_out, local_out, summaries


@pytest.mark.parametrize("model", ["itemcf", "timbre_cosine"])
def test_recommend_on_gcs_matches_the_local_run(recommendations, model):
    remote_out, local_out, summaries = recommendations
    remote_summary, local_summary = summaries[model]
    assert remote_summary["listens_reconcile"]
    assert stable(remote_summary) == stable(local_summary)
    partition = f"/run_date={RUN_DATE}/model={model}"
    rows = parquet_rows(remote_out + partition, "user_id")
    assert len(rows) == remote_summary["users_written"] > 0
    assert rows == parquet_rows(local_out + partition, "user_id")
    assert all(len(row["recommendations"]) == K for row in rows)


def test_recommend_publishes_its_report_on_gcs(recommendations):
    remote_out, _, _ = recommendations
    names = files_below(remote_out)
    assert f"_reports/run_date={RUN_DATE}/model=itemcf/run_summary.json" in names
    assert not any(name.startswith("_staging/") for name in names)


def test_a_rerun_on_gcs_replaces_the_partition(models, inputs):
    _, _, remote_model = models
    output = inputs + "/rerun"
    args = recommend_args(["--model_dir", remote_model], inputs + "/input/train_triplets.txt",
                          output)
    first = recommend.run(args)
    recommend.run(args + ["--num_shards", "2"])
    rows = parquet_rows(output + f"/run_date={RUN_DATE}/model=itemcf", "user_id")
    assert len(rows) == first["users_written"]


def test_a_run_failing_while_publishing_on_gcs_leaves_the_previous_version(
        models, inputs, monkeypatch):
    """Publishing on GCS copies objects one by one; readers that follow the partition's
    _SUCCESS.json (the query tool, the evaluation) see the previous version whole until the
    marker switches. A run that dies before the switch leaves them the previous rows; the
    next run publishes and deletes the leftovers."""
    from pipelines import launcher

    _, _, remote_model = models
    output = inputs + "/killed"
    args = recommend_args(["--model_dir", remote_model], inputs + "/input/train_triplets.txt",
                          output)
    first = recommend.run(args)
    partition = output + f"/run_date={RUN_DATE}/model=itemcf"
    before = launcher.published_files(partition)
    query = query_lib.load_query("runs")
    rows_before = query_lib.run_local(query, {}, recommendations_dir=output).rows

    def dies(*_args, **_kwargs):
        raise OSError("killed while publishing")

    working = launcher.write_atomically
    monkeypatch.setattr(launcher, "write_atomically", dies)
    with pytest.raises(OSError, match="killed while publishing"):
        recommend.run(args + ["--num_shards", "3"])
    assert launcher.published_files(partition) == before
    # The failed publish removed the files it had copied in: nothing half-new is left.
    assert len([n for n in files_below(partition) if n.endswith(".parquet")]) == 1
    assert query_lib.run_local(query, {}, recommendations_dir=output).rows == rows_before
    monkeypatch.setattr(launcher, "write_atomically", working)
    again = recommend.run(args + ["--num_shards", "2"])
    assert again["users_written"] == first["users_written"]
    assert sorted(n for n in files_below(partition) if n.endswith(".parquet")) == sorted(
        p.rsplit("/", 1)[1] for p in launcher.published_files(partition))
    assert len(launcher.published_files(partition)) == 2


def test_query_over_gcs_parquet_matches_local(recommendations, gcs_features, synthetic_features):
    remote_out, local_out, _ = recommendations
    for name, params in (("runs", {}),
                         ("top_songs", {"run_date": RUN_DATE, "model": "timbre_cosine"}),
                         ("data_quality", {"run_date": RUN_DATE, "model": "itemcf",
                                           "k": str(K)})):
        query = query_lib.load_query(name)
        remote = query_lib.run_local(query, params, recommendations_dir=remote_out,
                                     songs=gcs_features[0])
        here = query_lib.run_local(query, params, recommendations_dir=local_out,
                                   songs=str(synthetic_features[0]))
        assert remote.rows and remote.columns == here.columns and remote.rows == here.rows, name
    runs = query_lib.run_local(query_lib.load_query("runs"), {}, recommendations_dir=remote_out)
    assert len(runs.rows) == 2


def test_query_names_a_missing_gcs_folder(gcs_env, capsys):
    missing = gcs_env.url(f"nothing-{uuid.uuid4().hex[:6]}")
    assert query_lib.main(["runs", "--recommendations", missing]) == 1
    err = capsys.readouterr().err
    assert f"--recommendations {missing}: no such folder" in err and len(err.splitlines()) == 1


def test_evaluate_reads_gcs_inputs_like_local(recommendations, models, gcs_features,
                                              synthetic_features, synthetic_sample, inputs,
                                              tmp_path):
    """--listens, --model_dir, --features and --recommendations on gs:// (the report is
    written locally: --output_dir gs:// is not supported, see the README)."""
    remote_out, local_out, _ = recommendations
    local_model, _, remote_model = models
    common = ["--holdout_fraction", "0.5", "--seed", "1", "--k", str(K)]
    runs = {
        "remote": ["--listens", inputs + "/input/train_triplets.txt", "--features",
                   gcs_features[0], "--model_dir", remote_model],
        "local": ["--listens", synthetic_sample.triplets_path, "--features",
                  str(synthetic_features[0]), "--model_dir", local_model],
        "remote_recs": ["--listens", inputs + "/input/train_triplets.txt", "--recommendations",
                        remote_out, "--model", "timbre_cosine", "--songs", gcs_features[0]],
        "local_recs": ["--listens", synthetic_sample.triplets_path, "--recommendations",
                       local_out, "--model", "timbre_cosine", "--songs",
                       str(synthetic_features[0])],
    }
    reports = {}
    for name, args in runs.items():
        assert evaluate.main(args + common + ["--output_dir", str(tmp_path / name)]) == 0
        reports[name] = json.loads((tmp_path / name / evaluate.METRICS_FILE).read_text())
    for remote, here in (("remote", "local"), ("remote_recs", "local_recs")):
        assert reports[remote]["models"], reports[remote].keys()
        assert stable(reports[remote]["models"]) == stable(reports[here]["models"])


def test_export_to_gcs_answers_like_the_local_export(gcs_features, synthetic_features,
                                                     inputs, tmp_path):
    remote = inputs + "/serving/1"
    local = tmp_path / "local" / "1"
    export.main(["--features", gcs_features[0], "--export_dir", remote])
    export.main(["--features", str(synthetic_features[0]), "--export_dir", str(local)])
    remote_files, local_files = files_below(remote), files_below(str(local))
    assert sorted(remote_files) == sorted(local_files)
    assert "saved_model.pb" in remote_files and "track_ids.txt" in remote_files
    assert read_bytes(remote_files["track_ids.txt"]) == (local / "track_ids.txt").read_bytes()
    copy = tmp_path / "downloaded"
    for name, path in remote_files.items():
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        (copy / name).write_bytes(read_bytes(path))
    served, expected = tf.saved_model.load(str(copy)), tf.saved_model.load(str(local))
    rng = np.random.default_rng(5)
    rows = len((local / "track_ids.txt").read_text().split())
    for _ in range(5):
        listened = tf.constant(rng.choice(rows, size=7, replace=False), tf.int32)
        a = served.signatures["serving_default"](listened_songs=listened,
                                                 no_recom_songs=tf.constant(K))
        b = expected.signatures["serving_default"](listened_songs=listened,
                                                   no_recom_songs=tf.constant(K))
        np.testing.assert_array_equal(a["recom_songs_ids"].numpy(), b["recom_songs_ids"].numpy())


# -- the run lock on GCS: created only if absent (ifGenerationMatch=0) -------------------------

class _FakeBlob:
    def __init__(self, bucket, name):
        self.bucket, self.name, self.generation = bucket, name, None

    def exists(self, retry=None):
        self.bucket.before_exists()
        return self.name in self.bucket.objects

    def upload_from_string(self, data, content_type=None, if_generation_match=None, retry=None):
        from google.api_core import exceptions

        with self.bucket.guard:  # GCS applies the precondition atomically
            current = self.bucket.objects.get(self.name)
            if if_generation_match is not None and (current[0] if current else 0) != \
                    if_generation_match:
                raise exceptions.PreconditionFailed("conditionNotMet")
            self.bucket.generation += 1
            self.generation = self.bucket.generation
            self.bucket.objects[self.name] = (self.generation, data)

    def download_as_bytes(self, if_generation_match=None, retry=None):
        return self.bucket.objects[self.name][1]


class _FakeBucket:
    """What RunLock needs of a bucket, honouring generation preconditions as GCS does (the
    emulator ignores them, see test_the_gcs_lock_sends_its_preconditions_on_the_wire)."""

    def __init__(self, racers: int = 1):
        self.objects, self.generation = {}, 1000
        self.guard = threading.Lock()
        self.barrier = threading.Barrier(racers)

    def before_exists(self):
        self.barrier.wait(timeout=10)  # every racer has checked before any creates

    def blob(self, name):
        return _FakeBlob(self, name)

    def get_blob(self, name, retry=None):
        if name not in self.objects:
            return None
        blob = _FakeBlob(self, name)
        blob.generation = self.objects[name][0]
        return blob

    def delete_blob(self, name, if_generation_match=None, retry=None):
        from google.api_core import exceptions

        with self.guard:
            if name not in self.objects:
                raise exceptions.NotFound(name)
            if if_generation_match is not None and self.objects[name][0] != if_generation_match:
                raise exceptions.PreconditionFailed("conditionNotMet")
            del self.objects[name]


def test_two_runs_racing_for_one_gcs_lock_exactly_one_wins(monkeypatch):
    """Both runs find no lock, then both create it: the precondition lets one through; the
    other is refused with a message naming the holder. Releasing deletes only our generation."""
    from pipelines import launcher

    bucket = _FakeBucket(racers=2)
    monkeypatch.setattr(launcher.RunLock, "_gcs", lambda self: (bucket, "out/_staging/x.lock",
                                                                None))
    results = {}

    def acquire(name):
        lock = launcher.RunLock("gs://b/out/_staging/x.lock", "recommend")
        try:
            results[name] = lock.acquire()
        except SystemExit as refused:
            results[name] = str(refused)

    threads = [threading.Thread(target=acquire, args=(n,)) for n in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    winners = [r for r in results.values() if isinstance(r, launcher.RunLock)]
    losers = [r for r in results.values() if isinstance(r, str)]
    assert len(winners) == 1 and len(losers) == 1, results
    holder = json.loads(bucket.objects["out/_staging/x.lock"][1])
    assert holder["token"] == winners[0].token
    assert f"another run holds gs://b/out/_staging/x.lock (pid {os.getpid()} on " \
        f"{holder['host']}, started {holder['started']})" in losers[0]
    # Someone replaced the lock (an operator took it over): our release leaves theirs alone.
    bucket.barrier = threading.Barrier(1)
    bucket.objects["out/_staging/x.lock"] = (5, b'{"pid": 1}')
    winners[0].release()
    assert bucket.objects["out/_staging/x.lock"] == (5, b'{"pid": 1}')
    del bucket.objects["out/_staging/x.lock"]
    again = launcher.RunLock("gs://b/out/_staging/x.lock", "recommend").acquire()
    again.release()
    assert not bucket.objects


def test_the_gcs_lock_sends_its_preconditions_on_the_wire(gcs, monkeypatch):
    """Against the emulator: the lock object is uploaded with ifGenerationMatch=0 and deleted
    with ifGenerationMatch=<its generation> (the emulator ignores both, so the race itself is
    tested above against a bucket that honours them, as GCS does); a second run is refused
    naming the first; a released lock is gone."""
    import requests

    from pipelines import launcher

    sent = []
    send = requests.Session.request

    def recording(session, method, url, *args, **kwargs):
        sent.append((method, url))
        return send(session, method, url, *args, **kwargs)

    monkeypatch.setattr(requests.Session, "request", recording)
    path = gcs.url(f"lock-{uuid.uuid4().hex[:8]}", "_staging", "run.lock")
    first = launcher.RunLock(path, "recommend").acquire()
    uploads = [url for method, url in sent if method == "POST" and "/upload/" in url]
    assert uploads and all("ifGenerationMatch=0" in url for url in uploads), uploads
    with pytest.raises(SystemExit, match=rf"another run holds {path} \(pid {os.getpid()} on "):
        launcher.RunLock(path, "recommend").acquire()
    sent.clear()
    first.release()
    deletes = [url for method, url in sent if method == "DELETE"]
    assert deletes and all(f"ifGenerationMatch={first._generation}" in url for url in deletes)
    assert not FileSystems.exists(path)
    launcher.RunLock(path, "recommend").acquire().release()
