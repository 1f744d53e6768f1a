import bz2
import gzip
import lzma

import apache_beam as beam
import pytest
from apache_beam.io.filesystems import FileSystems
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from msd import listening
from recommend import catalogue as catalogue_lib
from transforms import listens as listens_lib

U1, U2, U3 = "a" * 40, "b" * 40, "c" * 40
SONG_A, SONG_B, SONG_C = "SOAAAAAAAAAAAAAAAA", "SOBBBBBBBBBBBBBBBB", "SOCCCCCCCCCCCCCCCC"
TRACK_A1, TRACK_A2, TRACK_B = "TRAAAAAAAAAAAAAAA1", "TRAAAAAAAAAAAAAAA2", "TRBBBBBBBBBBBBBBBB"


def test_songs_join_on_the_song_id_the_features_carry():
    track_of_song, mismatched = catalogue_lib.catalogue_song_tracks(
        [(TRACK_A2, SONG_A), (TRACK_A1, SONG_A), (TRACK_B, SONG_B)], None, set())
    assert track_of_song == {SONG_A: TRACK_A1, SONG_B: TRACK_B}  # lowest track id stands in
    assert mismatched == set()


def test_song_to_tracks_and_mismatches_decide_the_track():
    catalogue = [(TRACK_A1, "SOXXXXXXXXXXXXXXXX"), (TRACK_A2, SONG_A), (TRACK_B, SONG_B)]
    song_to_tracks = {SONG_A: [TRACK_A1, TRACK_A2], SONG_B: [TRACK_B], SONG_C: ["TRNOTINCATALOGUE00"]}
    track_of_song, mismatched = catalogue_lib.catalogue_song_tracks(
        catalogue, song_to_tracks, {(SONG_A, TRACK_A1), (SONG_B, TRACK_B)})
    assert track_of_song == {SONG_A: TRACK_A2}
    assert mismatched == {SONG_B}  # its only catalogue track is a known mismatch


def test_user_history_sums_duplicate_listens_and_counts_unknown_ones():
    # runs of one user's consecutive listens, as ResolveListenFn sends them (one per file range)
    history = listens_lib.user_history(U1, [[(SONG_B, 2), (SONG_A, 1)], [(SONG_B, 3), (None, 4)]])
    assert history == listens_lib.UserHistory(U1, (SONG_A, SONG_B), (1, 5), 1, (1, 2))
    assert history.size == 2


def test_listens_become_histories_and_every_unused_listen_a_dead_letter(tmp_path):
    listens_file = tmp_path / "listens.txt"
    listens_file.write_bytes(
        f"\ufeff{U1}\t{SONG_A}\t2\r\n{U1}\t{SONG_A}\t3\n{U1}\t{SONG_B}\t1\n\n"
        f"{U2}\t{SONG_C}\t1\n{U3}\t{SONG_B}\tmany\n{U3}\t{SONG_B}\t1".encode() + b"\n\xff\xfe\n")
    with TestPipeline() as pipeline:
        parsed = pipeline | listens_lib.ReadListens([str(listens_file)])
        catalogue_songs = pipeline | "T" >> beam.Create([frozenset({SONG_A, SONG_B})])
        mismatched = pipeline | "M" >> beam.Create([set()])
        histories, unresolved = parsed[listens_lib.LISTENS] | listens_lib.GroupHistories(
            catalogue_songs, mismatched)
        assert_that(histories, equal_to([
            listens_lib.UserHistory(U1, (SONG_A, SONG_B), (5, 1), 0, (2, 1)),
            listens_lib.UserHistory(U2, (), (), 1, ()),
            listens_lib.UserHistory(U3, (SONG_B,), (1,), 0, (1,))]), label="histories")
        assert_that(unresolved | beam.Map(lambda r: (r.reason, r.raw, r.source)),
                    equal_to([("unknown_song", f"{U2}\t{SONG_C}\t1", str(listens_file))]),
                    label="unresolved")  # an unknown song's dead letter names its file
        assert_that(parsed[listens_lib.REJECTED] | beam.Map(lambda r: (r.reason, r.source)),
                    equal_to([("bad_play_count", str(listens_file)),
                              ("bad_utf8", str(listens_file))]), label="rejected")


