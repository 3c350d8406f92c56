"""Time the scoring part of medxfer-rank for a set of models (each: the ranker's scores on the images, then on
``rank.bootstrap.n`` stratified bootstrap draws of them) with LogME's current paths against the D x D path alone
(the covariance eigendecomposition for every input, as before the Gram-matrix path of the distinct rows), in the
same run, interleaved model by model.

    PYTHONPATH=src .venv/bin/python benchmarks/resample.py               # 600 images, the default study's 12 widths
    PYTHONPATH=src .venv/bin/python benchmarks/resample.py --d 1280 --draws 5   # one model, a few seconds

Data are synthetic and seeded (``tests/scores_reference.py::synthetic_scores_data``: non-negative features with
class structure). Feature extraction is not timed (``benchmarks/rank.py`` times the whole command). Prints the
machine's load before and after, per model the seconds of both and the largest relative difference of their
values over the draws, and the total ratio D x D path / current.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from scores_reference import synthetic_scores_data  # noqa: E402

from medxfer.scores import compute_scores  # noqa: E402
from medxfer.scores.isolated import single_thread  # noqa: E402
from medxfer.scores.logme import _evidence, _feature_side  # noqa: E402
from medxfer.scores.registry import REGISTRY  # noqa: E402
from medxfer.scores.resample import resampled_scores  # noqa: E402

#: feature widths (timm num_features) of the default study's 12 models: densenet121, efficientnet_b0 and lite0-2,
#: mobilenetv1_100, mobilenetv2_100 (two), mobilenetv2_140, resnet50, vit_small (DINOv2), xception
DEFAULT_STUDY_WIDTHS = "1024,1280,1280,1280,1280,1024,1280,1280,1792,2048,384,2048"


@contextmanager
def dxd_logme() -> Iterator[None]:
    """LogME through the D x D covariance eigendecomposition only (the path before the Gram-matrix one)."""
    spec = REGISTRY["logme"]
    REGISTRY["logme"] = dataclasses.replace(spec, fn=lambda inputs: _evidence(inputs, _feature_side(inputs)))
    try:
        yield
    finally:
        REGISTRY["logme"] = spec


def rank_work(features, labels, probs, names, draws: int, seed: int) -> tuple[float, list[dict[str, float]]]:
    """Seconds of one model's scoring in rank (the value on one thread, the draws on torch's threads) and the
    values: the full-data one first, then one per draw."""
    start = time.perf_counter()
    with single_thread(True):
        values = compute_scores(features, labels, probs, names)
    per_draw = resampled_scores(features, labels, probs, names, n=draws, seed=seed)
    return time.perf_counter() - start, [values, *per_draw]


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=600, help="images (benchmarks/rank.py ranks 600)")
    parser.add_argument("--d", default=DEFAULT_STUDY_WIDTHS, help="feature width per model, comma-separated")
    parser.add_argument("--c", type=int, default=4, help="classes (the MRI set of benchmarks/rank.py: 4)")
    parser.add_argument("--names", default="logme", help="the ranker's scores, comma-separated")
    parser.add_argument("--draws", type=int, default=30, help="bootstrap draws (rank.bootstrap.n: 30)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    import torch

    names = args.names.split(",")
    widths = [int(d) for d in args.d.split(",")]
    needs_probs = any(REGISTRY[name].needs_probs for name in names)
    print(f"N={args.n} C={args.c} scores={names} draws={args.draws} widths={widths}  torch threads="
          f"{torch.get_num_threads()}\nbefore: {load()}", flush=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tiny = synthetic_scores_data(100, 200, args.c, 20, seed=args.seed + 1)  # untimed warm-up of both paths
        rank_work(*tiny, names, 1, args.seed)
        with dxd_logme():
            rank_work(*tiny, names, 1, args.seed)
        print(f"\n{'model':<7}{'D':>6}{'now s':>9}{'D x D s':>9}{'ratio':>8}{'max rel diff':>14}", flush=True)
        totals = [0.0, 0.0]
        for i, d in enumerate(widths):
            features, labels, probs = synthetic_scores_data(args.n, d, args.c, 1000 if needs_probs else 10,
                                                            seed=args.seed + i)
            probs = probs if needs_probs else None
            now, values = rank_work(features, labels, probs, names, args.draws, args.seed)
            with dxd_logme():
                before, old = rank_work(features, labels, probs, names, args.draws, args.seed)
            diff = max(abs(a[s] - b[s]) / max(abs(b[s]), 1e-12) for a, b in zip(values, old) for s in names)
            totals[0] += now
            totals[1] += before
            print(f"{i + 1:<7}{d:>6}{now:>9.2f}{before:>9.2f}{before / now:>7.1f}x{diff:>14.1e}", flush=True)
    print(f"{'total':<13}{totals[0]:>9.2f}{totals[1]:>9.2f}{totals[1] / totals[0]:>7.1f}x")
    print(f"after: {load()}\nratio D x D path / now for {len(widths)} model(s): {totals[1] / totals[0]:.1f}x (the "
          "differences: the D x D path's rounding of the draws' zero eigenvalues, see medxfer/scores/logme.py)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
