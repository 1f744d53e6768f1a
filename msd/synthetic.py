"""A synthetic Million Song Dataset: per-track HDF5 files in the real MSD schema and folder
layout, plus listening data in the Taste Profile / MSD Challenge formats, with known structure
planted in it so that the feature and recommendation pipelines can be tested and benchmarked
at any scale without the 280 GB original.

What is planted:
- ``num_styles`` latent *styles*. Each has its own timbre mean vector and covariance (a
  per-dimension spread profile and a correlation matrix), tempo, loudness, era and vocabulary
  of Echo Nest terms. Every artist belongs to one style and every song to its artist's style, so
  the 90 timbre statistics of songs of one style lie close together (also after per-song L2
  normalisation). ``styles.csv`` is the ground truth.
- ``num_scenes`` co-listening *scenes* (communities / playlists; default one per 100 songs):
  every song belongs to one scene, drawn from its own stream independently of its style, artist
  and everything in its HDF5 file, so a scene holds songs of every style and the timbre (or any
  other content feature) cannot see it. ``scenes.csv`` is the ground truth.
- Users, each in 1–3 scenes (55/30/15 %, picked by scene size) and with 1–3 favourite styles.
  A share ~ Beta(12, 18) of a user's draws (mean 0.4; ≈ 40 % of all listens end up in the
  listener's own scenes) comes from their scenes, songs weighted by popularity; of the rest,
  ≈ 87 % comes from the favourite styles, with Zipf-like popularity inside a style, and the
  remainder from the whole catalogue by popularity. Only co-listening reveals the scenes:
  songs of one scene but different styles share listeners about as often as songs of one
  style, several times as often as unrelated songs of the same popularity. History lengths
  are long-tailed (median ≈ 30, a few users with thousands) and so are play counts.

Values follow the real data (see ``../shared/docs/DESIGN.md``): timbre dimension 0 around 43
(0–60), dimensions 1–11 around 0 with spreads of 20–70 (within ±500), ~780 segments per song
(5th–95th percentile ≈ 270–1,600), ≈ 0.23–0.25 s per segment, year 0 for about half the songs,
danceability and energy 0.0, song_hotttnesss sometimes NaN, some non-ASCII (UTF-8) names.

The file schema is hard-coded below, copied from a real MSD file: the same groups with their
PyTables attributes, the compound ``songs`` tables with every field in the real order and
dtype (strings are NULLTERM fixed-length ASCII types, as PyTables writes them), and every
analysis / metadata / musicbrainz array with its chunk shape, shuffle + gzip level 1 and
unlimited first dimension. Aggregate files (``songs_per_file`` > 1) follow the MSD's own
``hdf5_utils.fill_hdf5_aggregate_file``: row i of each ``songs`` table is song i and its rows
of every array start at the matching ``idx_*`` field.

Determinism: everything is derived from ``seed`` through numpy ``SeedSequence`` streams keyed
by what is generated (the catalogue, the style model, the scenes, song *i*, artist *a*, user
*u*), so the output does not depend on ``workers`` or on the order in which processes finish.
HDF5 object timestamps are switched off, which makes the files byte-identical between runs with
one seed.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import multiprocessing
import os
import pathlib
import time
from typing import Iterable, Iterator, NamedTuple, Optional, Sequence

import h5py
import numpy as np

# --------------------------------------------------------------------------------------------
# The MSD file schema (copied from data/A/X/L/TRAXLZU12903D05F94.h5; do not reorder)
# --------------------------------------------------------------------------------------------

ANALYSIS_SONGS_FIELDS: tuple[tuple[str, str], ...] = (
    ("analysis_sample_rate", "<i4"), ("audio_md5", "S32"), ("danceability", "<f8"),
    ("duration", "<f8"), ("end_of_fade_in", "<f8"), ("energy", "<f8"),
    ("idx_bars_confidence", "<i4"), ("idx_bars_start", "<i4"), ("idx_beats_confidence", "<i4"),
    ("idx_beats_start", "<i4"), ("idx_sections_confidence", "<i4"), ("idx_sections_start", "<i4"),
    ("idx_segments_confidence", "<i4"), ("idx_segments_loudness_max", "<i4"),
    ("idx_segments_loudness_max_time", "<i4"), ("idx_segments_loudness_start", "<i4"),
    ("idx_segments_pitches", "<i4"), ("idx_segments_start", "<i4"), ("idx_segments_timbre", "<i4"),
    ("idx_tatums_confidence", "<i4"), ("idx_tatums_start", "<i4"), ("key", "<i4"),
    ("key_confidence", "<f8"), ("loudness", "<f8"), ("mode", "<i4"), ("mode_confidence", "<f8"),
    ("start_of_fade_out", "<f8"), ("tempo", "<f8"), ("time_signature", "<i4"),
    ("time_signature_confidence", "<f8"), ("track_id", "S32"),
)
METADATA_SONGS_FIELDS: tuple[tuple[str, str], ...] = (
    ("analyzer_version", "S32"), ("artist_7digitalid", "<i4"), ("artist_familiarity", "<f8"),
    ("artist_hotttnesss", "<f8"), ("artist_id", "S32"), ("artist_latitude", "<f8"),
    ("artist_location", "S1024"), ("artist_longitude", "<f8"), ("artist_mbid", "S40"),
    ("artist_name", "S1024"), ("artist_playmeid", "<i4"), ("genre", "S1024"),
    ("idx_artist_terms", "<i4"), ("idx_similar_artists", "<i4"), ("release", "S1024"),
    ("release_7digitalid", "<i4"), ("song_hotttnesss", "<f8"), ("song_id", "S32"),
    ("title", "S1024"), ("track_7digitalid", "<i4"),
)
MUSICBRAINZ_SONGS_FIELDS: tuple[tuple[str, str], ...] = (
    ("idx_artist_mbtags", "<i4"), ("year", "<i4"),
)
ANALYSIS_SONGS_DTYPE = np.dtype(list(ANALYSIS_SONGS_FIELDS))  # packed: itemsize 220 as in the MSD
METADATA_SONGS_DTYPE = np.dtype(list(METADATA_SONGS_FIELDS))  # itemsize 5320
MUSICBRAINZ_SONGS_DTYPE = np.dtype(list(MUSICBRAINZ_SONGS_FIELDS))  # itemsize 8


@dataclasses.dataclass(frozen=True)
class GroupSpec:
    """One top-level group of an MSD file and its ``songs`` table."""
    name: str
    title: str
    table_title: str
    table_dtype: np.dtype
    table_chunk_rows: int


# In the order hdf5_utils.create_song_file creates them.
GROUPS: tuple[GroupSpec, ...] = (
    GroupSpec("metadata", "metadata about the song", "table of metadata for one song",
              METADATA_SONGS_DTYPE, 3),
    GroupSpec("analysis", "Echo Nest analysis of the song",
              "table of Echo Nest analysis for one song", ANALYSIS_SONGS_DTYPE, 37),
    GroupSpec("musicbrainz", "data about the song coming from MusicBrainz",
              "table of data coming from MusicBrainz", MUSICBRAINZ_SONGS_DTYPE, 1024),
)


@dataclasses.dataclass(frozen=True)
class ArraySpec:
    """One extendable array (PyTables EArray) of an MSD file, and the ``songs`` field that
    holds each song's first row in it."""
    group: str
    name: str
    dtype: str
    row_shape: tuple[int, ...]
    chunks: tuple[int, ...]
    title: str
    index_field: str


# In the order hdf5_utils.create_all_arrays creates them (titles verbatim, including the MSD's
# own copy-paste 'confidence of sections' title of beats_confidence).
ARRAYS: tuple[ArraySpec, ...] = (
    ArraySpec("metadata", "similar_artists", "S20", (), (409,),
              "array of similar artists Echo Nest id", "idx_similar_artists"),
    ArraySpec("metadata", "artist_terms", "S256", (), (32,),
              "array of terms (Echo Nest tags) for an artist", "idx_artist_terms"),
    ArraySpec("metadata", "artist_terms_freq", "<f8", (), (1024,),
              "array of term (Echo Nest tags) frequencies for an artist", "idx_artist_terms"),
    ArraySpec("metadata", "artist_terms_weight", "<f8", (), (1024,),
              "array of term (Echo Nest tags) weights for an artist", "idx_artist_terms"),
    ArraySpec("analysis", "segments_start", "<f8", (), (1024,),
              "array of start times of segments", "idx_segments_start"),
    ArraySpec("analysis", "segments_confidence", "<f8", (), (1024,),
              "array of confidence of segments", "idx_segments_confidence"),
    ArraySpec("analysis", "segments_pitches", "<f8", (12,), (85, 12),
              "array of pitches of segments (chromas)", "idx_segments_pitches"),
    ArraySpec("analysis", "segments_timbre", "<f8", (12,), (85, 12),
              "array of timbre of segments (MFCC-like)", "idx_segments_timbre"),
    ArraySpec("analysis", "segments_loudness_max", "<f8", (), (1024,),
              "array of max loudness of segments", "idx_segments_loudness_max"),
    ArraySpec("analysis", "segments_loudness_max_time", "<f8", (), (1024,),
              "array of max loudness time of segments", "idx_segments_loudness_max_time"),
    ArraySpec("analysis", "segments_loudness_start", "<f8", (), (1024,),
              "array of loudness of segments at start time", "idx_segments_loudness_start"),
    ArraySpec("analysis", "sections_start", "<f8", (), (1024,),
              "array of start times of sections", "idx_sections_start"),
    ArraySpec("analysis", "sections_confidence", "<f8", (), (1024,),
              "array of confidence of sections", "idx_sections_confidence"),
    ArraySpec("analysis", "beats_start", "<f8", (), (1024,),
              "array of start times of beats", "idx_beats_start"),
    ArraySpec("analysis", "beats_confidence", "<f8", (), (1024,),
              "array of confidence of sections", "idx_beats_confidence"),
    ArraySpec("analysis", "bars_start", "<f8", (), (1024,),
              "array of start times of bars", "idx_bars_start"),
    ArraySpec("analysis", "bars_confidence", "<f8", (), (1024,),
              "array of confidence of bars", "idx_bars_confidence"),
    ArraySpec("analysis", "tatums_start", "<f8", (), (1024,),
              "array of start times of tatums", "idx_tatums_start"),
    ArraySpec("analysis", "tatums_confidence", "<f8", (), (1024,),
              "array of confidence of tatums", "idx_tatums_confidence"),
    ArraySpec("musicbrainz", "artist_mbtags", "S256", (), (32,),
              "array of tags from MusicBrainz for an artist", "idx_artist_mbtags"),
    ArraySpec("musicbrainz", "artist_mbtags_count", "<i4", (), (2048,),
              "array of tag counts from MusicBrainz for an artist", "idx_artist_mbtags"),
)
ARRAYS_BY_NAME = {spec.name: spec for spec in ARRAYS}

