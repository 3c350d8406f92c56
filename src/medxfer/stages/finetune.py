"""The fine-tune stage: one Halton trial of one (model, dataset) pair, one MLflow run.

Order of work, so that a bad setup fails before anything expensive: trial, search space, OOD scores and settings
checked (:func:`medxfer.plans.finetune_settings`) → tracking store reachable → the plan
(:func:`medxfer.plans.finetune_plan`: weights resolved, data read and split, the cell from the config, data
contents and weights) → data checked →
a FINISHED run of it skips everything → model built → fit (resuming from ``last.ckpt`` when an earlier attempt of
this cell was interrupted) →
the checkpoint with the lowest validation loss is evaluated on val, test and, where the dataset has one, the
out-of-distribution set, whose features and new-head probabilities also give the ``ood_score/<name>`` metrics.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from medxfer.errors import MedxferError
from medxfer.interrupts import Interrupted
from medxfer.data.loading import resolve_num_workers
from medxfer.data.tables import DatasetSplits
from medxfer.data.transforms import Preprocess
from medxfer.models.extract import Features, extract_features, quiet_lightning
from medxfer.digests import file_sha256
from medxfer.progress import cell_position, show_progress
from medxfer.models.zoo import model_tags
from medxfer.plans import Sources, finetune_plan, finetune_settings, model_and_preprocess
from medxfer.scores.isolated import compute_isolated, single_thread
from medxfer import tracking
from medxfer.analysis.selection import SELECTION_METRIC, selected_run
from medxfer.cells import digest_store, stop_epoch, table_digest
from medxfer.training.callbacks import MlflowEpochMetrics
from medxfer.training.checkpoints import (
    BEST, KEEP_CHOICES, LAST, AtomicCheckpointIO, TrialCheckpoints, prune_checkpoints, read_checkpoint,
)
from medxfer.training.data import check_trainable, make_loader
from medxfer.training.metrics import BalancedAccuracy
from medxfer.training.module import MEMORY_FORMATS, VAL_METRICS, FineTuner
from medxfer.training.predictions import ARTIFACT_DIR, Predictions

log = logging.getLogger(__name__)


class FinetuneConfigError(MedxferError, ValueError):
    """A ``finetune.*`` setting that cannot work."""


@dataclass
class FinetuneResult:
    """What one trial produced. A trial skipped because its run had FINISHED carries that run's metrics; one
    skipped because another process holds it has none. ``checkpoints``: the trial's checkpoint folder."""

    trial: int
    lr: float
    wd: float
    run_id: str | None
    skipped: bool
    metrics: dict[str, float] | None = None
    checkpoint: str | None = None
    resumed_from_epoch: int | None = None
    deleted_checkpoints: list[str] = field(default_factory=list)
    cell: str | None = None
    checkpoints: str | None = None


