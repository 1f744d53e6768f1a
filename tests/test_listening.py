import gzip
import pickle
import re

import pytest
from hypothesis import given, settings, strategies as st

from msd import listening
from msd.listening import Listen, Rejection, parse_listen_line
from tests.conftest import sample_data_path

USER = "fd50c4007b68a3737fe052d5a4f78ce8aa117f3d"
SONG = "SOBONKR12A58A7A7E0"
TRACK = "TRMMMYQ128F932D901"


@pytest.fixture(scope="module")
def listening_dir():
    return sample_data_path("listening")


def plain_lines(path):
    """The file's lines split the simplest way, independently of the module under test. On "\n"
    only: str.splitlines would also split at the \x1c-\x1e control characters in some titles."""
    text = path.read_bytes().decode("utf-8")
    return text.removesuffix("\n").split("\n")


# --- the real heads -----------------------------------------------------------------------

def test_real_evaluation_triplets_all_parse(listening_dir):
    path = listening_dir / "kaggle_visible_evaluation_triplets.head1000.txt"
    assert not path.read_bytes().endswith(b"\n")  # the last line has no newline
    expected = [line.split("\t") for line in plain_lines(path)]
    assert len(expected) == 1000

    records = listening.read_listens(str(path))

    assert all(isinstance(record, Listen) for record in records)
    assert len(records) == 1000
    assert [(r.user_id, r.song_id, r.play_count) for r in records] == [
        (user, song, int(count)) for user, song, count in expected]
    assert len({r.user_id for r in records}) == len({user for user, _, _ in expected})
    assert len({r.song_id for r in records}) == len({song for _, song, _ in expected})
    assert sum(r.play_count for r in records) == sum(int(count) for _, _, count in expected)
    assert records[-1] == Listen("a80c16a236f9c32b7f2c445c6fa6d7d28da1e2ca",
                                 "SOMEUOD12A6D4FB4BE", 2, str(path))


def test_real_triplets_line_by_line_as_str_and_bytes(listening_dir):
    path = listening_dir / "kaggle_visible_evaluation_triplets.head1000.txt"
    from_str = [parse_listen_line(line) for line in path.read_text().splitlines(keepends=True)]
    from_bytes = [parse_listen_line(line) for line in path.read_bytes().splitlines(keepends=True)]
    assert from_str == from_bytes
    assert len(from_str) == 1000 and all(isinstance(r, Listen) for r in from_str)


def test_real_kaggle_users_in_order(listening_dir):
    path = listening_dir / "kaggle_users.head150.txt"
    parsed = listening.read_kaggle_users(str(path))
    assert parsed.rejections == []
    assert parsed.lines_read == 150
    assert parsed.data == plain_lines(path)
    assert len(parsed.data) == 150
    assert parsed.data[0] == USER
    assert parsed.data[-1] == "3d9770424788037e7dbfa9044e23126fc7947edc"


def test_real_song_to_tracks(listening_dir):
    path = listening_dir / "taste_profile_song_to_tracks.head99.txt"
    parsed = listening.read_song_to_tracks(str(path))
    assert parsed.rejections == []
    assert parsed.lines_read == 99
    split_lines = [line.split("\t") for line in plain_lines(path)]
    expected = {fields[0]: fields[1:] for fields in split_lines}
    assert parsed.data == expected
    assert len(parsed.data) == 99
    assert parsed.data["SOAAADD12AB018A9DD"] == ["TRNCENP12903C9EF3A"]
    assert parsed.data["SOAAEEK12AB018532D"] == ["TRKSPGK128F92F9B43"]  # the last line


def test_real_unique_tracks(listening_dir):
    path = listening_dir / "unique_tracks.head100.txt"
    parsed = listening.read_unique_tracks(str(path))
    assert parsed.rejections == []
    assert parsed.lines_read == 100
    assert len(parsed.data) == 100
    assert parsed.data[TRACK] == listening.Track(TRACK, "SOQMMHC12AB0180CB8", "Faster Pussy cat",
                                                 "Silent Night")
    assert parsed.data["TRMMMCH128F425532C"].title == "Si Vos Querés"  # UTF-8 decoded
    expected = {line.split("<SEP>")[0]: tuple(line.split("<SEP>")) for line in plain_lines(path)}
    assert {track_id: tuple(track) for track_id, track in parsed.data.items()} == expected