# --- compressed listens files: read to their end or rejected whole ---------------------------

def tricky_listens_bytes(lines: int = 3000) -> bytes:
    """Listens with a BOM, CRLF and LF, blank lines, a bad count, bad UTF-8, an unknown song
    and no final newline: what the plain and compressed readers must give alike."""
    body = [f"{(U1, U2, U3)[i % 3]}\t{(SONG_A, SONG_B, SONG_C)[i % 3]}\t{i % 7 + 1}"
            for i in range(lines)]
    body[10] = f"{U1}\t{SONG_A}\tmany"
    body[20] = ""   # a blank CRLF line
    body[200] = ""  # becomes the bad UTF-8 line
    data = ("\ufeff" + "\r\n".join(body[:100]) + "\r\n" + "\n".join(body[100:])).encode()
    return data.replace(b"\n\n", b"\n\xff\xfe\n", 1)  # one bad UTF-8 line as well


_CAPTURED: dict = {}  # what a test pipeline collected (the DirectRunner runs in this process)


def _capture(key, values):
    _CAPTURED[key] = values


def read_listens_and_rejections(paths):
    """Runs ReadListens over ``paths``; returns (listens, rejections as (reason, source, detail))."""
    _CAPTURED.clear()
    with TestPipeline() as pipeline:
        parsed = pipeline | listens_lib.ReadListens([str(p) for p in paths])
        _ = (parsed[listens_lib.LISTENS] | "L" >> beam.combiners.ToList()
             | "KeepL" >> beam.Map(lambda v: _capture("listens", v)))
        _ = (parsed[listens_lib.REJECTED] | "R" >> beam.Map(lambda r: (r.reason, r.source, r.detail))
             | "RL" >> beam.combiners.ToList() | "KeepR" >> beam.Map(lambda v: _capture("rejected", v)))
    return sorted(_CAPTURED["listens"]), sorted(_CAPTURED["rejected"])


@pytest.mark.parametrize("suffix,compress", [(".gz", gzip.compress), (".bz2", bz2.compress),
                                             (".xz", lzma.compress)])
def test_a_valid_compressed_file_gives_exactly_the_plain_files_listens(tmp_path, suffix,
                                                                       compress):
    data = tricky_listens_bytes()
    plain, packed = tmp_path / "listens.txt", tmp_path / f"listens.txt{suffix}"
    plain.write_bytes(data)
    packed.write_bytes(compress(data))
    plain_listens, plain_rejected = read_listens_and_rejections([plain])
    packed_listens, packed_rejected = read_listens_and_rejections([packed])
    assert len(plain_listens) == 2997
    assert packed_listens == [listen._replace(source=str(packed)) for listen in plain_listens]
    assert {listen.source for listen in plain_listens} == {str(plain)}
    assert [r[0] for r in plain_rejected] == ["bad_play_count", "bad_utf8"]
    assert packed_rejected == [(reason, str(packed), detail)
                               for reason, _, detail in plain_rejected]


def test_a_large_compressed_file_is_read_in_two_passes_with_the_same_lines(tmp_path):
    """Past the buffer the file is checked in a first pass and read again in a second."""
    path = tmp_path / "listens.txt.gz"
    data = tricky_listens_bytes(2000)
    path.write_bytes(gzip.compress(data))
    metadata = FileSystems.match([str(path)])[0].metadata_list[0]
    one_pass = list(listens_lib.ReadListensFileFn().process((metadata.path, None)))
    two_passes = list(listens_lib.ReadListensFileFn(buffer_bytes=1000).process(
        (metadata.path, None)))
    assert one_pass == two_passes
    assert len(one_pass) == 2000 and one_pass[0] == (str(path), data.split(b"\r\n", 1)[0])


