"""The tracker: the only writer to MLflow. Store setup, the run schema (a cell's run, its tags, params and
artifacts, environment tags), retries on a locked store, and the queries the stages and the analysis make."""

from medxfer.tracking.store import (
    CellClaimed,
    TrackingError,
    active_run_id,
    cell_run,
    current_uri,
    download_artifact,
    ensure_experiment,
    environment_tags,
    experiment_id_of,
    finished_frame,
    has_finished_run,
    finished_runs_of,
    get_run,
    list_artifacts,
    log_artifact,
    log_artifacts,
    log_checkpoint_model,
    logged_model_name,
    log_dict,
    log_input,
    log_metrics,
    log_params,
    log_text,
    reap_dead_runs,
    register_logged_model,
    search,
    search_all,
    set_run_tag,
    set_tags,
    setup_tracking,
)

__all__ = [
    "CellClaimed", "TrackingError", "active_run_id", "cell_run", "current_uri", "download_artifact", "finished_frame", "has_finished_run", "ensure_experiment", "environment_tags", "experiment_id_of",
    "get_run", "list_artifacts", "finished_runs_of", "log_artifact", "log_artifacts", "log_checkpoint_model", "log_dict", "logged_model_name", "log_input", "log_metrics",
    "log_params", "log_text", "reap_dead_runs", "register_logged_model", "search", "search_all", "set_run_tag", "set_tags", "setup_tracking",
]
