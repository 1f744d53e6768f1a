"""Hostile listening data through the real recommendation job, end to end on the DirectRunner.

One run reads a catalogue (feature CSV shards written here) and three listens files full of
bad lines (Taste Profile triplets with a BOM, CRLF, blank lines, no final newline and a 10 MB
line; a CSV copy with a header; a gzip file) plus a --users file with bad, duplicate and silent
users. Every test then checks one thing in that run's outputs: the run finishes, every bad line
is a dead letter (``<output>/_reports/run_date=D/model=M/rejected/*.jsonl``) with its reason, the counts
reconcile, every requested user is accounted for, and the good users' recommendations are
exactly what a float64 brute force over their good listens gives.

Line-level parsing is unit-tested in test_listening.py; here the lines go through Beam's text
source (bytes, line splitting, compression), the join, the grouping, scoring and the writers.
"""
import collections
import gzip
import json
import pathlib

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipelines import recommend, train

RUN_DATE = "2026-11-24"
K = 5
NUM_SONGS = 40
DIM = 90


def catalogue_ids(count: int, seed: int = 3):
    rng = np.random.default_rng(seed)
    alphabet = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"))
    make = lambda prefix: prefix + "".join(rng.choice(alphabet, 16))
    return [make("TR") for _ in range(count)], [make("SO") for _ in range(count)]


