"""``python -m pipelines.evaluate``: offline evaluation of the recommendations with the MSD
Challenge protocol, against a popularity baseline, a random ranking and content/popularity
blends; writes ``metrics.json`` and a self-contained ``report.html``.

    # the challenge's files: what the job saw (visible) and what it should find (hidden)
    python -m pipelines.evaluate --visible year1_test_triplets_visible.txt \\
        --hidden year1_test_triplets_hidden.txt --recommendations out/recommendations \\
        --output_dir out/evaluation
    # one listens file, split per user at random (as the challenge did); the content model is
    # computed here from the visible half with the batch job's kernel
    python -m pipelines.evaluate --listens train_triplets.txt --holdout_fraction 0.5 --seed 1 \\
        --features out/features --output_dir out/evaluation

Inputs of the content model (at least one): ``--recommendations`` (the job's Parquet folder, or
a BigQuery table ``bq://PROJECT.DATASET.TABLE`` with ``--run_date``), ``--submission`` (a Kaggle
submission with ``--kaggle_songs`` and ``--kaggle_users``), or ``--features`` (the catalogue:
the content model is scored here with the job's kernel from the visible listens).

Models compared: ``content``; ``popularity`` (songs by number of listeners in the visible data,
minus the user's own); ``random`` (uniform over the catalogue, minus the user's own; the floor);
``blend_<alpha>`` for each ``--blend`` alpha: candidates re-ranked by
(1 − α)·z(content score) + α·z(log(1 + listeners)), z = standardised (content per user over its
candidates, popularity over the catalogue). The candidates are the kernel's top
``--blend_candidates`` when ``--features`` is given, otherwise the content lists themselves (the
blend then only re-orders what the job recommended). A submission has no scores: without
``--features`` no blend is computed. The best alpha (by mAP) is reported; it is chosen on the
same hidden data, so its score is optimistic.

Users evaluated: everyone with at least one hidden song. Users the content model has no list for
(no row, an empty list, or a row the job marked as its popularity fallback) are served by the
popularity fallback and counted in ``fallback_share``. Every model recommends the same number of
songs per user: ``--k``, or fewer when the content lists are shorter.

Cold start (``--cold_songs FRACTION``, with ``--listens``): that share of the songs in the
listens, drawn with ``--seed``, is held out of every model's training: after the per-user split
every visible listen of a cold song moves to the user's hidden half, so ``--write_split``'s
``visible.txt`` (what ``pipelines.train`` is given) never names one (``cold_songs.txt`` lists
them) and the popularity counts never see one. Each model then also gets ``cold_start``: recall@k,
mAP@k and P@k against the hidden cold songs alone (users with at least one), the same against
the other (warm) hidden songs, and the share of its recommendations that are cold songs. A model
trained on the visible listens only (itemcf, als, popularity) cannot recommend a cold song: it
scores zero there by construction; the content and hybrid models can.
"""
from pipelines import cli

if __name__ == "__main__":  # before anything imports TensorFlow
    cli.quiet_native_logs()

import argparse
import collections
import contextlib
import dataclasses
import datetime
import html
import io
import itertools
import json
import lzma
import math
import os
import pathlib
import random
import stat
import sys
import time
import zlib
from typing import Any, Iterable, Iterator, Optional, Sequence

import numpy as np

from recommend import metrics

DEFAULT_BLEND = "0.1,0.3,0.5,0.7,0.9"
DEFAULT_BLEND_CANDIDATES = 2000
MAX_CUTOFF = 1_000_000  # --k, --precision_k: more songs than the whole Million Song Dataset
HISTORY_BUCKETS = ((0, 0), (1, 4), (5, 9), (10, 19), (20, 49), (50, 99), (100, None))
METRICS_FILE = "metrics.json"
COLD_SONGS_FILE = "cold_songs.txt"  # --write_split with --cold_songs: the cold song ids
REPORT_FILE = "report.html"
_LORENZ_POINTS = 201
PARQUET_BATCH_ROWS = 10_000  # output rows decoded at once (5M recommendations at k=500)
EVALUATION_CHUNK_USERS = 20_000  # users whose lists are scored at once (~10M entries at k=500)
_MODEL_COLOURS = {"content": "#1f77b4", "popularity": "#ff7f0e", "random": "#7f7f7f",
                  "blend": "#2ca02c"}


class EvaluationError(Exception):
    """A problem with the inputs the user can fix; the message says which and how."""


# --------------------------------------------------------------------------------------------
# Songs as integer codes
# --------------------------------------------------------------------------------------------

class SongCodes:
    """song id ↔ dense int code, so lists and sets are numpy arrays (55M entries at full size)."""

    def __init__(self) -> None:
        self._code: dict[str, int] = {}
        self.ids: list[str] = []

    def __len__(self) -> int:
        return len(self.ids)

    def code(self, song_id: str) -> int:
        code = self._code.get(song_id)
        if code is None:
            code = self._code[song_id] = len(self.ids)
            self.ids.append(song_id)
        return code

    def codes(self, song_ids: Iterable[str]) -> np.ndarray:
        return np.fromiter((self.code(song) for song in song_ids), dtype=np.int64)


def dedupe_keep_first(codes: np.ndarray) -> np.ndarray:
    """The array without repeats, each song at its first position."""
    if len(codes) < 2:
        return codes
    _, first = np.unique(codes, return_index=True)
    if len(first) == len(codes):
        return codes
    return codes[np.sort(first)]


# --------------------------------------------------------------------------------------------
# Listens
# --------------------------------------------------------------------------------------------

Listens = dict[str, dict[int, int]]  # user id → {song code: play count}


# What reading a damaged file raises (a truncated or corrupt .gz/.bz2/.xz, an I/O error).
_READ_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError)


def _read_lines(path: str, flag: str) -> Iterator[bytes]:
    """The lines of a local or gs:// file (``msd.listening.file_lines``, the jobs' reader: a
    compressed file is checked to its end, since Beam's own reader stops at a cut without a
    word), a damaged file (truncated, corrupt compression, an I/O error) ending in an
    ``EvaluationError`` naming it."""
    from msd import listening

    try:
        yield from listening.file_lines(path)
    except listening.CompressedFileError as error:
        raise EvaluationError(f"{flag} {path}: cannot be read: {error.cause}") from error
    except _READ_ERRORS as error:
        raise EvaluationError(f"{flag} {path}: cannot be read: {_cause(error)}") from error


def _cause(error: BaseException) -> str:
    return (error.strerror if isinstance(error, OSError) and error.strerror
            else str(error) or type(error).__name__)


def _check_exists(path: str, flag: str) -> None:
    """A local input must be a file (or a pipe: read once, as a stream); a folder, a device
    (``/dev/zero`` has no end) or a missing path is refused with what it is."""
    if "://" in path:
        return
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise EvaluationError(f"{flag} {path}: no such file") from None
    except OSError as error:
        raise EvaluationError(f"{flag} {path}: {_cause(error)}") from None
    if stat.S_ISDIR(mode):
        raise EvaluationError(f"{flag} {path}: is a folder, not a file")
    if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
        raise EvaluationError(f"{flag} {path}: is a device or socket, not a file")


def read_listens_file(path: str, songs: SongCodes, flag: str = "--listens"
                      ) -> tuple[Listens, dict[str, int]]:
    """The listens of a triplets (or CSV) file, parsed by ``msd.listening``: per user, play
    counts by song (repeated user–song lines add up); and counts of lines kept and rejected by
    reason."""
    from msd import listening

    _check_exists(path, flag)
    users: Listens = {}
    stats: collections.Counter = collections.Counter()
    for record in listening.parse_listen_lines(_read_lines(path, flag), source=path):
        if isinstance(record, listening.Rejection):
            stats[f"rejected_{record.reason}"] += 1
            continue
        stats["listens"] += 1
        history = users.setdefault(record.user_id, {})
        code = songs.code(record.song_id)
        history[code] = history.get(code, 0) + record.play_count
    if not users:
        raise EvaluationError(f"{flag} {path}: no valid listens in the file")
    return users, dict(stats)


def holdout_split(listens: Listens, songs: SongCodes, fraction: float, seed: int
                  ) -> tuple[Listens, Listens]:
    """Each user's songs split at random into visible and hidden, as the MSD Challenge did:
    ⌊fraction·n⌋ hidden, at least one of each when n ≥ 2; a user with one song keeps it visible
    (and is not evaluated). Deterministic per (seed, user): a user's split does not depend on
    the other users or on the order of the file."""
    if not 0.0 < fraction < 1.0:
        raise EvaluationError(f"--holdout_fraction {fraction} must be between 0 and 1")
    visible: Listens = {}
    hidden: Listens = {}
    for user_id in sorted(listens):
        history = listens[user_id]
        ordered = sorted(history, key=lambda code: songs.ids[code])
        random.Random(f"{seed}:{user_id}").shuffle(ordered)
        n = len(ordered)
        num_hidden = 0 if n < 2 else min(n - 1, max(1, math.floor(fraction * n)))
        hidden_songs = ordered[:num_hidden]
        visible[user_id] = {code: history[code] for code in ordered[num_hidden:]}
        if hidden_songs:
            hidden[user_id] = {code: history[code] for code in hidden_songs}
    return visible, hidden


def choose_cold_songs(listens: Listens, songs: SongCodes, fraction: float, seed: int
                      ) -> np.ndarray:
    """Song codes held out of every model's training (cold start): round(fraction·n) of the n
    songs in the listens, drawn with ``seed`` from the songs in id order (so the choice depends
    on the data and the seed only, not on the file's order). Sorted."""
    if not 0.0 < fraction < 1.0:
        raise EvaluationError(f"--cold_songs {fraction} must be between 0 and 1")
    listened = sorted({code for history in listens.values() for code in history},
                      key=lambda code: songs.ids[code])
    wanted = int(round(fraction * len(listened)))
    if wanted < 1:
        raise EvaluationError(f"--cold_songs {fraction}: no song of the {len(listened)} in the "
                              "listens would be cold")
    rng = np.random.default_rng([seed, 20080101])
    chosen = rng.choice(len(listened), size=wanted, replace=False)
    return np.sort(np.array(listened, dtype=np.int64)[chosen])


def hide_cold_songs(visible: Listens, hidden: Listens, cold: np.ndarray
                    ) -> tuple[Listens, Listens]:
    """Every visible listen of a cold song moved to the same user's hidden half, so that no
    model (nor the popularity counts) sees a cold song, and finding one is what is measured."""
    cold_set = set(cold.tolist())
    new_visible: Listens = {}
    new_hidden: Listens = {user: dict(history) for user, history in hidden.items()}
    for user, history in visible.items():
        moved = {code: count for code, count in history.items() if code in cold_set}
        new_visible[user] = {code: count for code, count in history.items()
                             if code not in cold_set}
        if moved:
            new_hidden.setdefault(user, {}).update(moved)
    return new_visible, new_hidden


