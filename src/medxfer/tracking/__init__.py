"""MLflow tracking: store setup, run schema, finished-cell lookups, Hydra callbacks."""

from medxfer.tracking.store import (
    TrackingError,
    cell_id,
    cell_run,
    ensure_experiment,
    environment_tags,
    find_finished_run,
    reap_dead_runs,
    setup_tracking,
)

__all__ = [
    "TrackingError", "cell_id", "cell_run", "ensure_experiment", "environment_tags", "find_finished_run", "reap_dead_runs",
    "setup_tracking",
]
