"""Tests of the synthetic MSD generator (msd/synthetic.py, pipelines/synthesize.py): the file
schema against a real MSD file, determinism, layout, value ranges, aggregate-file indices, the
planted styles and scenes and the listening data."""
import hashlib
import json
import os
import pathlib
import re

import h5py
import numpy as np
import pytest

from msd import hdf5_reader
from msd import listening
from msd import synthetic
from pipelines import synthesize as synthesize_cli
from tests.conftest import sample_data_path

TRACK_ID = re.compile(r"TR[A-Z0-9]{16}")
SONG_ID = re.compile(r"SO[A-Z0-9]{16}")
REAL_FILE_PARTS = ("msd", "data", "A", "X", "L", "TRAXLZU12903D05F94.h5")
SEED = 7


@pytest.fixture(scope="session")
def single_song_set(tmp_path_factory) -> synthetic.SynthesisSummary:
    """60 songs, one file each, 150 users."""
    out = tmp_path_factory.mktemp("synthetic_single")
    return synthetic.synthesize(str(out), 60, num_users=150, seed=SEED, workers=1,
                                progress=False)


@pytest.fixture(scope="session")
def aggregate_set(tmp_path_factory) -> synthetic.SynthesisSummary:
    """The same 60 songs as ``single_song_set`` in aggregate files of 7 songs (the last one
    holds 4)."""
    out = tmp_path_factory.mktemp("synthetic_aggregate")
    return synthetic.synthesize(str(out), 60, seed=SEED, songs_per_file=7, workers=1,
                                progress=False)


def _file_digests(root: str) -> dict[str, str]:
    digests = {}
    for directory, _, names in os.walk(root):
        for name in names:
            path = os.path.join(directory, name)
            digests[os.path.relpath(path, root)] = hashlib.sha256(
                pathlib.Path(path).read_bytes()).hexdigest()
    return digests


def _timbre_statistics(timbre: np.ndarray) -> np.ndarray:
    """The 90 YearPredictionMSD statistics, written out with plain numpy."""
    covariance = np.cov(timbre, rowvar=False)
    return np.concatenate([timbre.mean(axis=0)] + [np.diag(covariance, k) for k in range(12)])


# ---------------------------------------------------------------------------------------------
# Schema
# ---------------------------------------------------------------------------------------------

def _type_description(type_id) -> tuple:
    if isinstance(type_id, h5py.h5t.TypeCompoundID):
        return ("compound", type_id.get_size(), tuple(
            (type_id.get_member_name(i).decode(), type_id.get_member_offset(i),
             _type_description(type_id.get_member_type(i)))
            for i in range(type_id.get_nmembers())))
    if isinstance(type_id, h5py.h5t.TypeStringID):
        return ("string", type_id.get_size(), type_id.get_strpad(), type_id.get_cset())
    return (type(type_id).__name__, type_id.get_size(), type_id.get_order())


def _attribute_descriptions(obj) -> dict:
    described = {}
    for name in obj.attrs:
        attribute = obj.attrs.get_id(name)
        value = obj.attrs[name]
        if name in ("EXTDIM", "NROWS"):  # per-file values
            value = None
        elif isinstance(value, np.floating) and np.isnan(value):
            value = "nan"
        described[name] = (_type_description(attribute.get_type()), attribute.shape, value)
    return described


def _schema(path) -> dict:
    """Everything about an MSD file that is schema, not data: groups, datasets, types,
    storage layout, filters and attributes."""
    schema = {}
    with h5py.File(path, "r") as h5:
        schema["/"] = ("group", _attribute_descriptions(h5))

        def visit(name, obj):
            if isinstance(obj, h5py.Group):
                schema[name] = ("group", _attribute_descriptions(obj))
                return
            plist = obj.id.get_create_plist()
            schema[name] = ("dataset", _type_description(obj.id.get_type()), obj.shape[1:],
                            obj.maxshape, obj.chunks, obj.compression, obj.compression_opts,
                            obj.shuffle, obj.fletcher32, plist.get_fill_time(),
                            plist.get_alloc_time(), plist.fill_value_defined(),
                            _attribute_descriptions(obj))
        h5.visititems(visit)
    return schema


