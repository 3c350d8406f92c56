"""Per-sample predictions of a fine-tuned model, the artifacts ``predictions/test.npz`` and
``predictions/ood.npz`` of every fine-tune run: the evaluated checkpoint's class probabilities for every sample,
from which accuracies and their bootstrap intervals are recomputed without retraining."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

ARTIFACT_DIR = "predictions"
SPLITS = ("test", "ood")


@dataclass(frozen=True)
class Predictions:
    """Shape: ``ids``: (N,) sample ids (as the split's ``SampleTable.ids``); ``labels``: (N,) class indices;
    ``probs``: (N, C) class probabilities of the evaluated checkpoint; ``leaked``: (N,) booleans, true for a sample
    that leaks from training or validation (a byte-identical image or a shared group, :mod:`medxfer.data.leaks`), or None when the
    split was not searched for leaks."""

    ids: np.ndarray
    labels: np.ndarray
    probs: np.ndarray
    leaked: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.ids)
        if self.probs.ndim != 2 or len(self.probs) != n or len(self.labels) != n:
            raise ValueError(f"predictions of {n} ids, {len(self.labels)} labels and probs of shape "
                             f"{self.probs.shape}; expected (N,), (N,) and (N, C)")
        if self.leaked is not None and len(self.leaked) != n:
            raise ValueError(f"predictions of {n} ids and {len(self.leaked)} leak flags")

    def clean(self) -> "Predictions":
        """The samples that do not leak (all of them when none is flagged)."""
        if self.leaked is None:
            return self
        keep = ~np.asarray(self.leaked, dtype=bool)
        return Predictions(self.ids[keep], self.labels[keep], self.probs[keep], np.zeros(int(keep.sum()), bool))

    def balanced_accuracy(self) -> float:
        """Mean recall over the classes present in ``labels`` (argmax of ``probs``, first index on ties), as
        :class:`medxfer.training.metrics.BalancedAccuracy` computes it, in float64."""
        pred = self.probs.argmax(axis=1)
        classes = np.unique(self.labels)
        return float(np.mean([np.mean(pred[self.labels == k] == k) for k in classes]))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        extra = {} if self.leaked is None else {"leaked": np.asarray(self.leaked, dtype=bool)}
        np.savez(path, ids=np.asarray(self.ids, dtype=str), labels=np.asarray(self.labels, dtype=np.int64),
                 probs=np.asarray(self.probs), **extra)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Predictions":
        """Read a ``.npz`` written by :meth:`save`; a file without the three arrays is a ValueError naming it."""
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in ("ids", "labels", "probs") if k not in npz.files]
            if missing:
                raise ValueError(f"{path}: predictions file lacks arrays {missing}; it has {npz.files}")
            return cls(npz["ids"], npz["labels"], npz["probs"], npz["leaked"] if "leaked" in npz.files else None)
