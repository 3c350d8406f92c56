"""Balanced accuracy as a torchmetrics metric, with the definition of scikit-learn and the paper."""

from __future__ import annotations

import torch
from torchmetrics import Metric


class BalancedAccuracy(Metric):
    """Mean recall over the classes present in the targets (``sklearn.metrics.balanced_accuracy_score``).

    torchmetrics' ``MulticlassRecall(average="macro")`` also averages in a class that is absent from the
    targets but predicted (recall 0), which lowers the value on evaluation sets that lack a class, as OOD
    sets may; this metric leaves such classes out, as scikit-learn does.

    Shape: ``preds``: (N,) class indices or (N, C) scores; ``target``: (N,) class indices; result: scalar.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, num_classes: int, **kwargs):
        super().__init__(**kwargs)
        if num_classes < 2:
            raise ValueError(f"balanced accuracy needs at least 2 classes, got num_classes={num_classes}")
        self.num_classes = num_classes
        self.add_state("correct", default=torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("support", default=torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        if preds.ndim == 2:
            preds = preds.argmax(dim=1)
        target = target.long()
        self.support += torch.bincount(target, minlength=self.num_classes)
        self.correct += torch.bincount(target[preds == target], minlength=self.num_classes)

    def compute(self) -> torch.Tensor:
        present = self.support > 0
        if not present.any():
            return torch.tensor(float("nan"))
        return (self.correct[present].double() / self.support[present].double()).mean().float()