def subset_scores(lists: Sequence[np.ndarray], truth: "Truth", keep: np.ndarray,
                  map_cutoff: int, precision_cutoff: int) -> dict[str, Any]:
    """mAP@k, recall@k and P@k against the hidden songs with ``keep[code]`` only (users with
    at least one such song), the lists as they are (a slot spent on another song is a miss)."""
    kept = keep[truth.songs]
    counts = np.add.reduceat(kept.astype(np.int64), truth.offsets[:-1]) if len(
        truth.songs) else np.zeros(len(truth.users), np.int64)
    counts[np.diff(truth.offsets) == 0] = 0
    users = np.flatnonzero(counts > 0)
    if not len(users):
        return {"users": 0, "map": None, "recall": None, "precision": None}
    cut = [np.asarray(lists[u][:map_cutoff], np.int64) for u in users]
    offsets = np.concatenate([[0], np.cumsum([len(c) for c in cut])]).astype(np.int64)
    flat = np.concatenate(cut) if offsets[-1] else np.zeros(0, np.int64)
    hidden = [truth.songs[truth.offsets[u]:truth.offsets[u + 1]] for u in users]
    hidden = [h[keep[h]] for h in hidden]
    hidden_offsets = np.concatenate([[0], np.cumsum([len(h) for h in hidden])]).astype(np.int64)
    relevant = metrics.batch_relevance(offsets, flat, hidden_offsets, np.concatenate(hidden))
    scores = metrics.batch_user_scores(relevant, offsets, np.diff(hidden_offsets),
                                       map_cutoff=map_cutoff, precision_cutoff=precision_cutoff)
    return {"users": int(len(users)), "map": float(scores["average_precision"].mean()),
            "recall": float(scores["recall"].mean()),
            "precision": float(scores["precision"].mean())}


def cold_start_metrics(lists: Sequence[np.ndarray], truth: "Truth", cold: np.ndarray,
                       map_cutoff: int, precision_cutoff: int) -> dict[str, Any]:
    """A model's metrics split by cold songs (``cold``: bool per song code): ``cold``: against
    the hidden cold songs alone (recall@k of the cold songs, mAP@k, P@k; users with at least
    one hidden cold song); ``warm``: against the other hidden songs; ``cold_share``: the share
    of the recommended songs (the first k of every list) that are cold."""
    slots = [np.asarray(ranked[:map_cutoff], np.int64) for ranked in lists]
    total = sum(len(ranked) for ranked in slots)
    cold_slots = sum(int(cold[ranked].sum()) for ranked in slots)
    return {"cold": subset_scores(lists, truth, cold, map_cutoff, precision_cutoff),
            "warm": subset_scores(lists, truth, ~cold, map_cutoff, precision_cutoff),
            "cold_share": cold_slots / total if total else 0.0}


@contextlib.contextmanager
def staged_files(flag: str, *paths: pathlib.Path) -> Iterator[list[pathlib.Path]]:
    """Yields a partial file beside each of ``paths`` (``.<name>.partial``) to write; once all
    are written they replace ``paths``. A failure (a full disk, a read-only folder) leaves the
    previous files as they were, removes the partial ones, and is one line naming the folder."""
    partials = [path.with_name(f".{path.name}.partial") for path in paths]
    try:
        yield partials
        for partial, path in zip(partials, paths):
            os.replace(partial, path)
    except OSError as error:
        where = f"{error.filename}: " if error.filename else ""
        raise EvaluationError(f"{flag} {paths[0].parent}: cannot write "
                              f"{' and '.join(path.name for path in paths)} ({where}"
                              f"{_cause(error)})") from error
    finally:
        for partial in partials:
            with contextlib.suppress(OSError):
                partial.unlink()


def write_triplets(listens: Listens, songs: SongCodes, path: pathlib.Path) -> None:
    """Listens as Taste Profile triplets (user, song, play count; users and songs sorted)."""
    with open(path, "w", encoding="ascii", newline="\n") as handle:
        for user_id in sorted(listens):
            history = listens[user_id]
            for song_id, code in sorted((songs.ids[code], code) for code in history):
                handle.write(f"{user_id}\t{song_id}\t{history[code]}\n")


# --------------------------------------------------------------------------------------------
# The content model's recommendations
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class RecommendationSet:
    """Ranked lists per user (song codes, best first, no repeats), with the content scores when
    the source has them, and what the rows say about the run."""
    source: str
    lists: dict[str, np.ndarray]
    scores: Optional[dict[str, np.ndarray]]
    model_of_user: dict[str, str]
    history_size: dict[str, int]
    run_date: Optional[str] = None
    # Users the job served by its popularity fallback (popularity_filled = the list's length).
    fallback_users: set = dataclasses.field(default_factory=set)
    model: Optional[str] = None  # the partition's model, when the rows do not carry it
    entries_dropped: int = 0  # repeated songs and entries without a song id
    rows_dropped: int = 0     # repeated users


def recommendation_set_from_arrow(table: Any, songs: SongCodes, source: str,
                                  run_date: Optional[str], model: Optional[str] = None
                                  ) -> RecommendationSet:
    """Rows of the output schema (user_id, model, history_size, recommendations) → lists in rank
    order, song ids as codes; repeated songs keep their best rank, a repeated user its first row."""
    result = RecommendationSet(source, {}, {}, {}, {}, run_date=run_date, model=model)
    for batch in table.to_batches(max_chunksize=PARQUET_BATCH_ROWS):
        add_recommendation_rows(result, batch, songs)
    return result


def add_recommendation_rows(result: RecommendationSet, table: Any, songs: SongCodes) -> None:
    """Adds one Arrow table or record batch of output rows to ``result`` (see
    ``recommendation_set_from_arrow``); the caller streams batches to bound memory."""
    import pyarrow as pa
    import pyarrow.compute as pc

    source = result.source

    for column in ("user_id", "history_size", "recommendations") + (
            () if result.model else ("model",)):
        if column not in table.column_names:
            raise EvaluationError(f"{source}: no column {column!r} (columns: "
                                  f"{', '.join(table.column_names)})")
    nested = table.column("recommendations")
    if isinstance(nested, pa.ChunkedArray):
        nested = nested.combine_chunks()
    if not pa.types.is_list(nested.type) or not pa.types.is_struct(nested.type.value_type):
        raise EvaluationError(f"{source}: recommendations is {nested.type}, not a list of structs")
    fields = {nested.type.value_type.field(i).name
              for i in range(nested.type.value_type.num_fields)}
    if not {"rank", "song_id"} <= fields:
        raise EvaluationError(f"{source}: the recommendation structs lack rank or song_id")
    if "score" not in fields:
        result.scores = None
    flat = pc.list_flatten(nested)
    lengths = pc.list_value_length(nested).fill_null(0).to_numpy(zero_copy_only=False)
    bounds = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    # struct_field (not StructArray.field) honours the offset of a sliced struct array.
    ranks = pc.struct_field(flat, "rank").to_numpy(zero_copy_only=False)
    scores = (pc.struct_field(flat, "score").to_numpy(zero_copy_only=False).astype(np.float64)
              if result.scores is not None else None)
    encoded = pc.dictionary_encode(pc.struct_field(flat, "song_id"))
    dictionary_codes = songs.codes(encoded.dictionary.to_pylist())
    indices = encoded.indices
    codes = np.full(len(indices), -1, dtype=np.int64)
    if indices.null_count:
        valid = indices.is_valid().to_numpy(zero_copy_only=False)
        codes[valid] = dictionary_codes[indices.drop_null().to_numpy()]
    else:
        codes[:] = dictionary_codes[indices.to_numpy()]
    del flat, encoded, indices
    # The job writes each list in rank order; re-sort only the rows where a rank goes down.
    descents = np.flatnonzero(np.diff(ranks) < 0) + 1
    descents = descents[~np.isin(descents, bounds)]
    for row in np.unique(np.searchsorted(bounds, descents, side="right") - 1):
        start, stop = bounds[row], bounds[row + 1]
        order = np.argsort(ranks[start:stop], kind="stable")
        codes[start:stop] = codes[start:stop][order]
        if scores is not None:
            scores[start:stop] = scores[start:stop][order]
    del ranks
    user_ids = table.column("user_id").to_pylist()
    models = (table.column("model").to_pylist() if "model" in table.column_names
              else [result.model] * len(user_ids))
    history_sizes = table.column("history_size").to_pylist()
    filled = (table.column("popularity_filled").to_pylist()
              if "popularity_filled" in table.column_names else [0] * len(user_ids))
    for row, user_id in enumerate(user_ids):
        if user_id in result.lists:
            result.rows_dropped += 1
            continue
        start, stop = bounds[row], bounds[row + 1]
        row_codes = codes[start:stop]
        keep = row_codes >= 0
        kept = row_codes[keep]
        unique = dedupe_keep_first(kept)
        result.entries_dropped += (stop - start) - len(unique)
        if len(unique) != len(kept):
            _, first = np.unique(kept, return_index=True)
            positions = np.sort(first)
        else:
            positions = np.arange(len(kept))
        result.lists[user_id] = unique
        if result.scores is not None:
            result.scores[user_id] = scores[start:stop][keep][positions]
        result.model_of_user[user_id] = models[row] or ""
        if filled[row] and filled[row] >= stop - start:
            result.fallback_users.add(user_id)
        if history_sizes[row] is not None:
            result.history_size[user_id] = int(history_sizes[row])


def _is_remote(path: str) -> bool:
    return "://" in path


def _base_name(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1] if _is_remote(path) else \
        os.path.basename(os.path.normpath(path))


def _parent(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[0] if _is_remote(path) else \
        os.path.dirname(os.path.normpath(path))


def _is_folder(path: str) -> bool:
    """A local folder, or on GCS (no folders) a prefix with at least one object below it."""
    from apache_beam.io.filesystems import FileSystems

    if not _is_remote(path):
        return os.path.isdir(path)
    return bool(FileSystems.match([path.rstrip("/") + "/**"], limits=[1])[0].metadata_list)


def _subfolders(folder: str, prefix: str) -> dict[str, str]:
    """name → path of the folders directly in ``folder`` whose names start with ``prefix``
    (on GCS: the ones with at least one object below them)."""
    from apache_beam.io.filesystems import FileSystems

    if not _is_remote(folder):
        return {entry.name: entry.path for entry in os.scandir(folder)
                if entry.name.startswith(prefix) and entry.is_dir()}
    root = folder.rstrip("/")
    found = {}
    for metadata in FileSystems.match([f"{root}/{prefix}*/**"])[0].metadata_list:
        name = metadata.path[len(root) + 1:].split("/", 1)[0]
        found[name] = f"{root}/{name}"
    return found


def _parquet_files(folder: str) -> list[str]:
    """The ``*.parquet`` files directly in ``folder`` (local or gs://), sorted."""
    from apache_beam.io.filesystems import FileSystems

    pattern = FileSystems.join(folder.rstrip("/") if _is_remote(folder) else folder, "*.parquet")
    return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)