def test_real_sid_mismatches_complete_file(listening_dir):
    path = listening_dir / "sid_mismatches.txt"
    lines = plain_lines(path)
    assert len(lines) == 19094
    # "ERROR: <" is 8 characters, then an 18-character song id, a space, an 18-character track id.
    expected = {(line[8:26], line[27:45]) for line in lines}

    parsed = listening.read_sid_mismatches(str(path))

    assert parsed.rejections == []
    assert parsed.lines_read == 19094
    assert parsed.data == expected
    assert len(parsed.data) == 18972  # 122 lines repeat a pair seen on an earlier line
    assert ("SOUMNSI12AB0182807", "TRMMGKQ128F9325E10") in parsed.data  # the first line
    assert ("SOHQOLH12AAF3B4C38", "TRYYXFI128F932D175") in parsed.data  # empty artist/title


# --- listens: formats and tolerated noise ---------------------------------------------------

def test_csv_copy_with_header_bom_crlf_and_blank_lines():
    text = (f"\ufeffuser_id,song_id,listen_count\r\n{USER},{SONG},3\r\n\r\n   \n"
            f"  {USER},SOEGIYH12A6D4FC0E3,1  \r\n")
    records = list(listening.parse_listen_lines(text.splitlines(keepends=True)))
    assert records == [Listen(USER, SONG, 3), Listen(USER, "SOEGIYH12A6D4FC0E3", 1)]


def test_header_with_bom_and_bytes_is_skipped_not_rejected():
    assert parse_listen_line("\ufeffuser_id,song_id,listen_count\n") is None
    assert parse_listen_line(b"\xef\xbb\xbfuser_id,song_id,listen_count\r\n") is None
    assert parse_listen_line("user_id\tsong_id\tplay_count") is None
    assert parse_listen_line("user_id,song_id,listen_count",
                             user_id_pattern=re.compile(r"\w+")) is None


@pytest.mark.parametrize("line", ["", "\n", "\r\n", "   \t  ", "\t\t\n", "\ufeff", "\ufeff\r\n",
                                  b"", b"\n"])
def test_blank_lines_are_not_data(line):
    assert parse_listen_line(line) is None


@pytest.mark.parametrize("line", [
    f"\ufeff{USER}\t{SONG}\t1", f"{USER}\t{SONG}\t1\r\n", f"  {USER}\t{SONG}\t1  ",
    f"{USER}, {SONG} , 1", f"{USER},{SONG},1\n", f"{USER}\t{SONG}\t0001",
    f"{USER}\t{SONG}\t1".encode(), b"\xef\xbb\xbf" + f"{USER},{SONG},1\r\n".encode(),
])
def test_tolerated_variants_parse(line):
    assert parse_listen_line(line) == Listen(USER, SONG, 1)


def test_is_header_and_detect_delimiter():
    assert listening.is_header("user_id,song_id,listen_count")
    assert listening.is_header(" USER_ID,Song_Id,Listen_Count\r\n")
    assert listening.is_header(b"\xef\xbb\xbfuser_id,song_id,listen_count")
    assert not listening.is_header(f"{USER},{SONG},1")
    assert not listening.is_header("user_id,song_id")
    assert listening.detect_delimiter(f"{USER}\t{SONG}\t1") == "\t"
    assert listening.detect_delimiter(f"{USER},{SONG},1") == ","
    assert listening.detect_delimiter("nothing") is None


# --- listens: every rejection reason ---------------------------------------------------------

@pytest.mark.parametrize("line, reason", [
    (f"{USER}\t{SONG}", "wrong_field_count"),
    (f"{USER}\t{SONG}\t1\t7", "wrong_field_count"),
    (f"{USER} {SONG} 1", "wrong_field_count"),
    (f"{USER}\t{SONG},1", "wrong_field_count"),  # one delimiter per line
    (f"\t{SONG}\t1", "empty_user_id"),  # tabs are not stripped: they are field separators
    (f",{SONG},1", "empty_user_id"),
    (f"{USER}\t\t1", "empty_song_id"),
    (f"{USER},,1", "empty_song_id"),
    (f"{USER[:-1]}\t{SONG}\t1", "bad_user_id"),  # 39 characters
    (f"{USER}0\t{SONG}\t1", "bad_user_id"),  # 41
    (f"{USER[:-1]}g\t{SONG}\t1", "bad_user_id"),  # not hex
    (f"{USER}\tTRMMMYQ128F932D901\t1", "bad_song_id"),
    (f"{USER}\tSObonkr12A58A7A7E0\t1", "bad_song_id"),
    (f"{USER}\t{SONG}X\t1", "bad_song_id"),
    (f"{USER}\t{SONG}\tabc", "bad_play_count"),
    (f"{USER}\t{SONG}\t1.5", "bad_play_count"),
    (f"{USER}\t{SONG}\t2.0", "bad_play_count"),
    (f"{USER}\t{SONG}\t", "bad_play_count"),
    (f"{USER}\t{SONG}\t1_000", "bad_play_count"),
    (f"{USER}\t{SONG}\t+3", "bad_play_count"),
    (f"{USER}\t{SONG}\t٣", "bad_play_count"),  # an Arabic-Indic digit int() would accept
    (f"{USER}\t{SONG}\t0", "non_positive_play_count"),
    (f"{USER}\t{SONG}\t-4", "non_positive_play_count"),
    (f"{USER}\t{SONG}\t100001", "play_count_too_large"),
    (f"{USER}\t{SONG}\t" + "9" * 5000, "play_count_too_large"),
    (b"\xff" + f"{USER}\t{SONG}\t1".encode(), "bad_utf8"),
    (f"{USER}\t{SONG}\t1" + " " * 10_000, "line_too_long"),
])
def test_each_bad_line_is_rejected_with_its_reason(line, reason):
    record = parse_listen_line(line, source="gs://bucket/triplets.txt", line_number=7)
    assert isinstance(record, Rejection)
    assert record.reason == reason, record.detail
    assert record.detail and record.source == "gs://bucket/triplets.txt"
    assert record.line_number == 7
    assert len(record.raw) <= listening.RAW_CHARS_KEPT


