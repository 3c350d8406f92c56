"""``medxfer:vgg16_plain``: the 13 convs of VGG16 with global average pooling, no fc6/fc7.

For VGG16 weights that come without the fully connected layers (HED, a fully convolutional edge detector, keeps
only conv1_1..conv5_3). The stack ends at conv5_3's ReLU (HED has no pool5); its max-pools round up (``ceil_mode``)
as Keras's ``padding='same'`` 2x2 pools do on odd sizes. The keys are torchvision's/timm's ``features.<i>``
(0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28). ``forward_head(x, pre_logits=True)`` gives the pooled 512-d
features; ``num_classes > 0`` adds a linear classifier ``fc``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import create_classifier
from torch import nn

from medxfer.models.archs import register_arch

_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)


class VGGPlain(nn.Module):
    """VGG conv stack + global pooling + optional linear classifier, with timm's classifier interface."""

    def __init__(self, num_classes: int = 0, *, in_chans: int = 3, global_pool: str = "avg", drop_rate: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_chans
        for v in _VGG16:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
            else:
                layers += [nn.Conv2d(channels, v, 3, padding=1), nn.ReLU(inplace=True)]
                channels = v
        self.features = nn.Sequential(*layers)
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = channels
        self.drop_rate = drop_rate
        self.global_pool, self.fc = create_classifier(channels, num_classes, pool_type=global_pool)
        self.pretrained_cfg = self.default_cfg = {
            "input_size": (3, 224, 224), "interpolation": "bilinear", "crop_pct": 0.875,
            "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD, "num_classes": num_classes,
            "first_conv": "features.0", "classifier": "fc",
        }

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        pool = global_pool if global_pool is not None else self.global_pool.pool_type
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=pool)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate:
            x = nn.functional.dropout(x, self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_arch("vgg16_plain")
def build_vgg16_plain(num_classes: int, *, source: Path | None = None, **kwargs) -> nn.Module:
    """VGG16's convs (no fc6/fc7) with average pooling; ``num_classes`` 0 for a headless model."""
    return VGGPlain(num_classes, **kwargs)
