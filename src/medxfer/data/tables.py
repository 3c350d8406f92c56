"""Sample tables: which images belong to a split, with integer labels and class names.

A table holds images either as file paths (CSV, image folders, the synthetic benchmark) or as an in-memory
uint8 array (MedMNIST+ ``.npz``).  Everything downstream (splits, torch datasets, the feature cache) sees
the same small interface, so real-data loading code and the synthetic benchmark run through one path.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from medxfer.digests import FileDigests
from medxfer.errors import MedxferError


class DataError(MedxferError, ValueError):
    """Bad or missing data: the message names the file, row, value or option at fault."""


@dataclass(frozen=True)
class SampleTable:
    """Images of one split.

    Attributes:
        name: ``"<dataset>/<split>"``, used in messages and cache keys.
        labels: (N,) int64 codes in ``0..C-1`` indexing ``class_names``.
        class_names: class name of each code (shared by all splits of a dataset).
        paths: (N,) image files, or None when ``images`` holds the pixels.
        images: (N, H, W) or (N, H, W, C) uint8 array, or None.
        groups: (N,) group ids (patients) or None.
        ids: (N,) a stable identifier per sample (relative path or array index), hashed into ``digest``.
    """

    name: str
    labels: np.ndarray
    class_names: tuple[str, ...]
    paths: tuple[Path, ...] | None = None
    images: np.ndarray | None = field(default=None, repr=False)
    groups: np.ndarray | None = None
    ids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        n = len(self.labels)
        if (self.paths is None) == (self.images is None):
            raise ValueError("a SampleTable holds either paths or images, exactly one of them")
        if self.paths is not None and len(self.paths) != n:
            raise ValueError(f"{self.name}: {len(self.paths)} paths for {n} labels")
        if self.images is not None and len(self.images) != n:
            raise ValueError(f"{self.name}: {len(self.images)} images for {n} labels")
        if not self.ids:
            ids = [str(p) for p in self.paths] if self.paths is not None else [str(i) for i in range(n)]
            object.__setattr__(self, "ids", tuple(ids))

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def subset(self, index: np.ndarray, name: str) -> "SampleTable":
        """The rows ``index`` of this table, as a new table called ``name``."""
        index = np.asarray(index, dtype=np.int64)
        return SampleTable(
            name=name,
            labels=self.labels[index],
            class_names=self.class_names,
            paths=None if self.paths is None else tuple(self.paths[i] for i in index),
            images=None if self.images is None else self.images[index],
            groups=None if self.groups is None else self.groups[index],
            ids=tuple(self.ids[i] for i in index),
        )

    def load_image(self, i: int, *, draft: int | None = None) -> Image.Image:
        """Sample ``i`` as an 8-bit RGB image (grayscale, RGBA, palette and 16-bit images are converted).

        ``draft``: a JPEG file is decoded at the smallest scale its decoder offers (1/2, 1/4 or 1/8 of each
        side, taken in the DCT, far cheaper than decoding every pixel) whose width and height both stay
        >= ``draft``; other formats and in-memory pixels are read in full."""
        if self.images is not None:
            return to_rgb(Image.fromarray(self.images[i]))
        path = self.paths[i]
        try:
            with Image.open(path) as img:
                if draft is not None:
                    img.draft("RGB", (draft, draft))
                img.load()
                return to_rgb(img)
        except FileNotFoundError:
            raise DataError(f"{self.name}: image file not found: {path} (row {i} of the split)") from None
        except Image.DecompressionBombError as err:  # a header claiming gigapixels: damaged, or not this dataset's
            raise DataError(
                f"{self.name}: image {path} (row {i} of the split) is refused: {err} Its header claims far more "
                "pixels than a medical image of this kind has; replace or remove the file "
                "(`medxfer-data images=decode` lists every unreadable image)"
            ) from None
        except (UnidentifiedImageError, OSError, SyntaxError) as err:
            raise DataError(f"{self.name}: cannot read image {path} (row {i} of the split): {err}") from None

    def missing_files(self) -> list[int]:
        """Rows whose image file does not exist (none for in-memory images)."""
        if self.paths is None:
            return []
        return [i for i, path in enumerate(self.paths) if not Path(path).is_file()]

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=self.n_classes)
        return {name: int(c) for name, c in zip(self.class_names, counts)}


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL image to 8-bit RGB; 16-bit grayscale is rescaled by its own range, not clipped."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = np.zeros_like(arr) if hi <= lo else (arr - lo) / (hi - lo) * 255.0
        img = Image.fromarray(scaled.round().astype(np.uint8), mode="L")
    if img.mode == "RGBA" or img.mode == "LA" or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


@dataclass(frozen=True)
class DatasetSplits:
    """The splits of one dataset; ``ood`` is the out-of-distribution test set, or None."""

    name: str
    train: SampleTable
    val: SampleTable
    test: SampleTable
    ood: SampleTable | None
    class_names: tuple[str, ...]
    label_mapping: dict[str, int]
    #: split -> why it is not read (its files are not there and no stage asked for it), e.g. the OOD set
    absent: dict[str, str] = field(default_factory=dict)
    #: the leaks between given splits (:class:`medxfer.data.leaks.LeakReport`), None for random splits
    leaks: Any = None

    def run_tags(self) -> dict[str, str]:
        """Tags every run on this data carries: ``absent_splits`` and ``absent/<split>`` (why a split is not
        read), and the leak counts of given splits (``leak/test_in_train``, ...; see
        :meth:`medxfer.data.leaks.LeakReport.tags`)."""
        tags = {}
        if self.absent:
            tags["absent_splits"] = ",".join(self.absent)
            tags.update({f"absent/{k}": v[:4000] for k, v in self.absent.items()})
        if self.leaks is not None:
            tags.update(self.leaks.tags())
        return tags

    def split(self, name: str) -> SampleTable:
        table = {"train": self.train, "val": self.val, "test": self.test, "ood": self.ood}.get(name)
        if table is None:
            if name == "ood":
                why = self.absent.get("ood", "dataset.ood is null")
                raise DataError(f"dataset {self.name!r} has no out-of-distribution set ({why})")
            raise DataError(f"unknown split {name!r}; expected one of train, val, test, ood")
        return table


def encode_labels(
    raw: list[str], source: str, classes: tuple[str, ...] | None = None, rows: list[str] | None = None
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Re-encode label values to 0..C-1: in sorted order of their string form, or in the order of ``classes``
    when given (published splits whose codes must stay the paper's). With ``classes``, a value outside it is an
    error naming ``rows[i]`` (where sample ``i`` came from) and the value."""
    if len(raw) == 0:
        raise DataError(f"{source}: no samples found")
    if classes is None:
        names = tuple(sorted({str(v) for v in raw}))
    else:
        names = tuple(str(c) for c in classes)
        if len(set(names)) != len(names):
            raise DataError(f"{source}: dataset.classes {list(names)} names a class twice")
    code = {n: i for i, n in enumerate(names)}
    for i, v in enumerate(raw):
        if str(v) not in code:
            where = rows[i] if rows else f"sample {i}"
            raise DataError(
                f"{source}: {where} has label {str(v)!r}, not one of dataset.classes {list(names)}; "
                "add it there or map it with label_map"
            )
    return np.array([code[str(v)] for v in raw], dtype=np.int64), names