def test_rejection_details_read_as_sentences():
    record = parse_listen_line(f"{USER}\t{SONG}\tabc")
    assert record == Rejection(reason="bad_play_count",
                               detail="play count 'abc' is not a whole number",
                               raw=f"{USER}\t{SONG}\tabc")
    assert "40 hexadecimal" in parse_listen_line(f"x\t{SONG}\t1").detail
    assert record.to_json_dict()["reason"] == "bad_play_count"


def test_huge_line_is_rejected_without_being_split_and_raw_is_truncated():
    line = f"{USER}\t{SONG}\t1\t" * 500_000  # ~33 MB, millions of fields if split
    record = parse_listen_line(line)
    assert record.reason == "line_too_long"
    assert record.raw == line[:200]
    assert parse_listen_line(line.encode()).reason == "line_too_long"


def test_default_user_id_pattern_survives_pickling():
    pattern = pickle.loads(pickle.dumps(listening.TASTE_PROFILE_USER_ID))
    assert parse_listen_line(f"{USER}\t{SONG}\t1", user_id_pattern=pattern) == Listen(USER, SONG, 1)
    assert "40 hexadecimal" in parse_listen_line(f"x\t{SONG}\t1", user_id_pattern=pattern).detail


def test_user_id_check_can_be_relaxed_and_caps_are_parameters():
    assert parse_listen_line(f"user42,{SONG},3").reason == "bad_user_id"
    assert parse_listen_line(f"user42,{SONG},3", user_id_pattern=None) == Listen("user42", SONG, 3)
    assert parse_listen_line(f"user 42,{SONG},3", user_id_pattern=None).reason == "bad_user_id"
    assert parse_listen_line(f",{SONG},3", user_id_pattern=None).reason == "empty_user_id"
    digits = re.compile(r"[0-9]+")
    assert parse_listen_line(f"42,{SONG},3", user_id_pattern=digits) == Listen("42", SONG, 3)
    assert "does not match" in parse_listen_line(f"x,{SONG},3", user_id_pattern=digits).detail
    assert parse_listen_line(f"{USER}\t{SONG}\t500", max_play_count=100).reason == (
        "play_count_too_large")
    assert parse_listen_line(f"{USER}\t{SONG}\t5000000000", max_play_count=10**10) == Listen(
        USER, SONG, 5_000_000_000)
    assert parse_listen_line(f"{USER}\t{SONG}\t1", max_line_chars=20).reason == "line_too_long"


def test_read_listens_numbers_lines_and_handles_gzip_and_bad_utf8(tmp_path):
    path = tmp_path / "triplets.txt.gz"
    with gzip.open(path, "wb") as out:
        out.write(f"{USER}\t{SONG}\t2\n\n".encode() + b"\xc3\x28\tx\t1\n"
                  + f"{USER}\t{SONG}\t0".encode())
    records = listening.read_listens(str(path))
    assert records[0] == Listen(USER, SONG, 2, str(path))  # a listen names its file too
    assert [(r.reason, r.line_number, r.source) for r in records[1:]] == [
        ("bad_utf8", 3, str(path)), ("non_positive_play_count", 4, str(path))]
    assert records[1].raw == "\\xc3(\tx\t1\n"


# --- side files ------------------------------------------------------------------------------

