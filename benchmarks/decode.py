"""Decoding versus the forward pass on real JPEGs: is feature extraction of BrainTumor dominated by decoding?

    PYTHONPATH=src .venv/bin/python benchmarks/decode.py                          # 300 images, 64 and 128 px
    PYTHONPATH=src .venv/bin/python benchmarks/decode.py --n 100 --sizes 64       # shorter
    MEDXFER_DATA_DIR=/data/medical PYTHONPATH=src .venv/bin/python benchmarks/decode.py

Data: the first ``--n`` images (sorted paths, every class) of the BrainTumor ``Testing/`` and ``Training/``
folders under ``$MEDXFER_DATA_DIR/brain_tumor_kaggle`` (default ``../shared/data`` beside the project): JPEGs of
about 512 px. For each crop size (resize = crop / 0.875, as the smoke and small presets) it times, in one run and
in this one process:

1. ``decode full``: ``SampleTable.load_image`` (every pixel), then the evaluation geometry (resize + centre crop);
2. ``decode reduced``: the same with ``preprocess.decode=reduced`` (a JPEG decoded at the smallest DCT scale whose
   sides stay >= resize), then the same geometry;
3. ``forward``: efficientnet_lite0's forward pass alone (features and source head) over tensors prepared
   beforehand (timed before and after the others, averaged, so a change of the machine's load shifts both sides);
4. ``extract``: ``extract_features`` end to end from the files with each decoder (loader workers as
   ``--num-workers``, no decoded-image cache: the first model of a study pays this, and every model without
   the cache).

Ratios: decode img/s over forward img/s (below 1: decoding costs more than the model), and extraction over
forward with each decoder. Then how far reduced decoding moves the features: per-image cosine similarity of
the two decoders' features, and the LogME and linear_probe scores (``medxfer.scores``) both ways.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from extract import forward, load_model  # noqa: E402  (the sibling benchmark's helpers)

from medxfer.data.loading import available_cores, resolve_num_workers  # noqa: E402
from medxfer.data.tables import SampleTable  # noqa: E402
from medxfer.data.transforms import Preprocess, eval_geometry, eval_transform, resolve_preprocess  # noqa: E402
from medxfer.models.extract import extract_features  # noqa: E402
from medxfer.models.zoo import model_data_config  # noqa: E402

CLASSES = ("no_tumor", "glioma_tumor", "meningioma_tumor", "pituitary_tumor")


def brain_tumor(root: Path, n: int) -> SampleTable:
    """``n`` BrainTumor JPEGs, taken in turn from each class (Testing/ first, then Training/), sorted by path."""
    per_class = []
    for k, name in enumerate(CLASSES):
        files = sorted((root / "Testing" / name).glob("*.jpg")) + sorted((root / "Training" / name).glob("*.jpg"))
        per_class.append([(f, k) for f in files])
    if not any(per_class):
        raise SystemExit(f"no BrainTumor JPEGs under {root}/{{Testing,Training}}/<class>/; set MEDXFER_DATA_DIR")
    rows = [row for group in zip(*per_class) for row in group][:n]
    return SampleTable(name="brain_tumor-bench", labels=np.array([k for _, k in rows]), class_names=CLASSES,
                       paths=tuple(f for f, _ in rows))


def decode_rate(table: SampleTable, p: Preprocess) -> tuple[float, float]:
    """img/s of decoding alone and of decoding + the evaluation geometry, with ``p``'s decoder."""
    geometry = eval_geometry(p)
    start = time.perf_counter()
    images = [table.load_image(i, draft=p.draft_size) for i in range(len(table))]
    decoded = time.perf_counter() - start
    start = time.perf_counter()
    for img in images:
        geometry(img)
    shaped = time.perf_counter() - start
    return len(table) / decoded, len(table) / (decoded + shaped)


def tensors(table: SampleTable, p: Preprocess) -> torch.Tensor:
    transform = eval_transform(p)
    return torch.stack([transform(table.load_image(i, draft=p.draft_size)) for i in range(len(table))])