def write_feature_csv(path: pathlib.Path, track_ids, song_ids, matrix) -> None:
    """A feature shard in the feature pipeline's CSV format (header, '%.9g' float32)."""
    header = ",".join(["track_id", "song_id"] + [f"f{i:02d}" for i in range(matrix.shape[1])])
    lines = [header] + [",".join([t, s] + ["%.9g" % v for v in row])
                        for t, s, row in zip(track_ids, song_ids, matrix)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def user(n: int) -> str:
    return f"{n:040x}"


class ListensCorpus:
    """The files of the run and what each line must become."""

    def __init__(self, root: pathlib.Path):
        self.root = root
        self.track_ids, self.song_ids = catalogue_ids(NUM_SONGS)
        rng = np.random.default_rng(4)
        matrix = rng.normal(size=(NUM_SONGS, DIM))
        self.features = (matrix / np.linalg.norm(matrix, axis=1, keepdims=True)).astype(np.float32)
        # Two shards, as the feature pipeline writes them.
        write_feature_csv(root / "features/csv/part-00000-of-00002.csv", self.track_ids[:25],
                          self.song_ids[:25], self.features[:25])
        write_feature_csv(root / "features/csv/part-00001-of-00002.csv", self.track_ids[25:],
                          self.song_ids[25:], self.features[25:])
        self.good = collections.defaultdict(collections.Counter)  # user → song → summed count
        self.rejected = collections.Counter()  # reason → number of lines
        self.rejected_raw_prefixes = []  # (reason, first characters of the raw line)
        self.blank_lines = 0
        self.header_lines = 0
        self.lines_read = 0
        self.unknown_song_listens = 0

    def song(self, i: int) -> str:
        return self.song_ids[i]

    def good_line(self, user_id: str, song: int, count: int, sep: str = "\t") -> str:
        self.good[user_id][self.song(song)] += count
        self.lines_read += 1
        return sep.join([user_id, self.song(song), str(count)])

    def bad_line(self, text, reason: str):
        self.rejected[reason] += 1
        self.lines_read += 1
        raw = text if isinstance(text, str) else text.decode("utf-8", "backslashreplace")
        self.rejected_raw_prefixes.append((reason, raw[:30]))
        return text

    def blank(self, text: str = "") -> str:
        self.blank_lines += 1
        self.lines_read += 1
        return text

    def build(self):
        u1, u2, u3, u4, u5 = (user(n) for n in (1, 2, 3, 4, 5))
        self.scored_users = [u1, u2, u3, u4, u5]
        self.silent_user = user(6)            # in --users, no listens at all
        self.rejected_only_user = user(7)     # in --users, every line of theirs is rejected
        self.unknown_only_user = user(8)      # in --users, listens only to unknown songs
        self.not_requested_user = user(9)     # has listens, not in --users
        s = self.song

        # 1. Taste Profile triplets: BOM, CRLF, blank lines, every bad line, no final newline.
        lines = [
            "\ufeff" + self.good_line(u1, 0, 3),
            self.good_line(u1, 1, 1),
            self.good_line(u1, 1, 2),   # the same listen twice: counts add up
            self.good_line(u1, 2, 7),
            self.blank(""),
            self.blank("   "),
            self.good_line(u2, 3, 1),
            self.good_line(u2, 4, 12),
            self.bad_line(f"{u2}\t{s(5)}", "wrong_field_count"),                 # missing field
            self.bad_line(f"{u2}\t{s(5)}\t3\textra", "wrong_field_count"),      # extra field
            self.bad_line(f"{u2}\t{s(5)}\tabc", "bad_play_count"),
            self.bad_line(f"{u2}\t{s(5)}\t1.5", "bad_play_count"),
            self.bad_line(f"{u2}\t{s(5)}\t", "bad_play_count"),                 # empty count
            self.bad_line(f"{u2}\t{s(5)}\t0", "non_positive_play_count"),
            self.bad_line(f"{u2}\t{s(5)}\t-4", "non_positive_play_count"),
            self.bad_line(f"{u2}\t{s(5)}\t100001", "play_count_too_large"),
            self.bad_line(f"{u2}\t{s(5)}\t{10 ** 30}", "play_count_too_large"),
            self.bad_line(f"\t{s(5)}\t3", "empty_user_id"),
            self.bad_line(f"{u2}\t\t3", "empty_song_id"),
            self.bad_line(f"{u2[:-1]}\t{s(5)}\t3", "bad_user_id"),              # 39 characters
            self.bad_line(f"{u2}0\t{s(5)}\t3", "bad_user_id"),                  # 41 characters
            self.bad_line(f"{'g' * 40}\t{s(5)}\t3", "bad_user_id"),             # not hex
            self.bad_line(f"{u2}\t{s(5).lower()}\t3", "bad_song_id"),
            self.bad_line(f"{u2}\t{s(5)[:-1]}\t3", "bad_song_id"),
            self.bad_line(f"{u2}\tTRAAAAW128F429D538\t3", "bad_song_id"),       # a track id
            self.bad_line(f"{self.rejected_only_user}\t{s(6)}\t0", "non_positive_play_count"),
            self.bad_line("x" * 10_000_000, "line_too_long"),                   # a 10 MB line
            self.bad_line(f"{u2}\t{s(5)}\t3 \x00", "bad_play_count"),            # a NUL byte
            self.blank(""),
            self.good_line(self.not_requested_user, 8, 2),
            self.good_line(u2, 9, 2),  # last line, no final newline
        ]
        bad_utf8 = self.bad_line(f"{u2}\t".encode() + b"SO\xff\xfe" + b"\t3", "bad_utf8")
        unknown = f"{self.unknown_only_user}\tSOZZZZZZZZZZZZZZZZ\t5"
        self.lines_read += 1
        self.unknown_song_listens += 1
        text = "\r\n".join(lines[:-2]) + "\r\n"
        data = text.encode("utf-8") + bad_utf8 + b"\r\n" + (unknown + "\r\n").encode()
        data += ("\r\n".join(lines[-2:])).encode()
        self.triplets = self.root / "triplets.txt"
        self.triplets.write_bytes(data)

        # 2. A CSV copy with a header (not data) and LF endings.
        csv_lines = ["user_id,song_id,listen_count",
                     self.good_line(u3, 10, 4, ","), self.good_line(u3, 11, 1, ","),
                     self.good_line(u4, 12, 9, ","),
                     self.bad_line(f"{u4},{s(13)},3,", "wrong_field_count"),
                     self.good_line(u4, 14, 1, ",")]
        self.lines_read += 1
        self.header_lines += 1
        self.csv = self.root / "listens.csv"
        self.csv.write_text("\n".join(csv_lines) + "\n")

        # 3. A gzip file (compression detected from the name).
        gz_lines = [self.good_line(u5, 15, 2), self.good_line(u5, 16, 1),
                    self.good_line(u5, 0, 30), self.bad_line(f"{u5}\t{s(17)}\t-1",
                                                             "non_positive_play_count")]
        self.gz = self.root / "more.txt.gz"
        with gzip.open(self.gz, "wt") as handle:
            handle.write("\n".join(gz_lines) + "\n")

        # --users: requested users in submission order, plus a bad and a repeated line.
        self.users = self.root / "users.txt"
        self.users_rejected = collections.Counter({"bad_user_id": 1, "duplicate_user_id": 1})
        self.requested = [u3, self.silent_user, u1, u2, self.rejected_only_user, u4, u5,
                          self.unknown_only_user]
        self.users.write_text("\n".join(self.requested[:3] + ["not-a-user-id", u1]
                                        + self.requested[3:]) + "\n")
        return self


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile_listens")
    corpus = ListensCorpus(root).build()
    output = root / "out"
    summary = recommend.run([
        "--features", str(root / "features/csv/part-*.csv"),
        "--listens", str(corpus.triplets), "--listens", str(corpus.csv),
        "--listens", str(corpus.gz), "--users", str(corpus.users),
        "--output", str(output), "--k", str(K), "--run_date", RUN_DATE])
    report = output / "_reports" / f"run_date={RUN_DATE}" / "model=timbre_cosine"
    rows = {row["user_id"]: row
            for row in pq.read_table(output / f"run_date={RUN_DATE}" / "model=timbre_cosine").to_pylist()}
    rejected = [json.loads(line) for path in sorted(report.glob("rejected/*.jsonl"))
                for line in open(path, encoding="utf-8")]
    on_disk = json.loads((report / "run_summary.json").read_text())
    return {"corpus": corpus, "summary": summary, "on_disk": on_disk, "rows": rows,
            "rejected": rejected, "output": output}


def test_the_run_finishes_and_the_listens_reconcile(run):
    summary = run["summary"]
    assert {k: v for k, v in run["on_disk"].items()} == {
        k: v for k, v in summary.items() if k != "report_dir"}
    assert summary["listens_reconcile"]
    assert summary["listen_lines_read"] == (summary["listen_lines_not_data"]
                                            + summary["listens_parsed"]
                                            + summary["listens_rejected"])
    assert summary["listens_parsed"] == (summary["listens_used"] + summary["listens_unknown_song"]
                                         + summary["listens_mismatched"])


def test_every_line_is_counted(run):
    corpus, summary = run["corpus"], run["summary"]
    assert summary["listen_lines_read"] == corpus.lines_read
    assert summary["listen_files_matched"] == summary["listen_files_read"] == 3
    assert summary["listen_files_rejected"] == summary["listen_lines_in_rejected_files"] == 0
    assert summary["listen_lines_not_data"] == corpus.blank_lines + corpus.header_lines
    assert summary["listens_unknown_song"] == corpus.unknown_song_listens


def test_every_bad_line_is_a_dead_letter_with_its_reason(run):
    corpus, summary = run["corpus"], run["summary"]
    line_rejections = [r for r in run["rejected"] if r["reason"] in corpus.rejected
                       and r["source"] != str(corpus.users)]
    assert collections.Counter(r["reason"] for r in line_rejections) == corpus.rejected
    assert summary["listens_rejected_by_reason"] == dict(corpus.rejected)
    for record in line_rejections:
        assert record["detail"] and record["raw"] and len(record["raw"]) <= 200
        assert record["source"], f"a dead letter that does not name its file: {record}"


def test_dead_letters_name_the_file_each_line_came_from(run):
    corpus = run["corpus"]
    sources = {r["source"] for r in run["rejected"] if r["reason"] in corpus.rejected
               and r["source"] != str(corpus.users)}
    assert sources == {str(corpus.triplets), str(corpus.csv), str(corpus.gz)}


def test_the_ten_megabyte_line_is_rejected_and_cut_short(run):
    (record,) = [r for r in run["rejected"] if r["reason"] == "line_too_long"]
    assert record["raw"] == "x" * 200 and "10,000,000" in record["detail"]


def test_unknown_songs_are_dead_letters_too(run):
    unknown = [r for r in run["rejected"] if r["reason"] == "unknown_song"]
    assert len(unknown) == run["corpus"].unknown_song_listens
    assert "SOZZZZZZZZZZZZZZZZ" in unknown[0]["detail"]
    assert unknown[0]["source"] == str(run["corpus"].triplets)


def test_every_requested_user_is_accounted_for(run):
    corpus, summary, rows = run["corpus"], run["summary"], run["rows"]
    assert set(rows) == set(corpus.requested)
    for user_id in corpus.scored_users:
        assert rows[user_id]["popularity_filled"] == 0
    for user_id in (corpus.silent_user, corpus.rejected_only_user, corpus.unknown_only_user):
        assert rows[user_id]["popularity_filled"] == K
        assert rows[user_id]["history_size"] == 0
    assert summary["users_scored"] == len(corpus.scored_users)
    assert summary["users_fallback"] == 3
    assert summary["users_written"] == len(corpus.requested)
    assert summary["requested_users_without_listens"] == 2  # silent + rejected-only
    assert summary["users_not_requested"] == 1
    assert corpus.not_requested_user not in rows


def test_bad_lines_of_the_users_file_are_dead_letters(run):
    corpus = run["corpus"]
    got = collections.Counter(r["reason"] for r in run["rejected"]
                              if r["reason"] in corpus.users_rejected
                              and r["source"] == str(corpus.users))
    assert got == corpus.users_rejected
    # Counted in the run summary under their source and reason (reconciles with rejected/).
    assert run["summary"]["side_files_rejected_by_source"] == {"users": dict(got)}
    assert run["summary"]["side_files_rejected"] == sum(got.values())


def test_every_row_is_k_distinct_unlistened_songs_best_first(run):
    corpus, rows = run["corpus"], run["rows"]
    track_of_song = dict(zip(corpus.song_ids, corpus.track_ids))
    for user_id, row in rows.items():
        recs = row["recommendations"]
        assert [r["rank"] for r in recs] == list(range(1, K + 1))
        assert len({r["track_id"] for r in recs}) == K
        listened = {track_of_song[s] for s in corpus.good[user_id]}
        assert not listened & {r["track_id"] for r in recs}
        assert all(a["score"] >= b["score"] for a, b in zip(recs, recs[1:]))


def test_good_users_get_exactly_the_brute_force_answer(run):
    """The bad lines around them change nothing: float64 brute force over the good listens
    (weighting none: each distinct listened song counts once; duplicate lines add counts,
    which only matter for log_count)."""
    corpus, rows = run["corpus"], run["rows"]
    row_of_song = {s: i for i, s in enumerate(corpus.song_ids)}
    features = corpus.features.astype(np.float64)
    for user_id in corpus.scored_users:
        listened = [row_of_song[s] for s in corpus.good[user_id]]
        scores = features @ features[listened].sum(axis=0)
        scores[listened] = -np.inf
        best = np.argsort(-scores, kind="stable")[:K]
        got = rows[user_id]["recommendations"]
        assert [r["track_id"] for r in got] == [corpus.track_ids[i] for i in best]
        np.testing.assert_allclose([r["score"] for r in got], scores[best], rtol=1e-5, atol=1e-5)
        assert rows[user_id]["history_size"] == len(listened)


def damaged_gzip(path: pathlib.Path, damage: str, lines: list[str]) -> pathlib.Path:
    """``lines`` gzipped into ``path``, then cut in half (``truncated``: a transfer that
    stopped) or with its data checksum damaged (``corrupt``: every byte is there, and
    decompresses, but not to what was compressed)."""
    whole = gzip.compress(("\n".join(lines) + "\n").encode())
    if damage == "truncated":
        path.write_bytes(whole[: len(whole) // 2])
    else:
        crc = bytes(byte ^ 0xFF for byte in whole[-8:-4])
        path.write_bytes(whole[:-8] + crc + whole[-4:])
    return path


CAUSES = {"truncated": "ends before its end-of-stream marker", "corrupt": "not readable as gzip"}


def every_file(root: pathlib.Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None
            for p in sorted(root.rglob("*"))}


def refused_naming(run_job, path, damage: str) -> str:
    with pytest.raises(SystemExit) as stopped:
        run_job()
    message = str(stopped.value)
    assert str(path) in message and CAUSES[damage] in message, message
    assert "\n" not in message and "nothing was read" in message
    return message


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
@pytest.mark.parametrize("flag", ["listens", "users", "song_to_tracks"])
def test_a_damaged_gzip_input_stops_the_recommendation_run_and_publishes_nothing(
        run, tmp_path, flag, damage):
    """A listens, --users or --song_to_tracks file cut short in transfer (a .gz without its
    end: 5,000 lines, half the compressed bytes) or corrupt. Beam's decompressor stops at the
    cut without an error, so the job used to publish a partition without the file's users
    ("0 users written" when it was the only file). The launcher decompresses every compressed input to
    its end before the job: the run stops with one line naming the file and the cause, and
    the previous partition and report stay as they were, byte for byte."""
    corpus, output = run["corpus"], run["output"]
    users = [user(1000 + i) for i in range(5000)]
    lines = {"users": users,
             "song_to_tracks": [f"{s}\t{t}" for s, t in zip(corpus.song_ids, corpus.track_ids)]
             * 125}.get(flag, [f"{u}\t{corpus.song(i % NUM_SONGS)}\t1"
                               for i, u in enumerate(users)])
    broken = damaged_gzip(tmp_path / f"{flag}.txt.gz", damage, lines)
    before = every_file(output)
    inputs = {"listens": [str(corpus.triplets), str(corpus.csv), str(corpus.gz)],
              "users": [str(corpus.users)], "song_to_tracks": []}
    inputs[flag][-1:] = [str(broken)]
    message = refused_naming(lambda: recommend.run(
        ["--features", str(corpus.root / "features/csv/part-*.csv")]
        + [f"--{name}={path}" for name, paths in inputs.items() for path in paths]
        + ["--output", str(output), "--k", str(K), "--run_date", RUN_DATE]), broken, damage)
    assert message.startswith(f"recommend: --{flag}: ")
    assert every_file(output) == before


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_a_damaged_gzip_input_stops_the_training_run_and_keeps_the_previous_model(
        run, tmp_path, damage):
    """The same for the training job, over a pattern matching a good and a damaged file: the
    run stops naming the damaged one, the previous model is untouched."""
    from recommend.models import base as model_base
    from tests.test_train_pipeline import ReverseIdModel

    corpus = run["corpus"]
    model_dir = tmp_path / "model"
    model_base.save_model(ReverseIdModel(np.array(sorted(corpus.song_ids), dtype=object)),
                          str(model_dir))
    folder = tmp_path / "listens"
    folder.mkdir()
    (folder / "good.txt.gz").write_bytes(corpus.gz.read_bytes())
    broken = damaged_gzip(folder / "cut.txt.gz", damage,
                          [f"{user(1)}\t{corpus.song(i % NUM_SONGS)}\t1" for i in range(5000)])
    before = every_file(model_dir)
    message = refused_naming(lambda: train.run(
        ["--listens", str(folder / "*.txt.gz"), "--output_dir", str(model_dir), "--overwrite"]),
        broken, damage)
    assert message.startswith("train: --listens: ") and "good.txt.gz" not in message
    assert every_file(model_dir) == before


def test_a_compressed_listens_pattern_that_matches_nothing_stops_the_job_naming_it(run, tmp_path):
    corpus = run["corpus"]
    missing = str(tmp_path / "nowhere" / "*.txt.gz")
    with pytest.raises(SystemExit, match=r"--listens: no file matches .*nowhere/\*\.txt\.gz"):
        recommend.run(["--features", str(corpus.root / "features/csv/part-*.csv"),
                       "--listens", str(corpus.csv), "--listens", missing,
                       "--output", str(tmp_path / "out"), "--k", str(K), "--run_date", RUN_DATE])
    assert not (tmp_path / "out").exists()


def test_a_damaged_gzip_listens_file_on_gcs_stops_the_run_before_the_job(run, gcs, tmp_path):
    """The same check on gs:// (read through Beam's file systems, a pattern matched there):
    the damaged object is named, the good one beside it is not, nothing is written."""
    import uuid

    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    corpus = run["corpus"]
    folder = gcs.url(f"listens-{uuid.uuid4().hex[:8]}")
    broken = damaged_gzip(tmp_path / "cut.txt.gz", "truncated",
                          [f"{user(1)}\t{corpus.song(i % NUM_SONGS)}\t1" for i in range(5000)])
    for local in (corpus.gz, broken):
        with FileSystems.create(f"{folder}/{local.name}",
                                compression_type=CompressionTypes.UNCOMPRESSED) as out:
            out.write(local.read_bytes())
    output = tmp_path / "out"
    message = refused_naming(lambda: recommend.run(
        ["--features", str(corpus.root / "features/csv/part-*.csv"),
         "--listens", f"{folder}/*.txt.gz", "--output", str(output), "--k", str(K),
         "--run_date", RUN_DATE]), f"{folder}/cut.txt.gz", "truncated")
    assert "more.txt.gz" not in message and not output.exists()
