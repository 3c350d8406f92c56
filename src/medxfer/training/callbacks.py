"""Lightning callbacks of the fine-tune stage."""

from __future__ import annotations

import math

import lightning as L

from medxfer import tracking

#: Per-epoch metrics copied to MLflow, by the name the module logs them under.
EPOCH_METRICS = ("train/loss", "val/loss", "val/bal_acc")


class MlflowEpochMetrics(L.Callback):
    """Log ``train/loss``, ``val/loss``, ``val/bal_acc`` and ``train/lr`` (the learning rate the epoch used) to the
    active MLflow run, step = epoch.

    The stage opens the run (``medxfer.tracking.cell_run``) around ``Trainer.fit``, so every number of a trial
    lands in that one run; Lightning's own loggers stay off. A resumed fit continues the epoch numbering.
    """

    def __init__(self) -> None:
        self._lr: float | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # read here: by on_train_epoch_end the epoch's scheduler step has already happened
        self._lr = float(trainer.optimizers[0].param_groups[0]["lr"]) if trainer.optimizers else None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or tracking.active_run_id() is None:
            return
        values = {k: float(trainer.callback_metrics[k]) for k in EPOCH_METRICS if k in trainer.callback_metrics}
        if self._lr is not None:
            values["train/lr"] = self._lr
        values = {k: v for k, v in values.items() if math.isfinite(v)}
        tracking.log_metrics(values, step=trainer.current_epoch)
