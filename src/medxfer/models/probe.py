"""A check that pretrained weights are real: an instance-discrimination probe on scikit-image's photos.

Twelve photos, each cut into heavily augmented crops (random resized crops of 20-60 % of the area, flips,
colour jitter); the label of a crop is its photo. Pooled features of real pretrained weights tell the photos
apart far better than the same architecture with random weights, whatever the weights were trained for, so
the probe applies to models without an ImageNet head. The accuracy is leave-one-out 1-nearest-neighbour
(cosine) over the crops; chance is 1/12.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

PHOTOS = ("astronaut", "chelsea", "coffee", "hubble_deep_field", "immunohistochemistry", "rocket", "camera",
          "coins", "page", "brick", "grass", "clock")


def probe_images(crops_per_photo: int = 8, size: int = 128, seed: int = 0) -> tuple[list, np.ndarray]:
    """``(PIL crops, labels)``: ``crops_per_photo`` augmented crops of each photo, deterministic for ``seed``."""
    import skimage.data
    from PIL import Image
    from torchvision import transforms as T

    augment = T.Compose([
        T.RandomResizedCrop(size, scale=(0.2, 0.6)),
        T.RandomHorizontalFlip(),
        T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1),
    ])
    torch.manual_seed(seed)
    images, labels = [], []
    for label, name in enumerate(PHOTOS):
        photo = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        for _ in range(crops_per_photo):
            images.append(augment(photo))
            labels.append(label)
    return images, np.array(labels)


def loo_1nn_accuracy(features: np.ndarray, labels: np.ndarray) -> float:
    """Leave-one-out 1-nearest-neighbour accuracy under cosine similarity of standardised features."""
    x = features.astype(np.float64)
    x = (x - x.mean(0)) / (x.std(0) + 1e-8)
    x /= np.linalg.norm(x, axis=1, keepdims=True) + 1e-12
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    return float((labels[sim.argmax(1)] == labels).mean())


@torch.inference_mode()
def probe_accuracy(model: nn.Module, transform, images: list, labels: np.ndarray) -> float:
    """The probe's accuracy with ``model``'s pooled pre-logit features; ``transform`` maps a PIL crop to a tensor."""
    model.eval()
    batch = torch.stack([transform(img) for img in images])
    feats = model.forward_head(model.forward_features(batch), pre_logits=True)
    return loo_1nn_accuracy(feats.float().numpy(), labels)
