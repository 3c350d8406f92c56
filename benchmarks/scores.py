"""Time ``medxfer.scores.compute_scores`` against the straightforward reference, in the same run.

    PYTHONPATH=src .venv/bin/python benchmarks/scores.py            # ISIC 2019 training split, ResNet-50 width
    PYTHONPATH=src .venv/bin/python benchmarks/scores.py --quick    # a few seconds
    PYTHONPATH=src .venv/bin/python benchmarks/scores.py --extra --n 3000 --d 1280   # the opt-in scores

Data are synthetic and seeded (``tests/scores_reference.py::synthetic_scores_data``): non-negative features with
class structure, ISIC 2019 class imbalance, and probabilities from a softmax of a random linear source head.
Prints per-score seconds of both implementations, the largest relative difference per score and the overall
speed ratio.  The reference is the literal NumPy / scikit-learn port of the paper's code used by the tests.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))

from scores_reference import (  # noqa: E402
    EXTRA_REFERENCE_SCORES,
    ref_gbc,
    reference_scores,
    synthetic_scores_data,
)

from medxfer.scores import compute_scores  # noqa: E402


def relative_difference(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=14805, help="samples (ISIC 2019 training split: 14805)")
    parser.add_argument("--d", type=int, default=2048, help="feature dimension (ResNet-50: 2048)")
    parser.add_argument("--c", type=int, default=8, help="target classes")
    parser.add_argument("--s", type=int, default=1000, help="source classes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="small sizes (N=2000, D=256, S=100)")
    parser.add_argument("--device", default=None, help="torch device of the fast path (default: CPU)")
    parser.add_argument("--no-reference", action="store_true", help="time the fast path only")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the fast path (default: torch's)")
    parser.add_argument(
        "--paper-gbc", action="store_true", help="also report GBC with the paper's PCA (scikit-learn 'auto' solver)"
    )
    parser.add_argument(
        "--details", action="store_true", help="also report N-LEEP's PCA dimension and EM iterations (refits, untimed)"
    )
    parser.add_argument(
        "--extra",
        action="store_true",
        help="time the opt-in scores (sfda, parc, transrate, etran, pactran, knn, linear_probe) instead of the seven",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.d, args.s = 2000, 256, 100

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"N={args.n} D={args.d} C={args.c} S={args.s} seed={args.seed}  torch threads={torch.get_num_threads()}  "
        f"CPUs={os.cpu_count()}  load average at start={os.getloadavg()[0]:.2f}"
    )
    start = time.perf_counter()
    features, labels, probs = synthetic_scores_data(args.n, args.d, args.c, args.s, seed=args.seed)
    print(f"data: {time.perf_counter() - start:.1f} s, features {features.dtype}, probs {probs.dtype}")

    # untimed warm-up on a tiny problem, so that neither side pays one-off library initialisation
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tiny = synthetic_scores_data(300, 50, args.c, 20, seed=args.seed + 1)
        compute_scores(*tiny, device=args.device)
        if not args.no_reference:
            reference_scores(*tiny)
        if args.extra:
            compute_scores(*tiny, names=list(EXTRA_REFERENCE_SCORES)[:-1], device=args.device)

    names = list(EXTRA_REFERENCE_SCORES)[:-1] if args.extra else None  # imagenet_top1 only echoes an option
    fast_times: dict[str, float] = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        fast = compute_scores(features, labels, probs, names, device=args.device, timings=fast_times)
        fast_total = time.perf_counter() - start
    for warning in caught:
        print(f"warning (fast): {warning.category.__name__}: {warning.message}")

    ref_times: dict[str, float] = {}
    reference: dict[str, float] = {}
    ref_total = float("nan")
    if not args.no_reference:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            start = time.perf_counter()
            if args.extra:
                for name in names:
                    began = time.perf_counter()
                    reference[name] = EXTRA_REFERENCE_SCORES[name](features, labels, probs)
                    ref_times[name] = time.perf_counter() - began
            else:
                reference = reference_scores(features, labels, probs, timings=ref_times)
            ref_total = time.perf_counter() - start

    print(f"\n{'score':<13}{'value':>18}{'fast s':>9}{'ref s':>9}{'speed-up':>10}{'rel diff':>11}")
    worst = 0.0
    for name, value in fast.items():
        row = f"{name:<13}{value:>18.12g}{fast_times[name]:>9.2f}"
        if name in reference:
            diff = relative_difference(value, reference[name])
            worst = max(worst, diff)
            row += f"{ref_times[name]:>9.2f}{ref_times[name] / fast_times[name]:>9.1f}x{diff:>11.1e}"
        print(row)
    print(f"{'total':<31}{fast_total:>9.2f}", end="")
    if reference:
        print(f"{ref_total:>9.2f}{ref_total / fast_total:>9.1f}x{worst:>11.1e}")
        verdict = "identical (<= 1e-6)" if worst <= 1e-6 else "DIFFERENT"
        print(f"\nspeed ratio reference / fast: {ref_total / fast_total:.1f}x; values {verdict}")
    else:
        print()

    print(f"load average at end={os.getloadavg()[0]:.2f} (other processes on the machine slow both sides)")
    if args.details:
        from medxfer.scores import ScoreInputs
        from medxfer.scores._gmm import fit_gaussian_mixture
        from medxfer.scores.nleep import pca_dimension_for_variance

        inputs = ScoreInputs(features, labels)
        k = pca_dimension_for_variance(inputs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = fit_gaussian_mixture(inputs.pca(k), 5 * args.c)
        print(f"N-LEEP: PCA keeps {k} components; EM ran {fit.n_iter} iterations (converged: {fit.converged})")
    if args.paper_gbc:
        start = time.perf_counter()
        paper = ref_gbc(features, labels, svd_solver="auto")
        print(
            f"GBC with the paper's PCA (svd_solver='auto'): {paper:.12g} ({time.perf_counter() - start:.1f} s), "
            f"relative difference to exact PCA {relative_difference(paper, fast['gbc']):.1e}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