def _open_parquet(path: str) -> Any:
    """A pyarrow ParquetFile: local files directly, gs:// ones through Beam's file systems (a
    seekable reader, so only the footer and the columns read are fetched)."""
    import pyarrow.parquet as pq

    if not _is_remote(path):
        return pq.ParquetFile(path)
    from apache_beam.io.filesystems import FileSystems

    return pq.ParquetFile(FileSystems.open(path, compression_type="uncompressed"))


def _run_folders(root: str) -> dict[str, str]:
    folders = {}
    for name, folder in _subfolders(root, "run_date=").items():
        text = name[len("run_date="):]
        try:
            datetime.date.fromisoformat(text)
        except ValueError:
            continue
        folders[text] = folder
    return folders


def _model_folder(run_folder: str, model: Optional[str]) -> str:
    """The ``model=NAME`` partition of a run folder: ``model``, or the only one there is."""
    folders = _subfolders(run_folder, "model=")
    names = sorted(name[len("model="):] for name in folders)
    if model is None:
        if len(names) != 1:
            raise EvaluationError(f"{run_folder} holds the models {', '.join(names) or 'none'}: "
                                  "pick one with --model")
        model = names[0]
    if model not in names:
        raise EvaluationError(f"--model {model}: no such model in {run_folder} (models: "
                              f"{', '.join(names) or 'none'})")
    return folders[f"model={model}"]


def read_parquet_recommendations(directory: str, run_date: Optional[str], songs: SongCodes,
                                 model: Optional[str] = None) -> RecommendationSet:
    """One run of one model in the job's Parquet output, local or gs://
    (``DIR/run_date=YYYY-MM-DD/model=NAME/*.parquet``; the latest run unless ``run_date`` is
    given, the only model unless ``model`` is). ``DIR`` may also be a run_date= or model=
    folder itself."""
    if not _is_folder(directory):
        raise EvaluationError(f"--recommendations {directory}: no such folder")
    name, parent_name = _base_name(directory), _base_name(_parent(directory))
    if name.startswith("model=") and parent_name.startswith("run_date="):
        folder, run_date = directory.rstrip("/"), parent_name[len("run_date="):]
    elif name.startswith("run_date="):
        folder, run_date = _model_folder(directory, model), name[len("run_date="):]
    else:
        runs = _run_folders(directory)
        if not runs:
            raise EvaluationError(f"--recommendations {directory}: no run_date=YYYY-MM-DD "
                                  "folders (the recommendation job's --output)")
        if run_date is None:
            run_date = max(runs)
        if run_date not in runs:
            raise EvaluationError(f"--run_date {run_date}: no such run in {directory} (runs: "
                                  f"{', '.join(sorted(runs))})")
        folder = _model_folder(runs[run_date], model)
    from pipelines.launcher import partition_files

    files = partition_files(folder)  # the published version (its _SUCCESS.json marker)
    if not files:
        raise EvaluationError(f"{folder}: no Parquet files")
    result = RecommendationSet(str(folder), {}, {}, {}, {}, run_date=run_date,
                               model=_base_name(folder)[len("model="):])
    for path in files:
        try:
            parquet = _open_parquet(path)
            # Only the leaves the evaluation uses: track ids are half of the bytes.
            paths = [parquet.schema.column(i).path for i in range(len(parquet.schema))]
            columns = [p for p in paths if p in ("user_id", "model", "history_size",
                                                 "popularity_filled") or (
                p.startswith("recommendations.") and p.rsplit(".", 1)[-1] in (
                    "rank", "song_id", "score"))]
            batches = parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns)
            for batch in batches:
                add_recommendation_rows(result, batch, songs)
        except EvaluationError:
            raise
        except Exception as error:  # pyarrow raises several types for unreadable files
            raise EvaluationError(f"{path}: cannot read the Parquet file ({error})") from error
    return result


BIGQUERY_RECOMMENDATIONS_SQL = """
SELECT user_id, model, history_size, popularity_filled, recommendations
FROM `{table}`
WHERE run_date = @run_date AND model = @model
"""


def bigquery_recommendations_job(table: str, run_date: str, model: str) -> tuple[str, Any]:
    """The SQL and job configuration that read one run of one model from BigQuery (the table
    name is checked against BigQuery's naming rules; date and model travel as parameters)."""
    from google.cloud import bigquery
    from transforms.write_recommendations import parse_bigquery_table

    try:
        parsed = parse_bigquery_table(table)
        date = datetime.date.fromisoformat(run_date)
    except ValueError as error:
        raise EvaluationError(str(error).replace("--output", "--recommendations")) from error
    sql = BIGQUERY_RECOMMENDATIONS_SQL.format(
        table=f"{parsed.project.replace(':', '.')}.{parsed.dataset}.{parsed.table}")
    config = bigquery.QueryJobConfig(
        query_parameters=[bigquery.ScalarQueryParameter("run_date", "DATE", date),
                          bigquery.ScalarQueryParameter("model", "STRING", model)],
        use_legacy_sql=False)
    return sql, config


def read_bigquery_recommendations(table: str, run_date: Optional[str], songs: SongCodes,
                                  client: Any = None, model: Optional[str] = None
                                  ) -> RecommendationSet:
    """One run of one model of the BigQuery table (``bq://PROJECT.DATASET.TABLE`` or
    ``PROJECT:DATASET.TABLE``)."""
    if not run_date or not model:
        raise EvaluationError("--recommendations from BigQuery needs --run_date YYYY-MM-DD and "
                              "--model NAME")
    sql, config = bigquery_recommendations_job(table, run_date, model)
    if client is None:
        from google.auth import exceptions as auth_exceptions
        from google.cloud import bigquery
        try:
            client = bigquery.Client()
        except auth_exceptions.DefaultCredentialsError as error:
            raise EvaluationError(f"no Google Cloud credentials for BigQuery ({error.args[0]})"
                                  ) from error
    from google.api_core import exceptions as api_exceptions
    try:
        arrow_table = client.query(sql, job_config=config).result().to_arrow()
    except api_exceptions.GoogleAPIError as error:
        raise EvaluationError(f"BigQuery: {getattr(error, 'message', error)}") from error
    return recommendation_set_from_arrow(arrow_table, songs, table, run_date, model)


def read_kaggle_submission(path: str, kaggle_users: str, kaggle_songs: str, songs: SongCodes
                           ) -> RecommendationSet:
    """A Kaggle MSD Challenge submission: line i holds user i's (kaggle_users order) 1-based
    song indices (kaggle_songs), best first. Both side files are parsed by ``msd.listening``;
    any line they reject makes the alignment uncertain, so it is an error here."""
    from msd import listening

    for name, value in (("--submission", path), ("--kaggle_users", kaggle_users),
                        ("--kaggle_songs", kaggle_songs)):
        _check_exists(value, name)
    users = listening.read_kaggle_users(kaggle_users)
    catalogue = listening.read_kaggle_songs(kaggle_songs)
    for flag, parsed in (("--kaggle_users", users), ("--kaggle_songs", catalogue)):
        if parsed.rejections:
            first = parsed.rejections[0]
            raise EvaluationError(f"{flag}: {len(parsed.rejections)} unusable line(s), e.g. "
                                  f"line {first.line_number}: {first.detail}")
    song_of_index = np.empty(len(catalogue.data) + 1, dtype=np.int64)
    song_of_index[0] = -1
    for song_id, index in catalogue.data.items():
        song_of_index[index] = songs.code(song_id)
    result = RecommendationSet(path, {}, None, {}, {})
    line_number = 0
    for line_number, raw in enumerate(_read_lines(path, "--submission"), 1):
        text = raw.decode("utf-8", errors="replace").strip()
        if line_number > len(users.data):
            if text:
                raise EvaluationError(f"--submission {path}: more lines than the "
                                      f"{len(users.data):,} users of --kaggle_users")
            continue
        fields = text.split()
        if not all(field.isdigit() for field in fields):
            raise EvaluationError(f"--submission {path} line {line_number}: expected song "
                                  "indices separated by spaces")
        indices = np.array([int(field) for field in fields], dtype=np.int64)
        if len(indices) and (indices.min() < 1 or indices.max() >= len(song_of_index)):
            raise EvaluationError(f"--submission {path} line {line_number}: index outside "
                                  f"1..{len(song_of_index) - 1:,} (kaggle_songs)")
        codes = song_of_index[indices]
        unique = dedupe_keep_first(codes)
        result.entries_dropped += len(codes) - len(unique)
        user_id = users.data[line_number - 1]
        result.lists[user_id] = unique
        result.model_of_user[user_id] = "submission"
    if line_number < len(users.data):
        raise EvaluationError(f"--submission {path}: {line_number:,} lines for "
                              f"{len(users.data):,} users in --kaggle_users")
    return result


# --------------------------------------------------------------------------------------------
# Baselines, kernel candidates, blends
# --------------------------------------------------------------------------------------------

def listener_counts(visible: Listens, num_songs: int) -> np.ndarray:
    """Per song code: how many users listened to it in the visible data (its popularity)."""
    codes = np.fromiter(itertools.chain.from_iterable(visible.values()), dtype=np.int64)
    return np.bincount(codes, minlength=num_songs).astype(np.int64)


def popularity_ranking(popularity: np.ndarray, songs: SongCodes) -> np.ndarray:
    """Song codes with at least one listener, most listeners first, ties by song id: the
    product's one popularity rule (``recommend.models.popularity.popularity_order``) applied to
    the songs in id order."""
    from recommend.models.popularity import popularity_order

    listened = np.flatnonzero(popularity > 0)
    by_id = listened[np.argsort(np.array([songs.ids[code] for code in listened], dtype=object),
                                kind="stable")]
    return by_id[popularity_order(popularity[by_id])]


