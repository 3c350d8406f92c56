"""The fine-tuning model: a timm backbone with a new linear head, trained as in Chaves et al. (2023).

Cross-entropy; SGD with Nesterov momentum 0.9; cosine annealing of the learning rate down to ``eta_min`` over
``max_epochs`` (stepped once per epoch). Every parameter is trained, as in the paper.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from medxfer.training.metrics import BalancedAccuracy

#: ``finetune.memory_format``: how image batches and convolution weights are laid out in memory. channels_last
#: (NHWC) lets oneDNN on a CPU and cuDNN on a GPU run convolutions without reordering: measured 15-35 % less
#: time per training step on this project's 2-core CPU machine (DenseNet-121, Xception, EfficientNet-Lite0,
#: MobileNetV2 at 64 px). The same arithmetic in another order, so results agree to rounding, not bitwise.
MEMORY_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}

#: The checkpoint key holding its epoch's ``val/loss`` and ``val/bal_acc``.
VAL_METRICS = "val_metrics"


class FineTuner(L.LightningModule):
    """Fine-tunes ``backbone`` (a timm classifier) on ``num_classes`` classes.

    The backbone's source (ImageNet) head is replaced by a freshly initialised linear layer
    (``backbone.reset_classifier(num_classes)``), so ``self.model.get_classifier()`` is the new head.

    Logs ``train/loss`` (epoch mean), ``val/loss`` and ``val/bal_acc`` (balanced accuracy = mean per-class
    recall), and in ``test`` ``test/bal_acc`` and ``test/acc``; after ``test``, ``test_predictions`` holds the
    (probabilities, labels) of every batch, in loader order.
    """

    def __init__(
        self, backbone: nn.Module, num_classes: int, *, lr: float, wd: float, max_epochs: int,
        momentum: float = 0.9, nesterov: bool = True, eta_min: float = 1e-6, memory_format: str = "contiguous",
    ):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"fine-tuning needs at least 2 classes, got {num_classes}")
        if max_epochs < 1:
            raise ValueError(f"finetune.max_epochs={max_epochs}: expected at least 1 epoch")
        if memory_format not in MEMORY_FORMATS:
            raise ValueError(f"finetune.memory_format={memory_format!r}; expected one of {list(MEMORY_FORMATS)}")
        self.save_hyperparameters(ignore=["backbone"])
        self.memory_format = MEMORY_FORMATS[memory_format]
        backbone.reset_classifier(num_classes)
        # the zoo hands models over in eval mode, and Lightning keeps each submodule's mode when fit starts:
        # without this, BatchNorm layers would keep their ImageNet statistics frozen during fine-tuning
        self.model = backbone.train().to(memory_format=self.memory_format)
        self.loss = nn.CrossEntropyLoss()
        self.val_bal_acc = BalancedAccuracy(num_classes)
        self.test_bal_acc = BalancedAccuracy(num_classes)
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            x = x.contiguous(memory_format=self.memory_format)
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.loss(self(x), y)
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y))
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.val_bal_acc.update(logits, y)
        self.log("val/loss", self.loss(logits, y), on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y))
        self.log("val/bal_acc", self.val_bal_acc, on_step=False, on_epoch=True, prog_bar=True)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # the validation metrics of the epoch the checkpoint holds: the evaluated checkpoint's best/val_* come
        # from here, not from a second pass over the validation split
        metrics = self.trainer.callback_metrics
        checkpoint[VAL_METRICS] = {k: float(metrics[k]) for k in ("val/loss", "val/bal_acc") if k in metrics}

    def on_test_epoch_start(self) -> None:
        self.test_predictions: list[tuple[torch.Tensor, torch.Tensor]] = []

    def test_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        # the very logits the test metrics see, so the per-sample predictions reproduce them exactly; float64
        # keeps the softmax from tying logits that differ
        self.test_predictions.append((torch.softmax(logits.detach().double(), dim=1).cpu(), y.detach().cpu()))
        self.test_bal_acc.update(logits, y)
        self.test_acc.update(logits, y)
        self.log("test/loss", self.loss(logits, y), on_step=False, on_epoch=True, batch_size=len(y))
        self.log("test/bal_acc", self.test_bal_acc, on_step=False, on_epoch=True)
        self.log("test/acc", self.test_acc, on_step=False, on_epoch=True)

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.SGD(
            self.parameters(), lr=hp.lr, momentum=hp.momentum, nesterov=hp.nesterov, weight_decay=hp.wd
        )
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=hp.max_epochs, eta_min=hp.eta_min)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