def recode(table: SampleTable, class_names: tuple[str, ...], what: str) -> SampleTable:
    """Express ``table``'s labels in another class list (used for OOD sets); unknown classes are an error."""
    code = {n: i for i, n in enumerate(class_names)}
    unknown = sorted(set(table.class_names) - set(code))
    if unknown:
        raise DataError(
            f"{what}: classes {unknown} do not exist in the training data (classes {list(class_names)}); "
            "map them with label_map in the dataset config"
        )
    new = np.array([code[table.class_names[c]] for c in table.labels], dtype=np.int64)
    return SampleTable(
        name=table.name, labels=new, class_names=class_names, paths=table.paths, images=table.images,
        groups=table.groups, ids=table.ids,
    )


def resolve_under(root: Path, value: str, *, allow_absolute: bool, where: str) -> Path:
    """Resolve an image path from a CSV under the dataset root; refuse escapes unless allowed."""
    p = Path(value)
    if p.is_absolute():
        if not allow_absolute:
            raise DataError(f"{where}: absolute image path {value!r} refused (set dataset.allow_absolute_paths=true)")
        return p
    full = (root / p).resolve()
    if not allow_absolute and not full.is_relative_to(root.resolve()):
        raise DataError(f"{where}: image path {value!r} points outside the dataset root {root}")
    return full


def as_paths(values: list[Path]) -> tuple[Path, ...]:
    return tuple(Path(v) for v in values)


def table_digest(table: SampleTable, digests: FileDigests) -> str:
    """SHA-256 of what a split holds: its class names, and each sample's label and image bytes (or the pixel
    array), in order; the one content digest of a table (cell identity, decoded-image cache, the ``data_digest``
    tag). Independent of where the files are; a missing file is an error naming the split and the file."""
    h = hashlib.sha256(json.dumps(list(table.class_names)).encode())
    h.update(np.ascontiguousarray(table.labels, dtype=np.int64).tobytes())
    if table.images is not None:
        h.update(str(table.images.shape).encode())
        h.update(np.ascontiguousarray(table.images).tobytes())
        return h.hexdigest()
    try:
        files = digests.many(table.paths)
    except OSError as err:
        raise DataError(f"{table.name}: cannot read image file {err.filename}: {err.strerror}") from None
    h.update("\n".join(files).encode())
    return h.hexdigest()