def extract(model, table: SampleTable, p: Preprocess, batch_size: int, workers) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    feats = extract_features(model, table, p, batch_size=batch_size, num_workers=workers, accelerator="cpu",
                             progress=False)
    return time.perf_counter() - start, feats.features


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--n", type=int, default=300, help="images")
    parser.add_argument("--sizes", default="64,128", help="crop sizes")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", default="auto")
    args = parser.parse_args(argv)
    workers = args.num_workers if args.num_workers == "auto" else int(args.num_workers)
    project = Path(__file__).resolve().parents[1]
    data_dir = Path(os.environ.get("MEDXFER_DATA_DIR") or project.parent / "shared" / "data")
    cache_dir = os.environ.get("MEDXFER_CACHE_DIR") or str(project / ".cache" / "medxfer")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    table = brain_tumor(data_dir / "brain_tumor_kaggle", args.n)
    print(f"{len(table)} BrainTumor JPEGs ({table.class_counts()}); batch {args.batch_size}; torch threads "
          f"{torch.get_num_threads()}; cores available {available_cores()}; num_workers={workers} -> "
          f"{resolve_num_workers(workers, option='--num-workers', batches=-(-len(table) // args.batch_size))}; "
          f"load average at start {os.getloadavg()[0]:.2f}", flush=True)
    model, spec = load_model(args.model, cache_dir)
    from medxfer.scores.linear_probe import linear_probe  # imported outside the timings
    from medxfer.scores.logme import logme

    for size in [int(s) for s in args.sizes.split(",")]:
        full = resolve_preprocess(model_data_config(model, spec), {"input_size": size, "resize": int(size / 0.875)})
        reduced = resolve_preprocess(model_data_config(model, spec), {"input_size": size, "resize": full.resize,
                                                                      "decode": "reduced"})
        images = tensors(table, full)
        before_s, ref = forward(model, images, table.labels, args.batch_size)
        dec_full, geo_full = decode_rate(table, full)
        dec_red, geo_red = decode_rate(table, reduced)
        ext_full_s, feats_full = extract(model, table, full, args.batch_size, workers)
        ext_red_s, feats_red = extract(model, table, reduced, args.batch_size, workers)
        after_s, _ = forward(model, images, table.labels, args.batch_size)
        n = len(table)
        fwd = n / ((before_s + after_s) / 2)
        ext_full, ext_red = n / ext_full_s, n / ext_red_s
        print(f"\n{args.model} {size} px (resize {full.resize}), img/s:")
        print(f"  decode full     {dec_full:8.1f}   + resize/crop {geo_full:8.1f}   ({geo_full / fwd:.2f}x forward)")
        print(f"  decode reduced  {dec_red:8.1f}   + resize/crop {geo_red:8.1f}   ({geo_red / fwd:.2f}x forward)")
        print(f"  forward alone   {fwd:8.1f}   (before {n / before_s:.1f}, after {n / after_s:.1f})")
        print(f"  extract, full decode     {ext_full:8.1f}   ({ext_full / fwd:.3f}x forward)"
              f"{'  features identical to the forward pass' if np.array_equal(feats_full, ref) else '  FEATURES DIFFER'}")
        print(f"  extract, reduced decode  {ext_red:8.1f}   ({ext_red / fwd:.3f}x forward)")
        print(f"  ratios: reduced/full decode+geometry {geo_red / geo_full:.2f}; reduced/full extract "
              f"{ext_red / ext_full:.2f}; decode+geometry share of full extraction {ext_full / geo_full:.2f}", flush=True)
        cos = cosine(feats_full, feats_red)
        labels = table.labels
        print(f"  features reduced vs full: cosine similarity mean {cos.mean():.4f}, min {cos.min():.4f}, "
              f"5th percentile {np.quantile(cos, 0.05):.4f}")
        print(f"  scores (the project's, on these {n} images): LogME full {logme(feats_full, labels):.4f}, reduced "
              f"{logme(feats_red, labels):.4f}; linear_probe full {linear_probe(feats_full, labels):.4f}, reduced "
              f"{linear_probe(feats_red, labels):.4f}", flush=True)
    print(f"\nload average at end {os.getloadavg()[0]:.2f} (other processes on the machine slow every side)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
