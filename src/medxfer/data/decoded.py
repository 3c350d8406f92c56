"""Decoded images, shared by every model of a study: decode, resize and centre-crop each image once.

Every model that sees a split with the same geometry (resize, crop, interpolation) gets the same uint8 pixels,
so they are stored once per (split contents, resize, crop, interpolation, channels) as one ``.npy`` file of
shape (N, crop, crop, 3), written under a temporary name with a SHA-256 checksum beside it and renamed into
place (as the feature cache), and read back memory-mapped. Normalisation, which differs between backbones,
is applied on the fly to each batch with the same tensor operations as ``eval_transform``, so features from
the cached pixels equal those from decoding afresh.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import functional as TF

from medxfer.data.tables import SampleTable, table_digest
from medxfer.data.transforms import EVAL_PIXELS_VERSION, Preprocess, eval_geometry
from medxfer.digests import FileDigests, digest_store, file_sha256, hash_parts, published_with_checksum

log = logging.getLogger(__name__)

#: ``SampleTable.load_image`` converts every image to 8-bit RGB.
CHANNELS = "RGB"
#: Images per decoding batch when the cache is built (the memory held per batch, not a result).
_BUILD_BATCH = 16


def decoded_key(table: SampleTable, preprocess: Preprocess, digests: FileDigests | None = None) -> str:
    """Hex key of a split's decoded pixels: its contents (the table digest of its cells: class names, labels and
    each image's bytes, looked up in ``digests``) and the geometry. Mean and std are not in it: they are applied
    on the fly, so models with other normalisations share the file."""
    parts = {
        "pixels": EVAL_PIXELS_VERSION, "content": table_digest(table, digests or FileDigests(None)),
        "resize": preprocess.resize, "crop": preprocess.input_size, "interpolation": preprocess.interpolation,
        "channels": CHANNELS,
    }
    if preprocess.decode != "full":  # other pixels; absent when full, so full decoding keeps its keys
        parts["decode"] = preprocess.decode
    return hash_parts(parts, length=20)


def decoded_cache_for(extract: dict[str, Any], cache_dir: str | Path) -> "DecodedImageCache | None":
    """The decoded-image cache of a stage, ``<cache_dir>/decoded``, or None when ``extract.decoded_cache`` is
    false."""
    enabled = extract.get("decoded_cache", True)
    if not isinstance(enabled, bool):
        raise ValueError(f"extract.decoded_cache={enabled!r}; expected true or false")
    return DecodedImageCache(Path(cache_dir) / "decoded", digest_store(cache_dir)) if enabled else None


def normalise_batch(images: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """(B, H, W, 3) uint8 pixels to a (B, 3, H, W) normalised float tensor, by the same operations as
    ``ToTensor`` then ``Normalize`` (element for element, so the result is bit-identical)."""
    x = torch.from_numpy(np.array(images, dtype=np.uint8, copy=True))
    x = x.permute(0, 3, 1, 2).contiguous().to(dtype=torch.get_default_dtype()).div(255)
    return TF.normalize(x, list(mean), list(std))


class DecodedBatches(Dataset):
    """Item ``b`` is batch ``b`` of a split, ``(images, labels)``, cut from decoded uint8 pixels and
    normalised; use with ``DataLoader(batch_size=None)``. A whole batch is converted at once, which costs a
    fraction of converting its images one by one."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, mean, std, batch_size: int):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} decoded images for {len(labels)} labels")
        self.images, self.labels = images, np.asarray(labels, dtype=np.int64)
        self.mean, self.std, self.batch_size = tuple(mean), tuple(std), int(batch_size)

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    def __getitem__(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = slice(b * self.batch_size, (b + 1) * self.batch_size)
        return normalise_batch(self.images[rows], self.mean, self.std), torch.from_numpy(self.labels[rows].copy())


class _DecodeRows(Dataset):
    """Row ``i`` of a split as ``(i, uint8 pixels)`` after the evaluation geometry: the only place images
    are decoded when the cache is built."""

    def __init__(self, table: SampleTable, preprocess: Preprocess):
        self.table, self.geometry, self.draft = table, eval_geometry(preprocess), preprocess.draft_size
        self.shape = (preprocess.input_size, preprocess.input_size, 3)

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray]:
        pixels = np.asarray(self.geometry(self.table.load_image(i, draft=self.draft)), dtype=np.uint8)
        if pixels.shape != self.shape:  # Resize + CenterCrop always give crop x crop; anything else is a bug
            raise RuntimeError(f"{self.table.name} row {i}: decoded to {pixels.shape}, expected {self.shape}")
        return i, pixels