def test_schema_matches_the_real_msd_files(single_song_set):
    """Against the reference file and every other real per-track file in the sample data."""
    reference = sample_data_path(*REAL_FILE_PARTS)
    real_files = sorted(reference.parents[3].rglob("TR*.h5"))
    assert reference in real_files
    ours = _schema(single_song_set.h5_paths[0])
    for real_file in real_files:
        real = _schema(real_file)
        assert sorted(ours) == sorted(real), real_file
        for name in real:
            assert ours[name] == real[name], (real_file.name, name)


def test_songs_tables_have_the_real_fields_in_order(single_song_set):
    with h5py.File(single_song_set.h5_paths[0], "r") as h5:
        assert h5["analysis/songs"].dtype.names[:4] == (
            "analysis_sample_rate", "audio_md5", "danceability", "duration")
        assert h5["analysis/songs"].dtype.itemsize == 220
        assert h5["metadata/songs"].dtype.itemsize == 5320
        assert h5["musicbrainz/songs"].dtype.names == ("idx_artist_mbtags", "year")
        assert h5["analysis/segments_timbre"].dtype == np.float64
        assert h5["analysis/segments_timbre"].shape[1] == 12
        assert h5["analysis/segments_timbre"].compression == "gzip"


def test_the_pipeline_parser_reads_every_song(single_song_set, aggregate_set):
    for summary in (single_song_set, aggregate_set):
        songs = []
        for path in summary.h5_paths:
            results = list(hdf5_reader.parse_msd_file(pathlib.Path(path).read_bytes(), path))
            assert all(isinstance(result, hdf5_reader.Song) for result in results), results
            songs.extend(results)
        styles = synthetic.read_styles(summary.styles_path)
        assert [song.track_id for song in songs] == list(styles)


# ---------------------------------------------------------------------------------------------
# Determinism, layout
# ---------------------------------------------------------------------------------------------

def test_same_seed_gives_identical_files_whatever_the_workers(single_song_set, tmp_path):
    again = synthetic.synthesize(str(tmp_path / "again"), 60, num_users=150, seed=SEED,
                                 workers=2, progress=False)
    assert again.h5_paths == [p.replace(single_song_set.output_dir, again.output_dir)
                              for p in single_song_set.h5_paths]
    digests = _file_digests(again.output_dir)
    assert {synthetic.SCENES_FILENAME, synthetic.TRIPLETS_FILENAME,
            synthetic.MANIFEST_FILENAME} <= set(digests)
    assert digests == _file_digests(single_song_set.output_dir)


def test_another_seed_gives_other_data(single_song_set, tmp_path):
    other = synthetic.synthesize(str(tmp_path / "other"), 60, num_users=150, seed=SEED + 1,
                                 workers=1, progress=False)
    assert not set(synthetic.read_styles(other.styles_path)) & set(
        synthetic.read_styles(single_song_set.styles_path))
    (_, ours), = synthetic.iter_song_timbres(single_song_set.h5_paths[:1])
    (_, theirs), = synthetic.iter_song_timbres(other.h5_paths[:1])
    assert ours.shape != theirs.shape or not np.array_equal(ours, theirs)
    assert (pathlib.Path(other.triplets_path).read_bytes()
            != pathlib.Path(single_song_set.triplets_path).read_bytes())