ROOT_TITLE = "H5 Song File"  # also in aggregate files: hdf5_utils ignores its title argument
PYTABLES_FORMAT_VERSION = "2.0"
GROUP_VERSION = "1.0"
ARRAY_VERSION = "1.0"
TABLE_VERSION = "2.6"
# PyTables' packed Filters(complevel=1, complib='zlib', shuffle=True), as in the real files.
PYTABLES_FILTERS = 65793
# The real files carry EXTDIM = a per-file base + the array's creation index (1854… in the
# first MSD file); the value is copied, readers use the dataspace's unlimited dimension.
EXTDIM_BASE = 1854
GZIP_LEVEL = 1

# --------------------------------------------------------------------------------------------
# Output file names
# --------------------------------------------------------------------------------------------

DATA_DIRNAME = "data"
TRIPLETS_FILENAME = "train_triplets.txt"
UNIQUE_TRACKS_FILENAME = "unique_tracks.txt"
SONG_TO_TRACKS_FILENAME = "taste_profile_song_to_tracks.txt"
KAGGLE_SONGS_FILENAME = "kaggle_songs.txt"
KAGGLE_USERS_FILENAME = "kaggle_users.txt"
STYLES_FILENAME = "styles.csv"
SCENES_FILENAME = "scenes.csv"
MANIFEST_FILENAME = "synthesis.json"
AGGREGATE_FILE_PREFIX = "aggregate-"

# --------------------------------------------------------------------------------------------
# Distribution constants (chosen to match the real data; see the module docstring)
# --------------------------------------------------------------------------------------------

TIMBRE_DIMS = 12
SEGMENTS_MEDIAN = 780.0
# A split (two-piece) lognormal: log-spread below and above the median, so that the 5th and
# 95th percentiles land at ≈ 270 and ≈ 1,600 (1.645 · σ = ln(780/270) resp. ln(1600/780)).
SEGMENTS_LOG_SIGMA_LOW = float(np.log(SEGMENTS_MEDIAN / 270.0) / 1.6449)
SEGMENTS_LOG_SIGMA_HIGH = float(np.log(1600.0 / SEGMENTS_MEDIAN) / 1.6449)
MIN_SEGMENTS, MAX_SEGMENTS = 5, 3300
SECONDS_PER_SEGMENT = 0.24

# Timbre: typical within-song spread per dimension and spread of song means around 0, from
# real songs (dimension 0 is loudness-like, around 43).
TIMBRE_DIM0_MEAN = 43.0
TIMBRE_WITHIN_SONG_STD = np.array([6.0, 38, 35, 30, 26, 25, 20, 20, 17, 15, 14, 13])
TIMBRE_STYLE_MEAN_STD = np.array([4.0, 26, 22, 13, 13, 10, 8, 7, 6, 5, 5, 4])
TIMBRE_SONG_MEAN_JITTER = np.array([1.5, 8, 7, 4, 4, 3.5, 3, 2.5, 2, 2, 2, 1.5])
STYLE_STD_LOG_RANGE = 0.5  # a style's spread per dimension: base · exp(U(-0.5, 0.5))
SONG_STD_LOG_JITTER = 0.08  # a song's spread around its style's
STYLE_CORRELATION_FACTORS = 3
STYLE_CORRELATION_LOADING = 0.6
TIMBRE_T_DF = 8.0  # heavier tails than a Gaussian (multivariate Student t)
TIMBRE_DIM0_RANGE = (0.0, 60.0)
TIMBRE_OTHER_LIMIT = 500.0

YEAR_KNOWN_FRACTION = 0.5
YEAR_RANGE = (1950, 2010)
SONG_HOTTTNESSS_NAN_FRACTION = 0.4

# Listening data.
HISTORY_MIN = 10  # the Taste Profile keeps users with at least 10 songs
HISTORY_LOG_MEDIAN_ABOVE_MIN = float(np.log(20.0))  # median ≈ 10 + 20 = 30
HISTORY_LOG_SCALE = 0.8
HISTORY_T_DF = 5.0  # Student t in log space: a few users with thousands of songs
HISTORY_MAX = 5_000
FAVOURITE_STYLE_COUNTS = (1, 2, 3)
FAVOURITE_STYLE_COUNT_PROBS = (0.4, 0.35, 0.25)
FAVOURITE_SHARE_BETA = (26.0, 4.0)  # share of a user's draws from favourite styles, mean 0.87
POPULARITY_ZIPF_EXPONENT = 0.9
POPULARITY_ZIPF_OFFSET = 5.0
PLAY_COUNT_ZIPF = 2.3
PLAY_COUNT_MAX = 5000
# Scenes (co-listening communities across styles; see the module docstring).
SONGS_PER_SCENE = 100  # default num_scenes = max(1, round(num_songs / SONGS_PER_SCENE))
SCENE_SIZE_DIRICHLET = 4.0  # scene sizes vary ≈ ±50 % around the mean
USER_SCENE_COUNTS = (1, 2, 3)
USER_SCENE_COUNT_PROBS = (0.55, 0.3, 0.15)
SCENE_SHARE_BETA = (12.0, 18.0)  # share of a user's draws from their scenes, mean 0.4

# SeedSequence stream keys: every generated thing has its own stream.
_STREAM_CATALOGUE = 1
_STREAM_STYLES = 2
_STREAM_SONG = 3
_STREAM_ARTIST = 4
_STREAM_USER = 5
_STREAM_POPULARITY = 6
_STREAM_SCENES = 7

# --------------------------------------------------------------------------------------------
# Vocabulary for names, titles, terms and places
# --------------------------------------------------------------------------------------------

_FIRST_NAMES = (
    "John", "Mary", "Rick", "Anna", "Mike", "Sarah", "David", "Laura", "Tom", "Nina", "Carlos",
    "Maria", "James", "Lisa", "Paul", "Emma", "Peter", "Grace", "Sam", "Ella", "Johnny", "Ruby",
    "Marvin", "Aretha", "Otis", "Billie", "Ray", "Etta", "Willie", "Patsy", "Buddy", "Norah",
)
_FIRST_NAMES_NON_ASCII = ("José", "Björn", "Zoë", "Søren", "Chloé", "Łukasz", "Ólafur", "Renée",
                          "François", "Jürgen", "Iñaki", "Noémie")
_LAST_NAMES = (
    "Smith", "Brown", "Astley", "Taylor", "Wilson", "Davis", "Miller", "Moore", "Jackson",
    "White", "Harris", "Martin", "Thompson", "Garcia", "Lewis", "Walker", "Young", "King",
    "Wright", "Scott", "Green", "Baker", "Nelson", "Carter", "Mitchell", "Turner", "Campbell",
)
_LAST_NAMES_NON_ASCII = ("Müller", "Sjöberg", "Núñez", "Dvořák", "Ødegaard", "Gonçalves",
                         "Łoziński", "Pérez", "Kovačić", "Hernández")
_ADJECTIVES = (
    "Black", "Electric", "Silver", "Midnight", "Golden", "Velvet", "Broken", "Wild", "Lonely",
    "Crystal", "Neon", "Lost", "Burning", "Quiet", "Happy", "Blue", "Red", "Dark", "Bright",
    "Silent", "Sweet", "Cold", "Hollow", "Northern", "Little", "Big", "Young", "Strange",
)
_NOUNS = (
    "Heart", "River", "Night", "Fire", "Dream", "Road", "Rain", "Sun", "Moon", "Star", "City",
    "Love", "Time", "Light", "Shadow", "Train", "Wind", "Ocean", "Mountain", "Door", "Mirror",
    "Garden", "Highway", "Angel", "Ghost", "Radio", "Summer", "Winter", "Girl", "Boy", "Song",
)
_PLURAL_NOUNS = (
    "Kings", "Strangers", "Wolves", "Lovers", "Ramblers", "Tops", "Travelers", "Rebels",
    "Ghosts", "Saints", "Sisters", "Brothers", "Machines", "Hearts", "Riders", "Dreamers",
)
_WORDS_NON_ASCII = ("Corazón", "Café", "Mädchen", "Noël", "Señorita", "Déjà Vu", "Über",
                    "Niño", "Façade", "Crème", "Zürich", "Ōsaka", "Smörgåsbord", "Любовь",
                    "東京", "Été", "Fräulein", "Ça Va")
_VERBS = ("Give", "Take", "Hold", "Find", "Lose", "Follow", "Leave", "Call", "Save", "Keep",
          "Bring", "Dance", "Run", "Wait", "Fall", "Shine")
_TITLE_SUFFIXES = (" (Live)", " (Remix)", " - Album Version", " (Acoustic)", " (Radio Edit)",
                   " [Demo]", " (Remastered)")
_RELEASE_FORMS = ("Greatest Hits", "Live at {place}", "The Best Of", "{adj} {noun}",
                  "{noun}s", "{adj} {plural}", "Songs From The {noun}", "{noun} Sessions",
                  "Big Tunes - Back 2 The 80s", "Volume {n}")

# Echo Nest-like term vocabularies, one per style family (styles beyond these reuse them).
_STYLE_TERMS: tuple[tuple[str, ...], ...] = (
    ("rock", "classic rock", "hard rock", "guitar", "blues-rock", "arena rock", "rock 'n roll"),
    ("hip hop", "rap", "gangster rap", "east coast hip hop", "underground rap", "dirty south"),
    ("electronic", "house", "techno", "trance", "dance", "electro", "club"),
    ("jazz", "bebop", "cool jazz", "smooth jazz", "jazz fusion", "hard bop", "swing"),
    ("country", "honky tonk", "outlaw country", "americana", "bluegrass", "country rock"),
    ("heavy metal", "metal", "thrash metal", "death metal", "power metal", "doom metal"),
    ("pop", "dance pop", "teen pop", "pop rock", "adult contemporary", "ballad", "80s"),
    ("blues", "chicago blues", "delta blues", "electric blues", "soul blues"),
    ("reggae", "roots reggae", "dancehall", "dub", "ska", "lovers rock"),
    ("classical", "orchestra", "baroque", "opera", "chamber music", "romantic"),
    ("folk", "singer-songwriter", "indie folk", "acoustic", "folk rock", "celtic"),
    ("latin", "salsa", "bossa nova", "reggaeton", "tango", "latin pop", "samba"),
    ("soul", "r&b", "funk", "motown", "neo soul", "disco", "quiet storm"),
    ("punk", "hardcore punk", "pop punk", "post-punk", "garage rock", "emo"),
    ("ambient", "downtempo", "chill-out", "trip hop", "new age", "experimental"),
    ("indie rock", "alternative rock", "shoegaze", "lo-fi", "post-rock", "britpop"),
)
_GENERIC_TERMS = ("male", "female", "cover", "80s", "90s", "00s", "american", "british",
                  "german", "french", "instrumental", "vocal", "soundtrack", "live", "classic")
_MBTAGS = ("uk", "british", "english", "us", "american", "usa", "german", "french", "swedish",
           "seen live", "singer-songwriter", "composer", "classic pop and rock")
