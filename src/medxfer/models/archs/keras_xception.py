"""``medxfer:keras_xception``: timm's ``legacy_xception`` computing exactly what Keras's Xception computes.

timm's port pads its stride-2 max-pools by one pixel on every side; Keras pads ``same`` (nothing before, one
after, on even sizes), which shifts every pooling window of three of the four pools by a pixel. This builder
swaps those pools for TF-``same`` ones and sets Keras's BN epsilon (1e-3); the state-dict keys are timm's, so
the ``keras_xception`` converter fills either. ``head_hidden`` gives the source head a ReLU MLP
(``GlobalAveragePooling2D -> Dense(h, relu) -> Dense(n)``, as Keras transfer-learning recipes build it);
``reset_classifier(n)`` replaces it by a single linear layer, and ``forward_head(x, pre_logits=True)`` is the
pooled 2048-d backbone output either way.
"""

from __future__ import annotations

from pathlib import Path

import timm
from timm.layers import create_pool2d
from torch import nn

from medxfer.models.archs import register_arch


@register_arch("keras_xception")
def build_keras_xception(num_classes: int, *, source: Path | None = None, head_hidden: int | None = None,
                         bn_eps: float = 1e-3, **kwargs) -> nn.Module:
    """timm ``legacy_xception`` with TF-``same`` max-pools, BN eps ``bn_eps`` and an optional MLP head."""
    model = timm.create_model("legacy_xception", pretrained=False, num_classes=num_classes, **kwargs)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eps = bn_eps
        if hasattr(module, "rep") and isinstance(module.rep[-1], nn.MaxPool2d):
            pool = module.rep[-1]
            module.rep[-1] = create_pool2d("max", pool.kernel_size, stride=pool.stride, padding="same")
    if head_hidden and num_classes:
        model.fc = nn.Sequential(
            nn.Linear(model.num_features, int(head_hidden)), nn.ReLU(inplace=True), nn.Linear(int(head_hidden), num_classes)
        )
    return model
