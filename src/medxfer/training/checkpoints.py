"""The checkpoint folder of one fine-tuning trial: resume after a crash, digest, and what to keep afterwards.

A trial's folder is ``<finetune.checkpoint_dir>/<cell id>``. While a trial trains it holds Lightning's
``best.ckpt`` (lowest validation loss: the checkpoint that is evaluated) and ``last.ckpt`` (written every epoch,
for resuming after a crash). When the trial finishes, ``best.ckpt`` becomes ``best-<run id>.ckpt`` (the file
the run's ``checkpoint_path`` tag names) and ``last.ckpt`` is deleted. The cell id in the path means that a
changed configuration never resumes from another's checkpoint; the run id in the name means that a forced
rerun or a reproduction of a trial never overwrites the checkpoint an earlier run kept.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from medxfer import interrupts
from medxfer.digests import file_sha256

log = logging.getLogger(__name__)

BEST = "best"
LAST = "last"
CKPT_SUFFIX = ".ckpt"
KEEP_CHOICES = ("best", "all", "none")


class TrialCheckpoints:
    """The checkpoint folder of one trial: ``root/cell``."""

    def __init__(self, root: str | Path, cell: str):
        self.path = Path(root) / cell
        self.cell = cell

    @property
    def best(self) -> Path:
        return self.path / f"{BEST}{CKPT_SUFFIX}"

    @property
    def last(self) -> Path:
        return self.path / f"{LAST}{CKPT_SUFFIX}"

    def kept(self, run_id: str) -> Path:
        return self.path / f"{BEST}-{run_id}{CKPT_SUFFIX}"

    def resumable(self) -> Path | None:
        """``last.ckpt`` when an earlier attempt of this cell left one (it crashed or was killed)."""
        return self.last if self.last.is_file() else None

    def start_fresh(self) -> None:
        """Remove the working files of an earlier, unfinished attempt (``force=true``, or nothing to resume);
        checkpoints kept by finished runs stay."""
        for f in (self.best, self.last):
            if f.is_file():
                log.info("removing %s of an earlier attempt", f)
                f.unlink()
        self.path.mkdir(parents=True, exist_ok=True)

    def keep_as(self, best_path: str | Path, run_id: str) -> Path:
        """Move the evaluated checkpoint to its final name ``best-<run id>.ckpt``; returns the new path."""
        final = self.kept(run_id)
        os.replace(best_path, final)
        return final

    def discard(self) -> None:
        """Delete a trial's working checkpoints that nothing will train further (a point a halving search left
        behind), and its folders when empty."""
        self.finish("none", self.best)

    def finish(self, keep: str, kept: Path) -> None:
        """After the run ended: ``last.ckpt`` has done its job; ``keep=none`` also deletes ``kept``. The folder
        (and the trial-<i> folder above it) goes when nothing is left in it."""
        self.last.unlink(missing_ok=True)
        if keep == "none":
            kept.unlink(missing_ok=True)
        for folder in (self.path, self.path.parent):
            try:
                folder.rmdir()  # only when empty
            except OSError:
                break


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint writes that a reader never sees half done, on shared storage too.

    Lightning writes a checkpoint to a temporary file under ``/tmp`` and then moves it; across file systems (a
    cluster's shared checkpoint folder) the move is a copy, and another process, or a requeued job, can read a
    checkpoint while it grows. Here the bytes go to a temporary file in the destination folder, are flushed to
    disk, and take their final name with one atomic ``os.replace``.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{socket.gethostname()}-{os.getpid()}.", suffix=".tmp",
                                   dir=target.parent)
        try:
            with interrupts.deferred():  # an interrupt inside torch.save breaks its zip writer ("unexpected pos")
                with os.fdopen(fd, "wb") as handle:
                    torch.save(checkpoint, handle)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint read safely (``weights_only=True``): ``state_dict``, ``epoch``, ``global_step``..."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for a bad file
        raise RuntimeError(f"cannot read checkpoint {path}: {type(err).__name__}: {err}; delete it and rerun") from None


def prune_checkpoints(finished: list[dict[str, Any]], selected_run: str | None) -> list[str]:
    """Delete the checkpoint files of finished trials other than ``selected_run``; returns the files deleted.

    ``finished`` holds one dict per FINISHED run of a sweep group: ``run_id``, ``checkpoint_path`` and
    ``checkpoint_digest``. A file is deleted only when its SHA-256 is still that run's digest: a trial run again
    (``force=true``) reuses its folder, and its new checkpoint must survive the old run's pruning.
    """
    keep_paths = {str(r.get("checkpoint_path")) for r in finished if r["run_id"] == selected_run}
    deleted = []
    for run in finished:
        path = run.get("checkpoint_path")
        if run["run_id"] == selected_run or not path or str(path) in keep_paths or not str(path).endswith(CKPT_SUFFIX):
            continue
        p = Path(path)
        if p.is_file() and file_sha256(p) == run.get("checkpoint_digest"):
            p.unlink()
            deleted.append(str(p))
    return deleted