def test_a_cut_gzip_is_one_truncated_file_dead_letter_and_none_of_its_lines_are_used(tmp_path):
    path = tmp_path / "cut.txt.gz"
    whole = gzip.compress(tricky_listens_bytes(5000))
    path.write_bytes(whole[: len(whole) // 2])
    listens, rejected = read_listens_and_rejections([path])
    assert listens == []
    ((reason, source, detail),) = rejected
    assert (reason, source) == ("truncated_file", str(path))
    assert "end-of-stream marker" in detail and "none of its lines are used" in detail
    assert " complete lines (" in detail and "compressed bytes" in detail


@pytest.mark.parametrize("name,content,reason,words", [
    ("random.txt.gz", bytes(range(256)) * 40, "corrupt_compressed_file", "Not a gzipped file"),
    ("plain_text_named.gz", f"{U1}\t{SONG_A}\t1\n".encode() * 10, "corrupt_compressed_file",
     "Not a gzipped file"),
    ("random.txt.bz2", bytes(range(256)) * 40, "corrupt_compressed_file", "Invalid data stream"),
    ("empty.txt.gz", b"", "truncated_file", "the file is empty"),
    ("empty.txt.bz2", b"", "truncated_file", "end-of-stream marker"),
    ("listens.txt.zst", b"\x28\xb5\x2f\xfd" + b"\0" * 20, "unsupported_compression", "zstd"),
])
def test_a_file_that_is_not_what_its_name_says_is_one_file_level_dead_letter(
        tmp_path, name, content, reason, words):
    bad, good = tmp_path / name, tmp_path / "good.txt"
    bad.write_bytes(content)
    good.write_bytes(f"{U1}\t{SONG_A}\t1\n".encode())
    listens, rejected = read_listens_and_rejections([bad, good])
    assert listens == [listening.Listen(U1, SONG_A, 1, str(good))]
    ((got_reason, source, detail),) = rejected
    assert (got_reason, source) == (reason, str(bad)) and words in detail


def test_a_corrupted_byte_inside_a_gzip_is_a_corrupt_file_not_a_traceback(tmp_path):
    path = tmp_path / "flipped.txt.gz"
    packed = bytearray(gzip.compress(tricky_listens_bytes(4000)))
    packed[len(packed) // 2] ^= 0xFF
    path.write_bytes(bytes(packed))
    listens, rejected = read_listens_and_rejections([path])
    assert listens == [] and [r[:2] for r in rejected] == [("corrupt_compressed_file", str(path))]


def test_a_file_name_with_glob_characters_is_read_once(tmp_path):
    path = tmp_path / "listens[1].txt"
    path.write_bytes(f"{U1}\t{SONG_A}\t1\n{U2}\t{SONG_B}\t2".encode())
    listens, _ = read_listens_and_rejections([tmp_path / "*.txt"])
    assert listens == [listening.Listen(U1, SONG_A, 1, str(path)),
                       listening.Listen(U2, SONG_B, 2, str(path))]


@pytest.mark.parametrize("range_bytes", [1, 2, 7, 500, 1 << 20])
def test_a_plain_file_read_in_many_byte_ranges_gives_each_line_once(tmp_path, range_bytes):
    """Plain files are read in parallel byte ranges (64 MB each; 1 byte to 1 MB here, so range
    ends fall on line starts, line ends, CR-LF pairs and inside lines): each line is read once,
    by the range its first byte falls in, exactly as the whole file reads."""
    path = tmp_path / "listens.txt"
    data = tricky_listens_bytes(400)
    path.write_bytes(data)
    metadata = FileSystems.match([str(path)])[0].metadata_list[0]
    ranges = list(listens_lib.ListensFileRangesFn(range_bytes=range_bytes).process(metadata))
    assert len(ranges) == -(-len(data) // range_bytes) and all(p == str(path) for p, _ in ranges)
    lines = [line for part in ranges for _, line in listens_lib.ReadListensFileFn().process(part)]
    import io
    assert lines == list(listening.split_lines(io.BytesIO(data))) and len(lines) == 400
