"""medxfer-rank on a 600-image folder with the default study's 12 models, from an empty cache, against the cost of
ranking one model the way rank did before (each model at its own timm input size, images decoded for it alone, no
rank intervals), measured in the same run on the same machine.

    python benchmarks/rank.py                              # 600 MRI images of ../shared/data (symlinked), else synthetic
    python benchmarks/rank.py --folder /data/mine --baseline-models efficientnet_lite0,resnet50_opennsfw

Each command runs as ``python -m medxfer.cli.rank`` in a fresh project folder whose cache holds only the zoo's
converted weights (linked from $MEDXFER_CACHE_DIR): no features, no decoded images. Prints the machine's load
before and after (the timings are only comparable on a quiet machine), each model's seconds as rank reports them,
the 12-model total, the baseline's per-model cost and 12-model estimate, their ratio, and whether the total is
within the budget (4 minutes).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

BUDGET_S = 240.0
ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "brain_tumor_kaggle" / "Training"


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores"


def sample_folder(dest: Path, n: int) -> Path:
    """``n`` images as ``<class>/<image>``: symlinks to an even sample of the shared MRI training images (never
    copied), else synthetic PNGs (256 px)."""
    folder = dest / "images"
    if SHARED.is_dir():
        classes = sorted(p for p in SHARED.iterdir() if p.is_dir())
        per = n // len(classes)
        for c in classes:
            files = sorted(c.glob("*.jpg"))
            step = max(1, len(files) // per)
            (folder / c.name).mkdir(parents=True)
            for f in files[::step][:per]:
                (folder / c.name / f.name).symlink_to(f)
        return folder
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(4):
        (folder / f"class{c}").mkdir(parents=True)
        for i in range(n // 4):
            pixels = (rng.random((256, 256, 3)) * (60 + 50 * c)).astype("uint8")
            Image.fromarray(pixels).save(folder / f"class{c}" / f"{i}.png")
    return folder


def run(args: list[str], where: Path) -> tuple[float, str]:
    """Run medxfer-rank in a fresh project ``where`` with an empty cache (zoo weights linked); (seconds, stdout)."""
    cache = where / "cache"
    cache.mkdir(parents=True)
    zoo = Path(os.environ.get("MEDXFER_CACHE_DIR") or ROOT / ".cache" / "medxfer") / "zoo"
    (cache / "zoo").symlink_to(zoo, target_is_directory=True)
    env = {**os.environ, "MEDXFER_ROOT": str(where), "HF_HUB_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    t0 = time.perf_counter()
    # the MRI set holds byte-identical copies (../shared/data/README.md): keep the first of each
    proc = subprocess.run([sys.executable, "-m", "medxfer.cli.rank", *args, f"paths.cache_dir={cache}",
                           "extract.progress=false", "dataset.duplicates=drop"], cwd=where, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"medxfer-rank {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout


def per_model(stdout: str) -> dict[str, float]:
    """Each model's seconds as rank prints them: ``[rank] i/n <model>: ... (features ..., <s> s)``."""
    return {m: float(s) for m, s in re.findall(r"^\[rank\] \d+/\d+ (\S+): .*, ([\d.]+) s\)$", stdout, flags=re.M)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, help="a folder <class>/<image> (default: 600 sampled images)")
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--baseline-models", default="efficientnet_lite0,resnet50_opennsfw",
                        help="models ranked the old way to measure its per-model cost")
    parser.add_argument("--score", default=None, help="the ranker (default: rank's default, score=auto)")
    opts = parser.parse_args()
    models = yaml.safe_load((ROOT / "conf" / "grid" / "default.yaml").read_text())["models"]
    with tempfile.TemporaryDirectory(prefix="medxfer-bench-rank-") as tmp:
        tmp = Path(tmp)
        folder = opts.folder or sample_folder(tmp, opts.images)
        n_images = sum(1 for p in folder.rglob("*") if p.is_file())
        print(f"folder {folder}: {n_images} images; {len(models)} models; before: {load()}", flush=True)
        score = [f"score={opts.score}"] if opts.score else []

        seconds, out = run([f"dataset.path={folder}", *score], tmp / "new")
        chosen = re.search(r"^ranked by (\S+):", out, flags=re.M)
        scored = re.search(r"split, (\d+) images", out)
        print(f"rank scored the training split: {scored.group(1) if scored else '?'} images", flush=True)
        new = per_model(out)
        print(f"\nnow (defaults: the study's preprocessing, decoded images shared, rank intervals): "
              f"{seconds:.1f} s for {len(models)} models, ranked by {chosen.group(1) if chosen else '?'}", flush=True)
        for m, s in new.items():
            print(f"  {m:<28} {s:6.1f} s")
        if chosen and not new:
            print("  (a data-blind ranker: no model ran; pass --score=<a score> to time the scoring path)")

        baseline = opts.baseline_models.split(",")
        b_seconds, b_out = run([f"dataset.path={folder}", f"models=[{','.join(baseline)}]", "preprocess=timm",
                                f"score={opts.score or 'logme'}", "rank.bootstrap.n=0", "evidence=shipped"],
                               tmp / "before")
        before = per_model(b_out)
        fixed = b_seconds - sum(before.values())
        mean = sum(before.values()) / len(before)
        estimate = fixed + len(models) * mean
        print(f"\nbefore (each model at its timm input size, decoded alone, no intervals): {b_seconds:.1f} s for "
              f"{len(before)} models, {fixed:.1f} s of it start-up", flush=True)
        for m, s in before.items():
            print(f"  {m:<28} {s:6.1f} s")
        print(f"  per model {mean:.1f} s: {len(models)} models would take {estimate:.1f} s")
        print(f"\nafter: {load()}")
        print(f"ratio before/now for {len(models)} models: {estimate / seconds:.2f}x; now {seconds:.1f} s "
              f"{'within' if seconds <= BUDGET_S else 'OVER'} the {BUDGET_S:.0f} s budget")
        shutil.rmtree(tmp / "new", ignore_errors=True)


if __name__ == "__main__":
    main()