def _stack(items: list[tuple[int, np.ndarray]]) -> tuple[list[int], np.ndarray]:
    return [i for i, _ in items], np.stack([p for _, p in items])


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "split"


class DecodedImageCache:
    """Decoded splits under ``root/<split name>-<crop>px-<key>.npy``, each with a ``.sha256`` file."""

    def __init__(self, root: str | Path, digests: FileDigests | None = None):
        self.root = Path(root)
        self.digests = digests

    def path(self, table: SampleTable, preprocess: Preprocess) -> Path:
        key = decoded_key(table, preprocess, self.digests)
        return self.root / f"{_safe(table.name)}-{preprocess.input_size}px-{key}.npy"

    def images(self, table: SampleTable, preprocess: Preprocess, *, num_workers: int = 0) -> tuple[np.ndarray, bool]:
        """The split's decoded pixels, (N, crop, crop, 3) uint8 (read-only, memory-mapped), and whether they
        came from the cache; decoded (with ``num_workers`` loader processes) and stored when absent."""
        shape = (len(table), preprocess.input_size, preprocess.input_size, 3)
        if len(table) == 0:
            return np.zeros(shape, dtype=np.uint8), False
        path = self.path(table, preprocess)
        images = self.load(path, shape)
        if images is not None:
            return images, True
        log.info("decoding %d images of %s once at %d px into %s", len(table), table.name, preprocess.input_size, path)
        self.build(path, table, preprocess, num_workers=num_workers)
        return np.load(path, mmap_mode="r", allow_pickle=False), False

    def load(self, path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
        """The cached pixels, or None when absent; a file whose checksum or shape is wrong is deleted and
        reported."""
        digest_file = path.with_suffix(".sha256")
        if not path.exists():
            return None
        expected = digest_file.read_text().strip() if digest_file.exists() else None
        actual = file_sha256(path)
        problem = None
        if expected != actual:
            problem = f"checksum {actual[:12]}, expected {(expected or 'none')[:12]}"
        else:
            try:
                images = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as err:
                problem = f"unreadable: {err}"
            else:
                if images.shape == shape and images.dtype == np.uint8:
                    return images
                problem = f"holds {images.dtype} {images.shape}, expected uint8 {shape}"
                del images
        log.warning("decoded-image cache file %s is corrupted (%s); decoding again", path, problem)
        path.unlink(missing_ok=True)
        digest_file.unlink(missing_ok=True)
        return None

    def build(self, path: Path, table: SampleTable, preprocess: Preprocess, *, num_workers: int = 0) -> None:
        """Decode every image of ``table`` into ``path``: written into a temporary file of the same folder
        (memory-mapped, so a large split never sits in memory whole), its checksum, then renames."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.stem, suffix=".tmp.npy", dir=path.parent)
        os.close(fd)
        rows = _DecodeRows(table, preprocess)
        with published_with_checksum(tmp, path):
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(table), *rows.shape))
            loader = DataLoader(rows, batch_size=_BUILD_BATCH, shuffle=False, num_workers=num_workers,
                                collate_fn=_stack)
            for index, pixels in loader:
                out[index] = pixels
            out.flush()
            del out
