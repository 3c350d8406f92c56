"""Validated score inputs and the statistics several scores share.

:class:`ScoreInputs` checks features, labels and source probabilities once (raising :class:`ScoreError` with the
row and column of the first problem), re-encodes labels to 0..C-1, and computes on first use, then caches, the
quantities that more than one score needs: the float64 feature matrix on the chosen device, its mean, the
centred matrix, per-class sums, the covariance and its eigendecomposition.  The one covariance
eigendecomposition serves H-Score, the Ledoit-Wolf shrinkage of the regularized H-Score (shrinkage only moves
eigenvalues), LogME (through a rank-one update) and the PCAs of N-LEEP and GBC.
"""

from __future__ import annotations

import sys
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from medxfer.scores._linalg import eigh_descending, gram, resolve_device, threads_for_synchronised_work
from medxfer.scores.errors import ScoreError

if TYPE_CHECKING:
    import torch

__all__ = ["PROBS_SUM_TOLERANCE", "ScoreInputs", "check_features", "check_probs", "encode_labels"]

PROBS_SUM_TOLERANCE = 1e-3
MAX_FEATURE_MAGNITUDE = 1e50  # the Ledoit-Wolf statistics sum |x|^4 over samples and dimensions


def _is_torch_tensor(value: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def _to_numpy(value: Any) -> np.ndarray:
    if _is_torch_tensor(value):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _first_position(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.unravel_index(int(np.flatnonzero(mask.ravel())[0]), mask.shape))


def _check_finite(name: str, values: np.ndarray) -> None:
    if np.isfinite(values).all():
        return
    n_nan = int(np.isnan(values).sum())
    n_inf = int(np.isinf(values).sum())
    parts = []
    if n_nan:
        parts.append(f"{n_nan} NaN value{'s' if n_nan != 1 else ''}")
    if n_inf:
        parts.append(f"{n_inf} infinite value{'s' if n_inf != 1 else ''}")
    row, column = _first_position(~np.isfinite(values))
    raise ScoreError(
        f"{name} contain {' and '.join(parts)} (first at row {row}, column {column}); "
        "drop or repair those samples before scoring"
    )


def check_features(features: Any) -> np.ndarray:
    """Features as a finite C-contiguous (N, D) array, N >= 2, or :class:`ScoreError`.

    float32 and float64 arrays keep their precision (the scores convert while centring, which saves a float64
    copy of the raw features); other real types become float64.
    """
    array = _to_numpy(features)
    if array.dtype.kind not in "fiub":
        raise ScoreError(f"features must be a real-valued (N, D) array, got dtype {array.dtype}")
    if array.ndim != 2:
        raise ScoreError(f"features must be 2-D (N samples, D dimensions), got shape {array.shape}")
    n, d = array.shape
    if n < 2 or d < 1:
        raise ScoreError(f"features need at least 2 samples and 1 dimension, got shape {array.shape}")
    dtype = array.dtype if array.dtype in (np.float32, np.float64) else np.float64
    array = np.ascontiguousarray(array, dtype=dtype)
    _check_finite("features", array)
    largest = float(max(array.max(), -array.min()))
    if largest > MAX_FEATURE_MAGNITUDE:
        raise ScoreError(
            f"features reach {largest:.3g} in magnitude; the scores form fourth powers of the features and need "
            f"|x| <= {MAX_FEATURE_MAGNITUDE:g}: rescale them"
        )
    return array


def encode_labels(labels: Any, n_samples: int) -> tuple[np.ndarray, list]:
    """Labels of any hashable type -> (codes in 0..C-1 as int64, class names), C >= 2.

    Classes are sorted when their values are comparable and taken in order of first appearance otherwise; the
    order never changes a score.  The class count is the number of distinct labels present, never ``max + 1``.
    """
    array = _to_numpy(labels)
    if array.ndim == 2 and 1 in array.shape and array.dtype != object:
        array = array.reshape(-1)
    if array.ndim != 1:
        raise ScoreError(f"labels must be 1-D with one label per sample, got shape {array.shape}")
    if len(array) != n_samples:
        raise ScoreError(f"labels have {len(array)} entries but features have {n_samples} rows; they must match")
    missing = _missing_label_mask(array)
    if missing.any():
        raise ScoreError(
            f"labels contain {int(missing.sum())} missing value(s) (None or NaN, first at row "
            f"{int(np.flatnonzero(missing)[0])}); drop unlabelled samples before scoring"
        )
    try:
        classes, codes = np.unique(array, return_inverse=True)
        names = classes.tolist()
    except TypeError:  # values that cannot be sorted together, e.g. a mix of ints and strings
        index: dict = {}
        codes = np.fromiter((index.setdefault(value, len(index)) for value in array), dtype=np.int64, count=len(array))
        names = list(index)
    if len(names) < 2:
        raise ScoreError(f"only one class present ({names[0]!r}); transferability scores need at least 2")
    return np.asarray(codes, dtype=np.int64).reshape(-1), names


def _missing_label_mask(array: np.ndarray) -> np.ndarray:
    if array.dtype.kind == "f":
        return np.isnan(array)
    if array.dtype == object:
        return np.fromiter(
            (value is None or (isinstance(value, float) and value != value) for value in array),
            dtype=bool,
            count=len(array),
        )
    return np.zeros(len(array), dtype=bool)


def check_probs(probs: Any, n_samples: int, tolerance: float = PROBS_SUM_TOLERANCE) -> np.ndarray:
    """Source-head probabilities as an (N, S) array whose rows sum to 1, or :class:`ScoreError`.

    float32 and float64 keep their precision, other real types become float64.  Rows are used as given (not
    renormalised) once they pass the ``tolerance`` check.
    """
    array = _to_numpy(probs)
    if array.dtype.kind not in "fiu":
        raise ScoreError(f"probs must be a real-valued (N, S) array, got dtype {array.dtype}")
    if array.ndim != 2:
        raise ScoreError(f"probs must be 2-D (N samples, S source classes), got shape {array.shape}")
    if array.shape[0] != n_samples:
        raise ScoreError(f"probs have {array.shape[0]} rows but features have {n_samples}; they must match")
    _check_finite("probs", array)  # checked in the given precision: float32 input is half the memory traffic
    if array.min() < 0:
        negative = array < 0
        row, column = _first_position(negative)
        raise ScoreError(
            f"probs contain {int(negative.sum())} negative value(s) (first at row {row}, column {column}: "
            f"{array[row, column]:.3g}); pass softmax probabilities, not logits"
        )
    if array.dtype not in (np.float32, np.float64):
        array = array.astype(np.float64)
    sums = array.sum(axis=1, dtype=np.float64)
    off = np.abs(sums - 1.0) > tolerance
    if off.any():
        row = int(np.flatnonzero(off)[0])
        raise ScoreError(
            f"probs row {row} sums to {sums[row]:.6g}, expected 1 (tolerance {tolerance:g}); "
            f"{int(off.sum())} row(s) are off. Pass softmax probabilities of the source head"
        )
    return array


class ScoreInputs:
    """Validated inputs of the scores plus lazily computed, cached shared statistics.

    Args:
        features: (N, D) float32 or float64 array (NumPy or torch); used in float64.
        labels: (N,) labels of any hashable type; re-encoded to ``codes`` in 0..C-1.
        probs: optional (N, S) source-head probabilities; checked only when a score reads :attr:`probs`.
        device: ``None`` (CPU) or a torch device such as ``"cuda"`` for the dense linear algebra.

    Attributes that are computed on first access (and then shared by every score using the same object):
    ``features`` and ``probs`` (float64 NumPy), ``x`` (float64 torch on the device), ``mean``, ``centred``,
    ``centred_class_sums``, ``class_sums``, ``distinct_rows``, ``centred_gram``, ``cov``, ``cov_eigh`` and ``pca(k)``.
    """

    def __init__(self, features: Any, labels: Any, probs: Any = None, *, device: Any = None) -> None:
        if features is None:  # probability-only scores (LEEP, NCE)
            if probs is None:
                raise ScoreError("scores need features (N, D) or probs (N, S); neither was given")
            probs_array = _to_numpy(probs)
            n_rows = probs_array.shape[0] if probs_array.ndim >= 1 else 0
            self.__dict__["raw_probs"] = check_probs(probs_array, n_rows)
            self._features = None
            self.n_samples, self.n_features = n_rows, 0
        else:
            self._features = check_features(features)
            self.n_samples, self.n_features = self._features.shape
        self.codes, self.class_names = encode_labels(labels, self.n_samples)
        self.n_classes = len(self.class_names)
        self.class_counts = np.bincount(self.codes, minlength=self.n_classes).astype(np.float64)
        self._raw_probs = probs
        self._requested_device = device

    @cached_property
    def device(self) -> "torch.device":
        """The torch device of the dense linear algebra: the CPU unless one was requested."""
        return resolve_device(self._requested_device)

    @property
    def raw_features(self) -> np.ndarray:
        """(N, D) validated features in their given precision (float32 or float64)."""
        if self._features is None:
            raise ScoreError("this score needs features, the (N, D) penultimate-layer activations; none were given")
        return self._features

    @cached_property
    def features(self) -> np.ndarray:
        """(N, D) float64 features, validated; :class:`ScoreError` when only probs were given."""
        return np.asarray(self.raw_features, dtype=np.float64)

    # -- source probabilities -------------------------------------------------------------------------------
    @property
    def has_probs(self) -> bool:
        """Whether source probabilities were given."""
        return self._raw_probs is not None

    @cached_property
    def raw_probs(self) -> np.ndarray:
        """(N, S) validated source probabilities in their given precision; :class:`ScoreError` when absent."""
        if self._raw_probs is None:
            raise ScoreError("this score needs probs, the (N, S) source-head probabilities; none were given")
        return check_probs(self._raw_probs, self.n_samples)

    @cached_property
    def probs(self) -> np.ndarray:
        """(N, S) float64 source probabilities, validated."""
        return np.ascontiguousarray(self.raw_probs, dtype=np.float64)

    # -- features on the device ------------------------------------------------------------------------------
    @cached_property
    def x(self) -> "torch.Tensor":
        """(N, D) float64 features on :attr:`device` (shares memory with :attr:`features` on the CPU)."""
        import torch

        return torch.from_numpy(self.features).to(self.device)

    @cached_property
    def codes_tensor(self) -> "torch.Tensor":
        import torch

        return torch.from_numpy(self.codes).to(self.device)

    @cached_property
    def counts_tensor(self) -> "torch.Tensor":
        import torch

        return torch.from_numpy(self.class_counts).to(self.device)

    @cached_property
    def mean(self) -> "torch.Tensor":
        """(D,) float64 mean of the features (accumulated in float64 for float32 input)."""
        import torch

        return torch.from_numpy(np.mean(self.raw_features, axis=0, dtype=np.float64)).to(self.device)

    @cached_property
    def centred(self) -> "torch.Tensor":
        """(N, D) float64 centred features, converted and centred in one pass."""
        import torch

        if self.device.type == "cpu":
            return torch.from_numpy(np.subtract(self.raw_features, self.mean.numpy(), dtype=np.float64))
        return torch.from_numpy(self.raw_features).to(self.device, torch.float64) - self.mean

    @cached_property
    def centred_class_sums(self) -> "torch.Tensor":
        """(C, D) sums of the centred features per class; divided by the counts: class mean minus overall mean."""
        import torch

        sums = torch.zeros((self.n_classes, self.n_features), dtype=torch.float64, device=self.device)
        return sums.index_add_(0, self.codes_tensor, self.centred)

    @cached_property
    def class_sums(self) -> "torch.Tensor":
        """(C, D) sums of the raw features per class (F^T y for one-hot y)."""
        return self.centred_class_sums + self.counts_tensor[:, None] * self.mean

    @cached_property
    def distinct_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """``(first, inverse)``: the index of each distinct feature row's first occurrence (in order), and for every
        row the position of its distinct row in ``first``.  Rows are the same when their bytes are (bootstrap draws
        repeat rows); ``features[first][inverse]`` is ``features``."""
        seen: dict[bytes, int] = {}
        inverse = np.fromiter((seen.setdefault(row.tobytes(), len(seen)) for row in self.raw_features),
                              dtype=np.int64, count=self.n_samples)
        first = np.full(len(seen), self.n_samples, dtype=np.int64)
        np.minimum.at(first, inverse, np.arange(self.n_samples))
        return first, inverse

    @cached_property
    def centred_gram(self) -> "torch.Tensor":
        """(D, D) Xc^T Xc of the centred features."""
        return gram(self.centred)

    @cached_property
    def cov(self) -> "torch.Tensor":
        """(D, D) sample covariance with the N - 1 denominator, as ``np.cov``."""
        return self.centred_gram / (self.n_samples - 1)

    @cached_property
    def cov_eigh(self) -> tuple["torch.Tensor", "torch.Tensor"]:
        """Eigenvalues of :attr:`cov` in decreasing order and eigenvectors as columns (PCA sign convention)."""
        # decide the threads before the Gram matrix, while NumPy's BLAS threads are not spinning after it
        threads = threads_for_synchronised_work(self.device)
        return eigh_descending(self.cov, threads)

    def pca(self, n_components: int) -> "torch.Tensor":
        """(N, n_components) projections on the leading principal axes, as ``PCA(...).fit_transform``.

        The widest projection computed so far is kept, so N-LEEP's and GBC's PCAs cost one product.
        """
        cached = self.__dict__.get("_pca_cache")
        if cached is None or cached.shape[1] < n_components:
            _, vectors = self.cov_eigh
            cached = self.centred @ vectors[:, :n_components].contiguous()
            self.__dict__["_pca_cache"] = cached
        return cached[:, :n_components].contiguous()
