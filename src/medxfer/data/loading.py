"""How data loaders are fed: the number of worker processes (``num_workers: auto``) and pinned memory.

Copies to the GPU are already non-blocking: Lightning moves every batch with ``non_blocking=True`` on a CUDA
device (``lightning.fabric.utilities.apply_func``), which overlaps with compute only from pinned memory, so
the loaders pin their batches when, and only when, the run uses a GPU.
"""

from __future__ import annotations

import math
import os

import torch

AUTO = "auto"


def available_cores() -> int:
    """CPU cores this process may run on: its affinity mask (what SLURM, taskset or a container grant), not
    the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity masks on this platform (macOS)
        return os.cpu_count() or 1


def is_auto(value: int | str) -> bool:
    """Whether a ``num_workers`` setting is ``"auto"`` (any case)."""
    return isinstance(value, str) and value.strip().lower() == AUTO


def resolve_num_workers(value: int | str, *, option: str, batches: int | None = None) -> int:
    """Loader worker processes for ``value``: an integer >= 0 as given, or ``"auto"``: one per available core
    but one (the main process runs the model), so 0 on a one-core machine, and never more than ``batches``
    (a worker with no batch to prepare only costs its start-up).

    ``option`` names the config key in the error for a bad value (e.g. ``extract.num_workers``).
    """
    if is_auto(value):
        if not _can_fork_workers():
            return 0
        workers = max(available_cores() - 1, 0)
        return workers if batches is None else min(workers, max(batches, 0))
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{option}={value!r}; expected an integer >= 0 or 'auto' (one worker per core but one)")
    return value


def _can_fork_workers() -> bool:
    """Whether loader workers can start here the cheap way: forked, from a process allowed children. Inside a
    joblib (loky) or spawned worker the start method pickles the dataset, and a daemonic process has no children,
    so ``auto`` means no workers there."""
    import multiprocessing

    if multiprocessing.current_process().daemon:
        return False
    return multiprocessing.get_start_method(allow_none=True) in (None, "fork")


def batches_of(n: int, batch_size: int) -> int:
    """Batches a loader makes of ``n`` samples (the last one may be short)."""
    return math.ceil(n / batch_size) if batch_size > 0 else 0


def uses_gpu(accelerator: str) -> bool:
    """Whether a Lightning ``accelerator`` setting (cpu, gpu, cuda, auto) ends up on a CUDA device."""
    name = str(accelerator).lower()
    if name in ("gpu", "cuda"):
        return True
    return name == "auto" and torch.cuda.is_available()
