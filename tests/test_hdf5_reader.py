import io

import h5py
import numpy as np
import pytest

from msd import hdf5_reader
from tests.test_timbre import independent_statistics

RICK_ASTLEY = "A/X/L/TRAXLZU12903D05F94.h5"


def parse_path(path, **kwargs):
    return list(hdf5_reader.parse_msd_file(path.read_bytes(), str(path), **kwargs))


def test_real_files_give_their_ids_and_metadata(real_msd_dir):
    records = {}
    for path in sorted(real_msd_dir.rglob("*.h5")):
        (record,) = parse_path(path)
        records[path.stem] = record
    assert len(records) == 8
    rick = records["TRAXLZU12903D05F94"]
    assert (rick.track_id, rick.song_id, rick.artist_name, rick.title, rick.release, rick.year) == (
        "TRAXLZU12903D05F94", "SOCWJDB12A58A776AF", "Rick Astley", "Never Gonna Give You Up",
        "Big Tunes - Back 2 The 80s", 1987)
    assert rick.duration == pytest.approx(211.69587) and rick.num_segments == 935
    soul_deep = records["TRAAABD128F429CF47"]
    assert (soul_deep.artist_name, soul_deep.title, soul_deep.year) == (
        "The Box Tops", "Soul Deep", 1969)
    assert records["TRBDBKZ128F425D023"].num_segments == 11  # just above the minimum of 10
    songs = [r for r in records.values() if isinstance(r, hdf5_reader.Song)]
    assert all(song.track_id == stem for stem, song in records.items() if song in songs)
    assert len(songs) == 7


def test_the_five_segment_song_is_rejected_with_a_reason(real_msd_dir):
    (record,) = parse_path(real_msd_dir / "B/D/X/TRBDXOD128F422C47B.h5")
    assert isinstance(record, hdf5_reader.Rejection)
    assert (record.track_id, record.reason, record.level) == (
        "TRBDXOD128F422C47B", "too_few_segments", "song")
    assert "5 segments" in record.detail


def test_statistics_of_a_real_file_match_numpy_on_its_timbre(real_msd_dir):
    path = real_msd_dir / RICK_ASTLEY
    with h5py.File(path, "r") as h5:
        expected = independent_statistics(h5["analysis/segments_timbre"][()])
    (song,) = parse_path(path)
    np.testing.assert_allclose(song.raw_features, expected, rtol=1e-10)


def test_invalid_real_files_are_file_level_rejections(invalid_msd_dir):
    for path in sorted(invalid_msd_dir.glob("*.h5")):
        (record,) = parse_path(path)
        assert isinstance(record, hdf5_reader.Rejection) and record.level == "file"
        assert record.reason == "not_msd_file" and "analysis/songs" in record.detail


def write_aggregate(paths, starts_override=None, track_ids_override=None) -> bytes:
    """An aggregate file built from real single-song files, as the MSD's own tools lay it out."""
    analysis, metadata, musicbrainz, timbres = [], [], [], []
    for path in paths:
        with h5py.File(path, "r") as h5:
            analysis.append(h5["analysis/songs"][()])
            metadata.append(h5["metadata/songs"][()])
            musicbrainz.append(h5["musicbrainz/songs"][()])
            timbres.append(h5["analysis/segments_timbre"][()])
    analysis = np.concatenate(analysis)
    analysis["idx_segments_timbre"] = np.cumsum([0] + [len(t) for t in timbres[:-1]])
    if starts_override is not None:
        analysis["idx_segments_timbre"] = starts_override
    if track_ids_override is not None:
        analysis["track_id"] = track_ids_override
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as h5:
        h5["analysis/songs"] = analysis
        h5["metadata/songs"] = np.concatenate(metadata)
        h5["musicbrainz/songs"] = np.concatenate(musicbrainz)
        h5["analysis/segments_timbre"] = np.concatenate(timbres)
    return buffer.getvalue()


def test_aggregate_file_slices_each_song_by_idx_segments_timbre(real_msd_dir):
    paths = sorted(real_msd_dir.rglob("*.h5"))
    singles = {r.track_id: r for path in paths for r in parse_path(path)}
    records = list(hdf5_reader.parse_msd_file(write_aggregate(paths), "agg.h5"))
    assert [r.track_id for r in records] == [p.stem for p in paths]
    for record in records:
        single = singles[record.track_id]
        assert type(record) is type(single)
        if isinstance(record, hdf5_reader.Song):
            np.testing.assert_array_equal(record.raw_features, single.raw_features)
            assert (record.song_id, record.title, record.num_segments) == (
                single.song_id, single.title, single.num_segments)
        else:
            assert record.reason == single.reason


