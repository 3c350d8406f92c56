"""Reproduce one tracked cell from its logged ``config.yaml`` and compare every metric with the original."""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from medxfer import tracking
from medxfer.errors import ConfigError
from medxfer.tracking import environment_tags, setup_tracking

# tags whose change makes a reproduction suspect: code, libraries, weights and data (the cell's identities of both)
PROVENANCE_TAGS = ("git.commit", "git.dirty", "weights_id", "data_digest")
# what runs tracked before the plans carried instead (loaded tensors, ids and labels): compared when both have them
LEGACY_PROVENANCE_TAGS = ("weights_digest", "split_digest")


@dataclass
class Comparison:
    original: str
    reproduction: str
    rows: list[tuple[str, float | None, float | None, float | None]]  # metric, original, new, |difference|
    warnings: list[str]
    tolerance: float

    @property
    def max_difference(self) -> float:
        diffs = [d for *_, d in self.rows if d is not None]
        return max(diffs) if diffs else 0.0

    @property
    def matches(self) -> bool:
        return all(d is not None and d <= self.tolerance for *_, d in self.rows)

    def table(self) -> str:
        width = max([len(r[0]) for r in self.rows] + [6])
        lines = [f"{'metric':<{width}}  {'original':>14}  {'reproduced':>14}  {'|difference|':>12}"]
        for name, a, b, d in self.rows:
            fa = "missing" if a is None else f"{a:.8g}"
            fb = "missing" if b is None else f"{b:.8g}"
            fd = "-" if d is None else f"{d:.3g}"
            lines.append(f"{name:<{width}}  {fa:>14}  {fb:>14}  {fd:>12}")
        return "\n".join(lines)


def load_logged_config(run_id: str) -> dict[str, Any]:
    """The resolved config a run logged as ``config.yaml``."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = tracking.download_artifact(run_id, "config.yaml", tmp)
        except Exception as err:  # noqa: BLE001 - MLflow and the artifact store raise several kinds
            raise ConfigError(f"run {run_id} has no readable config.yaml artifact ({err}); only medxfer runs can be reproduced") from None
        return yaml.safe_load(Path(path).read_text())


def compare_runs(original: str, new: str, tolerance: float) -> Comparison:
    """Every metric of run ``original`` against run ``new`` (wall-clock times left out), and the provenance tags
    that differ."""
    a, b = tracking.get_run(original), tracking.get_run(new)
    names = sorted(set(a.data.metrics) | set(b.data.metrics))
    rows = []
    for name in names:
        x, y = a.data.metrics.get(name), b.data.metrics.get(name)
        if name.startswith("time/"):
            continue  # wall-clock times are not results
        d = None if x is None or y is None else (0.0 if x == y else abs(x - y) if math.isfinite(x - y) else math.inf)
        rows.append((name, x, y, d))
    warnings = []
    legacy = tuple(k for k in LEGACY_PROVENANCE_TAGS if k in a.data.tags and k in b.data.tags)
    for tag in PROVENANCE_TAGS + legacy + tuple(k for k in a.data.tags if k.startswith("version.")):
        if a.data.tags.get(tag) != b.data.tags.get(tag):
            warnings.append(f"{tag} differs: original {a.data.tags.get(tag)!r}, now {b.data.tags.get(tag)!r}")
    return Comparison(original, new, rows, warnings, tolerance)


def reproduce(run_id: str, overrides: list[str] | None = None, *, tracking_uri: str | None = None,
              tolerance: float | None = None) -> Comparison:
    """Re-run the cell of ``run_id`` into a new run tagged ``reproduces=<run_id>`` and compare metrics.

    A score run is recomputed from the images (the feature cache is neither read nor written) and must match
    exactly (tolerance 0); fine-tune runs within ``tolerance`` (default 0 when the run was deterministic, else
    0.05 absolute on each metric).
    """
    from medxfer.config import project_root

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root()}/mlruns/mlflow.db"
    setup_tracking(uri)
    run = tracking.get_run(run_id)
    if run is None:
        raise ConfigError(f"no run {run_id!r} in the tracking store {uri}")
    stage = run.data.tags.get("stage")
    config = load_logged_config(run_id)
    cfg = OmegaConf.create(config)
    cfg.merge_with_dotlist(list(overrides or []))
    cfg.tracking.uri = uri
    cfg.force = True
    cfg.tags = {**(OmegaConf.to_container(cfg.tags) if "tags" in cfg else {}), "reproduces": run_id}
    current = environment_tags()
    if stage == "score":
        from medxfer.stages.score import run_score

        cfg.splits = [run.data.tags["split"]]
        results = run_score(cfg, use_cache=False)  # recompute: the forward pass runs, the feature cache is not read
        new_id = results[0].run_id
        tol = 0.0 if tolerance is None else tolerance
    elif stage == "finetune":
        from medxfer.stages.finetune import run_finetune

        new_id = run_finetune(cfg).run_id
        deterministic = bool(OmegaConf.select(cfg, "finetune.deterministic", default=False))
        tol = tolerance if tolerance is not None else (0.0 if deterministic else 0.05)
    else:
        raise ConfigError(f"run {run_id} has stage={stage!r}; medxfer-reproduce handles score and finetune runs")
    comparison = compare_runs(run_id, new_id, tol)
    for key, value in current.items():  # also warn about the environment of this process vs the original
        old = run.data.tags.get(key)
        if old is not None and old != value and not any(key in w for w in comparison.warnings):
            comparison.warnings.append(f"{key} differs: original {old!r}, now {value!r}")
    return comparison