def without_own(candidates: np.ndarray, own: Iterable[int],
                scratch: Optional[np.ndarray] = None) -> np.ndarray:
    """The candidates that are not the user's own songs, in order. ``scratch``: an all-False
    bool array over song codes, reused across calls (much faster than np.isin for 110,000
    users); it is left all-False again."""
    own_codes = own if isinstance(own, np.ndarray) else np.fromiter(own, dtype=np.int64)
    if not len(own_codes):
        return candidates
    if scratch is None:
        return candidates[~np.isin(candidates, own_codes)]
    scratch[own_codes] = True
    kept = candidates[~scratch[candidates]]
    scratch[own_codes] = False
    return kept


def popularity_list(ranking: np.ndarray, own: Iterable[int], length: int,
                    scratch: Optional[np.ndarray] = None) -> np.ndarray:
    """The first ``length`` songs of the ranking the user has not listened to."""
    own_codes = np.fromiter(own, dtype=np.int64)
    return without_own(ranking[:length + len(own_codes)], own_codes, scratch)[:length]


def random_list(rng: np.random.Generator, catalogue: np.ndarray, own: Iterable[int],
                length: int, scratch: Optional[np.ndarray] = None) -> np.ndarray:
    """``length`` catalogue songs in uniformly random order, none of the user's own."""
    own_codes = np.fromiter(own, dtype=np.int64)
    wanted = min(len(catalogue), length + len(own_codes))
    drawn = catalogue[rng.choice(len(catalogue), size=wanted, replace=False)]
    return without_own(drawn, own_codes, scratch)[:length]


def blend_order(candidate_scores: np.ndarray, candidate_log_popularity_z: np.ndarray,
                alpha: float) -> np.ndarray:
    """Positions of the candidates ordered by (1 − α)·z(content) + α·z(log popularity), best
    first; ties keep the candidates' order (their content rank)."""
    scores = np.asarray(candidate_scores, dtype=np.float64)
    spread = scores.std()
    content_z = (scores - scores.mean()) / spread if spread > 0 else np.zeros_like(scores)
    blended = (1.0 - alpha) * content_z + alpha * candidate_log_popularity_z
    return np.lexsort((np.arange(len(scores)), -blended))


def log_popularity_z(popularity: np.ndarray, catalogue: np.ndarray) -> np.ndarray:
    """z-score of log(1 + listeners) per song code, standardised over the catalogue."""
    logs = np.log1p(popularity.astype(np.float64))
    values = logs[catalogue]
    spread = values.std()
    if spread == 0:
        return np.zeros_like(logs)
    return (logs - values.mean()) / spread


@dataclasses.dataclass
class ModelCatalogue:
    """A model as the evaluation needs it: the song code of each catalogue row, and the model
    (``recommend.models.Recommender``: the evaluation knows nothing else of it)."""
    song_codes: np.ndarray  # per catalogue row
    model: Any


def load_model_catalogue(source: Any, songs: SongCodes, flag: str) -> ModelCatalogue:
    """``source``: a ``recommend.models.ModelSource`` (a model directory, or the features of
    the content model)."""
    from recommend import catalogue as catalogue_lib
    from recommend import models

    try:
        model = source.load()
    except (catalogue_lib.CatalogueError, models.ModelError) as error:
        raise EvaluationError(f"{flag}: {error}") from error
    return ModelCatalogue(songs.codes(model.song_ids.tolist()), model)


