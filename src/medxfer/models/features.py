"""Features of one split: from the feature cache when an identical extraction was done before, else extracted
and cached. ``medxfer-score`` and ``medxfer-rank`` share it, so they share cached features; this module owns the
cache's key."""

from __future__ import annotations

from typing import Any

import numpy as np

from medxfer.digests import hash_parts
from medxfer.data.tables import SampleTable
from medxfer.models.extract import FeatureCache, Features, extract_features
from medxfer.models.zoo import ModelSpec


def feature_cache_key(spec: ModelSpec, weights_id: str, table: SampleTable, data_digest: str,
                      preprocess: dict[str, Any]) -> str:
    """The feature cache's key of a split: architecture, the weights' identity (the cell's ``weights_id``), the
    split's content digest and the resolved preprocessing, and the version of the evaluation pixels (a decoder or
    resize change that gives other pixels gives other keys)."""
    from medxfer.data.transforms import EVAL_PIXELS_VERSION

    return hash_parts({"arch": spec.arch, "weights": weights_id, "data": data_digest, "n": len(table),
                       "preprocess": preprocess, "pixels": EVAL_PIXELS_VERSION})


def split_features(model: Any, spec: ModelSpec, weights_id: str, table: SampleTable, data_digest: str,
                   dataset_name: str, split: str, preprocess: Any, cache: FeatureCache | None,
                   extract: dict[str, Any], *, decoded: Any = None) -> tuple[Features, bool]:
    """Features and source probabilities of one split, from ``cache`` or extracted (then cached); ``cache=None``
    always runs the forward pass (a reproduction recomputes). Returns ``(features, came_from_the_cache)``.

    The cache key (:func:`feature_cache_key`) holds the architecture, the weights' identity, the split's content
    digest and the resolved preprocessing.
    """
    path = None
    if cache is not None:
        key = feature_cache_key(spec, weights_id, table, data_digest, preprocess.as_dict())
        path = cache.path(spec.name, dataset_name, split, key)
        feats = cache.load(path)
        if feats is not None:
            if not np.array_equal(feats.labels, table.labels):
                raise RuntimeError(f"feature cache {path} holds labels that differ from split {table.name}; delete it")
            return feats, True
    feats = extract_features(model, table, preprocess, batch_size=extract["batch_size"],
                             num_workers=extract["num_workers"], accelerator=extract["accelerator"],
                             progress=extract["progress"], **({"decoded": decoded} if decoded is not None else {}))
    if cache is not None:
        cache.save(path, feats)
    return feats, False