# (location text, latitude, longitude); a few real MSD artists have a place but no coordinates.
_LOCATIONS: tuple[tuple[str, float, float], ...] = (
    ("London, England", 51.50632, -0.12714), ("New York, NY", 40.71455, -74.00712),
    ("Los Angeles, CA", 34.05349, -118.24532), ("Chicago, IL", 41.88415, -87.63241),
    ("Nashville, TN", 36.16778, -86.77836), ("Memphis, TN", 35.14968, -90.04892),
    ("Detroit, MI", 42.33168, -83.04792), ("Seattle, WA", 47.60356, -122.32944),
    ("Atlanta, GA", 33.74831, -84.39111), ("Kingston, Jamaica", 17.99702, -76.79358),
    ("Berlin, Germany", 52.52437, 13.41053), ("Köln, Germany", 50.93333, 6.95),
    ("Paris, France", 48.85693, 2.3412), ("Montréal, Québec, Canada", 45.51228, -73.55439),
    ("São Paulo, Brazil", -23.5475, -46.63611), ("Reykjavík, Iceland", 64.13548, -21.89541),
    ("Stockholm, Sweden", 59.33258, 18.06683), ("Tokyo, Japan", 35.6895, 139.69171),
    ("Sydney, Australia", -33.86785, 151.20732), ("Manchester, England", 53.48095, -2.23743),
    ("Glasgow, Scotland", 55.86515, -4.25763), ("Dublin, Ireland", 53.34399, -6.26719),
    ("Havana, Cuba", 23.13302, -82.38304), ("Lagos, Nigeria", 6.45306, 3.39583),
    ("Mexico City, Mexico", 19.42847, -99.12766), ("Austin, TX", 30.26715, -97.74306),
    ("New Orleans, LA", 29.95465, -90.07507), ("Newton-le-Willows, Merseyside, England",
                                               53.45644, -2.63265),
    ("California - LA", float("nan"), float("nan")), ("Long Island, NY", 40.78925, -73.13496),
)

# --------------------------------------------------------------------------------------------
# The style model and the catalogue
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StyleModel:
    """The latent styles: per style a timbre mean (12), per-dimension spread (12), correlation
    Cholesky factor (12×12), tempo, loudness, era, chance of a major key and share of songs."""
    timbre_mean: np.ndarray
    timbre_std: np.ndarray
    timbre_corr_chol: np.ndarray
    tempo: np.ndarray
    loudness: np.ndarray
    era: np.ndarray
    major_probability: np.ndarray
    share: np.ndarray

    @property
    def num_styles(self) -> int:
        return int(self.share.shape[0])

    def timbre_covariance(self, style: int) -> np.ndarray:
        """The style's segment-level timbre covariance (before song jitter and t tails)."""
        scaled = self.timbre_corr_chol[style] * self.timbre_std[style][:, None]
        return scaled @ scaled.T


def _seed_sequence(seed: int, *key: int) -> np.random.SeedSequence:
    return np.random.SeedSequence(seed, spawn_key=key)


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(_seed_sequence(seed, *key))


def build_style_model(num_styles: int, seed: int) -> StyleModel:
    """Draws ``num_styles`` clearly different styles: each gets its own spread profile over the
    12 timbre dimensions (±50 % around the real typical spread), its own correlation structure
    (a random 3-factor model) and its own mean vector, so songs can be told apart by style."""
    if num_styles < 1:
        raise ValueError(f"num_styles must be at least 1, got {num_styles}")
    rng = _rng(seed, _STREAM_STYLES)
    mean = rng.normal(0.0, TIMBRE_STYLE_MEAN_STD, size=(num_styles, TIMBRE_DIMS))
    mean[:, 0] = np.clip(TIMBRE_DIM0_MEAN + mean[:, 0], 35.0, 51.0)
    share = rng.dirichlet(np.full(num_styles, 4.0))
    if num_styles > 1:  # dimensions 1–11 average 0 over the catalogue, as in the real data
        mean[:, 1:] -= share @ mean[:, 1:]
    std = TIMBRE_WITHIN_SONG_STD * np.exp(
        rng.uniform(-STYLE_STD_LOG_RANGE, STYLE_STD_LOG_RANGE, size=(num_styles, TIMBRE_DIMS)))
    chol = np.empty((num_styles, TIMBRE_DIMS, TIMBRE_DIMS))
    for style in range(num_styles):
        loadings = rng.normal(0.0, STYLE_CORRELATION_LOADING,
                              size=(TIMBRE_DIMS, STYLE_CORRELATION_FACTORS))
        loadings[0] *= 0.3  # loudness is only weakly tied to the timbre shape
        covariance = loadings @ loadings.T + np.eye(TIMBRE_DIMS)
        scale = 1.0 / np.sqrt(np.diag(covariance))
        chol[style] = np.linalg.cholesky(covariance * scale[:, None] * scale[None, :])
    return StyleModel(
        timbre_mean=mean,
        timbre_std=std,
        timbre_corr_chol=chol,
        tempo=rng.uniform(80.0, 150.0, num_styles),
        loudness=rng.uniform(-14.0, -6.0, num_styles),
        era=rng.uniform(1968.0, 2004.0, num_styles),
        major_probability=rng.uniform(0.45, 0.85, num_styles),
        share=share,
    )


class SongSpec(NamedTuple):
    """Everything about one song decided by the catalogue (the rest, e.g. its segments, comes
    from the song's own random stream). Small: it is sent to the worker processes."""
    index: int
    track_id: str
    song_id: str
    style: int
    num_segments: int
    title: str
    release: str
    release_7digitalid: int
    track_7digitalid: int
    year: int
    song_hotttnesss: float
    artist_index: int
    artist_id: str
    artist_name: str
    artist_location: str
    artist_latitude: float
    artist_longitude: float
    artist_mbid: str
    artist_7digitalid: int
    artist_playmeid: int
    artist_familiarity: float
    artist_hotttnesss: float


@dataclasses.dataclass(frozen=True)
class Artists:
    """The artist table (one entry per artist, all lists/arrays of equal length)."""
    ids: list[str]
    names: list[str]
    style: np.ndarray
    era: np.ndarray
    location: list[str]
    latitude: np.ndarray
    longitude: np.ndarray
    mbid: list[str]
    digital7_id: np.ndarray
    playme_id: np.ndarray
    familiarity: np.ndarray
    hotttnesss: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


@dataclasses.dataclass(frozen=True)
class Catalogue:
    """All songs of a synthetic data set (one entry per song, in file order) and the model
    they were drawn from. Song i is written to file i // songs_per_file."""
    seed: int
    styles: StyleModel
    artists: Artists
    track_ids: list[str]
    song_ids: list[str]
    style: np.ndarray  # int, per song
    artist: np.ndarray  # int, per song: index into ``artists``
    num_segments: np.ndarray
    titles: list[str]
    releases: list[str]
    release_7digitalids: np.ndarray
    track_7digitalids: np.ndarray
    years: np.ndarray
    song_hotttnesss: np.ndarray
    scene: np.ndarray  # int, per song: its co-listening scene (independent of its style)
    num_scenes: int

    def __len__(self) -> int:
        return len(self.track_ids)

    def song_spec(self, index: int) -> SongSpec:
        """The catalogue's decisions about song ``index``, ready for ``generate_song``."""
        artist = int(self.artist[index])
        artists = self.artists
        return SongSpec(
            index=index, track_id=self.track_ids[index], song_id=self.song_ids[index],
            style=int(self.style[index]), num_segments=int(self.num_segments[index]),
            title=self.titles[index], release=self.releases[index],
            release_7digitalid=int(self.release_7digitalids[index]),
            track_7digitalid=int(self.track_7digitalids[index]), year=int(self.years[index]),
            song_hotttnesss=float(self.song_hotttnesss[index]), artist_index=artist,
            artist_id=artists.ids[artist], artist_name=artists.names[artist],
            artist_location=artists.location[artist],
            artist_latitude=float(artists.latitude[artist]),
            artist_longitude=float(artists.longitude[artist]), artist_mbid=artists.mbid[artist],
            artist_7digitalid=int(artists.digital7_id[artist]),
            artist_playmeid=int(artists.playme_id[artist]),
            artist_familiarity=float(artists.familiarity[artist]),
            artist_hotttnesss=float(artists.hotttnesss[artist]),
        )


_LETTERS = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", dtype=np.uint8)
_HEX_UPPER = np.frombuffer(b"0123456789ABCDEF", dtype=np.uint8)
_ALNUM = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", dtype=np.uint8)


def _msd_ids(rng: np.random.Generator, prefix: str, count: int, first: np.ndarray,
             taken: Optional[set] = None) -> list[str]:
    """``count`` unique ids shaped like the MSD's: prefix + 5 characters from ``first`` + 11
    upper-case hex digits (e.g. ``TRAXLZU12903D05F94``): 16 characters from [A-Z0-9]."""
    taken = set() if taken is None else taken
    result: list[str] = []
    while len(result) < count:
        need = count - len(result)
        head = first[rng.integers(0, len(first), size=(need, 5))]
        tail = _HEX_UPPER[rng.integers(0, 16, size=(need, 11))]
        codes = np.ascontiguousarray(np.concatenate([head, tail], axis=1))
        for raw in codes.view("S16").ravel():
            candidate = prefix + raw.decode("ascii")
            if candidate not in taken:
                taken.add(candidate)
                result.append(candidate)
    return result


def sample_segment_counts(rng: np.random.Generator, count: int) -> np.ndarray:
    """Segments per song: a split lognormal with median ≈ 780 and 5th–95th percentiles
    ≈ 270–1,600 (as in the MSD), clipped to the real extremes [5, 3300]."""
    z = rng.standard_normal(count)
    sigma = np.where(z < 0, SEGMENTS_LOG_SIGMA_LOW, SEGMENTS_LOG_SIGMA_HIGH)
    counts = np.rint(SEGMENTS_MEDIAN * np.exp(z * sigma))
    return np.clip(counts, MIN_SEGMENTS, MAX_SEGMENTS).astype(np.int64)


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _artist_name(rng: np.random.Generator) -> str:
    non_ascii = rng.random() < 0.08
    firsts = _FIRST_NAMES_NON_ASCII if non_ascii else _FIRST_NAMES
    lasts = _LAST_NAMES_NON_ASCII if non_ascii and rng.random() < 0.5 else _LAST_NAMES
    form = int(rng.integers(6))
    if form == 0:
        return f"The {_pick(rng, _ADJECTIVES)} {_pick(rng, _PLURAL_NOUNS)}"
    if form == 1:
        return f"{_pick(rng, firsts)} {_pick(rng, lasts)}"
    if form == 2:
        return f"{_pick(rng, firsts)} {_pick(rng, lasts)} & The {_pick(rng, _PLURAL_NOUNS)}"
    if form == 3:
        return f"{_pick(rng, _ADJECTIVES)} {_pick(rng, _NOUNS)}"
    if form == 4:
        return f"DJ {_pick(rng, _NOUNS)}" if not non_ascii else f"DJ {_pick(rng, _WORDS_NON_ASCII)}"
    return f"{_pick(rng, lasts)}"


