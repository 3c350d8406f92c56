"""Image preprocessing: evaluation (resize + centre crop) and the paper's training augmentation."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision import transforms as T

from medxfer.data.tables import SampleTable
from medxfer.errors import ConfigError

_INTERPOLATION = {
    "bicubic": T.InterpolationMode.BICUBIC,
    "bilinear": T.InterpolationMode.BILINEAR,
    "nearest": T.InterpolationMode.NEAREST,
}


#: How image files are decoded: ``full`` (every pixel), ``reduced`` (a JPEG decoded at the smallest DCT scale,
#: 1/2, 1/4 or 1/8, whose sides stay >= ``resize``; other formats in full).
DECODERS = ("full", "reduced")


@dataclass(frozen=True)
class Preprocess:
    """How images reach the network: decode (``decode``), resize the short side to ``resize``, centre-crop
    ``input_size``."""

    input_size: int
    resize: int
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    decode: str = "full"

    def as_dict(self) -> dict[str, Any]:
        """The fields; ``decode`` only when it is not ``full``, so the feature-cache keys and logged params of
        full decoding are what they were before reduced decoding existed."""
        d = asdict(self)
        if d["decode"] == "full":
            del d["decode"]
        return d

    @property
    def draft_size(self) -> int | None:
        """The side a JPEG may be decoded down to (:meth:`medxfer.data.tables.SampleTable.load_image`'s
        ``draft``): ``resize`` with reduced decoding, None (every pixel) with full decoding."""
        return self.resize if self.decode == "reduced" else None


def resolve_preprocess(model_data_config: dict[str, Any], overrides: dict[str, Any] | None = None) -> Preprocess:
    """Preprocessing from timm's pretrained config (``timm.data.resolve_model_data_config``), with overrides.

    ``overrides`` keys (None = keep timm's value): ``input_size``, ``resize`` (short side before the crop;
    default ``floor(input_size / crop_pct)``), ``interpolation``, ``mean``, ``std``, and ``decode`` (one of
    :data:`DECODERS`; None = ``full``).  The paper used ``resize=256, input_size=224``.
    """
    check_preprocess_options(overrides)
    o = {k: v for k, v in (overrides or {}).items() if v is not None}
    size = int(o.get("input_size", model_data_config["input_size"][-1]))
    smallest = model_data_config.get("min_input_size")
    if smallest is not None and size < int(smallest):  # else a raw "Kernel size can't be greater ..." mid-run
        raise ConfigError(f"preprocess.input_size={size} is smaller than the {int(smallest)} px crops this model needs "
                          f"(its config's data.min_input_size); pass preprocess.input_size={int(smallest)} or more, "
                          "or leave this model out")
    crop_pct = float(model_data_config.get("crop_pct") or 0.875)
    resize = int(o.get("resize", math.floor(size / crop_pct)))
    if resize < size:
        raise ConfigError(f"preprocess.resize={resize} is smaller than preprocess.input_size={size}; "
                          "the crop must fit inside the resized image")
    interpolation = str(o.get("interpolation", model_data_config.get("interpolation", "bicubic")))
    if interpolation not in _INTERPOLATION:  # the model's own value; a given one was checked above
        raise ConfigError(f"the model's interpolation {interpolation!r} is not supported; set preprocess.interpolation "
                          f"to one of {sorted(_INTERPOLATION)}")
    mean = tuple(float(v) for v in o.get("mean", model_data_config["mean"]))
    std = tuple(float(v) for v in o.get("std", model_data_config["std"]))
    return Preprocess(size, resize, interpolation, mean, std, str(o.get("decode", "full")))


#: Largest accepted ``preprocess.input_size`` / ``resize`` (pixels): far above any backbone's input, low enough
#: that a typo (an extra zero or two) is caught before it allocates gigabytes per image.
MAX_SIDE = 4096


def check_preprocess_options(options: dict[str, Any] | None) -> None:
    """Refuse ``preprocess.*`` values that cannot work (sizes outside 1..4096 px, an unknown interpolation,
    mean/std that are not 3 numbers, a std that is not positive), naming the option; cheap, so stages call it
    before any heavy work."""
    o = {k: v for k, v in (options or {}).items() if v is not None}
    for key in ("input_size", "resize"):
        if key in o:
            value = o[key]
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SIDE:
                raise ConfigError(f"preprocess.{key}={value!r}; expected a whole number of pixels from 1 to {MAX_SIDE} "
                                  "(or null for the model's own size)")
    if "decode" in o and o["decode"] not in DECODERS:
        raise ConfigError(f"preprocess.decode={o['decode']!r}; expected one of {list(DECODERS)} (reduced: JPEGs "
                          "decoded at the smallest DCT scale that still covers preprocess.resize)")
    if "interpolation" in o and str(o["interpolation"]) not in _INTERPOLATION:
        raise ConfigError(f"preprocess.interpolation={o['interpolation']!r}; expected one of {sorted(_INTERPOLATION)}")
    for key in ("mean", "std"):
        if key in o:
            value = o[key]
            try:
                numbers = [float(v) for v in value]
            except (TypeError, ValueError):
                numbers = []
            if len(numbers) != 3 or not all(math.isfinite(v) for v in numbers):
                raise ConfigError(f"preprocess.{key}={value!r}; expected 3 numbers, one per RGB channel")
            if key == "std" and min(numbers) <= 0:
                raise ConfigError(f"preprocess.std={value!r}; every channel's std must be positive")


#: Version of the pixels :func:`eval_geometry` makes (decoder, resize, crop): part of the feature-cache and
#: decoded-image keys, so bump it when a change here (or a faster decoder) gives other pixels.
EVAL_PIXELS_VERSION = 1


def eval_geometry(p: Preprocess) -> T.Compose:
    """The evaluation transform up to its pixels: resize the short side, centre-crop; a PIL image stays a PIL
    image. The decoded-image cache stores this output, so both paths share these exact steps."""
    return T.Compose([
        T.Resize(p.resize, interpolation=_INTERPOLATION[p.interpolation]),
        T.CenterCrop(p.input_size),
    ])


def eval_transform(p: Preprocess) -> T.Compose:
    """Evaluation preprocessing: :func:`eval_geometry`, then a float tensor in [0, 1], then the backbone's
    normalisation."""
    return T.Compose([
        *eval_geometry(p).transforms,
        T.ToTensor(),
        T.Normalize(p.mean, p.std),
    ])


def train_transform(p: Preprocess) -> T.Compose:
    """The paper's augmentation: flips, RandomResizedCrop(scale 0.75-1), rotation 45 degrees, colour jitter
    (hue 0.2), then the backbone's normalisation."""
    return T.Compose([
        T.RandomResizedCrop(p.input_size, scale=(0.75, 1.0), interpolation=_INTERPOLATION[p.interpolation]),
        T.RandomHorizontalFlip(),
        T.RandomVerticalFlip(),
        T.RandomRotation(45),
        T.ColorJitter(hue=0.2),
        T.ToTensor(),
        T.Normalize(p.mean, p.std),
    ])


class ImageDataset(Dataset):
    """A torch dataset over a :class:`SampleTable`: ``(image tensor, label)`` pairs; ``draft``: decode JPEGs
    down to this side (:attr:`Preprocess.draft_size`), None: in full."""

    def __init__(self, table: SampleTable, transform, draft: int | None = None):
        self.table = table
        self.transform = transform
        self.draft = draft

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.table.load_image(i, draft=self.draft)), int(self.table.labels[i])