def test_kaggle_users_reports_duplicates_and_bad_ids_and_keeps_order():
    other = "d7083f5e1d50c264277d624340edaaf3dc16095b"
    parsed = listening.parse_kaggle_users(
        [f"\ufeff{USER}\r\n", "\n", f"{other}\n", f"{USER}\n", "not-a-user\n", b"\xff\xfe\n",
         other])
    assert parsed.data == [USER, other]
    assert parsed.lines_read == 7
    assert [(r.reason, r.line_number) for r in parsed.rejections] == [
        ("duplicate_user_id", 4), ("bad_user_id", 5), ("bad_utf8", 6), ("duplicate_user_id", 7)]
    assert "line 1" in parsed.rejections[0].detail
    relaxed = listening.parse_kaggle_users(["alice", "bob", "alice"], user_id_pattern=None)
    assert relaxed.data == ["alice", "bob"]


def test_kaggle_songs_indices_and_their_problems():
    good = listening.parse_kaggle_songs(["SOAAADD12AB018A9DD 1\n", "SOAAADE12A6D4F80CC 2\r\n",
                                         "SOAAADF12A8C13DF62 3"])
    assert good.data == {"SOAAADD12AB018A9DD": 1, "SOAAADE12A6D4F80CC": 2,
                         "SOAAADF12A8C13DF62": 3}
    assert good.rejections == []

    bad = listening.parse_kaggle_songs([
        "SOAAADD12AB018A9DD 1", "SOAAADE12A6D4F80CC 1", "SOAAADD12AB018A9DD 2",
        "SOAAADF12A8C13DF62 zero", "SOAAADF12A8C13DF62 0", "SOAAADF12A8C13DF62", "XX 4",
        "SOAAADF12A8C13DF62 5"])
    assert bad.data == {"SOAAADD12AB018A9DD": 1, "SOAAADF12A8C13DF62": 5}
    assert [r.reason for r in bad.rejections] == [
        "duplicate_index", "duplicate_song_id", "bad_index", "bad_index", "wrong_field_count",
        "bad_song_id", "indices_not_contiguous"]
    file_level = bad.rejections[-1]
    assert file_level.line_number is None and "[2]" in file_level.detail


def test_song_to_tracks_rejections_and_songs_without_tracks():
    parsed = listening.parse_song_to_tracks([
        "SOAAADD12AB018A9DD\n", "SOAAADE12A6D4F80CC\tTRNCENP12903C9EF3A\tTRSKKFK128F148B615\r\n",
        "SOAAADE12A6D4F80CC\tTRNCENP12903C9EF3A", "SOAAADF12A8C13DF62\tbad",
        "nope\tTRNCENP12903C9EF3A"])
    assert parsed.data == {"SOAAADD12AB018A9DD": [],
                           "SOAAADE12A6D4F80CC": ["TRNCENP12903C9EF3A", "TRSKKFK128F148B615"]}
    assert [r.reason for r in parsed.rejections] == [
        "duplicate_song_id", "bad_track_id", "bad_song_id"]


def test_unique_tracks_keeps_text_and_rejects_bad_lines():
    parsed = listening.parse_unique_tracks([
        f"{TRACK}<SEP>SOQMMHC12AB0180CB8<SEP><SEP> A <SEP> title <SEP> more \r\n",
        f"{TRACK}<SEP>SOQMMHC12AB0180CB8<SEP>x<SEP>y", "TRMMMKD128F425225D<SEP>SOVFVAK12A8C1350D9",
        "bad<SEP>SOVFVAK12A8C1350D9<SEP>a<SEP>t", "TRMMMKD128F425225D<SEP>bad<SEP>a<SEP>t"])
    assert parsed.data == {TRACK: listening.Track(TRACK, "SOQMMHC12AB0180CB8", "",
                                                  " A <SEP> title <SEP> more ")}
    assert [r.reason for r in parsed.rejections] == [
        "duplicate_track_id", "wrong_field_count", "bad_track_id", "bad_song_id"]


def test_sid_mismatches_unrecognised_lines():
    parsed = listening.parse_sid_mismatches([
        "ERROR: <SOUMNSI12AB0182807 TRMMGKQ128F9325E10> A  -  B  !=  C  -  D\r\n", "",
        "WARNING: <SOUMNSI12AB0182807 TRMMGKQ128F9325E10> x", "ERROR: <SOUMNSI12AB0182807>"])
    assert parsed.data == {("SOUMNSI12AB0182807", "TRMMGKQ128F9325E10")}
    assert [(r.reason, r.line_number) for r in parsed.rejections] == [
        ("unrecognised_line", 3), ("unrecognised_line", 4)]