def test_msd_folder_layout_and_ids(single_song_set):
    data_dir = pathlib.Path(single_song_set.data_dir)
    files = sorted(data_dir.rglob("*.h5"))
    assert len(files) == single_song_set.num_songs == single_song_set.num_files
    track_ids, song_ids = set(), set()
    for path in files:
        track_id = path.stem
        assert TRACK_ID.fullmatch(track_id)
        assert path.relative_to(data_dir).parts == (track_id[2], track_id[3], track_id[4],
                                                    path.name)
        with h5py.File(path, "r") as h5:
            assert h5["analysis/songs"]["track_id"][0].decode() == track_id
            song_id = h5["metadata/songs"]["song_id"][0].decode()
        assert SONG_ID.fullmatch(song_id)
        track_ids.add(track_id)
        song_ids.add(song_id)
    assert len(track_ids) == len(song_ids) == len(files)


def test_refuses_to_mix_runs_unless_overwrite(tmp_path):
    first = synthetic.synthesize(str(tmp_path), 3, seed=1, workers=1, progress=False)
    with pytest.raises(FileExistsError):
        synthetic.synthesize(str(tmp_path), 3, seed=2, workers=1, progress=False)
    second = synthetic.synthesize(str(tmp_path), 2, seed=2, workers=1, progress=False,
                                  overwrite=True)
    remaining = sorted(str(p) for p in pathlib.Path(second.data_dir).rglob("*.h5"))
    assert remaining == sorted(second.h5_paths)
    assert not set(first.h5_paths) & set(remaining)


# ---------------------------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------------------------

def test_value_ranges_match_the_real_data(single_song_set):
    all_timbre, years, hotttnesss = [], [], []
    for path in single_song_set.h5_paths:
        with h5py.File(path, "r") as h5:
            analysis = h5["analysis/songs"][0]
            metadata = h5["metadata/songs"][0]
            timbre = h5["analysis/segments_timbre"][()]
            starts = h5["analysis/segments_start"][()]
            for spec in synthetic.ARRAYS:  # every idx_* field is 0 in a single-song file
                table = h5[f"{spec.group}/songs"][0]
                assert table[spec.index_field] == 0
            for name in ("segments_pitches", "segments_start", "segments_confidence",
                         "segments_loudness_max", "segments_loudness_max_time",
                         "segments_loudness_start"):
                assert len(h5[f"analysis/{name}"]) == len(timbre)
            assert len(h5["metadata/artist_terms"]) == len(h5["metadata/artist_terms_freq"])
            assert len(h5["musicbrainz/artist_mbtags"]) == len(
                h5["musicbrainz/artist_mbtags_count"])
            pitches = h5["analysis/segments_pitches"][()]
            beats = h5["analysis/beats_start"][()]
            year = int(h5["musicbrainz/songs"][0]["year"])
        assert synthetic.MIN_SEGMENTS <= len(timbre) <= synthetic.MAX_SEGMENTS
        assert np.all(np.diff(starts) > 0) and starts[0] == 0.0
        assert np.all(np.diff(beats) > 0)
        assert 0.15 <= analysis["duration"] / len(timbre) <= 0.35
        assert analysis["duration"] > starts[-1]
        assert analysis["danceability"] == 0.0 and analysis["energy"] == 0.0
        assert pitches.min() >= 0.0 and pitches.max() <= 1.0
        assert 0.0 <= timbre[:, 0].min() and timbre[:, 0].max() <= 60.0
        assert np.abs(timbre[:, 1:]).max() <= 500.0
        assert metadata["artist_name"] and metadata["title"] and metadata["release"]
        metadata["title"].decode("utf-8")  # valid UTF-8
        all_timbre.append(timbre)
        years.append(year)
        hotttnesss.append(metadata["song_hotttnesss"])
    timbre = np.concatenate(all_timbre)
    assert 38.0 <= timbre[:, 0].mean() <= 48.0 and 4.0 <= timbre[:, 0].std() <= 12.0
    assert np.all(np.abs(timbre[:, 1:].mean(axis=0)) < 15.0)
    assert np.all((timbre[:, 1:].std(axis=0) > 12.0) & (timbre[:, 1:].std(axis=0) < 80.0))
    years = np.array(years)
    assert 0.25 <= np.mean(years == 0) <= 0.75
    assert np.all((years[years > 0] >= 1950) & (years[years > 0] <= 2010))
    assert 0 < np.isnan(hotttnesss).sum() < len(hotttnesss)


