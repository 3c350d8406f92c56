"""Penultimate features and source-head (ImageNet) probabilities, with an on-disk cache.

Extraction runs as a Lightning ``Trainer.predict`` over a :class:`FeatureExtractor`; the cache stores one
``.npz`` per (model, weights digest, dataset split, transform) with a SHA-256 checksum beside it, written under
a temporary name and renamed into place, so a truncated or corrupted file is detected and recomputed.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from medxfer.data.decoded import DecodedBatches, DecodedImageCache
from medxfer.data.loading import available_cores, batches_of, is_auto, resolve_num_workers, uses_gpu
from medxfer.data.tables import SampleTable
from medxfer.digests import file_sha256, published_with_checksum
from medxfer.interrupts import lightning_interrupts
from medxfer.progress import show_progress
from medxfer.data.transforms import ImageDataset, Preprocess, eval_transform

log = logging.getLogger(__name__)


def quiet_lightning() -> None:
    """Drop Lightning's per-Trainer banner lines (GPU available, tips); warnings still show."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)


def source_head_size(model: nn.Module) -> int:
    """Outputs of the model's source head: timm's ``num_classes`` (0 when the model has no head)."""
    n = getattr(model, "num_classes", None)
    if n is None:
        raise ValueError(f"{type(model).__name__} does not say its head size (attribute num_classes)")
    return int(n)


def source_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Probabilities over the source head's classes: a softmax, or for a single logit (a binary head)
    ``(1 - sigmoid, sigmoid)``; computed in float64."""
    logits = logits.double()
    if logits.shape[-1] == 1:
        p = torch.sigmoid(logits)
        return torch.cat([1.0 - p, p], dim=-1)
    return torch.softmax(logits, dim=-1)


class FeatureExtractor(L.LightningModule):
    """Wraps a timm classifier: ``predict_step`` returns pooled pre-logit features and source-head
    probabilities (an (N, 0) array for a model without a head)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.head_size = source_head_size(model)

    def predict_step(self, batch, batch_idx):
        x, y = batch
        pooled = self.model.forward_features(x)
        features = self.model.forward_head(pooled, pre_logits=True)
        if self.head_size == 0:
            probs = features.new_zeros((features.shape[0], 0))
        else:
            probs = source_probabilities(self.model.get_classifier()(features))
        return features.float().cpu(), probs.float().cpu(), y.cpu()


@dataclass(frozen=True)
class Features:
    """Features (N, D) float32, source probabilities (N, S) float32 (S = 0: the model has no source head)
    and labels (N,) int64 of one split."""

    @property
    def has_probs(self) -> bool:
        return self.probs.ndim == 2 and self.probs.shape[1] > 0

    features: np.ndarray
    probs: np.ndarray
    labels: np.ndarray


def extract_features(
    model: nn.Module, table: SampleTable, preprocess: Preprocess, *, batch_size: int = 32,
    num_workers: int | str = "auto", accelerator: str = "auto", progress: bool | str = "auto",
    decoded: DecodedImageCache | None = None,
) -> Features:
    """Run ``model`` over ``table`` with the evaluation transform; returns features, probabilities, labels.

    ``num_workers``: loader processes, or ``"auto"`` (see :func:`medxfer.data.loading.resolve_num_workers`).
    ``decoded``: a decoded-image cache; the split is then decoded, resized and cropped once for every model
    with this geometry, and only normalised here (same values as without it); with ``"auto"`` the decoding uses
    every core and, on a CPU, the cached pixels are read without worker processes.
    """
    workers = resolve_num_workers(num_workers, option="extract.num_workers", batches=batches_of(len(table), batch_size))
    pin = uses_gpu(accelerator)
    if decoded is None:
        loader = DataLoader(
            ImageDataset(table, eval_transform(preprocess), draft=preprocess.draft_size), batch_size=batch_size, shuffle=False,
            num_workers=workers, pin_memory=pin,
        )
    else:
        auto = is_auto(num_workers)
        # building the cache leaves this process idle (it only copies decoded rows), so "auto" decodes on every core
        images, _ = decoded.images(table, preprocess, num_workers=available_cores() if auto and workers else workers)
        # Reading cached pixels costs a copy and a normalisation per batch. On a CPU, whose cores the forward pass
        # keeps busy, a worker process costs more than it saves (its start, and contention with the forward
        # pass's threads: 0.79 vs 1.05 of the bare forward's throughput at 128 px on 2 cores), so "auto" reads
        # in this process there; on a GPU workers keep the next batches ready.
        read_workers = 0 if auto and not pin else workers
        batches = DecodedBatches(images, table.labels, preprocess.mean, preprocess.std, batch_size)
        loader = DataLoader(batches, batch_size=None, shuffle=False, num_workers=read_workers, pin_memory=pin)
    quiet_lightning()
    trainer = L.Trainer(
        accelerator=accelerator, devices=1, logger=False, enable_checkpointing=False, enable_model_summary=False,
        enable_progress_bar=show_progress(progress, "extract.progress"), inference_mode=True,
    )
    with lightning_interrupts(trainer):  # Ctrl-C / SIGTERM: an Interrupted, not Lightning's sys.exit(1)
        outputs = trainer.predict(FeatureExtractor(model), dataloaders=loader)
    feats = torch.cat([o[0] for o in outputs]).numpy()
    probs = torch.cat([o[1] for o in outputs]).numpy()
    labels = torch.cat([o[2] for o in outputs]).numpy().astype(np.int64)
    return Features(feats, probs, labels)


class FeatureCache:
    """Features on disk under ``root/<model>/<dataset>/<split>-<key>.npz``, each with a ``.sha256`` file."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, model: str, dataset: str, split: str, key: str) -> Path:
        return self.root / model / dataset / f"{split}-{key[:20]}.npz"

    def load(self, path: Path) -> Features | None:
        """The cached features, or None when absent; a file whose checksum fails is deleted and reported."""
        digest_file = path.with_suffix(".sha256")
        if not path.exists():
            return None
        expected = digest_file.read_text().strip() if digest_file.exists() else None
        actual = file_sha256(path)
        if expected != actual:
            log.warning("feature cache file %s is corrupted (checksum %s, expected %s); recomputing", path, actual[:12], (expected or "none")[:12])
            path.unlink(missing_ok=True)
            digest_file.unlink(missing_ok=True)
            return None
        try:
            with np.load(path, allow_pickle=False) as npz:
                return Features(npz["features"], npz["probs"], npz["labels"])
        except (OSError, ValueError, KeyError) as err:
            log.warning("feature cache file %s is unreadable (%s); recomputing", path, err)
            path.unlink(missing_ok=True)
            return None

    def save(self, path: Path, feats: Features) -> None:
        """Write atomically: a temporary file in the same folder, its checksum, then renames."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.stem, suffix=".tmp.npz", dir=path.parent)
        os.close(fd)
        with published_with_checksum(tmp, path):
            np.savez(tmp, features=feats.features, probs=feats.probs, labels=feats.labels)
