import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from msd import listening
from transforms import listens as listens_lib

U1, U2, U3 = "a" * 40, "b" * 40, "c" * 40
SONG_A, SONG_B, SONG_C = "SOAAAAAAAAAAAAAAAA", "SOBBBBBBBBBBBBBBBB", "SOCCCCCCCCCCCCCCCC"
TRACK_A1, TRACK_A2, TRACK_B = "TRAAAAAAAAAAAAAAA1", "TRAAAAAAAAAAAAAAA2", "TRBBBBBBBBBBBBBBBB"


def test_songs_join_on_the_song_id_the_features_carry():
    track_of_song, mismatched = listens_lib.catalogue_song_tracks(
        [(TRACK_A2, SONG_A), (TRACK_A1, SONG_A), (TRACK_B, SONG_B)], None, set())
    assert track_of_song == {SONG_A: TRACK_A1, SONG_B: TRACK_B}  # lowest track id stands in
    assert mismatched == set()


def test_song_to_tracks_and_mismatches_decide_the_track():
    catalogue = [(TRACK_A1, "SOXXXXXXXXXXXXXXXX"), (TRACK_A2, SONG_A), (TRACK_B, SONG_B)]
    song_to_tracks = {SONG_A: [TRACK_A1, TRACK_A2], SONG_B: [TRACK_B], SONG_C: ["TRNOTINCATALOGUE00"]}
    track_of_song, mismatched = listens_lib.catalogue_song_tracks(
        catalogue, song_to_tracks, {(SONG_A, TRACK_A1), (SONG_B, TRACK_B)})
    assert track_of_song == {SONG_A: TRACK_A2}
    assert mismatched == {SONG_B}  # its only catalogue track is a known mismatch


def test_user_history_sums_duplicate_listens_and_counts_unknown_ones():
    history = listens_lib.user_history(U1, [(TRACK_B, 2), (TRACK_A1, 1), (TRACK_B, 3), (None, 4)])
    assert history == listens_lib.UserHistory(U1, (TRACK_A1, TRACK_B), (1, 5), 1)
    assert history.size == 2


def test_listens_become_histories_and_every_unused_listen_a_dead_letter(tmp_path):
    listens_file = tmp_path / "listens.txt"
    listens_file.write_bytes(
        f"\ufeff{U1}\t{SONG_A}\t2\r\n{U1}\t{SONG_A}\t3\n{U1}\t{SONG_B}\t1\n\n"
        f"{U2}\t{SONG_C}\t1\n{U3}\t{SONG_B}\tmany\n{U3}\t{SONG_B}\t1".encode() + b"\n\xff\xfe\n")
    with TestPipeline() as pipeline:
        parsed = pipeline | listens_lib.ReadListens([str(listens_file)])
        track_of_song = pipeline | "T" >> beam.Create([{SONG_A: TRACK_A1, SONG_B: TRACK_B}])
        mismatched = pipeline | "M" >> beam.Create([set()])
        histories, unresolved = parsed[listens_lib.LISTENS] | listens_lib.GroupHistories(
            track_of_song, mismatched)
        assert_that(histories, equal_to([
            listens_lib.UserHistory(U1, (TRACK_A1, TRACK_B), (5, 1), 0),
            listens_lib.UserHistory(U2, (), (), 1),
            listens_lib.UserHistory(U3, (TRACK_B,), (1,), 0)]), label="histories")
        assert_that(unresolved | beam.Map(lambda r: (r.reason, r.raw)),
                    equal_to([("unknown_song", f"{U2}\t{SONG_C}\t1")]), label="unresolved")
        assert_that(parsed[listens_lib.REJECTED] | beam.Map(lambda r: (r.reason, r.source)),
                    equal_to([("bad_play_count", str(listens_file)),
                              ("bad_utf8", str(listens_file))]), label="rejected")