def test_songs_carry_their_row_in_the_file(real_msd_dir):
    paths = sorted(real_msd_dir.rglob("*.h5"))
    records = list(hdf5_reader.parse_msd_file(write_aggregate(paths), "agg.h5"))
    assert [(r.track_id, r.row) for r in records if isinstance(r, hdf5_reader.Song)] == [
        (p.stem, row) for row, p in enumerate(paths) if p.stem != "TRBDXOD128F422C47B"]
    (single,) = parse_path(real_msd_dir / RICK_ASTLEY)
    assert single.row == 0


def test_aggregate_file_with_bad_indices_rejects_the_songs_they_touch(real_msd_dir):
    paths = sorted(real_msd_dir.rglob("*.h5"))[:3]
    with h5py.File(paths[0], "r") as first:
        n0 = first["analysis/segments_timbre"].shape[0]
    # the boundary between songs 1 and 2 lies before the one between 0 and 1: every song that
    # touches either boundary is suspect, here all three.
    data = write_aggregate(paths, starts_override=[0, n0 + 50, n0 + 10])
    records = list(hdf5_reader.parse_msd_file(data, "agg.h5"))
    assert [r.reason for r in records] == ["bad_segment_index"] * 3
    out_of_range = write_aggregate(paths, starts_override=[0, 10, 10 ** 7])
    assert [getattr(r, "reason", None) for r in
            hdf5_reader.parse_msd_file(out_of_range, "agg.h5")][1:] == [
        "bad_segment_index", "bad_segment_index"]


def real_bytes(real_msd_dir) -> bytes:
    return (real_msd_dir / RICK_ASTLEY).read_bytes()


