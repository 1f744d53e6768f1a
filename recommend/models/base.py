"""The interface every recommendation model implements, and the model directory it lives in.

Beam-free. A model is a catalogue of songs (``song_ids``, sorted: row i is song i) and a way to
rank them for a batch of user histories (rows of that catalogue). The batch job
(``transforms.scoring``), the evaluation and the serving export know only this interface, so a
new model is a new module registered in ``recommend.models.MODELS``, nothing else.

Model directory (local or gs://)::

    model.json        {"kind", "format_version", "version", "parameters", "training",
                       "metrics", "songs": N, "songs_file",
                       "arrays": {name: {"file", "dtype", "shape"}}}
    v-<version>/      one published version: songs.txt (the catalogue's song ids, sorted: row i
                      = line i), <name>.npy per array, run_summary.json, rejected/

``model.json`` is the commit point: it names the files of the current version and is replaced
last, in one write, when a training run publishes (``pipelines.train.publish_model``); a
version's files never change after that. A reader that read model.json once (a recommendation
run pins it) keeps reading that version, and the previous version is kept when a new one is
published, so a run that started before the switch finishes with the model it started with.
A directory without model.json is not a model (a crashed first training run).
"""
from __future__ import annotations

import abc
import dataclasses
import io
import json
import re
from typing import Any, ClassVar, Optional, Sequence

import numpy as np
from apache_beam.io.filesystems import FileSystems

MODEL_FILE = "model.json"
SONGS_FILE = "songs.txt"
FORMAT_VERSION = 1
SONG_ID = re.compile(r"SO[A-Z0-9]{16}")
MODEL_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")


class ModelError(ValueError):
    """A model or model directory cannot be used; the message says which file and why."""


def check_model_name(name: str) -> str:
    """The one rule for model names: they become a partition value (``model=NAME`` folders, a
    BigQuery column) and a registry key, so lowercase letters, digits and underscores."""
    if not MODEL_NAME.fullmatch(name or ""):
        raise ModelError(f"model name {name!r} must be 1-63 lowercase letters, digits or "
                         "underscores, starting with a letter")
    return name


@dataclasses.dataclass(frozen=True, eq=False)
class Recommendations:
    """Per user the k best catalogue rows (best first), their scores, and how many of the last
    entries came from the popularity fill (0 when the model ranked all k itself)."""
    rows: np.ndarray    # int32 [B, k]
    scores: np.ndarray  # float64 [B, k]
    filled: np.ndarray  # int32 [B]