def check_finetune_config(ft: dict[str, Any]) -> None:
    """Fail early on settings that cannot work, naming the key."""
    if ft["keep"] not in KEEP_CHOICES:
        raise FinetuneConfigError(f"finetune.keep={ft['keep']!r}; expected one of {list(KEEP_CHOICES)}")
    for key, least in (("max_epochs", 1), ("batch_size", 1)):
        value = ft[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise FinetuneConfigError(f"finetune.{key}={value!r}; expected an integer >= {least}")
    try:
        resolve_num_workers(ft["num_workers"], option="finetune.num_workers")
    except ValueError as err:
        raise FinetuneConfigError(str(err)) from None
    if ft["memory_format"] not in MEMORY_FORMATS:
        raise FinetuneConfigError(f"finetune.memory_format={ft['memory_format']!r}; expected one of "
                                  f"{list(MEMORY_FORMATS)}")
    if not ft.get("checkpoint_dir"):
        raise FinetuneConfigError("finetune.checkpoint_dir is not set; it is where a trial's checkpoints go")
    try:
        stop_epoch(ft)
    except ValueError as err:
        raise FinetuneConfigError(str(err)) from None


def run_finetune(
    cfg: DictConfig, overrides: list[str] | None = None, *, callbacks: Sequence[L.Callback] = (),
    sources: Sources | None = None, tags: dict[str, str] | None = None,
) -> FinetuneResult:
    """Fine-tune one Halton trial (``cfg.trial``) of one (model, dataset) pair and log it as one MLflow run.

    ``callbacks`` are extra Lightning callbacks for the Trainer (tests use one to interrupt a fit); ``sources``:
    datasets and weights already read by this process (a study's trials share them); ``tags``: more tags for the
    run, not part of the cell (a study's search protocol).
    """
    c = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    ft = c["finetune"]
    trial = c["trial"]
    settings = finetune_settings(c)
    check_finetune_config(ft)
    tracking.setup_tracking(c["tracking"]["uri"])
    experiment_id = tracking.ensure_experiment(c["tracking"]["experiment"], c["tracking"].get("artifact_root"))
    tracking.reap_dead_runs(experiment_id)
    plan = finetune_plan(c, sources or Sources(c["paths"]["cache_dir"]), settings)
    spec, data, cell, lr, wd = plan.spec, plan.data, plan.cell, plan.lr, plan.wd
    names, ood_options = plan.ood_names, plan.ood_options
    check_trainable(data)
    digests = digest_store(c["paths"]["cache_dir"])
    dataset_name = c["dataset"]["name"]
    seed = f", seed {ft['seed']}" if ft["seed"] else ""
    label = f"[finetune{cell_position()}] {cell.run_name} (lr={lr:.3g}, wd={wd:.3g}{seed})"
    # the rungs of a halving search share the trial's folder: each goes on from the checkpoint the rung below left
    checkpoints = TrialCheckpoints(ft["checkpoint_dir"], cell.point or cell.id)
    done = None if c["force"] else tracking.finished_runs_of(experiment_id, [cell.id]).get(cell.id)
    if done:
        print(f"{label}: done (run {done.info.run_id}), skipping", flush=True)
        return FinetuneResult(trial, lr, wd, done.info.run_id, skipped=True, cell=cell.id,
                              metrics=dict(done.data.metrics), checkpoints=str(checkpoints.path))

    model, preprocess = model_and_preprocess(spec, plan.weights, c["preprocess"], dataset_name)
    resume = None if c["force"] else checkpoints.resumable()
    resume_epoch = None
    if resume is not None:
        try:
            resume_epoch = int(read_checkpoint(resume)["epoch"]) + 1
        except (RuntimeError, KeyError, TypeError) as err:  # e.g. truncated when the machine went down
            log.warning("cannot resume from %s (%s); training trial %s from the start", resume, err, trial)
            resume = None
    if resume_epoch is not None and resume_epoch > (cell.stop_epoch or ft["max_epochs"]):
        raise FinetuneConfigError(
            f"{label}: {resume} has trained {resume_epoch} epochs, past this rung's finetune.stop_epoch="
            f"{cell.stop_epoch} (a later rung of the search went on from it); force=true trains the rung again")
    tags = cell.tags(c["study"], extra={"weights_source": plan.weights.kind, **model_tags(spec, dataset_name),
                                        **plan.data.run_tags(), **(tags or {})}, user=c.get("tags"))
    if resume is not None:
        tags["resumed_from_epoch"] = str(resume_epoch)
    t_start = time.perf_counter()
    try:
        claimed = tracking.cell_run(experiment_id, run_name=cell.run_name, tags=tags, config=c, overrides=overrides,
                                    claim=True)
        run = claimed.__enter__()
    except tracking.CellClaimed as err:  # another process has the trial: its checkpoints are left alone
        print(f"{label}: {err}", flush=True)
        return FinetuneResult(trial, lr, wd, None, skipped=True, cell=cell.id, checkpoints=str(checkpoints.path))
    with contextlib.ExitStack() as stack:
        stack.push(claimed)
        if resume is not None:
            print(f"{label}: resuming from {resume} (epoch {resume_epoch})", flush=True)
        else:  # only once the cell is ours
            checkpoints.start_fresh()
            print(f"{label}: starting", flush=True)
        _log_inputs(data, preprocess, lr=lr, wd=wd, trial=trial)
        for context, table in (("training", data.train), ("validation", data.val), ("test", data.test), ("ood", data.ood)):
            if table is not None:
                root = (c["dataset"].get("ood") or {}).get("root") if context == "ood" else c["dataset"].get("root")
                tracking.log_input(table.name, table_digest(table, digests), str(root or table.name), len(table),
                                   table.class_counts(), context)
        tracking.log_params({"n_params": _backbone_parameters(model)})  # before the head is replaced
        loaders = {
            split: make_loader(table, preprocess, train=split == "train", batch_size=ft["batch_size"],
                               num_workers=ft["num_workers"], accelerator=ft["accelerator"])
            for split, table in (("train", data.train), ("val", data.val), ("test", data.test))
        }
        with _training_determinism(ft["deterministic"]):
            L.seed_everything(ft["seed"], workers=True, verbose=False)
            module = FineTuner(model, len(data.class_names), lr=lr, wd=wd, max_epochs=ft["max_epochs"],
                               momentum=ft["momentum"], nesterov=ft["nesterov"], eta_min=ft["eta_min"],
                               memory_format=ft["memory_format"])
            t0 = time.perf_counter()
            trainer, best_path = _fit(module, loaders, ft, checkpoints, resume, callbacks, cell.stop_epoch)
            fit_s = time.perf_counter() - t0
            if cell.stop_epoch is not None:
                metrics = _rung_metrics(best_path)
            else:
                metrics = _evaluate(trainer, module, best_path, loaders, data, preprocess, ft, names, ood_options)
        metrics.update({"time/fit_s": fit_s, "time/total_s": time.perf_counter() - t_start})
        _log_final(metrics)
        run_id = run.info.run_id
        if cell.stop_epoch is not None:  # a rung: its checkpoints stay for the next rung
            print(f"{label}: rung to epoch {cell.stop_epoch}: val/bal_acc={metrics[SELECTION_METRIC]:.3f} "
                  f"in {metrics['time/total_s']:.1f}s", flush=True)
            return FinetuneResult(trial, lr, wd, run_id, skipped=False, metrics=metrics,
                                  resumed_from_epoch=resume_epoch, cell=cell.id, checkpoints=str(checkpoints.path))
        kept = checkpoints.keep_as(best_path, run_id)
        tracking.set_tags({"checkpoint_path": str(kept), "checkpoint_digest": file_sha256(kept),
                           "checkpoint_keep": ft["keep"]})
    checkpoints.finish(ft["keep"], kept)
    deleted = _apply_keep(experiment_id, cell.sweep, ft["keep"])
    summary = ", ".join(f"{k}={metrics[k]:.3f}" for k in ("test/bal_acc", "ood/bal_acc", "best_epoch") if k in metrics)
    print(f"{label}: {summary} in {metrics['time/total_s']:.1f}s", flush=True)
    return FinetuneResult(trial, lr, wd, run_id, skipped=False, metrics=metrics,
                          checkpoint=str(kept) if kept.is_file() else None,
                          resumed_from_epoch=resume_epoch, deleted_checkpoints=deleted, cell=cell.id,
                          checkpoints=str(checkpoints.path))


def _log_inputs(data: DatasetSplits, preprocess: Preprocess, *, lr: float, wd: float, trial: int) -> None:
    """The trial's hyper-parameters, split sizes, resolved preprocessing and label mapping."""
    splits = [s for s in (data.train, data.val, data.test, data.ood) if s is not None]
    tracking.log_dict({"class_names": list(data.class_names), "label_mapping": data.label_mapping,
                     "class_counts": {s.name: s.class_counts() for s in splits}}, "labels.json")
    tracking.log_params({
        "lr": lr, "wd": wd, "trial": trial, "n_classes": len(data.class_names), "n_train": len(data.train),
        "n_val": len(data.val), "n_test": len(data.test), "n_ood": len(data.ood) if data.ood is not None else 0,
        "preprocess_resolved": str(preprocess.as_dict()),
    })


def _fit(
    module: FineTuner, loaders: dict[str, Any], ft: dict[str, Any], checkpoints: TrialCheckpoints,
    resume: Path | None, callbacks: Sequence[L.Callback], stop_epoch: int | None = None,
) -> tuple[L.Trainer, str]:
    """Train (from ``resume`` when given) up to ``stop_epoch`` (None: ``max_epochs``); returns the trainer and the
    path of the lowest-val/loss checkpoint."""
    best_cb = ModelCheckpoint(
        dirpath=checkpoints.path, filename=BEST, monitor="val/loss", mode="min", save_top_k=1,
        enable_version_counter=False,
    )
    # A separate every-epoch checkpoint for resuming: Lightning 2.6's save_last=True writes last.ckpt only in
    # epochs where the monitored checkpoint improved, so a resume could go back several epochs. Listed second,
    # so that it holds the best-checkpoint callback's state of the same epoch.
    resume_cb = ModelCheckpoint(
        dirpath=checkpoints.path, filename=LAST, monitor=None, save_top_k=1, enable_version_counter=False,
    )
    trainer = _trainer(ft, [best_cb, resume_cb, MlflowEpochMetrics(), *callbacks], stop_epoch)
    with _quiet_lightning_warnings(), _interrupt_as_keyboard_interrupt(trainer):
        trainer.fit(module, loaders["train"], loaders["val"], ckpt_path=resume, weights_only=True)
    target = stop_epoch or ft["max_epochs"]
    if trainer.current_epoch < target:
        # On SLURM, Lightning answers a SIGTERM (a requeue, a preemption) by stopping at the end of the epoch and
        # returning as if done: a trial short of its epochs is an interrupted one, to resume, never a result
        raise Interrupted(signal.SIGTERM) if getattr(trainer, "received_sigterm", False) else KeyboardInterrupt(
            f"fine-tuning stopped after {trainer.current_epoch} of {target} epochs")
    best_path = best_cb.best_model_path or str(checkpoints.best)
    if not Path(best_path).is_file():
        raise RuntimeError(f"fine-tuning ended without a best checkpoint ({best_path} is missing)")
    return trainer, best_path


def _evaluate(
    trainer: L.Trainer, module: FineTuner, best_path: str, loaders: dict[str, Any], data: DatasetSplits,
    preprocess: Preprocess, ft: dict[str, Any], names: list[str], options: dict[str, dict[str, Any]],
) -> dict[str, float]:
    """Metrics of the checkpoint at ``best_path`` on val (as its epoch measured them), test and (where there is
    one) the OOD set."""
    t0 = time.perf_counter()
    best = read_checkpoint(best_path)
    module.load_state_dict(best["state_dict"])
    metrics = {"best_epoch": float(best["epoch"])}
    val = best.get(VAL_METRICS) or {}
    if not {"val/loss", "val/bal_acc"} <= set(val):  # a checkpoint written before they were stored in it
        with _quiet_lightning_warnings():
            val = trainer.validate(module, loaders["val"], verbose=False)[0]
    with _quiet_lightning_warnings():
        test = trainer.test(module, loaders["test"], verbose=False)[0]
    metrics.update({"best/val_loss": val["val/loss"], "best/val_bal_acc": val["val/bal_acc"],
                    "test/bal_acc": test["test/bal_acc"], "test/acc": test["test/acc"], "test/loss": test["test/loss"]})
    predictions = _test_predictions(module, data)
    _log_predictions("test", predictions)
    if predictions.leaked is not None and predictions.leaked.any():  # the published split leaks: say what it costs
        metrics.update({"test/bal_acc_clean": predictions.clean().balanced_accuracy(),
                        "test/n_leaked": float(predictions.leaked.sum())})
    metrics["time/eval_s"] = time.perf_counter() - t0
    if data.ood is not None:
        t0 = time.perf_counter()
        with _quiet_lightning_warnings():
            feats = extract_features(module.model, data.ood, preprocess, batch_size=ft["batch_size"],
                                     num_workers=ft["num_workers"], accelerator=ft["accelerator"],
                                     progress=ft["progress"])
        metrics.update(_ood_accuracy(feats, len(data.class_names)))
        _log_predictions("ood", Predictions(np.asarray(data.ood.ids, dtype=str), feats.labels, feats.probs))
        metrics["time/ood_eval_s"] = time.perf_counter() - t0
        with single_thread(bool(ft["deterministic"])):  # as score runs: MKL's threaded reductions vary
            metrics.update(_ood_scores(feats, names, options))
    return metrics


def _rung_metrics(best_path: str) -> dict[str, float]:
    """What a rung reports for the search to select by: the validation metrics of its lowest-val/loss checkpoint
    so far (over the rungs below too, as a full trial's selection would see them at this epoch)."""
    best = read_checkpoint(best_path)
    val = best.get(VAL_METRICS) or {}
    if not {"val/loss", "val/bal_acc"} <= set(val):
        raise RuntimeError(f"{best_path} holds no validation metrics (written by an older medxfer); train the rung "
                           "again with force=true")
    return {"best_epoch": float(best["epoch"]), "best/val_loss": float(val["val/loss"]),
            SELECTION_METRIC: float(val["val/bal_acc"])}


def _trainer(ft: dict[str, Any], callbacks: list[L.Callback], stop_epoch: int | None = None) -> L.Trainer:
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    quiet_lightning()
    # Under SLURM, Lightning's own auto-requeue turns a SIGTERM (a requeue, a preemption) into a quiet stop at the
    # epoch's end, which would read as a finished trial: submitit requeues, medxfer's handlers interrupt
    slurm = [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []
    return L.Trainer(
        max_epochs=stop_epoch or ft["max_epochs"],  # the module's cosine schedule spans ft["max_epochs"] regardless accelerator=ft["accelerator"], devices=1, precision=ft["precision"],
        deterministic=ft["deterministic"], logger=False, callbacks=callbacks,
        enable_progress_bar=show_progress(ft["progress"], "finetune.progress"), enable_model_summary=False, num_sanity_val_steps=0, log_every_n_steps=1, plugins=[AtomicCheckpointIO(), *slurm],
    )


@contextlib.contextmanager
def _training_determinism(enabled: bool) -> Iterator[None]:
    """Lightning's ``deterministic=True`` switches torch to deterministic algorithms for the whole process;
    switch back afterwards so that one trial's setting does not leak into the next job of a sweep."""
    before = torch.are_deterministic_algorithms_enabled()
    try:
        yield
    finally:
        if enabled != before:
            torch.use_deterministic_algorithms(before)


@contextlib.contextmanager
def _interrupt_as_keyboard_interrupt(trainer: L.Trainer) -> Iterator[None]:
    """Lightning turns Ctrl-C during ``fit`` into ``sys.exit(1)`` and ignores SIGINT from then on; give the
    caller its KeyboardInterrupt back (so the run is marked KILLED, not FAILED) and restore the SIGINT handler."""
    handler = signal.getsignal(signal.SIGINT)
    try:
        yield
    except SystemExit:
        if trainer.interrupted:
            raise KeyboardInterrupt("fine-tuning interrupted") from None
        raise
    finally:
        if handler is not None and signal.getsignal(signal.SIGINT) != handler:
            with contextlib.suppress(ValueError):  # only the main thread may set signal handlers
                signal.signal(signal.SIGINT, handler)


@contextlib.contextmanager
def _quiet_lightning_warnings() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=r".*number of training batches.*smaller than the logging interval.*")
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")  # resuming
        warnings.filterwarnings("ignore", message=r".*LeafSpec.*")  # Lightning vs torch 2.14, harmless
        yield


def _backbone_parameters(model: torch.nn.Module) -> int:
    """Parameters of the model without its source head (the part fine-tuning transfers): the n_params baseline."""
    head = model.get_classifier()
    in_head = sum(p.numel() for p in head.parameters()) if isinstance(head, torch.nn.Module) else 0
    return sum(p.numel() for p in model.parameters()) - in_head


def _test_predictions(module: FineTuner, data: DatasetSplits) -> Predictions:
    """The probabilities the test pass computed, one row per test sample in the split's order."""
    probs = torch.cat([p for p, _ in module.test_predictions]).numpy()
    labels = torch.cat([y for _, y in module.test_predictions]).numpy().astype(np.int64)
    if not np.array_equal(labels, data.test.labels):  # the test loader does not shuffle; this guards the ids
        raise RuntimeError(f"test predictions are not in the order of the test split {data.test.name}")
    ids = np.asarray(data.test.ids, dtype=str)
    leaks = data.leaks
    leaked = None if leaks is None or leaks.policy != "keep" else np.isin(ids, list(leaks.ids.get("test", [])))
    return Predictions(ids, labels, probs, leaked)


def _log_predictions(split: str, predictions: Predictions) -> None:
    """Log ``predictions/<split>.npz``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = predictions.save(Path(tmp) / f"{split}.npz")
        tracking.log_artifact(path, ARTIFACT_DIR)


def _ood_accuracy(feats: Features, n_classes: int) -> dict[str, float]:
    """Balanced accuracy and accuracy of the fine-tuned head on the OOD set, from its probabilities."""
    probs, labels = torch.from_numpy(feats.probs), torch.from_numpy(feats.labels)
    bal = BalancedAccuracy(n_classes)
    bal.update(probs, labels)
    acc = (probs.argmax(dim=1) == labels).double().mean()
    return {"ood/bal_acc": float(bal.compute()), "ood/acc": float(acc)}


def _ood_scores(feats: Features, names: list[str], options: dict[str, dict[str, Any]] | None = None) -> dict[str, float]:
    """``ood_score/<name>`` of the fine-tuned model on the OOD set (features before its head, its head's
    probabilities). A score that fails is left out and named in the ``ood_score_errors`` tag and in
    ``warnings.txt``; the fine-tuning result stands, so the run still finishes."""
    if not names:
        return {}
    out = compute_isolated(feats.features, feats.labels, feats.probs, names, options=options)
    notes = out.notes + [f"ood_score/{k} failed: {v}" for k, v in out.failures.items()]
    if notes:
        tracking.log_text("\n".join(notes) + "\n", "warnings.txt")
        for note in notes:
            log.warning("%s", note)
    if out.failures:
        tracking.set_tags({"ood_score_errors": ", ".join(sorted(out.failures))})
    metrics = {f"ood_score/{k}": v for k, v in out.values.items()}
    metrics.update({f"time/ood_score/{k}_s": float(v) for k, v in out.timings.items()})
    return metrics


def _log_final(metrics: dict[str, float]) -> None:
    finite = {k: float(v) for k, v in metrics.items() if math.isfinite(float(v))}
    bad = sorted(set(metrics) - set(finite))
    if bad:  # a diverged trial (large lr): NaN losses are a result, not an error
        tracking.set_tags({"nonfinite_metrics": ", ".join(bad)})
    tracking.log_metrics(finite)


def _apply_keep(experiment_id: str, sweep: str, keep: str) -> list[str]:
    """``keep=best``: delete the checkpoints of the sweep's finished trials except the selected one
    (:func:`medxfer.analysis.selection.select_trials`, the analysis' rule)."""
    if keep != "best":
        return []
    import pandas as pd

    runs = tracking.search(experiment_id, f"tags.sweep = '{sweep}' and attributes.status = 'FINISHED'")
    runs = [r for r in runs if "stop_epoch" not in r.data.tags]  # a halving search's rungs keep no checkpoint
    if not runs:
        return []
    frame = pd.DataFrame([{
        "run_id": r.info.run_id, "tags.model": r.data.tags.get("model"), "tags.dataset": r.data.tags.get("dataset"),
        "tags.trial": r.data.tags.get("trial"), "start_time": pd.Timestamp(r.info.start_time, unit="ms"),
        f"metrics.{SELECTION_METRIC}": r.data.metrics.get(SELECTION_METRIC),
        "metrics.best/val_loss": r.data.metrics.get("best/val_loss"),
    } for r in runs])
    finished = [{"run_id": r.info.run_id, "checkpoint_path": r.data.tags.get("checkpoint_path"),
                 "checkpoint_digest": r.data.tags.get("checkpoint_digest")} for r in runs]
    return prune_checkpoints(finished, selected_run(frame))