def _song_title(rng: np.random.Generator) -> str:
    form = int(rng.integers(5))
    if form == 0:
        title = f"{_pick(rng, _VERBS)} Me {_pick(rng, _NOUNS)}"
    elif form == 1:
        title = f"{_pick(rng, _ADJECTIVES)} {_pick(rng, _NOUNS)}"
    elif form == 2:
        title = f"{_pick(rng, _NOUNS)} Of The {_pick(rng, _NOUNS)}"
    elif form == 3:
        title = f"{_pick(rng, _VERBS)} The {_pick(rng, _ADJECTIVES)} {_pick(rng, _NOUNS)}"
    else:
        title = _pick(rng, _NOUNS)
    if rng.random() < 0.06:
        title = f"{title} {_pick(rng, _WORDS_NON_ASCII)}"
    if rng.random() < 0.1:
        title += _pick(rng, _TITLE_SUFFIXES)
    return title


def _release_name(rng: np.random.Generator) -> str:
    form = _pick(rng, _RELEASE_FORMS)
    place = _LOCATIONS[int(rng.integers(len(_LOCATIONS)))][0].split(",")[0]
    name = form.format(place=place, adj=_pick(rng, _ADJECTIVES), noun=_pick(rng, _NOUNS),
                       plural=_pick(rng, _PLURAL_NOUNS), n=int(rng.integers(1, 6)))
    if rng.random() < 0.04:
        name = f"{_pick(rng, _WORDS_NON_ASCII)} {name}"
    return name


def _uuid_text(rng: np.random.Generator) -> str:
    digits = rng.integers(0, 256, 16, dtype=np.uint8).tobytes().hex()
    return f"{digits[:8]}-{digits[8:12]}-4{digits[13:16]}-{digits[16:20]}-{digits[20:32]}"


def build_artists(rng: np.random.Generator, styles: StyleModel, num_artists: int) -> Artists:
    """``num_artists`` artists, each belonging to one style (every style gets at least one,
    when there are enough artists), with MSD-like metadata."""
    num_styles = styles.num_styles
    style = rng.choice(num_styles, size=num_artists, p=styles.share)
    style[:min(num_styles, num_artists)] = np.arange(min(num_styles, num_artists))
    ids = _msd_ids(rng, "AR", num_artists, _ALNUM)
    names, locations, mbids = [], [], []
    latitude = np.full(num_artists, np.nan)
    longitude = np.full(num_artists, np.nan)
    for artist in range(num_artists):
        names.append(_artist_name(rng))
        if rng.random() < 0.55:
            place, lat, lon = _LOCATIONS[int(rng.integers(len(_LOCATIONS)))]
            locations.append(place)
            latitude[artist], longitude[artist] = lat, lon
        else:
            locations.append("")
        mbids.append(_uuid_text(rng) if rng.random() < 0.8 else "")
    familiarity = rng.beta(5.0, 3.0, num_artists)
    hotttnesss = np.clip(0.7 * familiarity + rng.normal(0.0, 0.08, num_artists), 0.0, 1.0)
    digital7 = np.where(rng.random(num_artists) < 0.9,
                        rng.integers(1, 300_000, num_artists), -1).astype(np.int32)
    playme = np.where(rng.random(num_artists) < 0.5,
                      rng.integers(1, 200_000, num_artists), -1).astype(np.int32)
    era = styles.era[style] + rng.normal(0.0, 8.0, num_artists)
    return Artists(ids=ids, names=names, style=style, era=era, location=locations,
                   latitude=latitude, longitude=longitude, mbid=mbids, digital7_id=digital7,
                   playme_id=playme, familiarity=familiarity, hotttnesss=hotttnesss)


def default_num_scenes(num_songs: int) -> int:
    """One scene per ``SONGS_PER_SCENE`` songs (at least one)."""
    return max(1, int(round(num_songs / SONGS_PER_SCENE)))


def assign_scenes(num_songs: int, num_scenes: int, seed: int) -> np.ndarray:
    """Each song's scene, from its own stream (seed, scenes) and independent of everything
    else about the song: scene sizes are Dirichlet shares, so a scene holds songs of every
    style in proportion to the styles' sizes."""
    if num_scenes < 1:
        raise ValueError(f"num_scenes must be at least 1, got {num_scenes}")
    rng = _rng(seed, _STREAM_SCENES)
    share = rng.dirichlet(np.full(num_scenes, SCENE_SIZE_DIRICHLET))
    return rng.choice(num_scenes, size=num_songs, p=share).astype(np.int64)


