"""Recommendation models behind one interface (``base.Recommender``), chosen by name.

``MODELS`` maps a model kind to its class, the way ``transforms.preprocessing.PREPROCESSING_FNS``
maps normalisation names to functions: the batch job, the evaluation and the serving export
look models up here and never import one directly. Register a new model by adding its module
here (a test may register a toy one in ``MODELS`` for the duration of the test).

``ModelSource`` names where a run's model comes from: a model directory (``--model_dir``:
every trained model), or the feature files (``--features`` alone: the content model), plus
the side files that map songs to tracks. It is small and picklable, so Beam ships it to the
workers, each of which loads the model once.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
from typing import Optional

import numpy as np

from recommend import catalogue as catalogue_lib
from recommend.models import base
from recommend.models.base import ModelError, Recommendations, Recommender  # noqa: F401

MODELS: dict[str, str] = {
    "content": "recommend.models.content:ContentModel",
    "popularity": "recommend.models.popularity:PopularityModel",
    "itemcf": "recommend.models.itemcf:ItemCFModel",
    "als": "recommend.models.als:ALSModel",
    "hybrid": "recommend.models.hybrid:HybridModel",
}


def model_class(kind: str) -> type:
    """The class registered for ``kind`` (a string path is imported on first use; a test may
    register a class directly)."""
    entry = MODELS.get(kind)
    if entry is None:
        raise ModelError(f"unknown model kind {kind!r}; known: {', '.join(sorted(MODELS))}")
    if isinstance(entry, str):
        module, name = entry.split(":")
        return getattr(importlib.import_module(module), name)
    return entry


def load_model(model_dir: str, manifest: Optional[dict] = None) -> Recommender:
    """The model stored in ``model_dir`` (local or gs://), its arrays checked against
    ``model.json`` — or against ``manifest``, a model.json read earlier: a run pins the version
    it started with, so a model republished meanwhile cannot be mixed into it."""
    manifest = manifest or base.read_manifest(model_dir)
    cls = model_class(manifest["kind"])
    song_ids = base.read_song_ids(model_dir, manifest)
    arrays = base.read_arrays(model_dir, manifest, cls.stored_arrays)
    return cls.from_arrays(song_ids, arrays, manifest.get("parameters", {}))


def check_model_dir(model_dir: str) -> dict:
    """A model directory checked against its ``model.json`` (kind known, songs, every array's
    shape and dtype from its header) without loading it; returns the manifest."""
    manifest = base.read_manifest(model_dir)
    return base.check_model_dir(model_dir, model_class(manifest["kind"]).stored_arrays, manifest)


def _side_file(path: Optional[str], reader) -> tuple[object, list]:
    if not path:
        return None, []
    parsed = reader(path)
    return parsed.data, parsed.rejections


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """Where a run's model and catalogue come from (see the module docstring)."""
    model_dir: Optional[str] = None
    features: Optional[str] = None
    song_to_tracks: Optional[str] = None
    mismatches: Optional[str] = None
    weighting: str = "none"  # the content model's listen weights
    batch_size: int = 256    # the content model's users per kernel pass
    # The model.json a run started with (JSON text): every read of the run uses that version.
    pinned_manifest: Optional[str] = None

    def __post_init__(self):
        if not (self.model_dir or self.features):
            raise ModelError("a model needs --model_dir, or --features for the content model")

    def manifest(self) -> dict:
        if self.pinned_manifest:
            return json.loads(self.pinned_manifest)
        return base.read_manifest(self.model_dir)

    def pinned(self) -> "ModelSource":
        """This source with the model directory's current model.json pinned (checked against
        its arrays' headers first)."""
        if not self.model_dir:
            return self
        manifest = check_model_dir(self.model_dir)
        return dataclasses.replace(self, pinned_manifest=json.dumps(manifest, sort_keys=True))

    @property
    def kind(self) -> str:
        return self.manifest()["kind"] if self.model_dir else "content"

    def _track_pairs(self, features: Optional[catalogue_lib.Catalogue] = None
                     ) -> Optional[list[tuple[str, str]]]:
        if not self.features:
            return None
        ids = features or catalogue_lib.load_catalogue(self.features, with_features=False)
        return list(zip(ids.track_ids.tolist(), ids.song_ids.tolist()))

    def catalogue(self, features: Optional[catalogue_lib.Catalogue] = None
                  ) -> tuple[catalogue_lib.SongCatalogue, list]:
        """The catalogue by song (ids and tracks only, no vectors), and the dead letters of
        the side files; ``features``: the feature catalogue when the caller has read it."""
        from msd import listening

        song_to_tracks, rejected_a = _side_file(self.song_to_tracks,
                                                listening.read_song_to_tracks)
        mismatches, rejected_b = _side_file(self.mismatches, listening.read_sid_mismatches)
        model_songs = (base.read_song_ids(self.model_dir, self.manifest()) if self.model_dir
                       else None)
        catalogue = catalogue_lib.song_catalogue(self._track_pairs(features), song_to_tracks,
                                                 mismatches or set(), model_songs)
        return catalogue, rejected_a + rejected_b

    def load(self) -> Recommender:
        """The model itself (on a worker: once, shared by its processes)."""
        if self.model_dir:
            return load_model(self.model_dir, self.manifest())
        from recommend.models.content import ContentModel

        features = catalogue_lib.load_catalogue(self.features)
        catalogue, _ = self.catalogue(features)
        row_of_track = features.row_of_track()
        rows = np.fromiter((row_of_track[t] for t in catalogue.track_ids.tolist()), np.int64,
                           count=len(catalogue))
        return ContentModel(catalogue.song_ids, features.features[rows], self.weighting,
                            self.batch_size)
