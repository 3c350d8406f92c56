"""``medxfer:vgg16_bn_features``: torchvision's ``vgg16_bn().features[:39]`` with global average pooling (512-d).

This is the VGG16-BN trunk as CRAFT (the text detector EasyOCR uses) keeps it: the first 12 of the 13 convs,
ending at the 12th conv's BatchNorm (index 38, before its ReLU), i.e. CRAFT's ``relu5_3`` tap. Keys are
torchvision's (``features.<i>.*``) so :func:`medxfer.models.convert.torch_state.convert_craft_vgg16_bn` maps
CRAFT's checkpoint onto them exactly. The stride is 16 (four max-pools), so any input of 16 px or more works.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.models.vgg import cfgs, make_layers

from medxfer.models.archs import register_arch

__all__ = ["VGGFeatures", "build_vgg16_bn_features"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class VGGFeatures(nn.Module):
    """A VGG16-BN trunk (``features[:depth]``), average-pooled, with an optional linear head; timm's interface."""

    def __init__(self, num_classes: int = 0, depth: int = 39):
        super().__init__()
        # make_layers builds only the conv trunk: vgg16_bn() would also allocate its 120M-parameter classifier
        self.features = make_layers(cfgs["D"], batch_norm=True)[:depth]
        convs = [m for m in self.features if isinstance(m, nn.Conv2d)]
        self.num_features = self.head_hidden_size = convs[-1].out_channels
        self.global_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.num_classes = 0
        self.fc: nn.Module = nn.Identity()
        self.reset_classifier(num_classes)
        self.pretrained_cfg = {
            "input_size": (3, 224, 224), "interpolation": "bilinear", "crop_pct": 0.875,
            "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "num_classes": num_classes,
        }

    def get_classifier(self) -> nn.Module:
        """The head: a Linear, or an Identity when there is none (``num_classes`` 0)."""
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head with a fresh ``Linear(num_features, num_classes)`` (none for 0)."""
        if global_pool not in (None, "avg"):
            raise ValueError(f"VGGFeatures pools by average only, not {global_pool!r}")
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The trunk's feature map, ``(B, 512, H/16, W/16)``."""
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pooled features (``pre_logits=True``) or logits, from a feature map."""
        x = self.global_pool(x)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_arch("vgg16_bn_features")
def build_vgg16_bn_features(num_classes: int, *, source: Path | None = None, depth: int = 39) -> VGGFeatures:
    """``medxfer:vgg16_bn_features``; ``depth`` cuts torchvision's ``vgg16_bn().features`` (39: CRAFT's trunk)."""
    return VGGFeatures(num_classes, depth=depth)