@pytest.mark.parametrize("make_bytes, reason", [
    (lambda real: b"", "empty_file"),
    (lambda real: real[: len(real) // 100], "not_hdf5"),
    (lambda real: real[: len(real) // 2], None),
    (lambda real: real[: len(real) * 99 // 100], None),
    (lambda real: np.random.default_rng(0).bytes(50_000), "not_hdf5"),
])
def test_broken_bytes_become_one_file_rejection(real_msd_dir, make_bytes, reason):
    records = list(hdf5_reader.parse_msd_file(make_bytes(real_bytes(real_msd_dir)),
                                              "x/TRAXLZU12903D05F94.h5"))
    assert len(records) == 1 and isinstance(records[0], hdf5_reader.Rejection)
    assert records[0].level == "file" and records[0].track_id == "TRAXLZU12903D05F94"
    if reason:
        assert records[0].reason == reason
    assert records[0].detail


def replaced_timbre(real_msd_dir, timbre) -> bytes:
    buffer = io.BytesIO(real_bytes(real_msd_dir))
    with h5py.File(buffer, "r+") as h5:
        del h5["analysis/segments_timbre"]
        h5["analysis/segments_timbre"] = timbre
    return buffer.getvalue()


@pytest.mark.parametrize("timbre, reason", [
    (np.ones((935, 11)), "bad_timbre_shape"),
    (np.ones((935, 13)), "bad_timbre_shape"),
    (np.ones(935 * 12), "bad_timbre_shape"),
    (np.ones((935, 12), dtype=np.int32), "bad_timbre_dtype"),
])
def test_wrong_timbre_datasets_are_rejected(real_msd_dir, timbre, reason):
    (record,) = hdf5_reader.parse_msd_file(replaced_timbre(real_msd_dir, timbre), "t.h5")
    assert record.reason == reason


def test_nan_timbre_and_all_zero_timbre_are_song_rejections(real_msd_dir):
    nan_timbre = np.ones((935, 12))
    nan_timbre[3, 4] = np.nan
    (record,) = hdf5_reader.parse_msd_file(replaced_timbre(real_msd_dir, nan_timbre), "t.h5")
    assert (record.reason, record.level) == ("non_finite_timbre", "song")
    (record,) = hdf5_reader.parse_msd_file(replaced_timbre(real_msd_dir, np.zeros((935, 12))), "t.h5")
    assert record.reason == "zero_features"


def test_more_segments_than_the_cap_are_refused_before_reading(real_msd_dir):
    (record,) = hdf5_reader.parse_msd_file(real_bytes(real_msd_dir), "t.h5", max_segments=900)
    assert (record.reason, record.level) == ("too_many_segments", "file")


def test_min_segments_is_a_parameter(real_msd_dir):
    (record,) = parse_path(real_msd_dir / "B/D/X/TRBDXOD128F422C47B.h5", min_segments=5)
    assert isinstance(record, hdf5_reader.Song) and record.num_segments == 5


def test_songs_around_a_negative_start_are_rejected_and_the_rest_kept(real_msd_dir):
    paths = sorted(real_msd_dir.rglob("*.h5"))[:3]
    sizes = []
    for path in paths:
        with h5py.File(path, "r") as h5:
            sizes.append(h5["analysis/segments_timbre"].shape[0])
    data = write_aggregate(paths, starts_override=[0, -3, sizes[0] + sizes[1]])
    records = list(hdf5_reader.parse_msd_file(data, "agg.h5"))
    assert [getattr(r, "reason", "song") for r in records] == [
        "bad_segment_index", "bad_segment_index", "song"]


def test_tables_declared_huge_are_refused_before_reading(real_msd_dir):
    buffer = io.BytesIO(real_bytes(real_msd_dir))
    with h5py.File(buffer, "r+") as h5:
        for group in ("analysis", "metadata", "musicbrainz"):
            table = h5[f"{group}/songs"][()]
            del h5[f"{group}/songs"]
            h5.create_dataset(f"{group}/songs", data=table, maxshape=(None,), chunks=(1,))
            h5[f"{group}/songs"].resize((10 ** 9,))
    (record,) = hdf5_reader.parse_msd_file(buffer.getvalue(), "t.h5")
    assert (record.reason, record.level) == ("too_many_songs", "file")


def test_data_outside_the_file_is_not_followed(real_msd_dir, tmp_path):
    target = tmp_path / "target.h5"
    target.write_bytes(real_bytes(real_msd_dir))
    buffer = io.BytesIO(real_bytes(real_msd_dir))
    with h5py.File(buffer, "r+") as h5:
        del h5["analysis/segments_timbre"]
        h5["analysis/segments_timbre"] = h5py.ExternalLink(str(target), "/analysis/segments_timbre")
    (record,) = hdf5_reader.parse_msd_file(buffer.getvalue(), "t.h5")
    assert (record.reason, record.level) == ("external_data", "file")
    assert "ExternalLink" in record.detail


# --------------------------------------------------------------------------------------------
# The analysis fields carried beside year and duration (loudness, tempo, key, mode,
# time_signature)
# --------------------------------------------------------------------------------------------

def analysis_row(path) -> dict:
    with h5py.File(path, "r") as h5:
        row = h5["analysis/songs"][0]
    return {name: row[name].item() for name in hdf5_reader.SONG_FIELDS}


def song_field_values(song: hdf5_reader.Song) -> dict:
    return {name: getattr(song, name) for name in hdf5_reader.SONG_FIELDS}


def test_song_fields_of_real_files_are_their_analysis_row(real_msd_dir):
    seen = {name: set() for name in hdf5_reader.SONG_FIELDS}
    for path in sorted(real_msd_dir.rglob("*.h5")):
        (song,) = parse_path(path, min_segments=2)  # the 5-segment file too
        expected = analysis_row(path)
        assert song_field_values(song) == expected, path.name
        assert song.replaced_fields == ()
        assert [type(getattr(song, name)) for name in hdf5_reader.SONG_FIELDS] == [
            float, float, int, int, int]
        for name, value in expected.items():
            seen[name].add(value)
    # What the real sample holds (so the test meets the real range, not a guess).
    assert song_field_values(parse_path(real_msd_dir / RICK_ASTLEY)[0]) == {
        "loudness": -7.75, "tempo": 113.359, "key": 1, "mode": 1, "time_signature": 4}
    assert 0.0 in seen["tempo"]  # TRBDXOD128F422C47B: the MSD's tempo 0 (none found), kept
    assert seen["mode"] == {0, 1} and seen["time_signature"] == {3, 4, 7}
    assert seen["key"] == {0, 1, 6, 7, 9, 10, 11}


def test_aggregate_files_give_each_song_its_own_row(real_msd_dir):
    paths = sorted(real_msd_dir.rglob("*.h5"))
    records = list(hdf5_reader.parse_msd_file(write_aggregate(paths), "agg.h5", min_segments=2))
    assert [song_field_values(r) for r in records] == [analysis_row(p) for p in paths]


def edited_analysis(real_msd_dir, **values) -> bytes:
    """Rick Astley's file with some analysis/songs fields set to ``values``."""
    buffer = io.BytesIO(real_bytes(real_msd_dir))
    with h5py.File(buffer, "r+") as h5:
        table = h5["analysis/songs"][()]
        for name, value in values.items():
            table[name] = value
        h5["analysis/songs"][...] = table
    return buffer.getvalue()


UNKNOWN = hdf5_reader.UNKNOWN
RICK_FIELDS = {"loudness": -7.75, "tempo": 113.359, "key": 1, "mode": 1, "time_signature": 4}


@pytest.mark.parametrize("values, replaced", [
    ({"loudness": np.nan}, ("loudness",)),
    ({"loudness": -np.inf, "tempo": np.inf}, ("loudness", "tempo")),
    ({"loudness": 1e300}, ("loudness",)),
    ({"tempo": np.nan}, ("tempo",)),
    ({"tempo": -120.0}, ("tempo",)),
    ({"tempo": 1e6}, ("tempo",)),
    ({"key": 12}, ("key",)),
    ({"key": -2}, ("key",)),
    ({"mode": 2}, ("mode",)),
    ({"mode": -7}, ("mode",)),
    ({"time_signature": -1}, ("time_signature",)),
    ({"time_signature": 2}, ("time_signature",)),
    ({"time_signature": 99}, ("time_signature",)),
    ({"loudness": np.nan, "tempo": -1.0, "key": 40, "mode": 3, "time_signature": -4},
     hdf5_reader.SONG_FIELDS),
])
def test_nonsense_song_fields_are_stored_as_unknown_and_the_song_kept(real_msd_dir, values,
                                                                      replaced):
    (song,) = hdf5_reader.parse_msd_file(edited_analysis(real_msd_dir, **values), "t.h5")
    assert isinstance(song, hdf5_reader.Song) and song.track_id == "TRAXLZU12903D05F94"
    assert song.replaced_fields == replaced
    assert song_field_values(song) == {name: UNKNOWN[name] if name in replaced else value
                                       for name, value in RICK_FIELDS.items()}
    (clean,) = parse_path(real_msd_dir / RICK_ASTLEY)
    np.testing.assert_array_equal(song.raw_features, clean.raw_features)


@pytest.mark.parametrize("values", [
    {"key": -1, "mode": -1},  # the Echo Nest's "none detected": already the unknown value
    {"tempo": 0.0, "time_signature": 0},  # the MSD's own "none found"
    {"loudness": -60.0, "tempo": 262.8, "time_signature": 1},
    {"loudness": 4.3, "time_signature": 7, "key": 11, "mode": 0},
])
def test_unusual_but_real_song_fields_are_kept_as_they_are(real_msd_dir, values):
    (song,) = hdf5_reader.parse_msd_file(edited_analysis(real_msd_dir, **values), "t.h5")
    assert song.replaced_fields == ()
    assert song_field_values(song) == {**RICK_FIELDS, **values}


def rewritten_analysis(real_msd_dir, fields) -> bytes:
    """Rick Astley's file whose analysis/songs table has the fields ``fields`` (name → (dtype,
    value)) in place of its own of those names, or without them (value None)."""
    buffer = io.BytesIO(real_bytes(real_msd_dir))
    with h5py.File(buffer, "r+") as h5:
        old = h5["analysis/songs"][()]
        kept = [(name, old.dtype[name]) for name in old.dtype.names if name not in fields]
        added = [(name, dtype) for name, (dtype, value) in fields.items() if value is not None]
        table = np.zeros(1, dtype=kept + added)
        for name, _ in kept:
            table[name] = old[name]
        for name, (_, value) in fields.items():
            if value is not None:
                table[name] = value
        del h5["analysis/songs"]
        h5["analysis/songs"] = table
    return buffer.getvalue()


def test_a_table_without_the_song_fields_gives_unknowns_not_a_rejection(real_msd_dir):
    data = rewritten_analysis(real_msd_dir, {name: (None, None)
                                             for name in hdf5_reader.SONG_FIELDS})
    (song,) = hdf5_reader.parse_msd_file(data, "t.h5")
    assert isinstance(song, hdf5_reader.Song)
    assert song.replaced_fields == hdf5_reader.SONG_FIELDS
    assert song_field_values(song) == UNKNOWN
    data = rewritten_analysis(real_msd_dir, {"tempo": (None, None)})
    (song,) = hdf5_reader.parse_msd_file(data, "t.h5")
    assert song.replaced_fields == ("tempo",)
    assert song_field_values(song) == {**RICK_FIELDS, "tempo": 0.0}


def test_song_fields_of_other_types_are_read_or_stored_as_unknown(real_msd_dir):
    data = rewritten_analysis(real_msd_dir, {
        "loudness": ("<f4", -7.75), "tempo": ("S8", b"fast"), "key": ("<f8", 3.0),
        "mode": ("<f8", 0.5), "time_signature": ("<i8", 4)})
    (song,) = hdf5_reader.parse_msd_file(data, "t.h5")
    assert song.replaced_fields == ("tempo", "mode")
    assert song_field_values(song) == {"loudness": -7.75, "tempo": 0.0, "key": 3, "mode": -1,
                                       "time_signature": 4}
