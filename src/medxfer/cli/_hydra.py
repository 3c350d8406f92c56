"""Shared bits of the Hydra entry points."""

from __future__ import annotations

from hydra.core.hydra_config import HydraConfig


def task_overrides() -> list[str]:
    """The command-line overrides of the current Hydra job (empty outside Hydra)."""
    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:
        return []
