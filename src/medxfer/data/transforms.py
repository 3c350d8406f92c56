"""Image preprocessing: evaluation (resize + centre crop) and the paper's training augmentation."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision import transforms as T

from medxfer.data.tables import SampleTable

_INTERPOLATION = {
    "bicubic": T.InterpolationMode.BICUBIC,
    "bilinear": T.InterpolationMode.BILINEAR,
    "nearest": T.InterpolationMode.NEAREST,
}


@dataclass(frozen=True)
class Preprocess:
    """How images reach the network: resize the short side to ``resize``, centre-crop ``input_size``."""

    input_size: int
    resize: int
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_preprocess(model_data_config: dict[str, Any], overrides: dict[str, Any] | None = None) -> Preprocess:
    """Preprocessing from timm's pretrained config (``timm.data.resolve_model_data_config``), with overrides.

    ``overrides`` keys (None = keep timm's value): ``input_size``, ``resize`` (short side before the crop;
    default ``floor(input_size / crop_pct)``), ``interpolation``, ``mean``, ``std``.  The paper used
    ``resize=256, input_size=224``.
    """
    o = {k: v for k, v in (overrides or {}).items() if v is not None}
    size = int(o.get("input_size", model_data_config["input_size"][-1]))
    crop_pct = float(model_data_config.get("crop_pct") or 0.875)
    resize = int(o.get("resize", math.floor(size / crop_pct)))
    if resize < size:
        raise ValueError(f"preprocess.resize={resize} is smaller than preprocess.input_size={size}")
    interpolation = str(o.get("interpolation", model_data_config.get("interpolation", "bicubic")))
    if interpolation not in _INTERPOLATION:
        raise ValueError(f"preprocess.interpolation={interpolation!r}; expected one of {sorted(_INTERPOLATION)}")
    mean = tuple(float(v) for v in o.get("mean", model_data_config["mean"]))
    std = tuple(float(v) for v in o.get("std", model_data_config["std"]))
    return Preprocess(size, resize, interpolation, mean, std)


def eval_transform(p: Preprocess) -> T.Compose:
    return T.Compose([
        T.Resize(p.resize, interpolation=_INTERPOLATION[p.interpolation]),
        T.CenterCrop(p.input_size),
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
    """A torch dataset over a :class:`SampleTable`: ``(image tensor, label)`` pairs."""

    def __init__(self, table: SampleTable, transform):
        self.table = table
        self.transform = transform

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.table.load_image(i)), int(self.table.labels[i])