def model_candidates(catalogue: ModelCatalogue, users: Sequence[str], visible: Listens,
                     candidates: int, minimum: int, batch_size: int = 256
                     ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per user the model's top ``candidates`` (song codes, scores), best first, from the
    visible songs that are in its catalogue, exactly as the batch job scores them. Users with
    no catalogue song, or fewer than ``minimum`` unlistened songs, are left out (the job
    serves them by its fallback or rejects them)."""
    num_songs = len(catalogue.song_codes)
    row_of_code = {int(code): row for row, code in enumerate(catalogue.song_codes.tolist())}
    histories = []
    for user_id in users:
        own = visible.get(user_id, {})
        rows = sorted((row_of_code[code], count) for code, count in own.items()
                      if code in row_of_code)
        if rows and num_songs - len(rows) >= max(1, minimum):
            histories.append((len(rows), user_id, rows))
    histories.sort()
    result: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for start in range(0, len(histories), batch_size):
        batch = histories[start:start + batch_size]
        k = min(candidates, num_songs - batch[-1][0])  # sorted: the last has the most songs
        ranked = catalogue.model.recommend(
            [np.array([r for r, _ in rows], np.int64) for _, _, rows in batch],
            [np.array([c for _, c in rows], np.int64) for _, _, rows in batch], k)
        for index, (_, user_id, _) in enumerate(batch):
            result[user_id] = (catalogue.song_codes[ranked.rows[index]], ranked.scores[index])
    return result


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------

def history_bucket_label(low: int, high: Optional[int]) -> str:
    if high is None:
        return f"{low}+"
    return str(low) if low == high else f"{low}–{high}"


def history_buckets(sizes: np.ndarray) -> np.ndarray:
    """The index in HISTORY_BUCKETS of each visible history size."""
    edges = np.array([low for low, _ in HISTORY_BUCKETS[1:]])
    return np.searchsorted(edges, sizes, side="right")


def popularity_bin(listeners: np.ndarray) -> np.ndarray:
    """Log2 bins of listener counts: 0 → 0, 1 → 1, 2–3 → 2, 4–7 → 3, …"""
    listeners = np.asarray(listeners, dtype=np.int64)
    bins = np.zeros(len(listeners), dtype=np.int64)
    positive = listeners > 0
    bins[positive] = np.floor(np.log2(listeners[positive])).astype(np.int64) + 1
    return bins


def popularity_bin_label(index: int) -> str:
    if index == 0:
        return "0"
    low, high = 2 ** (index - 1), 2 ** index - 1
    return str(low) if low == high else f"{low}–{high}"


@dataclasses.dataclass
class Truth:
    """The evaluated users (sorted) and their hidden songs, flat."""
    users: list[str]
    offsets: np.ndarray
    songs: np.ndarray
    history_sizes: np.ndarray

    @property
    def num_hidden(self) -> np.ndarray:
        return np.diff(self.offsets)


def build_truth(hidden: Listens, visible: Listens) -> Truth:
    users = sorted(user for user, songs_ in hidden.items() if songs_)
    lengths = [len(hidden[user]) for user in users]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    songs_flat = np.fromiter((code for user in users for code in sorted(hidden[user])),
                             dtype=np.int64, count=int(offsets[-1]))
    sizes = np.array([len(visible.get(user, ())) for user in users], dtype=np.int64)
    return Truth(users, offsets, songs_flat, sizes)


def evaluate_lists(name: str, lists: Sequence[np.ndarray], truth: Truth,
                   served_by_fallback: np.ndarray, popularity: np.ndarray,
                   catalogue: np.ndarray, map_cutoff: int, precision_cutoff: int,
                   chunk_users: int = EVALUATION_CHUNK_USERS,
                   cold: Optional[np.ndarray] = None) -> dict[str, Any]:
    """Every metric of one model: ``lists[i]`` is the ranked list for ``truth.users[i]``
    (with ``cold``, a bool per song code, also ``cold_start``: ``cold_start_metrics``).
    Returns the JSON summary plus, under keys starting with "_", the arrays the plots use.
    Users are processed in chunks, so memory is bounded by the chunk, not by users × k."""
    users = len(truth.users)
    per_user = {key: np.zeros(users) for key in ("average_precision", "precision", "recall",
                                                  "ndcg")}
    lengths = np.array([min(len(ranked), map_cutoff) for ranked in lists], dtype=np.int64)
    recommended = np.zeros(len(popularity), dtype=np.int64)
    popularity_bins = np.zeros(64, dtype=np.int64)
    popularity_sum = 0.0
    for start in range(0, users, chunk_users):
        stop = min(users, start + chunk_users)
        cut = [ranked[:map_cutoff] for ranked in lists[start:stop]]
        offsets = np.concatenate([[0], np.cumsum(lengths[start:stop])]).astype(np.int64)
        flat = (np.concatenate(cut).astype(np.int64, copy=False) if offsets[-1]
                else np.zeros(0, np.int64))
        hidden_offsets = truth.offsets[start:stop + 1] - truth.offsets[start]
        hidden_songs = truth.songs[truth.offsets[start]:truth.offsets[stop]]
        relevant = metrics.batch_relevance(offsets, flat, hidden_offsets, hidden_songs)
        chunk = metrics.batch_user_scores(relevant, offsets, np.diff(hidden_offsets),
                                          map_cutoff=map_cutoff,
                                          precision_cutoff=precision_cutoff)
        for key, values in chunk.items():
            per_user[key][start:stop] = values
        recommended += np.bincount(flat, minlength=len(popularity))
        popularity_bins += np.bincount(popularity_bin(popularity[flat]), minlength=64)
        popularity_sum += float(popularity[flat].sum())
    ap = per_user["average_precision"]
    slots = int(lengths.sum())
    counts = recommended[catalogue]  # songs outside the catalogue do not count
    last_bin = int(np.flatnonzero(popularity_bins).max(initial=0))
    buckets = history_buckets(truth.history_sizes)
    by_history = []
    for index, (low, high) in enumerate(HISTORY_BUCKETS):
        members = buckets == index
        if members.any():
            by_history.append({"bucket": history_bucket_label(low, high),
                               "users": int(members.sum()),
                               "map": float(ap[members].mean())})
    sorted_counts = np.sort(counts).astype(np.float64)
    total = sorted_counts.sum()
    share_of_songs = np.linspace(0.0, 1.0, _LORENZ_POINTS)
    if total > 0 and len(sorted_counts):
        cumulative = np.concatenate([[0.0], np.cumsum(sorted_counts) / total])
        lorenz = np.interp(share_of_songs * len(sorted_counts),
                           np.arange(len(sorted_counts) + 1), cumulative)
    else:
        lorenz = np.zeros(_LORENZ_POINTS)
    return {
        "name": name,
        "users": users,
        "map": float(ap.mean()),
        "map_standard_error": float(ap.std(ddof=1) / math.sqrt(users)) if users > 1 else 0.0,
        "precision": float(per_user["precision"].mean()),
        "recall": float(per_user["recall"].mean()),
        "ndcg": float(per_user["ndcg"].mean()),
        "coverage": float((counts > 0).sum() / len(catalogue)),
        "gini": metrics.gini(counts),
        "mean_popularity": popularity_sum / slots if slots else None,
        "fallback_share": metrics.fallback_share(served_by_fallback) if users else 0.0,
        "mean_list_length": float(lengths.mean()) if users else 0.0,
        "users_with_a_hit": int((per_user["recall"] > 0).sum()),
        "by_history": by_history,
        **({"cold_start": cold_start_metrics(lists, truth, cold, map_cutoff, precision_cutoff)}
           if cold is not None else {}),
        "_ap": ap,
        "_popularity_bins": popularity_bins[:last_bin + 1],
        "_lorenz": lorenz,
    }


def paired_difference(first: np.ndarray, second: np.ndarray) -> dict[str, float]:
    """Mean per-user AP difference (first − second) and its standard error: the same users
    answer both, so the pairing removes most of the between-user spread."""
    difference = first - second
    error = 0.0
    if len(difference) > 1:
        error = float(difference.std(ddof=1) / math.sqrt(len(difference)))
    return {"map_difference": float(difference.mean()), "standard_error": error}


def parse_alphas(text: str) -> list[float]:
    if text.strip().lower() in ("", "none"):
        return []
    alphas = []
    for part in text.split(","):
        try:
            alpha = float(part)
        except ValueError:
            raise EvaluationError(f"--blend {text!r}: {part!r} is not a number") from None
        if not 0.0 <= alpha <= 1.0:
            raise EvaluationError(f"--blend: alpha {alpha} is outside 0..1")
        alphas.append(alpha)
    return sorted(set(alphas))


def blend_name(alpha: float) -> str:
    return f"blend_{alpha:g}"


def run_evaluation(args: argparse.Namespace, log=print) -> Optional[dict[str, Any]]:
    """Reads the inputs, builds every model's lists, computes the metrics; returns the report
    data (JSON-ready, plus "_" keys holding arrays for the plots), or None when only a split
    was to be written."""
    started = time.monotonic()
    songs = SongCodes()
    warnings: list[str] = []
    inputs: dict[str, Any] = {}

    # 1. Listens: visible and hidden.
    if args.listens:
        listens, listen_stats = read_listens_file(args.listens, songs)
        visible, hidden = holdout_split(listens, songs, args.holdout_fraction, args.seed)
        inputs["listens"] = {"path": args.listens, **listen_stats}
        inputs["holdout"] = {"fraction": args.holdout_fraction, "seed": args.seed}
        if args.cold_songs:
            cold_codes = choose_cold_songs(listens, songs, args.cold_songs, args.seed)
            visible, hidden = hide_cold_songs(visible, hidden, cold_codes)
        if args.write_split:
            split_dir = pathlib.Path(args.write_split)
            split_dir.mkdir(parents=True, exist_ok=True)
            names = ["visible.txt", "hidden.txt"] + ([COLD_SONGS_FILE] if args.cold_songs else [])
            with staged_files("--write_split", *(split_dir / name for name in names)) as staged:
                write_triplets(visible, songs, staged[0])
                write_triplets(hidden, songs, staged[1])
                if args.cold_songs:
                    staged[2].write_text(
                        "".join(f"{songs.ids[code]}\n" for code in sorted(
                            cold_codes.tolist(), key=lambda code: songs.ids[code])),
                        encoding="ascii")
            inputs["split_written_to"] = str(split_dir)
            log(f"evaluate: wrote {split_dir / 'visible.txt'} and {split_dir / 'hidden.txt'}")
            if not (args.recommendations or args.submission or args.features
                    or args.model_dir):
                return None  # only the split was asked for
    else:
        visible, visible_stats = read_listens_file(args.visible, songs, "--visible")
        hidden, hidden_stats = read_listens_file(args.hidden, songs, "--hidden")
        inputs["visible"] = {"path": args.visible, **visible_stats}
        inputs["hidden"] = {"path": args.hidden, **hidden_stats}
    for name, stats in inputs.items():
        if isinstance(stats, dict):
            rejected = sum(v for k, v in stats.items() if k.startswith("rejected_"))
            if rejected:
                warnings.append(f"{rejected:,} lines of {stats['path']} were not valid listens "
                                "and were left out")
    overlap = sum(len(hidden[user].keys() & visible.get(user, {}).keys()) for user in hidden)
    if overlap:
        warnings.append(f"{overlap:,} hidden listens are also visible for the same user: no "
                        "model that excludes listened songs can find them")
    truth = build_truth(hidden, visible)
    if not truth.users:
        raise EvaluationError("no user has a hidden song: nothing to evaluate")

    # 2. The content model.
    recommendations: Optional[RecommendationSet] = None
    if args.recommendations:
        from transforms.write_recommendations import looks_like_bigquery
        if looks_like_bigquery(args.recommendations):
            recommendations = read_bigquery_recommendations(args.recommendations, args.run_date,
                                                            songs, model=args.model)
        else:
            recommendations = read_parquet_recommendations(args.recommendations, args.run_date,
                                                           songs, args.model)
    elif args.submission:
        recommendations = read_kaggle_submission(args.submission, args.kaggle_users,
                                                 args.kaggle_songs, songs)
    from recommend.models import ModelSource

    kernel = (load_model_catalogue(ModelSource(features=args.features, weighting=args.weighting),
                                   songs, f"--features {args.features}")
              if args.features else None)
    trained = {}
    for model_dir in args.model_dir or []:
        catalogue_ = load_model_catalogue(ModelSource(model_dir=model_dir), songs,
                                          f"--model_dir {model_dir}")
        name = catalogue_.model.kind
        if name in trained or name in ("content", "popularity", "random"):
            name = f"{name}_{len(trained) + 1}"
        trained[name] = (model_dir, catalogue_)

    # 3. The catalogue (coverage denominator, random model).
    if kernel is not None:
        catalogue = np.unique(kernel.song_codes)
        catalogue_source = f"--features {args.features}"
    elif args.songs:
        catalogue = np.unique(songs.codes(_song_ids_from_parquet(args.songs)))
        catalogue_source = f"--songs {args.songs}"
    elif args.kaggle_songs:
        from msd import listening
        catalogue = np.unique(songs.codes(listening.read_kaggle_songs(args.kaggle_songs).data))
        catalogue_source = f"--kaggle_songs {args.kaggle_songs}"
    else:
        seen = set(truth.songs.tolist())
        for history in visible.values():
            seen.update(history)
        if recommendations is not None:
            for ranked in recommendations.lists.values():
                seen.update(ranked.tolist())
        catalogue = np.array(sorted(seen), dtype=np.int64)
        catalogue_source = "songs seen in the listens and recommendations"
    popularity = listener_counts(visible, len(songs))
    ranking = popularity_ranking(popularity, songs)
    in_catalogue = np.zeros(len(songs), dtype=bool)
    in_catalogue[catalogue] = True
    hidden_outside = float((~in_catalogue[truth.songs]).mean())

    # 4. List length: --k, or the content lists' length when they are shorter.
    if recommendations is not None:
        lengths = [len(ranked) for ranked in recommendations.lists.values()]
        content_length = max(lengths) if lengths else 0
        list_length = min(args.k, content_length) if content_length else args.k
    else:
        list_length = min(args.k, len(catalogue))
    if list_length < args.k:
        warnings.append(f"the content lists hold {list_length} songs, fewer than --k {args.k}: "
                        f"every model recommends {list_length} songs per user; mAP is still "
                        f"divided by min({args.k}, hidden songs)")

    candidates: Optional[dict[str, tuple[np.ndarray, np.ndarray]]] = None
    if kernel is not None:
        wanted = max(args.blend_candidates, list_length)
        log(f"evaluate: scoring {len(truth.users):,} users over {len(kernel.song_codes):,} "
            f"songs with the kernel (top {wanted:,})")
        candidates = model_candidates(kernel, truth.users, visible, wanted, list_length)

    # 5. Every model's lists, in truth.users order.
    has_content = recommendations is not None or kernel is not None
    scratch = np.zeros(len(songs), dtype=bool)
    fallback_lists = [popularity_list(ranking, visible.get(user, {}), list_length, scratch)
                      for user in truth.users]
    content_lists: list[np.ndarray] = []
    served_by_fallback = np.zeros(len(truth.users), dtype=bool)
    for index, user in enumerate(truth.users):
        ranked = None
        if recommendations is not None:
            row = recommendations.lists.get(user)
            if row is not None and len(row) and user not in recommendations.fallback_users:
                ranked = row[:list_length]
        elif candidates is not None and user in candidates:
            ranked = candidates[user][0][:list_length]
        if ranked is None:
            ranked = fallback_lists[index]
            served_by_fallback[index] = True
        content_lists.append(ranked)
    content_name = "content"
    if recommendations is not None and recommendations.model_of_user:
        names = collections.Counter(name for user, name in recommendations.model_of_user.items()
                                    if user not in recommendations.fallback_users)
        if names:
            content_name = names.most_common(1)[0][0]
    not_in_run = sum(1 for user in truth.users
                     if recommendations is not None and user not in recommendations.lists)
    if not_in_run:
        warnings.append(f"{not_in_run:,} evaluated users have no row in the recommendations; "
                        "the popularity fallback serves them")
    if recommendations is not None and recommendations.history_size:
        leaked = sum(1 for user in truth.users
                     if recommendations.history_size.get(user, 0) > len(visible.get(user, ())))
        if leaked:
            warnings.append(
                f"{leaked:,} users have a history_size in the recommendations larger than their "
                "visible songs: the job probably saw hidden listens too (run it on the visible "
                "split, e.g. from --write_split), which makes the content model look worse")

    # Drawn from the catalogue in song-id order, so that the random lists depend on the seed
    # and the data only, not on the order in which the inputs introduced the songs.
    catalogue_by_id = catalogue[np.argsort(np.array([songs.ids[c] for c in catalogue]),
                                           kind="stable")]
    rng = np.random.default_rng([args.seed, 20120101])
    random_lists = [random_list(rng, catalogue_by_id, visible.get(user, {}), list_length,
                                scratch) for user in truth.users]

    cold_mask = None
    if args.cold_songs:
        cold_mask = np.zeros(len(songs), dtype=bool)
        cold_mask[cold_codes] = True
        inputs["cold_songs"] = {
            "fraction": args.cold_songs, "seed": args.seed, "songs": int(len(cold_codes)),
            "hidden_listens": int(cold_mask[truth.songs].sum()),
            "users_with_a_hidden_cold_song": int(len({u for u, h in hidden.items()
                                                      if any(cold_mask[c] for c in h)}))}
    common = dict(truth=truth, popularity=popularity, catalogue=catalogue,
                  map_cutoff=args.k, precision_cutoff=args.precision_k, cold=cold_mask)
    no_fallback = np.zeros(len(truth.users), dtype=bool)
    models = {}
    if has_content:
        models["content"] = evaluate_lists(content_name, content_lists,
                                           served_by_fallback=served_by_fallback, **common)
    for name, (model_dir, catalogue_) in trained.items():
        log(f"evaluate: scoring {len(truth.users):,} users with {name} ({model_dir}, "
            f"{len(catalogue_.song_codes):,} songs)")
        ranked_by_model = model_candidates(catalogue_, truth.users, visible, list_length,
                                           list_length)
        lists, served = [], np.zeros(len(truth.users), dtype=bool)
        for index, user in enumerate(truth.users):
            if user in ranked_by_model:
                lists.append(ranked_by_model[user][0])
            else:
                lists.append(fallback_lists[index])
                served[index] = True
        models[name] = evaluate_lists(name, lists, served_by_fallback=served, **common)
        models[name]["model_dir"] = model_dir
    models.update({
        "popularity": evaluate_lists("popularity", fallback_lists,
                                     served_by_fallback=no_fallback, **common),
        "random": evaluate_lists("random", random_lists, served_by_fallback=no_fallback,
                                 **common),
    })

    # 6. Blends.
    alphas = parse_alphas(args.blend)
    blend_info: dict[str, Any] = {"alphas": alphas}
    if alphas and has_content:
        if candidates is not None:
            blend_source = candidates
            blend_info["candidates"] = (f"the kernel's top "
                                        f"{max(args.blend_candidates, list_length):,} songs per "
                                        "user (from --features)")
        elif recommendations is not None and recommendations.scores is not None:
            blend_source = {user: (recommendations.lists[user], recommendations.scores[user])
                            for index, user in enumerate(truth.users)
                            if not served_by_fallback[index]}
            blend_info["candidates"] = ("the content model's own lists (blends only re-order "
                                        "what the job recommended; pass --features to re-rank "
                                        "more candidates)")
        else:
            blend_source = None
            blend_info["candidates"] = None
            warnings.append("no blend: the content model has no scores (a submission) and no "
                            "--features catalogue was given to score candidates")
        if blend_source is not None:
            lp_z = log_popularity_z(popularity, catalogue)
            blend_fallback = np.array([served_by_fallback[index] or user not in blend_source
                                       for index, user in enumerate(truth.users)], dtype=bool)
            for alpha in alphas:
                lists = []
                for index, user in enumerate(truth.users):
                    if blend_fallback[index]:
                        lists.append(fallback_lists[index])
                        continue
                    codes, content_scores = blend_source[user]
                    order = blend_order(content_scores, lp_z[codes], alpha)
                    lists.append(codes[order[:list_length]])
                models[blend_name(alpha)] = evaluate_lists(
                    f"blend α={alpha:g}", lists, served_by_fallback=blend_fallback, **common)
                models[blend_name(alpha)]["alpha"] = alpha
            best = max(alphas, key=lambda a: (models[blend_name(a)]["map"], -a))
            blend_info.update(best_alpha=best, best_model=blend_name(best),
                              best_map=models[blend_name(best)]["map"])
    for key, result in models.items():
        if key != "popularity":
            result["vs_popularity"] = paired_difference(result["_ap"], models["popularity"]["_ap"])
    best_model = max(models, key=lambda key: models[key]["map"])
    primary_model = "content" if has_content else next(iter(trained))

    hidden_hist = np.bincount(popularity_bin(popularity[truth.songs]), minlength=1)
    return {
        "title": args.title,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "protocol": {
            "cutoffs": {"map": args.k, "precision": args.precision_k, "recall": args.k,
                        "ndcg": args.k},
            "list_length": list_length,
            "map_definition": "mean over users of AP@k / min(k, |hidden|) (MSD Challenge)",
            "popularity": "number of users listening to the song in the visible data",
            "weighting": args.weighting,
        },
        "inputs": {**inputs,
                   "recommendations": None if recommendations is None else {
                       "source": recommendations.source, "run_date": recommendations.run_date,
                       "users": len(recommendations.lists),
                       "entries_dropped": recommendations.entries_dropped,
                       "rows_dropped": recommendations.rows_dropped},
                   "features": args.features},
        "data": {
            "users_evaluated": len(truth.users),
            "visible_users": len(visible),
            "visible_listens": int(sum(len(h) for h in visible.values())),
            "hidden_listens": int(truth.offsets[-1]),
            "catalogue_songs": int(len(catalogue)),
            "catalogue_source": catalogue_source,
            "hidden_outside_catalogue_share": hidden_outside,
            "median_visible_songs": float(np.median(truth.history_sizes)),
        },
        "models": models,
        "content_model": content_name if has_content else None,
        "primary_model": primary_model,
        "blend": blend_info,
        "best_model": best_model,
        "warnings": warnings,
        "seconds": round(time.monotonic() - started, 2),
        "_hidden_popularity_bins": hidden_hist,
    }


def _song_ids_from_parquet(songs_dir: str) -> list[str]:
    """The song ids of a songs Parquet file, folder or feature output (its songs/), local or
    gs://."""
    import pyarrow as pa
    from apache_beam.io.filesystems import FileSystems

    if _is_remote(songs_dir):
        files = [songs_dir] if FileSystems.exists(songs_dir) else \
            _parquet_files(songs_dir) or _parquet_files(FileSystems.join(songs_dir.rstrip("/"),
                                                                         "songs"))
    else:
        files = [songs_dir] if os.path.isfile(songs_dir) else \
            _parquet_files(songs_dir) or _parquet_files(os.path.join(songs_dir, "songs"))
    if not files:
        raise EvaluationError(f"--songs {songs_dir}: no Parquet files")
    try:
        tables = [_open_parquet(path).read(columns=["song_id"]) for path in files]
    except Exception as error:  # pyarrow raises several types for unreadable files
        raise EvaluationError(f"--songs {songs_dir}: cannot read the Parquet files ({error})"
                              ) from error
    return pa.concat_tables(tables).column("song_id").drop_null().to_pylist()


# --------------------------------------------------------------------------------------------
# Output: JSON and the HTML report
# --------------------------------------------------------------------------------------------

def json_ready(value: Any) -> Any:
    """The report data without the "_" keys (arrays for plots), numpy scalars as Python ones."""
    if isinstance(value, dict):
        return {key: json_ready(item) for key, item in value.items()
                if not (isinstance(key, str) and key.startswith("_"))}
    if isinstance(value, (list, tuple)):
        return [json_ready(item) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _model_order(report: dict) -> list[str]:
    """Models as the plots show them: content, the trained models, the best blend,
    popularity, random."""
    order = [key for key in report["models"] if key not in ("popularity", "random")
             and not key.startswith("blend")]
    best = report["blend"].get("best_model")
    if best:
        order.append(best)
    return order + ["popularity", "random"]


_EXTRA_COLOURS = ("#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


def _colour(key: str) -> str:
    if key.startswith("blend"):
        return _MODEL_COLOURS["blend"]
    if key in _MODEL_COLOURS:
        return _MODEL_COLOURS[key]
    return _EXTRA_COLOURS[sum(map(ord, key)) % len(_EXTRA_COLOURS)]


def _label(report: dict, key: str) -> str:
    name = report["models"][key]["name"]
    return f"content ({name})" if key == "content" and name != "content" else name


def _svg(figure) -> str:
    """A matplotlib figure as inline SVG text (text kept as text: small, and no fonts to load),
    in the report's style: no top/right frame lines, tight layout."""
    import matplotlib.pyplot as plt

    for axis in figure.axes:
        axis.spines[["top", "right"]].set_visible(False)
    figure.tight_layout()
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(figure)
    text = buffer.getvalue()
    return text[text.index("<svg"):]


def plot_metrics(report: dict) -> str:
    import matplotlib.pyplot as plt

    keys = _model_order(report)
    cut = report["protocol"]["cutoffs"]
    panels = [("map", f"mAP@{cut['map']} (± 1.96 s.e.)"),
              ("precision", f"precision@{cut['precision']}"),
              ("recall", f"recall@{cut['recall']}"), ("ndcg", f"NDCG@{cut['ndcg']}")]
    figure, axes = plt.subplots(1, 4, figsize=(12, 0.45 * len(keys) + 1.3), sharey=True)
    labels = [_label(report, key) for key in keys]
    for axis, (metric, title) in zip(axes, panels):
        values = [report["models"][key][metric] for key in keys]
        errors = ([1.96 * report["models"][key]["map_standard_error"] for key in keys]
                  if metric == "map" else None)
        positions = np.arange(len(keys))[::-1]
        axis.barh(positions, values, xerr=errors, color=[_colour(key) for key in keys],
                  capsize=3)
        axis.set_yticks(positions, labels)
        axis.set_title(title, fontsize=10)
        ends = [value + (errors[i] if errors else 0.0) for i, value in enumerate(values)]
        for position, value, end in zip(positions, values, ends):
            axis.text(end, position, f" {value:.4f}", va="center", fontsize=8)
        axis.set_xlim(0, max(max(ends) * 1.4, 1e-6))
    return _svg(figure)


def plot_blend(report: dict) -> Optional[str]:
    import matplotlib.pyplot as plt

    alphas = [report["models"][blend_name(a)]["alpha"] for a in report["blend"]["alphas"]
              if blend_name(a) in report["models"]]
    if not alphas:
        return None
    values = [report["models"][blend_name(a)]["map"] for a in alphas]
    figure, axis = plt.subplots(figsize=(6.5, 3.2))
    axis.plot(alphas, values, marker="o", color=_MODEL_COLOURS["blend"], label="blend")
    for key in ("content", "popularity", "random"):
        axis.axhline(report["models"][key]["map"], color=_colour(key), linestyle="--",
                     linewidth=1, label=_label(report, key))
    best = report["blend"]["best_alpha"]
    axis.scatter([best], [report["blend"]["best_map"]], s=120, facecolors="none",
                 edgecolors="black", zorder=3, label=f"best α = {best:g}")
    axis.set_xlabel("α (weight of log-popularity)")
    axis.set_ylabel(f"mAP@{report['protocol']['cutoffs']['map']}")
    axis.set_xlim(-0.02, 1.02)
    axis.legend(fontsize=8, loc="best")
    return _svg(figure)


def plot_history(report: dict) -> str:
    import matplotlib.pyplot as plt

    keys = _model_order(report)
    primary = report["models"][report["primary_model"]]
    buckets = [entry["bucket"] for entry in primary["by_history"]]
    users = [entry["users"] for entry in primary["by_history"]]
    figure, axis = plt.subplots(figsize=(8, 3.4))
    width = 0.8 / len(keys)
    for offset, key in enumerate(keys):
        values = {entry["bucket"]: entry["map"] for entry in report["models"][key]["by_history"]}
        axis.bar(np.arange(len(buckets)) + offset * width - 0.4 + width / 2,
                 [values.get(bucket, 0.0) for bucket in buckets], width,
                 color=_colour(key), label=_label(report, key))
    axis.set_xticks(np.arange(len(buckets)),
                    [f"{bucket}\n({count:,} users)" for bucket, count in zip(buckets, users)],
                    fontsize=8)
    axis.set_xlabel("songs in the user's visible history")
    axis.set_ylabel(f"mAP@{report['protocol']['cutoffs']['map']}")
    axis.legend(fontsize=8)
    return _svg(figure)


def plot_popularity(report: dict) -> str:
    import matplotlib.pyplot as plt

    keys = _model_order(report)
    hidden = np.asarray(report["_hidden_popularity_bins"], dtype=np.float64)
    width = max([len(hidden)] + [len(report["models"][key]["_popularity_bins"]) for key in keys])

    def shares(counts: np.ndarray) -> np.ndarray:
        padded = np.zeros(width)
        padded[:len(counts)] = counts
        return padded / padded.sum() if padded.sum() else padded

    figure, axis = plt.subplots(figsize=(8, 3.4))
    x = np.arange(width)
    edges = np.arange(width + 1) - 0.5
    axis.stairs(shares(hidden), edges, fill=True, color="#d62728", alpha=0.25,
                label="hidden songs (what users listened to)")
    for key in keys:
        axis.stairs(shares(np.asarray(report["models"][key]["_popularity_bins"], float)),
                    edges, color=_colour(key), linewidth=1.6, label=_label(report, key))
    axis.set_xticks(x, [popularity_bin_label(i) for i in x], rotation=45, fontsize=8)
    axis.set_xlabel("listeners of the song in the visible data (log₂ bins)")
    axis.set_ylabel("share of songs")
    axis.legend(fontsize=8)
    return _svg(figure)


def plot_coverage(report: dict) -> str:
    import matplotlib.pyplot as plt

    keys = _model_order(report)
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6),
                                         gridspec_kw={"width_ratios": [1, 1.2]})
    positions = np.arange(len(keys))[::-1]
    values = [report["models"][key]["coverage"] for key in keys]
    left.barh(positions, values, color=[_colour(key) for key in keys])
    left.set_yticks(positions, [_label(report, key) for key in keys])
    for position, value in zip(positions, values):
        left.text(value, position, f" {value:.1%}", va="center", fontsize=8)
    left.set_xlim(0, 1.15)
    left.set_title("catalogue coverage (share of songs recommended to anyone)", fontsize=10)
    share = np.linspace(0, 1, _LORENZ_POINTS)
    right.plot(share, share, color="black", linewidth=0.8, linestyle=":",
               label="equal (Gini 0)")
    for key in keys:
        right.plot(share, report["models"][key]["_lorenz"], color=_colour(key),
                   label=f"{_label(report, key)} (Gini {report['models'][key]['gini']:.2f})")
    right.set_xlabel("share of catalogue songs, least recommended first")
    right.set_ylabel("share of recommendations")
    right.set_title("concentration (Lorenz curve)", fontsize=10)
    right.legend(fontsize=8, loc="upper left")
    return _svg(figure)


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1150px; color: #222; line-height: 1.45; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { margin-top: 1.8em; font-size: 1.2em; }
.lead { font-size: 1.1em; background: #f3f7fb; border-left: 4px solid #1f77b4; padding: 0.7em 1em; }
table { border-collapse: collapse; font-size: 0.92em; margin: 0.6em 0; }
th, td { padding: 0.3em 0.7em; border-bottom: 1px solid #ddd; text-align: right; }
th:first-child, td:first-child { text-align: left; } th { background: #fafafa; }
td.best { font-weight: bold; background: #eef8ee; }
.note { color: #555; font-size: 0.9em; } .warn { background: #fff6e0; padding: 0.5em 1em;
border-left: 4px solid #e6a700; } figure { margin: 0.5em 0 1.5em 0; }
figure svg { max-width: 100%; height: auto; } code { background: #f4f4f4; padding: 0 0.2em; }
"""


def _metrics_table(report: dict) -> str:
    cut = report["protocol"]["cutoffs"]
    columns = [("map", f"mAP@{cut['map']}", "{:.4f}", max),
               ("map_standard_error", "± s.e.", "{:.4f}", None),
               ("precision", f"P@{cut['precision']}", "{:.4f}", max),
               ("recall", f"R@{cut['recall']}", "{:.4f}", max),
               ("ndcg", f"NDCG@{cut['ndcg']}", "{:.4f}", max),
               ("coverage", "coverage", "{:.1%}", max),
               ("gini", "Gini", "{:.3f}", None),
               ("mean_popularity", "mean popularity", "{:,.1f}", None),
               ("fallback_share", "fallback", "{:.1%}", None)]
    keys = list(report["models"])
    best = {}
    for metric, _, _, pick in columns:
        if pick is not None:
            best[metric] = pick(report["models"][key][metric] for key in keys)
    rows = ["<tr><th>model</th>" + "".join(f"<th>{html.escape(title)}</th>"
                                           for _, title, _, _ in columns) + "</tr>"]
    for key in keys:
        model = report["models"][key]
        cells = []
        for metric, _, fmt, _ in columns:
            value = model[metric]
            text = "–" if value is None else fmt.format(value)
            marker = ' class="best"' if metric in best and value == best[metric] else ""
            cells.append(f"<td{marker}>{text}</td>")
        rows.append(f"<tr><td>{html.escape(_label(report, key))}</td>{''.join(cells)}</tr>")
    return "<table>" + "".join(rows) + "</table>"


def _headline(report: dict) -> str:
    models = report["models"]
    popular, chance = models["popularity"], models["random"]
    cut = report["protocol"]["cutoffs"]["map"]
    compared = [key for key in _model_order(report)
                if key not in ("popularity", "random") and not key.startswith("blend")]
    parts = [", ".join(f"{html.escape(_label(report, key))} reaches mAP@{cut} "
                       f"<b>{models[key]['map']:.4f}</b>" for key in compared)
             + f", against <b>{popular['map']:.4f}</b> for recommending the most popular "
             f"songs and <b>{chance['map']:.4f}</b> for a random ranking."]
    for key in compared:
        difference = models[key]["vs_popularity"]
        verdict = ("better than" if difference["map_difference"] > 2 * difference["standard_error"]
                   else "worse than" if difference["map_difference"] < -2 * difference["standard_error"]
                   else "not distinguishable from")
        parts.append(f"Per user, {html.escape(_label(report, key))} is {verdict} popularity by "
                     f"{difference['map_difference']:+.4f} ± {difference['standard_error']:.4f} "
                     "(paired standard error).")
    content = models[report["primary_model"]]
    best = report["blend"].get("best_model")
    if best:
        parts.append(f"The best blend (α = {report['blend']['best_alpha']:g}) reaches "
                     f"<b>{report['blend']['best_map']:.4f}</b>.")
    parts.append(f"{content['fallback_share']:.1%} of the users were served by the popularity "
                 "fallback.")
    return " ".join(parts)


def render_html(report: dict) -> str:
    """The report page: headline, table, plots (inline SVG) and notes; no external resource."""
    data, protocol = report["data"], report["protocol"]
    cut = protocol["cutoffs"]
    sections = [
        ("Metric per model",
         f"Bars further right are better. The error bar on mAP is ± 1.96 standard errors over "
         f"users; two models whose bars overlap may not differ. mAP@{cut['map']} is the MSD "
         f"Challenge metric (published: ≈0.18 for the winner, ≈0.01–0.02 for content-only "
         f"methods on the real data).", plot_metrics(report)),
        ("Blend of content score and popularity",
         "mAP of each blend against its α (0 = content order, 1 = popularity order of the same "
         f"candidates). Candidates: {report['blend'].get('candidates') or 'none'}. The best α is "
         "picked on the evaluated users themselves, so its score is optimistic; confirm it on "
         "another split (another --seed).", plot_blend(report)),
        ("mAP by history length",
         "Users grouped by how many songs they have in the visible data. Content models need "
         "history: expect them to do better with longer histories; users with no history are "
         "served by the fallback.", plot_history(report)),
        ("Popularity of recommended songs vs of listened songs",
         "How popular (listeners in the visible data) the recommended songs are, next to the "
         "hidden songs users actually listened to (shaded). A model far right of the shaded "
         "area mostly repeats hits; far left, it recommends songs nobody plays.",
         plot_popularity(report)),
        ("Coverage and concentration",
         "Left: the share of the catalogue recommended to at least one user. Right: the Lorenz "
         "curve of recommendation counts over the catalogue; the further below the diagonal, "
         "the more the recommendations pile onto a few songs (higher Gini).",
         plot_coverage(report)),
    ]
    warnings = "".join(f"<p class='warn'>{html.escape(text)}</p>" for text in report["warnings"])
    figures = "".join(
        f"<h2>{html.escape(title)}</h2><p class='note'>{html.escape(note)}</p>"
        f"<figure>{svg}</figure>" for title, note, svg in sections if svg)
    source = report["inputs"].get("recommendations") or {}
    facts = [
        ("users evaluated", f"{data['users_evaluated']:,}"),
        ("visible / hidden listens", f"{data['visible_listens']:,} / {data['hidden_listens']:,}"),
        ("median visible songs per user", f"{data['median_visible_songs']:g}"),
        ("catalogue",
         f"{data['catalogue_songs']:,} songs ({html.escape(data['catalogue_source'])})"),
        ("hidden listens outside the catalogue", f"{data['hidden_outside_catalogue_share']:.1%}"),
        ("songs recommended per user", f"{protocol['list_length']}"),
    ]
    if report["content_model"]:
        facts.append(("content model", html.escape(
            f"{report['content_model']} — "
            f"{source.get('source') or report['inputs'].get('features')}"
            + (f", run {source['run_date']}" if source.get("run_date") else ""))))
    for key, model in report["models"].items():
        if model.get("model_dir"):
            facts.append((f"{html.escape(key)} model", html.escape(model["model_dir"])))
    holdout = report["inputs"].get("holdout")
    if holdout:
        facts.append(("split", f"random holdout, fraction {holdout['fraction']:g}, seed "
                               f"{holdout['seed']}"))
    facts_html = "".join(f"<tr><td>{name}</td><td>{value}</td></tr>" for name, value in facts)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{html.escape(report['title'])}</title><style>{_CSS}</style></head>
<body>
<h1>{html.escape(report['title'])}</h1>
<p class="note">Created {html.escape(report['created'])} by
<code>python -m pipelines.evaluate</code>. How to read it: docs/evaluation.md.</p>
<p class="lead">{_headline(report)}</p>
{warnings}
<h2>Models</h2>
<p class="note">mAP@{cut['map']}: mean over users of AP@{cut['map']} /
min({cut['map']}, hidden songs). P@{cut['precision']}: hits among the first {cut['precision']}, / {cut['precision']}.
R@{cut['recall']}: hits / hidden songs. NDCG: binary relevance. Mean popularity: listeners in the
visible data, averaged over recommended songs. Fallback: share of users served by the popularity
fallback instead of the model. Best values in bold.</p>
{_metrics_table(report)}
{figures}
<h2>Data</h2><table>{facts_html}</table>
</body></html>
"""


def write_outputs(report: dict, output_dir: str) -> tuple[pathlib.Path, pathlib.Path]:
    """metrics.json and report.html in ``output_dir`` (created if needed), both or neither."""
    try:
        import matplotlib
    except ImportError as error:
        raise EvaluationError("the report's plots need matplotlib (pip install "
                              "matplotlib==3.11.2)") from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plt.rcParams["svg.fonttype"] = "none"
    plt.rcParams["svg.hashsalt"] = "msd-evaluation"  # stable ids: the same data, the same file

    out = pathlib.Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out / METRICS_FILE, out / REPORT_FILE
    page = render_html(report)
    with staged_files("--output_dir", json_path, html_path) as (json_partial, html_partial):
        json_partial.write_text(json.dumps(json_ready(report), indent=2, ensure_ascii=False)
                                + "\n", encoding="utf-8")
        html_partial.write_text(page, encoding="utf-8")
    return json_path, html_path


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.evaluate",
        description="Offline evaluation (MSD Challenge protocol) of the recommendations against "
                    "popularity, random and blended baselines; writes metrics.json and "
                    "report.html.")
    listens = parser.add_argument_group("listens (either visible + hidden, or one file split here)")
    listens.add_argument("--visible", help="triplets the recommender saw (user, song, count)")
    listens.add_argument("--hidden", help="held-out triplets of the same users (the truth)")
    listens.add_argument("--listens", help="one triplets file to split into visible and hidden")
    listens.add_argument("--holdout_fraction", type=float, default=None,
                         help="share of each user's songs hidden (with --listens; 0.5 as in "
                              "the challenge)")
    listens.add_argument("--seed", type=int, default=0,
                         help="seed of the split and of the random model")
    listens.add_argument("--cold_songs", type=float, default=None, metavar="FRACTION",
                         help="cold start: this share of the songs in --listens (drawn with "
                         "--seed) is held out of every model's training: all their listens go "
                         "to the hidden halves (and --write_split's visible.txt has none; "
                         "cold_songs.txt lists them); every model is also scored on the cold "
                         "songs alone and on the others")
    listens.add_argument("--write_split", metavar="DIR",
                         help="also write the split as DIR/visible.txt and DIR/hidden.txt (run "
                              "the recommendation job on visible.txt)")
    content = parser.add_argument_group("the content model (at least one)")
    content.add_argument("--recommendations", help="the job's Parquet output folder, or a "
                         "BigQuery table bq://PROJECT.DATASET.TABLE")
    content.add_argument("--run_date", help="which run (default for Parquet: the latest)")
    content.add_argument("--model", help="which model of the run (default for Parquet: the "
                         "only one; required for BigQuery)")
    content.add_argument("--submission", help="a Kaggle submission file (with --kaggle_users "
                         "and --kaggle_songs)")
    content.add_argument("--kaggle_users", help="kaggle_users.txt: the submission's user order")
    content.add_argument("--kaggle_songs", help="kaggle_songs.txt: the submission's song indices")
    content.add_argument("--features", help="the feature pipeline's output (or its shards): the "
                         "catalogue, scored here with the job's kernel")
    content.add_argument("--songs", help="the songs Parquet folder: the catalogue for coverage "
                         "when --features is not given")
    trained = parser.add_argument_group("trained models (python -m pipelines.train)")
    trained.add_argument("--model_dir", action="append", default=None,
                         help="a model directory, scored here on the visible listens through "
                              "the model interface; repeat for several (train them on the "
                              "visible split: --write_split)")
    options = parser.add_argument_group("evaluation")
    options.add_argument("--k", type=int, default=metrics.MAP_CUTOFF,
                         help="cut-off of mAP, recall and NDCG, and songs per list (500)")
    options.add_argument("--precision_k", type=int, default=metrics.PRECISION_CUTOFF,
                         help="cut-off of precision (10)")
    options.add_argument("--blend", default=DEFAULT_BLEND,
                         help="alphas of the content/log-popularity blend, comma-separated "
                              "('none' for no blend)")
    options.add_argument("--blend_candidates", type=int, default=DEFAULT_BLEND_CANDIDATES,
                         help="with --features: the kernel's top-N songs per user that blends "
                              "re-rank")
    options.add_argument("--weighting", default="none", choices=["none", "log_count"],
                         help="with --features: the job's listen weighting")
    parser.add_argument("--output_dir", help="where metrics.json and report.html go")
    parser.add_argument("--title", default="Offline evaluation of the recommendations")
    return parser


def validate_args(args: argparse.Namespace) -> None:
    """Usage problems an argparse declaration cannot express."""
    split_mode = bool(args.listens)
    if split_mode == bool(args.visible or args.hidden):
        raise EvaluationError("give either --visible and --hidden, or --listens with "
                              "--holdout_fraction")
    if not split_mode and not (args.visible and args.hidden):
        raise EvaluationError("--visible and --hidden go together")
    if split_mode and args.holdout_fraction is None:
        raise EvaluationError("--listens needs --holdout_fraction (e.g. 0.5)")
    if not split_mode and (args.holdout_fraction is not None or args.write_split
                           or args.cold_songs is not None):
        raise EvaluationError("--holdout_fraction, --write_split and --cold_songs only apply "
                              "to --listens")
    if args.cold_songs is not None and not 0.0 < args.cold_songs < 1.0:
        raise EvaluationError(f"--cold_songs {args.cold_songs} must be between 0 and 1")
    if args.submission and not (args.kaggle_users and args.kaggle_songs):
        raise EvaluationError("--submission needs --kaggle_users and --kaggle_songs")
    if args.submission and args.recommendations:
        raise EvaluationError("give --recommendations or --submission, not both")
    if not args.output_dir and (args.recommendations or args.submission or args.features
                                or args.model_dir):
        raise EvaluationError("--output_dir is needed for metrics.json and report.html")
    if not (args.recommendations or args.submission or args.features or args.model_dir
            or args.write_split):
        raise EvaluationError("no model: give --model_dir, --recommendations, --submission or "
                              "--features")
    for flag, value in (("--output_dir", args.output_dir), ("--write_split", args.write_split)):
        if value and "://" in value:
            raise EvaluationError(f"{flag} {value}: must be a local folder (the report and "
                                  "split are written with local file I/O; copy them afterwards)")
    if args.k < 1 or args.precision_k < 1 or args.blend_candidates < 1:
        raise EvaluationError("--k, --precision_k and --blend_candidates must be at least 1")
    if max(args.k, args.precision_k) > MAX_CUTOFF:
        raise EvaluationError(f"--k and --precision_k must be at most {MAX_CUTOFF:,} (the "
                              "whole Million Song Dataset)")
    if args.holdout_fraction is not None and not 0.0 < args.holdout_fraction < 1.0:
        raise EvaluationError(f"--holdout_fraction {args.holdout_fraction} must be between 0 "
                              "and 1")
    if args.seed < 0:
        raise EvaluationError(f"--seed {args.seed} must be 0 or more")
    parse_alphas(args.blend)
    check_paths(args)


_INPUT_FILES = ("listens", "visible", "hidden", "submission", "kaggle_users", "kaggle_songs")
_INPUT_FOLDERS = ("features", "songs", "model_dir")


def _check_folder_to_write(flag: str, path: str) -> pathlib.Path:
    """``path`` is a folder, or can be made: its nearest existing ancestor is a writable
    folder. Returns that ancestor (or ``path``)."""
    folder = pathlib.Path(path)
    existing = folder
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "is" if existing == folder else f"cannot be made: {existing} is"
        raise EvaluationError(f"{flag} {path}: {where} a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise EvaluationError(f"{flag} {path}: {existing} is not writable (permission denied)")
    return existing


def check_paths(args: argparse.Namespace) -> None:
    """Before any work: every local input exists and is what it claims (a file, or a folder),
    every output folder can be written, and no output file would replace an input."""
    for name in _INPUT_FILES:
        if getattr(args, name):
            _check_exists(getattr(args, name), f"--{name}")
    for name in _INPUT_FOLDERS:
        values = getattr(args, name) or []
        for value in values if isinstance(values, list) else [values]:
            if "://" not in value and not any(char in value for char in "*?[") and \
                    not os.path.exists(value):
                raise EvaluationError(f"--{name} {value}: no such file or folder")
    outputs = []
    if args.output_dir:
        _check_folder_to_write("--output_dir", args.output_dir)
        outputs += [("--output_dir", os.path.join(args.output_dir, name))
                    for name in (METRICS_FILE, REPORT_FILE)]
    if args.write_split:
        _check_folder_to_write("--write_split", args.write_split)
        outputs += [("--write_split", os.path.join(args.write_split, name))
                    for name in ("visible.txt", "hidden.txt", COLD_SONGS_FILE)]
    for flag, output in outputs:
        if os.path.isdir(output):
            raise EvaluationError(f"{flag}: {output} is a folder; the file cannot be written")
        for name in _INPUT_FILES:
            value = getattr(args, name)
            if value and "://" not in value and os.path.exists(output) and \
                    os.path.samefile(value, output):
                raise EvaluationError(f"{flag}: writing {output} would replace --{name} "
                                      f"{value}; give another folder")


def _maybe(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        validate_args(args)
        report = run_evaluation(args, log=lambda text: print(text, file=sys.stderr))
        if report is None:
            return 0
        json_path, html_path = write_outputs(report, args.output_dir)
    except EvaluationError as error:
        print(f"evaluate: error: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"evaluate: error: {cli.one_line(error)}", file=sys.stderr)
        return 1
    cut = report["protocol"]["cutoffs"]["map"]
    for key, model in report["models"].items():
        print(f"{_label(report, key):<28} mAP@{cut} {model['map']:.4f}  "
              f"P@{report['protocol']['cutoffs']['precision']} {model['precision']:.4f}  "
              f"coverage {model['coverage']:.1%}  fallback {model['fallback_share']:.1%}")
        cold = model.get("cold_start")
        if cold:
            print(f"{'':<28} cold songs: recall@{cut} {_maybe(cold['cold']['recall'])}  "
                  f"share {cold['cold_share']:.1%}; warm songs: mAP@{cut} "
                  f"{_maybe(cold['warm']['map'])}")
    for warning in report["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"wrote {json_path} and {html_path}")
    return 0


if __name__ == "__main__":
    cli.run_main("evaluate", main)