def test_segment_counts_follow_the_msd_distribution():
    counts = synthetic.sample_segment_counts(np.random.default_rng(0), 200_000)
    median = np.median(counts)
    low, high = np.percentile(counts, [5, 95])
    assert 740 <= median <= 820
    assert 240 <= low <= 300 and 1500 <= high <= 1700
    assert counts.min() >= 5 and counts.max() <= 3300


def test_some_names_are_not_ascii():
    catalogue = synthetic.build_catalogue(2000, seed=3)
    names = catalogue.titles + catalogue.artists.names + catalogue.releases
    non_ascii = [name for name in names if not name.isascii()]
    assert 0.01 < len(non_ascii) / len(names) < 0.2


# ---------------------------------------------------------------------------------------------
# Aggregate files
# ---------------------------------------------------------------------------------------------

def test_aggregate_files_hold_the_same_songs_at_their_indices(single_song_set, aggregate_set):
    assert aggregate_set.num_files == 9
    singles = {}
    for path in single_song_set.h5_paths:
        with h5py.File(path, "r") as h5:
            singles[h5["analysis/songs"]["track_id"][0].decode()] = path
    seen = []
    for path in aggregate_set.h5_paths:
        with h5py.File(path, "r") as h5:
            tables = {group.name: h5[f"{group.name}/songs"][()] for group in synthetic.GROUPS}
            num_songs = len(tables["analysis"])
            assert num_songs in (7, 4)
            assert h5["analysis/songs"].attrs["NROWS"] == num_songs
            for group in synthetic.GROUPS:
                assert len(tables[group.name]) == num_songs
            for row in range(num_songs):
                track_id = tables["analysis"]["track_id"][row].decode()
                seen.append(track_id)
                with h5py.File(singles[track_id], "r") as single:
                    for group in synthetic.GROUPS:
                        expected = single[f"{group.name}/songs"][0]
                        for field in group.table_dtype.names:
                            if field.startswith("idx_"):
                                continue
                            assert (tables[group.name][field][row] == expected[field]
                                    or (np.isnan(expected[field]) if expected.dtype[field].kind
                                        == "f" else False)), (track_id, field)
                    for spec in synthetic.ARRAYS:
                        starts = tables[spec.group][spec.index_field].astype(np.int64)
                        assert starts[0] == 0 and np.all(np.diff(starts) >= 0)
                        dataset = h5[f"{spec.group}/{spec.name}"]
                        end = starts[row + 1] if row + 1 < num_songs else len(dataset)
                        np.testing.assert_array_equal(
                            dataset[starts[row]:end], single[f"{spec.group}/{spec.name}"][()],
                            err_msg=f"{track_id} {spec.name}")
    assert seen == list(synthetic.read_styles(single_song_set.styles_path))


# ---------------------------------------------------------------------------------------------
# Planted styles
# ---------------------------------------------------------------------------------------------

