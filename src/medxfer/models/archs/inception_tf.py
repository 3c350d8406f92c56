"""``medxfer:inception_v3_tf``: timm's Inception-v3 with Keras's average pooling in the branch pools.

Keras averages the 3x3 'same' branch pools of the InceptionA/C/E blocks over the valid pixels only; timm's
``avg_pool2d(padding=1)`` counts the zero padding, so weights converted from Keras give other values at the
borders (pooled features up to 0.3 apart on photos). A pre-hook on each such branch's conv divides the pooled
input by the fraction of valid pixels in each window, which turns the include-padding average into the
exclude-padding one. The state dict is timm's ``inception_v3``'s, unchanged.
"""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from torch import nn

from medxfer.models.archs import register_arch

_KERAS_POOLED_BLOCKS = ("InceptionA", "InceptionC", "InceptionE")


def _exclude_padding(module: nn.Module, args: tuple[torch.Tensor]) -> tuple[torch.Tensor]:
    (x,) = args
    valid = F.avg_pool2d(torch.ones_like(x[:1, :1]), 3, 1, 1, count_include_pad=True)
    return (x / valid,)


@register_arch("inception_v3_tf")
def inception_v3_tf(num_classes: int, *, source=None, **kwargs) -> nn.Module:
    """timm ``inception_v3`` (``num_classes`` outputs, ``kwargs`` to timm) with Keras's branch pooling."""
    model = timm.create_model("inception_v3", pretrained=False, num_classes=num_classes, **kwargs)
    for name, module in model.named_modules():
        parent = name.rsplit(".", 1)[0]
        if name.endswith(".branch_pool") and type(model.get_submodule(parent)).__name__ in _KERAS_POOLED_BLOCKS:
            module.register_forward_pre_hook(_exclude_padding)
    return model