def build_catalogue(num_songs: int, seed: int = 0, num_styles: int = 12,
                    num_artists: Optional[int] = None,
                    num_scenes: Optional[int] = None) -> Catalogue:
    """Decides every song of the data set: ids, style, artist, title, release, year, number of
    segments (the segments themselves are drawn later, per song, by ``generate_song``) and
    co-listening scene.

    Artists default to one per 10 songs (the MSD has ~22) with Zipf-like song counts. Scenes
    default to ``default_num_scenes`` (one per 100 songs); they come from their own stream, so
    they change nothing else in the catalogue or in the HDF5 files."""
    if num_songs < 1:
        raise ValueError(f"num_songs must be at least 1, got {num_songs}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    if num_scenes is None:
        num_scenes = default_num_scenes(num_songs)
    scene = assign_scenes(num_songs, num_scenes, seed)
    styles = build_style_model(num_styles, seed)
    rng = _rng(seed, _STREAM_CATALOGUE)
    if num_artists is None:
        num_artists = max(min(num_styles, num_songs), num_songs // 10)
    artists = build_artists(rng, styles, num_artists)

    # Each song: a style by the style shares, then an artist of that style (Zipf-like).
    artist_popularity = 1.0 / (1.0 + rng.permutation(num_artists)) ** 0.8
    song_style = rng.choice(num_styles, size=num_songs, p=styles.share)
    song_artist = np.empty(num_songs, dtype=np.int64)
    for style in range(num_styles):
        songs = np.flatnonzero(song_style == style)
        if not len(songs):
            continue
        candidates = np.flatnonzero(artists.style == style)
        if not len(candidates):  # fewer artists than styles: move these songs to a real one
            candidates = np.arange(num_artists)
        weights = artist_popularity[candidates] / artist_popularity[candidates].sum()
        song_artist[songs] = candidates[rng.choice(len(candidates), size=len(songs), p=weights)]
    song_style = artists.style[song_artist].astype(np.int64)

    track_ids = _msd_ids(rng, "TR", num_songs, _LETTERS)
    song_ids = _msd_ids(rng, "SO", num_songs, _LETTERS)
    num_segments = sample_segment_counts(rng, num_songs)

    # Releases: a few per artist, shared by its songs.
    releases_per_artist = 1 + rng.poisson(1.5, num_artists)
    release_names = [[_release_name(rng) for _ in range(count)] for count in releases_per_artist]
    release_ids = [rng.integers(1, 900_000, count) for count in releases_per_artist]
    titles, releases = [], []
    release_7digital = np.empty(num_songs, dtype=np.int32)
    for song in range(num_songs):
        artist = song_artist[song]
        which = int(rng.integers(releases_per_artist[artist]))
        titles.append(_song_title(rng))
        releases.append(release_names[artist][which])
        release_7digital[song] = release_ids[artist][which]
    track_7digital = np.where(rng.random(num_songs) < 0.95,
                              rng.integers(1, 10_000_000, num_songs), -1).astype(np.int32)

    year_known = rng.random(num_songs) < YEAR_KNOWN_FRACTION
    years = np.clip(np.rint(artists.era[song_artist] + rng.normal(0.0, 3.0, num_songs)),
                    *YEAR_RANGE).astype(np.int32)
    years[~year_known] = 0
    hotttnesss = np.clip(rng.beta(2.0, 3.0, num_songs)
                         + 0.3 * (artists.hotttnesss[song_artist] - 0.4), 0.0, 1.0)
    hotttnesss[rng.random(num_songs) < SONG_HOTTTNESSS_NAN_FRACTION] = np.nan
    return Catalogue(seed=seed, styles=styles, artists=artists, track_ids=track_ids,
                     song_ids=song_ids, style=song_style, artist=song_artist,
                     num_segments=num_segments, titles=titles, releases=releases,
                     release_7digitalids=release_7digital, track_7digitalids=track_7digital,
                     years=years, song_hotttnesss=hotttnesss, scene=scene,
                     num_scenes=num_scenes)


# --------------------------------------------------------------------------------------------
# One song's analysis data
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class SongData:
    """One song ready to be written: a row for each of the three ``songs`` tables (idx_*
    fields 0; the file writer sets them) and the song's rows of every array."""
    analysis: np.ndarray  # shape (), ANALYSIS_SONGS_DTYPE
    metadata: np.ndarray  # shape (), METADATA_SONGS_DTYPE
    musicbrainz: np.ndarray  # shape (), MUSICBRAINZ_SONGS_DTYPE
    arrays: dict[str, np.ndarray]


def sample_song_timbre(rng: np.random.Generator, styles: StyleModel, style: int,
                       num_segments: int) -> np.ndarray:
    """A song's timbre matrix (num_segments × 12, float64, 3 decimals like the MSD): segments
    from a multivariate Student t around the song's mean, with the style's correlation and a
    song-specific spread around the style's spread."""
    mean = styles.timbre_mean[style] + rng.normal(0.0, TIMBRE_SONG_MEAN_JITTER)
    std = styles.timbre_std[style] * np.exp(rng.normal(0.0, SONG_STD_LOG_JITTER, TIMBRE_DIMS))
    z = rng.standard_normal((num_segments, TIMBRE_DIMS)) @ styles.timbre_corr_chol[style].T
    tails = np.sqrt((TIMBRE_T_DF - 2.0) / rng.chisquare(TIMBRE_T_DF, num_segments))
    timbre = mean + z * tails[:, None] * std
    np.clip(timbre[:, 0], *TIMBRE_DIM0_RANGE, out=timbre[:, 0])
    np.clip(timbre[:, 1:], -TIMBRE_OTHER_LIMIT, TIMBRE_OTHER_LIMIT, out=timbre[:, 1:])
    return np.round(timbre, 3)


def _confidences(rng: np.random.Generator, count: int, a: float = 2.0,
                 b: float = 2.0) -> np.ndarray:
    return np.round(rng.beta(a, b, count), 3)


def _encode(text: str, size: int) -> bytes:
    """UTF-8 bytes that fit a NULLTERM field of ``size`` bytes, cut on a character boundary."""
    data = text.encode("utf-8")
    if len(data) < size:
        return data
    return data[:size - 1].decode("utf-8", errors="ignore").encode("utf-8")


def artist_arrays(seed: int, artist_index: int, style: int, artist_ids: np.ndarray,
                  same_style: np.ndarray) -> dict[str, np.ndarray]:
    """An artist's Echo Nest terms (with frequencies and weights), similar artists and
    MusicBrainz tags, drawn from the artist's own stream so every song of the artist carries
    the same ones. ``artist_ids`` are all artists' ids and ``same_style`` the indices of the
    artists of this style: ~80 % of the (up to 100) similar artists share the style."""
    rng = _rng(seed, _STREAM_ARTIST, artist_index)
    own_terms = _STYLE_TERMS[style % len(_STYLE_TERMS)]
    num_own = int(rng.integers(2, len(own_terms) + 1))
    terms = [own_terms[i] for i in rng.permutation(len(own_terms))[:num_own]]
    num_generic = int(rng.integers(0, 10))
    terms += [_GENERIC_TERMS[i] for i in rng.permutation(len(_GENERIC_TERMS))[:num_generic]]
    if rng.random() < 0.03:  # a few real artists have no terms at all
        terms = []
    weight = np.sort(np.round(rng.uniform(0.1, 1.0, len(terms)), 8))[::-1].copy()
    frequency = np.round(np.clip(weight + rng.normal(0.0, 0.15, len(terms)), 0.0, 1.0), 8)
    if terms:
        weight[0] = frequency[0] = 1.0

    num_artists = len(artist_ids)
    num_similar = min(100, num_artists - 1)
    same = same_style[same_style != artist_index]
    num_same = min(len(same), int(round(0.8 * num_similar)))
    picked = list(same[rng.choice(len(same), size=num_same, replace=False)]) if num_same else []
    if num_similar > num_same:
        taken = set(picked) | {artist_index}
        candidates = rng.choice(num_artists, size=min(num_artists, num_similar + 1),
                                replace=False)
        picked += [c for c in candidates if c not in taken][:num_similar - num_same]
    similar = np.array([artist_ids[i] for i in picked], dtype="S20").reshape(-1)

    num_tags = min(int(rng.poisson(1.2)), 6)
    tag_pool = list(own_terms[:3]) + list(_MBTAGS)
    tags = [tag_pool[i] for i in rng.permutation(len(tag_pool))[:num_tags]]
    return {
        "artist_terms": np.array([t.encode("utf-8") for t in terms], dtype="S256").reshape(-1),
        "artist_terms_freq": frequency.astype("<f8"),
        "artist_terms_weight": weight.astype("<f8"),
        "similar_artists": similar,
        "artist_mbtags": np.array([t.encode("utf-8") for t in tags], dtype="S256").reshape(-1),
        "artist_mbtags_count": rng.integers(1, 6, len(tags)).astype("<i4"),
    }


def generate_song(spec: SongSpec, styles: StyleModel, seed: int,
                  artist_data: Optional[dict[str, np.ndarray]] = None) -> SongData:
    """Draws the analysis data of one song from its own random stream (seed, song index), so
    it does not depend on which process makes it or on the other songs of its file.
    ``artist_data`` is ``artist_arrays`` of the song's artist (None: no terms, no tags, no
    similar artists)."""
    rng = _rng(seed, _STREAM_SONG, spec.index)
    style = spec.style
    n = spec.num_segments
    timbre = sample_song_timbre(rng, styles, style, n)
    silent_start = rng.random() < 0.5
    if silent_start:
        timbre[0, 0] = 0.0

    # Segment timing: ≈ 0.24 s per segment, gamma-distributed lengths.
    mean_length = SECONDS_PER_SEGMENT * np.exp(rng.normal(0.0, 0.1))
    lengths = np.maximum(rng.gamma(3.0, mean_length / 3.0, n), 0.05)
    starts = np.round(np.concatenate([[0.0], np.cumsum(lengths[:-1])]), 5)
    duration = round(float(starts[-1] + lengths[-1] + rng.uniform(0.0, 0.3)), 5)

    # Loudness follows timbre dimension 0 (which is loudness-like).
    song_loudness = float(np.clip(styles.loudness[style] + rng.normal(0.0, 2.5), -40.0, -1.0))
    loudness_max = np.clip(song_loudness - 3.0 + 0.8 * (timbre[:, 0] - timbre[:, 0].mean())
                           + rng.normal(0.0, 1.5, n), -60.0, 0.0)
    loudness_start = np.clip(loudness_max - np.abs(rng.normal(8.0, 6.0, n)), -60.0, 0.0)
    loudness_max_time = np.round(lengths * rng.beta(1.5, 6.0, n), 5)
    if silent_start:
        loudness_max[0] = loudness_start[0] = -60.0
        loudness_max_time[0] = 0.0
    pitches = rng.random((n, TIMBRE_DIMS)) ** 2
    key = int(rng.integers(12))
    pitches[:, key] += 0.3
    pitches[:, (key + 7) % 12] += 0.15
    pitches = np.round(pitches / pitches.max(axis=1, keepdims=True), 3)
    segment_confidence = _confidences(rng, n, 1.2, 1.0)

    end_of_fade_in = round(float(min(rng.exponential(0.4), duration / 4)), 3)
    start_of_fade_out = round(float(max(duration - rng.exponential(6.0), end_of_fade_in)), 3)
    time_signature = int(rng.choice([4, 3, 5, 1, 7], p=[0.76, 0.13, 0.05, 0.04, 0.02]))
    empty = np.zeros(0)
    if n >= 20 and duration > 8.0:
        tempo = round(float(np.clip(rng.normal(styles.tempo[style], 15.0), 50.0, 230.0)), 3)
        period = 60.0 / tempo
        first_beat = end_of_fade_in + rng.uniform(0.0, period)
        num_beats = max(int((duration - first_beat - 0.1) / period) + 1, 0)
        beats = first_beat + period * np.arange(num_beats) + rng.normal(0.0, 0.005, num_beats)
        beats_start = np.round(beats, 5)
        first_bar = int(rng.integers(time_signature)) % max(num_beats, 1)
        bars_start = beats_start[first_bar::time_signature]
        half = period / 2.0
        tatums = first_beat - half + half * np.arange(2 * num_beats + 1)
        tatums_start = np.round(tatums[(tatums >= 0.0) & (tatums < duration)], 5)
        gaps = np.clip(rng.normal(24.0, 8.0, int(duration / 8.0) + 1), 8.0, 60.0)
        sections = np.concatenate([[0.0], np.cumsum(gaps)])
        sections_start = np.round(sections[sections < duration - 4.0], 5)
        sections_confidence = _confidences(rng, len(sections_start), 1.0, 2.0)
        if len(sections_confidence):
            sections_confidence[0] = 1.0
        arrays_rhythm = {
            "beats_start": beats_start,
            "beats_confidence": _confidences(rng, len(beats_start), 4, 1.5),
            "bars_start": bars_start, "bars_confidence": _confidences(rng, len(bars_start), 1, 3),
            "tatums_start": tatums_start,
            "tatums_confidence": _confidences(rng, len(tatums_start), 4, 1.5),
            "sections_start": sections_start, "sections_confidence": sections_confidence,
        }
    else:  # very short pieces: tempo 0 and no rhythm, as in the real 5-segment file
        tempo = 0.0
        arrays_rhythm = {name: empty for name in (
            "beats_start", "beats_confidence", "bars_start", "bars_confidence", "tatums_start",
            "tatums_confidence", "sections_start", "sections_confidence")}

    analysis = np.zeros((), dtype=ANALYSIS_SONGS_DTYPE)
    analysis["analysis_sample_rate"] = 22050
    analysis["audio_md5"] = rng.integers(0, 256, 16, dtype=np.uint8).tobytes().hex().encode()
    analysis["duration"] = duration
    analysis["end_of_fade_in"] = end_of_fade_in
    analysis["key"] = key
    analysis["key_confidence"] = round(float(rng.beta(2, 2)), 3)
    analysis["loudness"] = round(song_loudness, 3)
    analysis["mode"] = int(rng.random() < styles.major_probability[style])
    analysis["mode_confidence"] = round(float(rng.beta(2, 2)), 3)
    analysis["start_of_fade_out"] = start_of_fade_out
    analysis["tempo"] = tempo
    analysis["time_signature"] = time_signature
    analysis["time_signature_confidence"] = round(float(rng.beta(2, 1.5)), 3)
    analysis["track_id"] = spec.track_id.encode("ascii")
    # danceability and energy stay 0.0, as throughout the MSD.

    metadata = np.zeros((), dtype=METADATA_SONGS_DTYPE)
    metadata["artist_7digitalid"] = spec.artist_7digitalid
    metadata["artist_familiarity"] = spec.artist_familiarity
    metadata["artist_hotttnesss"] = spec.artist_hotttnesss
    metadata["artist_id"] = spec.artist_id.encode("ascii")
    metadata["artist_latitude"] = spec.artist_latitude
    metadata["artist_location"] = _encode(spec.artist_location, 1024)
    metadata["artist_longitude"] = spec.artist_longitude
    metadata["artist_mbid"] = spec.artist_mbid.encode("ascii")
    metadata["artist_name"] = _encode(spec.artist_name, 1024)
    metadata["artist_playmeid"] = spec.artist_playmeid
    metadata["release"] = _encode(spec.release, 1024)
    metadata["release_7digitalid"] = spec.release_7digitalid
    metadata["song_hotttnesss"] = spec.song_hotttnesss
    metadata["song_id"] = spec.song_id.encode("ascii")
    metadata["title"] = _encode(spec.title, 1024)
    metadata["track_7digitalid"] = spec.track_7digitalid

    musicbrainz = np.zeros((), dtype=MUSICBRAINZ_SONGS_DTYPE)
    musicbrainz["year"] = spec.year

    if artist_data is None:
        artist_data = {spec.name: np.zeros((0,) + spec.row_shape, dtype=spec.dtype)
                       for spec in ARRAYS if spec.group != "analysis"}

    arrays = {
        "similar_artists": artist_data["similar_artists"],
        "artist_terms": artist_data["artist_terms"],
        "artist_terms_freq": artist_data["artist_terms_freq"],
        "artist_terms_weight": artist_data["artist_terms_weight"],
        "segments_start": starts,
        "segments_confidence": segment_confidence,
        "segments_pitches": pitches,
        "segments_timbre": timbre,
        "segments_loudness_max": np.round(loudness_max, 3),
        "segments_loudness_max_time": loudness_max_time,
        "segments_loudness_start": np.round(loudness_start, 3),
        **arrays_rhythm,
        "artist_mbtags": artist_data["artist_mbtags"],
        "artist_mbtags_count": artist_data["artist_mbtags_count"],
    }
    return SongData(analysis=analysis, metadata=metadata, musicbrainz=musicbrainz, arrays=arrays)


# --------------------------------------------------------------------------------------------
# Writing MSD HDF5 files (low-level h5py, to reproduce PyTables' types and attributes)
# --------------------------------------------------------------------------------------------


def _h5_type(dtype: np.dtype) -> h5py.h5t.TypeID:
    """The HDF5 file type PyTables uses for ``dtype``: little-endian numbers, fixed-length
    NULLTERM ASCII strings, packed compounds (cached: a file needs ~250 of them)."""
    return _h5_type_cached(np.dtype(dtype))


@functools.lru_cache(maxsize=256)
def _h5_type_cached(dtype: np.dtype) -> h5py.h5t.TypeID:
    if dtype.names:
        compound = h5py.h5t.create(h5py.h5t.COMPOUND, dtype.itemsize)
        for name in dtype.names:
            field_dtype, offset = dtype.fields[name][:2]
            compound.insert(name.encode("ascii"), offset, _h5_type(field_dtype))
        return compound
    if dtype.kind == "S":
        string = h5py.h5t.C_S1.copy()
        string.set_size(dtype.itemsize)
        string.set_strpad(h5py.h5t.STR_NULLTERM)
        return string
    known = {np.dtype("<i4"): h5py.h5t.STD_I32LE, np.dtype("<i8"): h5py.h5t.STD_I64LE,
             np.dtype("<f8"): h5py.h5t.IEEE_F64LE}
    return known[dtype]


def _set_attribute(object_id, name: str, value, terminated: bool = True) -> None:
    """A scalar attribute as PyTables writes it: numbers with their own width, strings as
    NULLTERM types whose size counts the terminator on datasets (``terminated``) but not on
    groups (so the real files have 'GROUP' in 5 bytes and 'TABLE' in 6)."""
    if isinstance(value, str):
        value = value.encode("utf-8")
    if isinstance(value, bytes):
        size = len(value) + 1 if terminated or not value else len(value)
        data = np.array(value, dtype=f"S{size}")
    else:
        data = np.asarray(value)
    file_type = _h5_type(data.dtype)
    space = h5py.h5s.create(h5py.h5s.SCALAR)
    attribute = h5py.h5a.create(object_id, name.encode("ascii"), file_type, space)
    attribute.write(np.ascontiguousarray(data), mtype=file_type)


def _create_dataset(parent: h5py.h5g.GroupID, name: str, data: np.ndarray,
                    chunks: tuple[int, ...], track_times: bool) -> h5py.h5d.DatasetID:
    """A chunked, shuffled, gzip-1 dataset with an unlimited first dimension (an EArray or a
    Table in PyTables' terms), written without type conversion (memory type = file type)."""
    file_type = _h5_type(data.dtype)
    space = h5py.h5s.create_simple(data.shape, (h5py.h5s.UNLIMITED,) + data.shape[1:])
    properties = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    properties.set_chunk(chunks)
    properties.set_shuffle()
    properties.set_deflate(GZIP_LEVEL)
    properties.set_fill_time(h5py.h5d.FILL_TIME_ALLOC)  # as PyTables does
    properties.set_obj_track_times(track_times)
    dataset = h5py.h5d.create(parent, name.encode("ascii"), file_type, space, dcpl=properties)
    if data.size:
        dataset.write(h5py.h5s.ALL, h5py.h5s.ALL, np.ascontiguousarray(data), mtype=file_type)
    return dataset


def _set_common_attributes(object_id, class_name: str, version: str, title: str,
                           terminated: bool = True) -> None:
    _set_attribute(object_id, "CLASS", class_name, terminated)
    _set_attribute(object_id, "VERSION", version, terminated)
    _set_attribute(object_id, "TITLE", title, terminated)


def _fill_value(field_dtype: np.dtype):
    if field_dtype.kind == "S":
        return b""
    return np.zeros((), dtype=field_dtype)[()]


def write_song_file(path: str, songs: Sequence[SongData], track_times: bool = False) -> int:
    """Writes ``songs`` to one MSD HDF5 file (a single-song file, or an aggregate file as the
    MSD's ``hdf5_utils`` makes them) and returns its size in bytes.

    The file is written under a temporary name and renamed, so a crash leaves no half file.
    ``track_times=False`` (the default) leaves out HDF5 object timestamps: then the bytes
    depend only on the data (the real files have timestamps).
    """
    if not songs:
        raise ValueError("a song file needs at least one song")
    tables = {
        "analysis": np.stack([song.analysis for song in songs]),
        "metadata": np.stack([song.metadata for song in songs]),
        "musicbrainz": np.stack([song.musicbrainz for song in songs]),
    }
    arrays: dict[str, np.ndarray] = {}
    for spec in ARRAYS:
        parts = [np.asarray(song.arrays[spec.name], dtype=spec.dtype)
                 .reshape((-1,) + spec.row_shape) for song in songs]
        arrays[spec.name] = np.concatenate(parts) if len(parts) > 1 else parts[0]
        lengths = np.array([len(part) for part in parts], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        group = spec.group
        tables[group][spec.index_field] = starts.astype(np.int32)

    temporary = f"{path}.tmp-{os.getpid()}"
    try:
        file_properties = h5py.h5p.create(h5py.h5p.FILE_CREATE)
        file_properties.set_obj_track_times(track_times)
        access_properties = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
        access_properties.set_fclose_degree(h5py.h5f.CLOSE_STRONG)  # close() closes it all
        file_id = h5py.h5f.create(temporary.encode(), h5py.h5f.ACC_TRUNC, fcpl=file_properties,
                                  fapl=access_properties)
        try:
            root = h5py.h5g.open(file_id, b"/")
            _set_attribute(root, "CLASS", "GROUP", terminated=False)
            _set_attribute(root, "PYTABLES_FORMAT_VERSION", PYTABLES_FORMAT_VERSION,
                           terminated=False)
            _set_attribute(root, "TITLE", ROOT_TITLE, terminated=False)
            _set_attribute(root, "VERSION", GROUP_VERSION, terminated=False)
            _set_attribute(root, "FILTERS", np.int64(PYTABLES_FILTERS))
            group_properties = h5py.h5p.create(h5py.h5p.GROUP_CREATE)
            group_properties.set_obj_track_times(track_times)
            groups = {}
            for group_spec in GROUPS:
                group = h5py.h5g.create(root, group_spec.name.encode("ascii"),
                                        gcpl=group_properties)
                _set_common_attributes(group, "GROUP", GROUP_VERSION, group_spec.title,
                                       terminated=False)
                _set_attribute(group, "FILTERS", np.int64(PYTABLES_FILTERS))
                groups[group_spec.name] = group
                table = _create_dataset(group, "songs", tables[group_spec.name],
                                        (group_spec.table_chunk_rows,), track_times)
                _set_common_attributes(table, "TABLE", TABLE_VERSION, group_spec.table_title)
                dtype = group_spec.table_dtype
                for number, field in enumerate(dtype.names):
                    _set_attribute(table, f"FIELD_{number}_NAME", field)
                    _set_attribute(table, f"FIELD_{number}_FILL",
                                   _fill_value(dtype.fields[field][0]))
                _set_attribute(table, "NROWS", np.int64(len(songs)))
            for number, spec in enumerate(ARRAYS):
                dataset = _create_dataset(groups[spec.group], spec.name, arrays[spec.name],
                                          spec.chunks, track_times)
                _set_common_attributes(dataset, "EARRAY", ARRAY_VERSION, spec.title)
                _set_attribute(dataset, "EXTDIM", np.int32(EXTDIM_BASE + number))
        finally:
            file_id.close()
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    os.replace(temporary, path)
    return os.path.getsize(path)


# --------------------------------------------------------------------------------------------
# Writing many files (optionally in worker processes)
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _WorkerState:
    """What a writer process needs besides its tasks: sent once per process."""
    seed: int
    styles: StyleModel
    artist_ids: np.ndarray  # all artists' ids
    artist_style: np.ndarray
    track_times: bool


_WORKER_STATE: Optional[_WorkerState] = None
MIN_SONGS_PER_WORKER = 200
_ARTIST_CACHE: dict[int, dict[str, np.ndarray]] = {}
_ARTIST_CACHE_LIMIT = 50_000


def _set_worker_state(state: Optional[_WorkerState]) -> None:
    global _WORKER_STATE
    _WORKER_STATE = state
    _ARTIST_CACHE.clear()


def _artist_data(state: _WorkerState, spec: SongSpec) -> dict[str, np.ndarray]:
    cached = _ARTIST_CACHE.get(spec.artist_index)
    if cached is None:
        if len(_ARTIST_CACHE) >= _ARTIST_CACHE_LIMIT:
            _ARTIST_CACHE.clear()
        same_style = np.flatnonzero(state.artist_style == spec.style)
        cached = artist_arrays(state.seed, spec.artist_index, spec.style, state.artist_ids,
                               same_style)
        _ARTIST_CACHE[spec.artist_index] = cached
    return cached


def _write_file_task(task: tuple[str, list[SongSpec]]) -> tuple[str, int, int, int]:
    """Generates and writes one file; returns (path, songs, segments, bytes)."""
    path, specs = task
    state = _WORKER_STATE
    if state is None:
        raise RuntimeError("the writer process was not initialised")
    songs = [generate_song(spec, state.styles, state.seed, _artist_data(state, spec))
             for spec in specs]
    size = write_song_file(path, songs, track_times=state.track_times)
    return path, len(specs), sum(spec.num_segments for spec in specs), size


def song_file_path(data_dir: str, track_id: str) -> str:
    """Where the MSD keeps a track: ``data/A/B/C/TRABC….h5`` (characters 3–5 of the id)."""
    return os.path.join(data_dir, track_id[2], track_id[3], track_id[4], f"{track_id}.h5")


def aggregate_file_path(data_dir: str, file_index: int, num_files: int) -> str:
    """Name of aggregate file ``file_index``: ``data/aggregate-00003-of-00010.h5``."""
    return os.path.join(data_dir, f"{AGGREGATE_FILE_PREFIX}{file_index:05d}-of-{num_files:05d}.h5")


def file_paths(catalogue: Catalogue, data_dir: str, songs_per_file: int = 1) -> list[str]:
    """The file every group of ``songs_per_file`` consecutive songs goes to, in song order."""
    if songs_per_file == 1:
        return [song_file_path(data_dir, track_id) for track_id in catalogue.track_ids]
    num_files = -(-len(catalogue) // songs_per_file)
    return [aggregate_file_path(data_dir, index, num_files) for index in range(num_files)]


def write_song_files(catalogue: Catalogue, data_dir: str, songs_per_file: int = 1,
                     workers: Optional[int] = None, progress: bool = True,
                     track_times: bool = False) -> tuple[list[str], int]:
    """Generates and writes every song of ``catalogue`` below ``data_dir``; returns the paths
    in song order and the total bytes written.

    ``workers`` > 1 uses that many processes, started with "spawn" (safe when the caller runs
    TensorFlow or Beam threads; a script calling this at import time needs the usual
    ``if __name__ == "__main__":`` guard). The output does not depend on ``workers``. None: the
    CPU count, but one process per ``MIN_SONGS_PER_WORKER`` songs at most."""
    if songs_per_file < 1:
        raise ValueError(f"songs_per_file must be at least 1, got {songs_per_file}")
    if workers is None:  # a process costs ~0.5 s to start: small jobs stay in this one
        workers = max(1, min(os.cpu_count() or 1, len(catalogue) // MIN_SONGS_PER_WORKER))
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    paths = file_paths(catalogue, data_dir, songs_per_file)
    for directory in sorted({os.path.dirname(path) for path in paths}):
        os.makedirs(directory, exist_ok=True)
    state = _WorkerState(seed=catalogue.seed, styles=catalogue.styles,
                         artist_ids=np.array(catalogue.artists.ids),
                         artist_style=np.asarray(catalogue.artists.style),
                         track_times=track_times)

    def tasks() -> Iterator[tuple[str, list[SongSpec]]]:
        for file_index, path in enumerate(paths):
            start = file_index * songs_per_file
            stop = min(start + songs_per_file, len(catalogue))
            yield path, [catalogue.song_spec(index) for index in range(start, stop)]

    from tqdm import tqdm  # imported here: generating single songs needs no tqdm
    total_bytes = 0
    workers = min(workers, len(paths))
    with tqdm(total=len(catalogue), unit="song", desc="MSD files", disable=not progress,
              smoothing=0.05) as bar:
        if workers == 1:
            previous = _WORKER_STATE
            _set_worker_state(state)
            try:
                for task in tasks():
                    _, num_songs, _, size = _write_file_task(task)
                    total_bytes += size
                    bar.update(num_songs)
            finally:
                _set_worker_state(previous)
        else:
            chunksize = max(1, min(16, len(paths) // (workers * 8)))
            context = multiprocessing.get_context("spawn")
            with context.Pool(workers, initializer=_set_worker_state, initargs=(state,)) as pool:
                for _, num_songs, _, size in pool.imap_unordered(_write_file_task, tasks(),
                                                                 chunksize=chunksize):
                    total_bytes += size
                    bar.update(num_songs)
    return paths, total_bytes


# --------------------------------------------------------------------------------------------
# Listening data
# --------------------------------------------------------------------------------------------


def user_id(seed: int, user_index: int) -> str:
    """A Taste Profile-like user id (40 lower-case hex characters), fixed by seed and index."""
    return hashlib.sha1(f"msd-synthetic-user:{seed}:{user_index}".encode()).hexdigest()


def sample_history_lengths(rng: np.random.Generator, count: int, num_songs: int) -> np.ndarray:
    """Songs per user: at least 10 (the Taste Profile's own floor), median ≈ 30, a long tail
    (Student t in log space) up to thousands; never more than the catalogue holds."""
    log_extra = (HISTORY_LOG_MEDIAN_ABOVE_MIN
                 + HISTORY_LOG_SCALE * rng.standard_t(HISTORY_T_DF, count))
    extra = np.floor(np.exp(np.minimum(log_extra, np.log(HISTORY_MAX))))
    lengths = np.minimum(HISTORY_MIN + extra.astype(np.int64), HISTORY_MAX)
    return np.minimum(lengths, num_songs)


class ListeningModel:
    """Per-style popularity (Zipf-like over a random order of the style's songs), the scenes'
    song pools (each scene's songs weighted by that same popularity) and the samplers that
    turn them into user histories."""

    def __init__(self, catalogue: Catalogue):
        rng = _rng(catalogue.seed, _STREAM_POPULARITY)
        self.num_songs = len(catalogue)
        self.num_styles = catalogue.styles.num_styles
        self.style_songs: list[np.ndarray] = []
        self.style_cumulative: list[np.ndarray] = []
        popularity = np.zeros(self.num_songs)
        counts = np.bincount(catalogue.style, minlength=self.num_styles)
        for style in range(self.num_styles):
            songs = np.flatnonzero(catalogue.style == style)
            ranks = rng.permutation(len(songs))
            weights = (ranks + POPULARITY_ZIPF_OFFSET) ** -POPULARITY_ZIPF_EXPONENT
            weights /= weights.sum() if len(songs) else 1.0
            popularity[songs] = weights * counts[style] / self.num_songs
            self.style_songs.append(songs)
            self.style_cumulative.append(np.cumsum(weights))
        self.style_share = counts / counts.sum()
        self.popularity = popularity / popularity.sum()
        self.global_cumulative = np.cumsum(self.popularity)
        # Scenes: a user picks scenes by their size; inside a scene, songs by popularity.
        self.num_scenes = int(catalogue.num_scenes)
        scene_counts = np.bincount(catalogue.scene, minlength=self.num_scenes)
        by_scene = np.argsort(catalogue.scene, kind="stable")  # one sort, not a scan per scene
        self.scene_songs = np.split(by_scene, np.cumsum(scene_counts)[:-1])
        self.scene_cumulative: list[np.ndarray] = []
        for songs in self.scene_songs:
            weights = self.popularity[songs]
            self.scene_cumulative.append(np.cumsum(weights / weights.sum()) if len(songs)
                                         else weights)
        self.scene_share = scene_counts / scene_counts.sum()
        # For drawing a user's styles and scenes (by share, without repeats) in O(k log n).
        self._style_pick_cumulative = np.cumsum(self.style_share)
        self._scene_pick_cumulative = np.cumsum(self.scene_share)
        self._favourite_count_cumulative = np.cumsum(FAVOURITE_STYLE_COUNT_PROBS)
        self._scene_count_cumulative = np.cumsum(USER_SCENE_COUNT_PROBS)

    @staticmethod
    def _pick_count(rng: np.random.Generator, counts: Sequence[int],
                    cumulative: np.ndarray) -> int:
        """One of ``counts`` with the probabilities whose running sum is ``cumulative``."""
        index = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
        return int(counts[min(index, len(counts) - 1)])

    @staticmethod
    def _pick_distinct(rng: np.random.Generator, cumulative: np.ndarray, count: int
                       ) -> np.ndarray:
        """``count`` distinct indices drawn by the weights whose running sum is ``cumulative``
        (successive draws, repeats redrawn; zero-weight indices never come up). ``count``
        must not exceed the number of indices with weight > 0."""
        picked: list[int] = []
        last = len(cumulative) - 1
        while len(picked) < count:
            draws = np.searchsorted(cumulative, rng.random(count) * cumulative[-1], side="right")
            for index in np.minimum(draws, last).tolist():
                if index not in picked and len(picked) < count:
                    picked.append(index)
        return np.array(picked, dtype=np.int64)

    @staticmethod
    def _split(rng: np.random.Generator, count: int) -> np.ndarray:
        """Symmetric Dirichlet(2) weights of ``count`` parts (normalised gamma draws)."""
        weights = rng.standard_gamma(2.0, count)
        return weights / weights.sum()

    def user_history(self, rng: np.random.Generator, length: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(song indices, play counts, favourite styles, scenes) of one user with ``length``
        songs: a share ~ Beta(12, 18) (mean 0.4) of the draws comes from the user's 1–3
        scenes, the rest from the favourite styles (mostly) or the whole catalogue."""
        num_favourites = min(self._pick_count(rng, FAVOURITE_STYLE_COUNTS,
                                              self._favourite_count_cumulative),
                             int(np.count_nonzero(self.style_share)))
        favourites = self._pick_distinct(rng, self._style_pick_cumulative, num_favourites)
        favourite_weights = self._split(rng, num_favourites)
        favourite_share = rng.beta(*FAVOURITE_SHARE_BETA)
        num_scenes = min(self._pick_count(rng, USER_SCENE_COUNTS, self._scene_count_cumulative),
                         int(np.count_nonzero(self.scene_share)))
        scenes = self._pick_distinct(rng, self._scene_pick_cumulative, num_scenes)
        scene_weights = self._split(rng, num_scenes)
        scene_share = rng.beta(*SCENE_SHARE_BETA)
        component_probs = np.concatenate([
            (1.0 - scene_share) * favourite_share * favourite_weights,
            scene_share * scene_weights,
            [(1.0 - scene_share) * (1.0 - favourite_share)]])
        pools = ([(self.style_songs[style], self.style_cumulative[style])
                  for style in favourites]
                 + [(self.scene_songs[scene], self.scene_cumulative[scene])
                    for scene in scenes])
        if length > self.num_songs // 2:
            songs = self._top_k_by_gumbel(rng, pools, component_probs, length)
        else:
            songs = self._draw_distinct(rng, pools, component_probs, length)
        play_counts = np.minimum(rng.zipf(PLAY_COUNT_ZIPF, len(songs)), PLAY_COUNT_MAX)
        return songs, play_counts.astype(np.int64), favourites, np.sort(scenes)

    def _mixture_weights(self, pools, component_probs: np.ndarray) -> np.ndarray:
        """Every song's probability under the user's mixture: ``pools`` (songs, cumulative
        weights) with ``component_probs[:-1]``, the whole catalogue with the last."""
        weights = component_probs[-1] * self.popularity
        for (songs, cumulative), probability in zip(pools, component_probs[:-1]):
            weights[songs] += probability * np.diff(cumulative, prepend=0.0)  # no repeats
        return weights

    def _top_k_by_gumbel(self, rng, pools, component_probs, length) -> np.ndarray:
        """Weighted sampling without replacement over the whole catalogue (for very long
        histories): the top ``length`` of log(weight) + Gumbel noise."""
        weights = self._mixture_weights(pools, component_probs)
        keys = np.log(np.maximum(weights, 1e-300)) + rng.gumbel(size=len(weights))
        top = np.argpartition(-keys, length - 1)[:length]
        return top[np.argsort(-keys[top])]

    def _draw_distinct(self, rng, pools, component_probs, length) -> np.ndarray:
        """Draws from the user's mixture (favourite styles and scenes, else global popularity)
        with replacement and keeps first occurrences until ``length`` distinct songs are
        found."""
        chosen = np.zeros(0, dtype=np.int64)
        component_cumulative = np.cumsum(component_probs)
        for _ in range(50):
            need = length - len(chosen)
            if need <= 0:
                break
            draws = 2 * need + 8
            component = np.minimum(np.searchsorted(
                component_cumulative, rng.random(draws) * component_cumulative[-1],
                side="right"), len(component_probs) - 1)
            uniform = rng.random(draws)
            songs = np.empty(draws, dtype=np.int64)
            for index, (pool, cumulative) in enumerate(pools):
                mask = component == index  # pools are never empty (see user_history)
                positions = np.searchsorted(cumulative, uniform[mask] * cumulative[-1],
                                            side="right")
                songs[mask] = pool[np.minimum(positions, len(cumulative) - 1)]
            mask = component == len(pools)
            positions = np.searchsorted(self.global_cumulative,
                                        uniform[mask] * self.global_cumulative[-1], side="right")
            songs[mask] = np.minimum(positions, self.num_songs - 1)
            combined = np.concatenate([chosen, songs])
            _, first = np.unique(combined, return_index=True)
            chosen = combined[np.sort(first)][:length]
        if len(chosen) < length:  # favourite pools exhausted: finish without replacement
            weights = self._mixture_weights(pools, component_probs)
            weights[chosen] = 0.0
            keys = np.log(np.maximum(weights, 1e-300)) + rng.gumbel(size=len(weights))
            keys[chosen] = -np.inf
            extra = np.argpartition(-keys, length - len(chosen) - 1)[:length - len(chosen)]
            chosen = np.concatenate([chosen, extra])
        return chosen


class UserHistory(NamedTuple):
    """One synthetic user: id, songs (catalogue indices, sorted by song id), play counts, the
    favourite styles and the scenes the history was drawn from."""
    user_id: str
    songs: np.ndarray
    play_counts: np.ndarray
    favourite_styles: np.ndarray
    scenes: np.ndarray


def iter_user_histories(catalogue: Catalogue, num_users: int) -> Iterator[UserHistory]:
    """Yields ``num_users`` user histories; user u is drawn from its own stream (seed, u)."""
    model = ListeningModel(catalogue)
    song_ids = np.array(catalogue.song_ids)
    for user in range(num_users):
        rng = _rng(catalogue.seed, _STREAM_USER, user)
        length = int(sample_history_lengths(rng, 1, len(catalogue))[0])
        songs, play_counts, favourites, scenes = model.user_history(rng, length)
        order = np.argsort(song_ids[songs], kind="stable")  # like the Kaggle files
        yield UserHistory(user_id(catalogue.seed, user), songs[order], play_counts[order],
                          favourites, scenes)


def write_listening_files(catalogue: Catalogue, output_dir: str, num_users: int,
                          progress: bool = False) -> dict[str, object]:
    """Writes the catalogue side files (unique_tracks, taste_profile_song_to_tracks,
    kaggle_songs, styles.csv, scenes.csv) and, when ``num_users`` > 0, the triplets and
    kaggle_users. Returns the paths written, the number of listens and the share of listens
    that are songs of the listener's own scenes."""
    os.makedirs(output_dir, exist_ok=True)
    out = pathlib.Path(output_dir)
    written: dict[str, object] = {}
    artists = catalogue.artists
    with open(out / UNIQUE_TRACKS_FILENAME, "w", encoding="utf-8", newline="\n") as handle:
        for track_id, song_id, artist, title in zip(catalogue.track_ids, catalogue.song_ids,
                                                    catalogue.artist, catalogue.titles):
            handle.write(f"{track_id}<SEP>{song_id}<SEP>{artists.names[artist]}<SEP>{title}\n")
    written["unique_tracks_path"] = str(out / UNIQUE_TRACKS_FILENAME)
    by_song = sorted(zip(catalogue.song_ids, catalogue.track_ids))
    with open(out / SONG_TO_TRACKS_FILENAME, "w", encoding="ascii", newline="\n") as handle:
        handle.writelines(f"{song_id}\t{track_id}\n" for song_id, track_id in by_song)
    written["song_to_tracks_path"] = str(out / SONG_TO_TRACKS_FILENAME)
    with open(out / KAGGLE_SONGS_FILENAME, "w", encoding="ascii", newline="\n") as handle:
        handle.writelines(f"{song_id} {number}\n"
                          for number, (song_id, _) in enumerate(by_song, start=1))
    written["kaggle_songs_path"] = str(out / KAGGLE_SONGS_FILENAME)
    with open(out / STYLES_FILENAME, "w", encoding="ascii", newline="\n") as handle:
        handle.write("track_id,song_id,style\n")
        handle.writelines(f"{track_id},{song_id},{style}\n" for track_id, song_id, style
                          in zip(catalogue.track_ids, catalogue.song_ids, catalogue.style))
    written["styles_path"] = str(out / STYLES_FILENAME)
    with open(out / SCENES_FILENAME, "w", encoding="ascii", newline="\n") as handle:
        handle.write("track_id,song_id,scene\n")
        handle.writelines(f"{track_id},{song_id},{scene}\n" for track_id, song_id, scene
                          in zip(catalogue.track_ids, catalogue.song_ids, catalogue.scene))
    written["scenes_path"] = str(out / SCENES_FILENAME)
    written["triplets_path"] = written["kaggle_users_path"] = None
    num_listens = num_scene_listens = 0
    if num_users > 0:
        from tqdm import tqdm
        song_ids = catalogue.song_ids
        with open(out / TRIPLETS_FILENAME, "w", encoding="ascii", newline="\n") as triplets, \
                open(out / KAGGLE_USERS_FILENAME, "w", encoding="ascii", newline="\n") as users:
            for history in tqdm(iter_user_histories(catalogue, num_users), total=num_users,
                                unit="user", desc="listening data", disable=not progress):
                users.write(history.user_id + "\n")
                prefix = history.user_id + "\t"
                triplets.write("".join(
                    f"{prefix}{song_ids[song]}\t{count}\n"
                    for song, count in zip(history.songs.tolist(), history.play_counts.tolist())))
                num_listens += len(history.songs)
                num_scene_listens += int(np.isin(catalogue.scene[history.songs],
                                                 history.scenes).sum())
        written["triplets_path"] = str(out / TRIPLETS_FILENAME)
        written["kaggle_users_path"] = str(out / KAGGLE_USERS_FILENAME)
    written["num_listens"] = num_listens
    written["scene_listen_share"] = round(num_scene_listens / max(num_listens, 1), 4)
    return written


# --------------------------------------------------------------------------------------------
# The whole data set
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SynthesisSummary:
    """What ``synthesize`` wrote: paths, counts and how long it took."""
    output_dir: str
    data_dir: str
    h5_paths: list[str]
    num_songs: int
    num_files: int
    songs_per_file: int
    num_styles: int
    num_artists: int
    num_users: int
    num_listens: int
    total_segments: int
    h5_bytes: int
    seed: int
    unique_tracks_path: str
    song_to_tracks_path: str
    kaggle_songs_path: str
    styles_path: str
    manifest_path: str
    triplets_path: Optional[str] = None
    kaggle_users_path: Optional[str] = None
    seconds: float = 0.0
    num_scenes: int = 0
    scenes_path: Optional[str] = None
    scene_listen_share: float = 0.0  # share of listens that are songs of the user's scenes
    user_scene_counts: tuple[int, ...] = USER_SCENE_COUNTS
    user_scene_count_probs: tuple[float, ...] = USER_SCENE_COUNT_PROBS
    scene_share_beta: tuple[float, float] = SCENE_SHARE_BETA

    def describe(self) -> str:
        """A few lines for a person: what was written where."""
        per_song = self.h5_bytes / max(self.num_songs, 1)
        lines = [
            f"synthetic MSD in {self.output_dir} (seed {self.seed}, {self.seconds:.1f} s)",
            f"  {self.num_songs:,} songs by {self.num_artists:,} artists in "
            f"{self.num_styles} styles, "
            f"{self.total_segments:,} segments",
            f"  {self.num_files:,} HDF5 file(s) below {self.data_dir} "
            f"({self.songs_per_file} song(s) per file), {self.h5_bytes / 1e6:,.1f} MB "
            f"({per_song / 1e3:,.0f} kB per song)",
            f"  catalogue: {self.unique_tracks_path}, {self.song_to_tracks_path}, "
            f"{self.kaggle_songs_path}",
            f"  ground truth styles: {self.styles_path}",
            f"  ground truth scenes ({self.num_scenes:,} co-listening groups across styles): "
            f"{self.scenes_path}",
        ]
        if self.num_users:
            lines.append(f"  listening: {self.num_users:,} users, {self.num_listens:,} triplets in "
                         f"{self.triplets_path}; users in {self.kaggle_users_path}; "
                         f"{self.scene_listen_share:.0%} of listens from the users' scenes")
        else:
            lines.append("  listening: none (num_users = 0)")
        return "\n".join(lines)


def _existing_outputs(data_dir: str) -> list[str]:
    found = []
    for directory, _, names in os.walk(data_dir):
        found.extend(os.path.join(directory, name) for name in names
                     if name.endswith(".h5") or ".h5.tmp-" in name)
    return found


def synthesize(output_dir: str, num_songs: int, num_users: int = 0, seed: int = 0,
               num_styles: int = 12, songs_per_file: int = 1, workers: Optional[int] = None,
               progress: bool = True, overwrite: bool = False,
               track_times: bool = False, num_scenes: Optional[int] = None) -> SynthesisSummary:
    """Writes a synthetic MSD to ``output_dir``: HDF5 files below ``data/`` (one song per file in
    the ``data/A/B/C/TR….h5`` layout, or aggregate files), the catalogue side files, the
    ground-truth ``styles.csv`` and ``scenes.csv``, listening data for ``num_users`` users and
    ``synthesis.json``. ``num_scenes``: see ``build_catalogue`` (default one per 100 songs).

    Refuses to write into a ``data/`` that already holds .h5 files unless ``overwrite``, which
    first deletes those .h5 files (so no stale songs of an earlier run stay mixed in).
    ``workers``: see ``write_song_files``; the output is the same for any value. With
    ``track_times=False`` (default) the files carry no HDF5 timestamps, so one seed gives
    byte-identical files; True adds timestamps as in the real MSD files.
    """
    started = time.perf_counter()
    if num_users < 0:
        raise ValueError(f"num_users must be 0 or more, got {num_users}")
    data_dir = os.path.join(output_dir, DATA_DIRNAME)
    existing = _existing_outputs(data_dir)
    if existing and not overwrite:
        raise FileExistsError(f"{data_dir} already holds {len(existing):,} .h5 file(s), e.g. "
                              f"{existing[0]}; pass overwrite=True (--overwrite) to replace them")
    for path in existing:
        os.remove(path)
    catalogue = build_catalogue(num_songs, seed=seed, num_styles=num_styles,
                                num_scenes=num_scenes)
    paths, h5_bytes = write_song_files(catalogue, data_dir, songs_per_file=songs_per_file,
                                       workers=workers, progress=progress,
                                       track_times=track_times)
    side = write_listening_files(catalogue, output_dir, num_users, progress=progress)
    manifest_path = os.path.join(output_dir, MANIFEST_FILENAME)
    summary = SynthesisSummary(
        output_dir=output_dir, data_dir=data_dir, h5_paths=paths, num_songs=len(catalogue),
        num_files=len(paths), songs_per_file=songs_per_file, num_styles=num_styles,
        num_artists=len(catalogue.artists), num_users=num_users,
        num_listens=int(side["num_listens"]), total_segments=int(catalogue.num_segments.sum()),
        h5_bytes=h5_bytes, seed=seed, unique_tracks_path=side["unique_tracks_path"],
        song_to_tracks_path=side["song_to_tracks_path"],
        kaggle_songs_path=side["kaggle_songs_path"], styles_path=side["styles_path"],
        manifest_path=manifest_path, triplets_path=side["triplets_path"],
        kaggle_users_path=side["kaggle_users_path"],
        seconds=time.perf_counter() - started, num_scenes=catalogue.num_scenes,
        scenes_path=side["scenes_path"], scene_listen_share=side["scene_listen_share"])
    # Paths relative to output_dir and no timing: the manifest is the same for every run of
    # one seed, like the data.
    manifest = {}
    for key, value in dataclasses.asdict(summary).items():
        if key in ("h5_paths", "seconds", "output_dir"):
            continue
        if key.endswith(("_path", "_dir")) and value is not None:
            value = os.path.relpath(value, output_dir)
        manifest[key] = value
    with open(manifest_path, "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=2, sort_keys=True)
        handle.write("\n")
    return summary


def read_styles(path: str) -> dict[str, int]:
    """Ground truth from ``styles.csv``: track id → style."""
    with open(path, encoding="ascii") as handle:
        next(handle)
        return {track: int(style) for track, _, style in
                (line.rstrip("\n").split(",") for line in handle if line.strip())}


def read_scenes(path: str) -> dict[str, int]:
    """Ground truth from ``scenes.csv``: track id → scene."""
    return read_styles(path)  # the same layout: track_id,song_id,<label>


def iter_song_timbres(paths: Iterable[str]) -> Iterator[tuple[str, np.ndarray]]:
    """(track id, timbre matrix) of every song in the given MSD files (single or aggregate):
    a small reader for checks and tests, independent of the pipeline's parser."""
    for path in paths:
        with h5py.File(path, "r") as h5:
            songs = h5["analysis/songs"][()]
            timbre = h5["analysis/segments_timbre"][()]
            starts = songs["idx_segments_timbre"].astype(np.int64)
            ends = np.append(starts[1:], len(timbre))
            for row in range(len(songs)):
                yield songs["track_id"][row].decode("ascii"), timbre[starts[row]:ends[row]]