def test_styles_are_recoverable_from_l2_normalised_timbre_statistics(tmp_path):
    summary = synthetic.synthesize(str(tmp_path), 360, seed=11, songs_per_file=60, workers=1,
                                   progress=False)
    styles = synthetic.read_styles(summary.styles_path)
    features, labels = [], []
    for track_id, timbre in synthetic.iter_song_timbres(summary.h5_paths):
        statistics = _timbre_statistics(timbre)
        features.append(statistics / np.linalg.norm(statistics))
        labels.append(styles[track_id])
    features, labels = np.array(features), np.array(labels)
    chance = np.bincount(labels).max() / len(labels)

    similarity = features @ features.T
    np.fill_diagonal(similarity, -np.inf)
    one_nn_accuracy = np.mean(labels[similarity.argmax(axis=1)] == labels)

    order = np.random.default_rng(0).permutation(len(labels))
    train, test = order[: len(order) // 2], order[len(order) // 2:]
    present = np.unique(labels[train])
    centroids = np.array([features[train][labels[train] == style].mean(axis=0)
                          for style in present])
    centroid_accuracy = np.mean(present[(features[test] @ centroids.T).argmax(axis=1)]
                                == labels[test])
    assert chance < 0.3
    assert one_nn_accuracy > 0.8, one_nn_accuracy
    assert centroid_accuracy > 0.8, centroid_accuracy

    same = labels[:, None] == labels[None, :]
    np.fill_diagonal(similarity, np.nan)
    assert np.nanmean(similarity[same]) > np.nanmean(similarity[~same])


# ---------------------------------------------------------------------------------------------
# Listening data
# ---------------------------------------------------------------------------------------------

def test_listening_files_have_the_taste_profile_formats(single_song_set):
    summary = single_song_set
    styles_lines = pathlib.Path(summary.styles_path).read_text().splitlines()
    assert styles_lines[0] == "track_id,song_id,style"
    catalogue_songs = {line.split(",")[1] for line in styles_lines[1:]}

    triplet_lines = pathlib.Path(summary.triplets_path).read_text().splitlines()
    assert len(triplet_lines) == summary.num_listens
    listens = list(listening.parse_listen_lines(triplet_lines))
    assert all(isinstance(listen, listening.Listen) for listen in listens)
    users_in_order = list(dict.fromkeys(listen.user_id for listen in listens))
    for line in triplet_lines[:50]:
        assert re.fullmatch(r"[0-9a-f]{40}\tSO[A-Z0-9]{16}\t[1-9][0-9]*", line)
    assert {listen.song_id for listen in listens} <= catalogue_songs
    pairs = [(listen.user_id, listen.song_id) for listen in listens]
    assert len(set(pairs)) == len(pairs)
    for user in users_in_order[:20]:  # songs sorted by id within a user, like the Kaggle files
        songs = [listen.song_id for listen in listens if listen.user_id == user]
        assert songs == sorted(songs)

    users = listening.parse_kaggle_users(pathlib.Path(summary.kaggle_users_path).read_text()
                                         .splitlines())
    assert not users.rejections and users.data == users_in_order
    assert len(users.data) == summary.num_users

    kaggle_songs = listening.parse_kaggle_songs(
        pathlib.Path(summary.kaggle_songs_path).read_text().splitlines())
    assert not kaggle_songs.rejections
    assert sorted(kaggle_songs.data.values()) == list(range(1, summary.num_songs + 1))
    assert list(kaggle_songs.data) == sorted(catalogue_songs)
    assert re.fullmatch(r"SO[A-Z0-9]{16} 1",
                        pathlib.Path(summary.kaggle_songs_path).read_text().splitlines()[0])

    song_to_tracks = listening.parse_song_to_tracks(
        pathlib.Path(summary.song_to_tracks_path).read_text().splitlines())
    assert not song_to_tracks.rejections and len(song_to_tracks.data) == summary.num_songs

    unique_tracks = listening.parse_unique_tracks(
        pathlib.Path(summary.unique_tracks_path).read_text(encoding="utf-8").splitlines())
    assert not unique_tracks.rejections and len(unique_tracks.data) == summary.num_songs
    for track_id, track in unique_tracks.data.items():
        assert song_to_tracks.data[track.song_id] == [track_id]
        assert track.artist_name and track.title


def test_history_lengths_are_long_tailed_and_users_stick_to_few_styles(tmp_path):
    catalogue = synthetic.build_catalogue(5000, seed=5)
    written = synthetic.write_listening_files(catalogue, str(tmp_path), num_users=1000)
    style_of_song = dict(zip(catalogue.song_ids, catalogue.style))
    scene_of_song = dict(zip(catalogue.song_ids, catalogue.scene))
    scenes_of_user = {history.user_id: set(history.scenes.tolist())
                      for history in synthetic.iter_user_histories(catalogue, 1000)}
    histories: dict[str, list[tuple[str, int]]] = {}
    with open(written["triplets_path"], encoding="ascii") as handle:
        for line in handle:
            user, song, count = line.rstrip("\n").split("\t")
            histories.setdefault(user, []).append((song, int(count)))
    assert len(histories) == 1000
    lengths = np.array([len(history) for history in histories.values()])
    assert 22 <= np.median(lengths) <= 40
    assert lengths.min() >= synthetic.HISTORY_MIN
    assert np.percentile(lengths, 95) > 2.5 * np.median(lengths)
    assert lengths.max() >= 500
    assert lengths.max() <= len(catalogue)

    play_counts = np.array([count for history in histories.values() for _, count in history])
    assert play_counts.min() >= 1 and 0.5 < np.mean(play_counts == 1) < 0.85
    assert play_counts.max() >= 50

    # Outside their scenes (which cut across styles), users stick to 1–3 styles; 30–50 % of
    # their songs come from their scenes.
    top3_shares, scene_shares = [], []
    for user, history in histories.items():
        in_scene = np.array([scene_of_song[song] in scenes_of_user[user] for song, _ in history])
        scene_shares.append(in_scene.mean())
        counts = np.bincount([style_of_song[song] for (song, _), inside in zip(history, in_scene)
                              if not inside], minlength=catalogue.styles.num_styles)
        top3_shares.append(np.sort(counts)[::-1][:3].sum() / max(counts.sum(), 1))
    assert np.median(top3_shares) >= 0.85
    assert np.mean(np.array(top3_shares) >= 0.7) > 0.8
    assert 0.3 <= np.mean(scene_shares) <= 0.5, np.mean(scene_shares)
    listens_in_scenes = sum(share * len(history) for share, history
                            in zip(scene_shares, histories.values())) / lengths.sum()
    assert 0.3 <= listens_in_scenes <= 0.5, listens_in_scenes

    # Skewed popularity: the 5 % most listened songs get far more than 5 % of the listens.
    song_index = {song: index for index, song in enumerate(catalogue.song_ids)}
    listens_per_song = np.bincount([song_index[song] for history in histories.values()
                                    for song, _ in history], minlength=len(catalogue))
    top_share = np.sort(listens_per_song)[::-1][:len(catalogue) // 20].sum() / lengths.sum()
    assert top_share > 0.2, top_share


def test_history_lengths_never_exceed_a_small_catalogue(tmp_path):
    catalogue = synthetic.build_catalogue(25, seed=2, num_styles=3)
    written = synthetic.write_listening_files(catalogue, str(tmp_path), num_users=200)
    per_user: dict[str, int] = {}
    for line in pathlib.Path(written["triplets_path"]).read_text().splitlines():
        user = line.split("\t")[0]
        per_user[user] = per_user.get(user, 0) + 1
    assert max(per_user.values()) <= 25
    assert min(per_user.values()) >= 10


# ---------------------------------------------------------------------------------------------
# Planted scenes: co-listening across styles, invisible to the timbre
# ---------------------------------------------------------------------------------------------

def _cramers_v(a: np.ndarray, b: np.ndarray) -> float:
    table = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(table, (a, b), 1)
    table = table[table.sum(axis=1) > 0][:, table.sum(axis=0) > 0]
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / table.sum()
    chi2 = ((table - expected) ** 2 / expected).sum()
    return float(np.sqrt(chi2 / table.sum() / (min(table.shape) - 1)))


@pytest.fixture(scope="module")
def scene_listens():
    """2,000 songs (20 scenes, 12 styles), 3,000 users: the user × song matrix of the users
    with at most 100 songs (the few users with thousands of songs co-listen almost every pair
    and say nothing about any)."""
    catalogue = synthetic.build_catalogue(2000, seed=5)
    histories = list(synthetic.iter_user_histories(catalogue, 3000))
    light = [history for history in histories if len(history.songs) <= 100]
    matrix = np.zeros((len(light), len(catalogue)), dtype=np.float32)
    for row, history in enumerate(light):
        matrix[row, history.songs] = 1.0
    return catalogue, histories, matrix


def test_scenes_cut_across_styles_and_are_not_in_the_catalogue_features(scene_listens):
    catalogue, _, _ = scene_listens
    assert catalogue.num_scenes == synthetic.default_num_scenes(2000) == 20
    sizes = np.bincount(catalogue.scene, minlength=catalogue.num_scenes)
    assert sizes.sum() == len(catalogue) and sizes.min() > 0
    for scene in range(catalogue.num_scenes):  # every scene mixes many styles
        styles = catalogue.style[catalogue.scene == scene]
        assert len(np.unique(styles)) >= min(5, len(styles)), (scene, np.bincount(styles))
    # Scene and style are independent (Cramér's V ≈ 0.1 is the sampling noise of 2,000 songs;
    # 1 would be a scene made of one style).
    assert _cramers_v(catalogue.scene, catalogue.style) < 0.15
    # Scenes come from their own stream: every other decision of the catalogue (and so every
    # HDF5 file) is the same whatever the number of scenes.
    other = synthetic.build_catalogue(2000, seed=5, num_scenes=7)
    assert other.num_scenes == 7 and set(other.scene.tolist()) <= set(range(7))
    assert other.track_ids == catalogue.track_ids and other.titles == catalogue.titles
    np.testing.assert_array_equal(other.style, catalogue.style)
    np.testing.assert_array_equal(other.num_segments, catalogue.num_segments)
    with pytest.raises(ValueError):
        synthetic.build_catalogue(10, seed=5, num_scenes=0)


def test_songs_of_one_scene_are_co_listened_across_styles(scene_listens):
    """The planted co-listening is not a style effect: pairs of songs of one scene but of
    different styles share listeners far more often than pairs of different scenes and
    different styles of the same popularity, and about as often as pairs of one style."""
    catalogue, _, matrix = scene_listens
    assert len(matrix) > 2000
    co_listeners = matrix.T @ matrix
    listeners = np.diag(co_listeners).copy()
    upper = np.triu_indices(len(catalogue), 1)
    counts = co_listeners[upper]
    same_scene = (catalogue.scene[:, None] == catalogue.scene[None, :])[upper]
    same_style = (catalogue.style[:, None] == catalogue.style[None, :])[upper]
    # Popularity strata: quartiles of the songs' listener counts, a stratum per pair of them.
    quartile = np.searchsorted(np.quantile(listeners, [0.25, 0.5, 0.75]), listeners,
                               side="right")
    low, high = np.minimum(quartile[upper[0]], quartile[upper[1]]), np.maximum(
        quartile[upper[0]], quartile[upper[1]])
    ratios = []
    for stratum_low in range(4):
        for stratum_high in range(stratum_low, 4):
            stratum = (low == stratum_low) & (high == stratum_high)
            scene_pairs = counts[stratum & same_scene & ~same_style]
            other_pairs = counts[stratum & ~same_scene & ~same_style]
            assert len(scene_pairs) > 500 and len(other_pairs) > 10_000
            ratios.append(scene_pairs.mean() / other_pairs.mean())
            # far more pairs of a scene are co-listened at all
            assert np.mean(scene_pairs > 0) > np.mean(other_pairs > 0), (stratum_low,
                                                                         stratum_high)
    assert min(ratios) > 2.0, ratios
    across = counts[same_scene & ~same_style].mean()
    unrelated = counts[~same_scene & ~same_style].mean()
    one_style = counts[~same_scene & same_style].mean()
    assert across > 3.0 * unrelated, (across, unrelated)
    assert 0.5 * one_style < across < 2.0 * one_style, (across, one_style)

    # The control: scene labels shuffled within each style (the same styles and popularity,
    # no co-listening planted) show no such effect.
    rng = np.random.default_rng(0)
    fake = catalogue.scene.copy()
    for style in np.unique(catalogue.style):
        songs = np.flatnonzero(catalogue.style == style)
        fake[songs] = fake[rng.permutation(songs)]
    fake_same = (fake[:, None] == fake[None, :])[upper]
    ratio = (counts[fake_same & ~same_style].mean() / counts[~fake_same & ~same_style].mean())
    assert 0.8 < ratio < 1.25, ratio


def test_user_histories_are_deterministic_and_keyed_by_user(scene_listens):
    catalogue, histories, _ = scene_listens
    again = list(synthetic.iter_user_histories(catalogue, 50))
    for first, second in zip(histories[:50], again):
        assert first.user_id == second.user_id
        for name in ("songs", "play_counts", "favourite_styles", "scenes"):
            np.testing.assert_array_equal(getattr(first, name), getattr(second, name))
    scene_counts = [len(history.scenes) for history in histories]
    assert set(scene_counts) == set(synthetic.USER_SCENE_COUNTS)
    assert all(len(set(history.scenes.tolist())) == len(history.scenes) for history in histories)


def test_scene_files_and_manifest(single_song_set):
    summary = single_song_set
    lines = pathlib.Path(summary.scenes_path).read_text(encoding="ascii").splitlines()
    assert lines[0] == "track_id,song_id,scene"
    scenes = synthetic.read_scenes(summary.scenes_path)
    assert list(scenes) == list(synthetic.read_styles(summary.styles_path))
    assert summary.num_scenes == synthetic.default_num_scenes(60) == 1
    assert set(scenes.values()) == {0}
    manifest = json.loads(pathlib.Path(summary.manifest_path).read_text())
    assert manifest["num_scenes"] == 1 and manifest["scenes_path"] == synthetic.SCENES_FILENAME
    assert manifest["scene_share_beta"] == list(synthetic.SCENE_SHARE_BETA)
    assert 0.0 < manifest["scene_listen_share"] <= 1.0
    assert "seconds" not in manifest


def test_user_ids_are_deterministic_hex():
    assert synthetic.user_id(0, 0) == synthetic.user_id(0, 0)
    assert synthetic.user_id(0, 0) != synthetic.user_id(1, 0) != synthetic.user_id(0, 1)
    assert re.fullmatch(r"[0-9a-f]{40}", synthetic.user_id(3, 12345))


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

def test_command_line_writes_and_summarises(tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["--output_dir", str(out), "--num_songs", "4", "--num_users", "5", "--seed", "3",
            "--num_styles", "2", "--songs_per_file", "2", "--workers", "1", "--no_progress"]
    assert synthesize_cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "4 songs" in printed and "5 users" in printed
    assert len(list((out / "data").glob("aggregate-*.h5"))) == 2
    assert synthesize_cli.main(argv) == 2  # refuses to mix runs
    assert "overwrite" in capsys.readouterr().err
    assert synthesize_cli.main(argv + ["--overwrite"]) == 0


def test_command_line_sets_the_number_of_scenes(tmp_path, capsys):
    out = tmp_path / "cli_scenes"
    assert synthesize_cli.main(["--output_dir", str(out), "--num_songs", "30", "--num_users",
                                "20", "--num_scenes", "3", "--workers", "1",
                                "--no_progress"]) == 0
    assert "3 co-listening groups" in capsys.readouterr().out
    manifest = json.loads((out / synthetic.MANIFEST_FILENAME).read_text())
    assert manifest["num_scenes"] == 3
    assert set(synthetic.read_scenes(str(out / synthetic.SCENES_FILENAME)).values()) <= {0, 1, 2}
    with pytest.raises(SystemExit):
        synthesize_cli.main(["--output_dir", str(out), "--num_songs", "3", "--num_scenes", "0"])


def test_command_line_rejects_bad_numbers(capsys):
    with pytest.raises(SystemExit):
        synthesize_cli.main(["--output_dir", "x", "--num_songs", "0"])
    assert "at least 1" in capsys.readouterr().err