def test_read_helpers_decode_per_line_without_final_newline(tmp_path):
    path = tmp_path / "users.txt"
    path.write_bytes(USER.encode() + b"\r\n\xe9t\xe9\n"
                     + b"d7083f5e1d50c264277d624340edaaf3dc16095b")
    parsed = listening.read_kaggle_users(str(path))
    assert parsed.data == [USER, "d7083f5e1d50c264277d624340edaaf3dc16095b"]
    assert [(r.reason, r.line_number, r.source) for r in parsed.rejections] == [
        ("bad_utf8", 2, str(path))]


# --- properties ------------------------------------------------------------------------------

# The same check spelt differently, so that parse_listen_line takes its slow path.
SLOW_PATH_USER_ID = re.compile("(?:" + listening.TASTE_PROFILE_USER_ID.pattern + ")")
hex_user = st.text(alphabet="0123456789abcdef", min_size=40, max_size=40)
song_id = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=16,
                  max_size=16).map(lambda tail: "SO" + tail)
noisy_text = st.one_of(
    st.text(max_size=300),
    st.lists(st.sampled_from([USER, SONG, "\t", ",", "1", "0", "-", "\r", "\n", " ", "\ufeff",
                              "user_id", "song_id", "listen_count", "9" * 12, "é", "SO", "x"]),
             max_size=12).map("".join),
)


def _outcome(record):
    return record if not isinstance(record, Rejection) else record.reason


@settings(max_examples=300, deadline=None)
@given(line=st.one_of(noisy_text, st.binary(max_size=300),
                      noisy_text.map(lambda text: text.encode("utf-8"))))
def test_parse_never_raises_and_fast_path_agrees_with_full_checks(line):
    record = parse_listen_line(line)
    assert record is None or isinstance(record, (Listen, Rejection))
    if isinstance(record, Rejection):
        assert record.reason and record.detail and len(record.raw) <= listening.RAW_CHARS_KEPT
    assert _outcome(record) == _outcome(parse_listen_line(line, user_id_pattern=SLOW_PATH_USER_ID))
    relaxed = parse_listen_line(line, user_id_pattern=None, max_play_count=1, max_line_chars=50)
    assert relaxed is None or isinstance(relaxed, (Listen, Rejection))


@settings(deadline=None)
@given(user=hex_user, song=song_id, count=st.integers(1, listening.DEFAULT_MAX_PLAY_COUNT),
       delimiter=st.sampled_from(["\t", ","]), ending=st.sampled_from(["", "\n", "\r\n", "  "]),
       bom=st.booleans(), as_bytes=st.booleans())
def test_valid_triplets_round_trip(user, song, count, delimiter, ending, bom, as_bytes):
    line = ("\ufeff" if bom else "") + delimiter.join([user, song, str(count)]) + ending
    assert parse_listen_line(line.encode() if as_bytes else line) == Listen(user, song, count)


@settings(max_examples=100, deadline=None)
@given(lines=st.lists(st.one_of(noisy_text, st.binary(max_size=80)), max_size=8))
def test_side_file_parsers_never_raise(lines):
    for parse in (listening.parse_kaggle_users, listening.parse_kaggle_songs,
                  listening.parse_song_to_tracks, listening.parse_unique_tracks,
                  listening.parse_sid_mismatches):
        parsed = parse(lines)
        assert parsed.lines_read == len(lines)
        assert all(isinstance(r, Rejection) and r.reason for r in parsed.rejections)


@pytest.mark.parametrize("reader", [listening.read_listens, listening.read_song_to_tracks,
                                    listening.read_kaggle_users])
def test_read_helpers_refuse_a_cut_compressed_file_naming_it(tmp_path, reader):
    """Side files (song_to_tracks, mismatches, users, kaggle_songs) are read whole on one
    worker: a cut .gz stops the job with an error naming the file, not a shorter file."""
    path = tmp_path / "side.txt.gz"
    whole = gzip.compress("".join(f"{USER}\t{SONG}\t{i + 1}\n" for i in range(3000)).encode())
    path.write_bytes(whole[: len(whole) * 2 // 3])
    with pytest.raises(listening.CompressedFileError) as raised:
        reader(str(path))
    assert raised.value.reason == "truncated_file" and str(path) in str(raised.value)
    assert 0 < raised.value.lines < 3000
    assert f"{raised.value.lines:,} complete lines" in raised.value.detail


def test_split_lines_cuts_an_endless_line_and_keeps_counting_lines(monkeypatch):
    import io
    monkeypatch.setattr(listening, "MAX_LINE_BYTES", 8)
    lines = list(listening.split_lines(io.BytesIO(b"ab\r\n" + b"x" * 30 + b"\nlast")))
    assert lines == [b"ab", b"x" * 8, b"last"]