class Recommender(abc.ABC):
    """A model: a song catalogue and the exact top k of it for user histories.

    ``histories[u]`` are the catalogue rows a user listened to (int64, sorted, distinct) and
    ``play_counts[u]`` their play counts. ``recommend`` returns for each user exactly ``k``
    songs they did not listen to, none twice, ordered by the model's score (ties by the lower
    row, i.e. the lower song id); callers check ``num_songs() - len(history) >= k`` first. Ask
    for a larger ``k`` to get more candidates (a re-ranker does).
    """

    kind: ClassVar[str]

    def __init__(self, song_ids: np.ndarray):
        song_ids = np.asarray(song_ids, dtype=object)
        if len(song_ids) and not (song_ids[1:] > song_ids[:-1]).all():
            raise ModelError(f"{self.kind}: song ids must be sorted and distinct")
        self.song_ids = song_ids

    def num_songs(self) -> int:
        """A method, not a property: a model shared across processes is reached by proxy."""
        return len(self.song_ids)

    def row_of_song(self) -> dict[str, int]:
        return {song_id: row for row, song_id in enumerate(self.song_ids.tolist())}

    @abc.abstractmethod
    def recommend(self, histories: Sequence[np.ndarray], play_counts: Sequence[np.ndarray],
                  k: int) -> Recommendations:
        """The exact top ``k`` unlistened songs of every user (see the class docstring)."""

    # The model directory: subclasses say what they store.
    def parameters(self) -> dict[str, Any]:
        return {}

    def arrays(self) -> dict[str, np.ndarray]:
        return {}

    @classmethod
    def from_arrays(cls, song_ids: np.ndarray, arrays: dict[str, np.ndarray],
                    parameters: dict[str, Any]) -> "Recommender":
        raise NotImplementedError(f"{cls.kind} models are not stored in model directories")

    #: arrays a model directory of this kind must hold: name → (dtype kind, number of dims)
    stored_arrays: ClassVar[dict[str, tuple[str, int]]] = {}


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def save_model(model: Recommender, model_dir: str, training: Optional[dict] = None,
               metrics: Optional[dict] = None) -> str:
    """Writes ``model`` into ``model_dir`` (arrays and songs first, ``model.json`` last)."""
    arrays = model.arrays()
    described = {}
    for name, array in arrays.items():
        path = FileSystems.join(model_dir, f"{name}.npy")
        with FileSystems.create(path) as handle:
            handle.write(_npy_bytes(np.ascontiguousarray(array)))
        described[name] = {"file": f"{name}.npy", "dtype": array.dtype.str,
                           "shape": list(array.shape)}
    with FileSystems.create(FileSystems.join(model_dir, SONGS_FILE)) as handle:
        handle.write("".join(f"{song_id}\n" for song_id in model.song_ids).encode("ascii"))
    manifest = {"kind": model.kind, "format_version": FORMAT_VERSION,
                "parameters": model.parameters(), "training": training or {},
                "metrics": metrics or {}, "songs": int(model.num_songs()), "arrays": described}
    with FileSystems.create(FileSystems.join(model_dir, MODEL_FILE)) as handle:
        handle.write(json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8"))
    return model_dir


def read_manifest(model_dir: str) -> dict[str, Any]:
    path = FileSystems.join(model_dir.rstrip("/"), MODEL_FILE)
    if not FileSystems.exists(path):
        raise ModelError(f"{model_dir} holds no {MODEL_FILE}: not a model directory (or its "
                         "training run did not finish)")
    try:
        with FileSystems.open(path) as handle:
            manifest = json.loads(handle.read().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise ModelError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(manifest, dict) or "kind" not in manifest:
        raise ModelError(f"{path} does not name the model's kind")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ModelError(f"{path}: format_version {manifest.get('format_version')!r}, this "
                         f"version reads {FORMAT_VERSION}")
    return manifest


def read_song_ids(model_dir: str, manifest: Optional[dict] = None) -> np.ndarray:
    """The model's catalogue (sorted song ids), checked against ``model.json``."""
    manifest = manifest or read_manifest(model_dir)
    path = FileSystems.join(model_dir.rstrip("/"), manifest.get("songs_file", SONGS_FILE))
    try:
        with FileSystems.open(path) as handle:
            lines = handle.read().decode("ascii").split("\n")
    except (OSError, UnicodeDecodeError) as error:
        raise ModelError(f"cannot read {path}: {error}") from error
    if lines and lines[-1] == "":
        lines.pop()
    bad = next((line for line in lines if not SONG_ID.fullmatch(line)), None)
    if bad is not None:
        raise ModelError(f"{path}: {bad!r} is not a song id")
    if not isinstance(manifest.get("songs"), int) or isinstance(manifest.get("songs"), bool):
        raise ModelError(f"{model_dir}/{MODEL_FILE}: songs must be a whole number, got "
                         f"{manifest.get('songs')!r}")
    if len(lines) != manifest["songs"]:
        raise ModelError(f"{path} lists {len(lines)} songs, model.json says "
                         f"{manifest.get('songs')}")
    return np.array(lines, dtype=object)


def _check_array(path: str, described: dict, shape: tuple, dtype: np.dtype,
                 expected: tuple[str, int]) -> None:
    dtype_kind, ndim = expected
    if list(shape) != list(described["shape"]) or len(shape) != ndim \
            or dtype.kind != dtype_kind:
        raise ModelError(f"{path}: shape {tuple(shape)} dtype {dtype}, expected "
                         f"{described['shape']} of kind {dtype_kind!r}")


def _described(model_dir: str, manifest: dict, name: str, expected: dict) -> dict:
    described = manifest.get("arrays", {})
    if name not in described:
        raise ModelError(f"{model_dir}/{MODEL_FILE} lists no array {name!r} "
                         f"(a {manifest['kind']} model needs {sorted(expected)})")
    return described[name]


def check_model_dir(model_dir: str, expected: dict[str, tuple[str, int]],
                    manifest: Optional[dict] = None) -> dict[str, Any]:
    """Checks a model directory against its own ``model.json`` (``manifest`` when the caller
    has read it) without reading the arrays' data (only their headers): what a launcher does
    before a job starts. Returns the manifest."""
    manifest = manifest or read_manifest(model_dir)
    read_song_ids(model_dir, manifest)
    for name in expected:
        described = _described(model_dir, manifest, name, expected)
        path = FileSystems.join(model_dir.rstrip("/"), described["file"])
        try:
            with FileSystems.open(path) as handle:
                header = handle.read(4096)
            stream = io.BytesIO(header)
            version = np.lib.format.read_magic(stream)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, _, dtype = read_header(stream)
        except (OSError, ValueError) as error:
            raise ModelError(f"cannot read {path}: {error}") from error
        _check_array(path, described, shape, dtype, expected[name])
    return manifest


def read_arrays(model_dir: str, manifest: dict, expected: dict[str, tuple[str, int]]
                ) -> dict[str, np.ndarray]:
    """Every array ``expected`` names, checked against model.json (dtype kind, dimensions)."""
    arrays = {}
    for name in expected:
        described = _described(model_dir, manifest, name, expected)
        path = FileSystems.join(model_dir.rstrip("/"), described["file"])
        try:
            with FileSystems.open(path) as handle:
                array = np.load(io.BytesIO(handle.read()), allow_pickle=False)
        except (OSError, ValueError, EOFError) as error:
            raise ModelError(f"cannot read {path}: {error}") from error
        _check_array(path, described, array.shape, array.dtype, expected[name])
        arrays[name] = array
    return arrays
