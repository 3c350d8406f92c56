"""Decoding versus the forward pass on real JPEGs: is feature extraction of BrainTumor dominated by decoding?

    PYTHONPATH=src .venv/bin/python benchmarks/decode.py                          # 300 images, 64 and 128 px
    PYTHONPATH=src .venv/bin/python benchmarks/decode.py --n 100 --sizes 64       # shorter
    PYTHONPATH=src .venv/bin/python benchmarks/decode.py --threads 1              # a loaded machine: see --help
    MEDXFER_DATA_DIR=/data/medical PYTHONPATH=src .venv/bin/python benchmarks/decode.py

Data: the first ``--n`` images (sorted paths, every class) of the BrainTumor ``Testing/`` and ``Training/``
folders under ``$MEDXFER_DATA_DIR/brain_tumor_kaggle`` (default ``../shared/data`` beside the project): JPEGs of
about 512 px. For each crop size (resize = crop / 0.875, as the smoke and small presets) it times, in one run:

1. ``decode full`` / ``decode reduced``: ``SampleTable.load_image`` with every pixel, or with
   ``preprocess.decode=reduced`` (a JPEG decoded at the smallest DCT scale whose sides stay >= resize); then the
   evaluation geometry (resize + centre crop) of each, timed apart; their sum is an image's preparation;
2. ``forward``: efficientnet_lite0's forward pass alone (features and source head) over tensors prepared
   beforehand: what the model costs;
3. ``extract_features`` end to end from the files with each decoder (loader workers as ``--num-workers``, no
   decoded-image cache: what the first model of a study pays, and every model without the cache), and the
   decoded-image cache's build with each decoder (once per split and geometry, on every core).

Every path runs once per round, ``--rounds`` rounds interleaved, so that a change of the machine's load hits
every path alike; each path's img/s is its best round (wall clock), and its CPU milliseconds per image (this
process and its loader workers; the median round) vary less on a shared machine. Ratios: preparation over the
forward pass (below 1: decoding costs more than the model), extraction over the forward pass, reduced over
full. Then how far reduced decoding moves the features: per-image cosine similarity of the two decoders'
features, and the LogME and linear_probe scores (``medxfer.scores``) both ways.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from extract import cpu_seconds, forward, load_model  # noqa: E402  (the sibling benchmark's helpers)

from medxfer.data.decoded import DecodedImageCache  # noqa: E402
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


def timed(fn, *args) -> tuple[float, float, object]:
    """Wall-clock and CPU seconds (this process and its joined loader workers) of ``fn(*args)``, and its result."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    out = fn(*args)
    return time.perf_counter() - wall, cpu_seconds() - cpu, out


def decode_all(table: SampleTable, p: Preprocess) -> list:
    return [table.load_image(i, draft=p.draft_size) for i in range(len(table))]


def shape_all(images: list, p: Preprocess) -> None:
    geometry = eval_geometry(p)
    for img in images:
        geometry(img)


def cache_build(table: SampleTable, p: Preprocess, workers: int) -> None:
    """Build the decoded-image cache of ``table`` in a throw-away folder (what a study pays once per split and
    geometry; ``extract_features`` with ``num_workers: auto`` decodes it on every core)."""
    with tempfile.TemporaryDirectory(prefix="bench-decode-") as tmp:
        DecodedImageCache(Path(tmp)).images(table, p, num_workers=workers)


def tensors(table: SampleTable, p: Preprocess) -> torch.Tensor:
    transform = eval_transform(p)
    return torch.stack([transform(table.load_image(i, draft=p.draft_size)) for i in range(len(table))])


def extract(model, table: SampleTable, p: Preprocess, batch_size: int, workers) -> np.ndarray:
    return extract_features(model, table, p, batch_size=batch_size, num_workers=workers, accelerator="cpu",
                            progress=False).features


def forward_features(model, images: torch.Tensor, labels: np.ndarray, batch_size: int) -> np.ndarray:
    return forward(model, images, labels, batch_size)[1]


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
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions of every path")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's own); on a machine whose cores other work keeps busy, "
                             "1 thread runs the forward pass several times faster than 2")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
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
        forward_features(model, images[:args.batch_size], table.labels[:args.batch_size], args.batch_size)  # warm-up
        # every path once per round, rounds interleaved: a change of the machine's load hits every path alike;
        # the best round of each path is its speed with the least interference
        paths = {
            "decode full": lambda: decode_all(table, full),
            "decode reduced": lambda: decode_all(table, reduced),
            "resize/crop of full": lambda: shape_all(decoded["full"], full),
            "resize/crop of reduced": lambda: shape_all(decoded["reduced"], reduced),
            "cache build full": lambda: cache_build(table, full, available_cores()),
            "cache build reduced": lambda: cache_build(table, reduced, available_cores()),
            "forward": lambda: forward_features(model, images, table.labels, args.batch_size),
            "extract full": lambda: extract(model, table, full, args.batch_size, workers),
            "extract reduced": lambda: extract(model, table, reduced, args.batch_size, workers),
        }
        decoded = {"full": decode_all(table, full), "reduced": decode_all(table, reduced)}
        wall = {k: [] for k in paths}
        cpu = {k: [] for k in paths}
        out = {}
        loads = []
        for _ in range(args.rounds):
            loads.append(os.getloadavg()[0])
            for name, fn in paths.items():
                w, c, out[name] = timed(fn)
                wall[name].append(w)
                cpu[name].append(c)
        n = len(table)
        rate = {k: n / min(v) for k, v in wall.items()}
        ms = {k: 1000 * float(np.median(v)) / n for k, v in cpu.items()}
        # decoding and resizing are separate steps of one image's preparation: their times add up
        prep = {d: n / (n / rate[f"decode {d}"] + n / rate[f"resize/crop of {d}"]) for d in ("full", "reduced")}
        prep_ms = {d: ms[f"decode {d}"] + ms[f"resize/crop of {d}"] for d in ("full", "reduced")}
        fwd = rate["forward"]
        print(f"\n{args.model} {size} px (resize {full.resize}); {args.rounds} interleaved rounds, best round's img/s "
              f"and median CPU ms per image; load average at each round's start "
              f"{', '.join(f'{v:.2f}' for v in loads)}:")
        for d in ("full", "reduced"):
            print(f"  decode {d:<8} {rate[f'decode {d}']:7.1f} img/s {ms[f'decode {d}']:6.2f} ms; + resize/crop "
                  f"{prep[d]:7.1f} img/s {prep_ms[d]:6.2f} ms  ({prep[d] / fwd:.2f}x the forward pass's img/s)")
        print(f"  forward alone   {fwd:7.1f} img/s {ms['forward']:6.2f} ms (CPU of {torch.get_num_threads()} threads)")
        for d in ("full", "reduced"):
            print(f"  extract_features, {d} decode {rate[f'extract {d}']:7.1f} img/s {ms[f'extract {d}']:6.2f} ms  "
                  f"({rate[f'extract {d}'] / fwd:.3f}x forward)")
        print(f"  decoded-image cache build on {available_cores()} cores: full {rate['cache build full']:.1f} img/s, "
              f"reduced {rate['cache build reduced']:.1f} img/s")
        print(f"  ratios: reduced/full decode+resize {prep['reduced'] / prep['full']:.2f} (CPU "
              f"{prep_ms['full'] / prep_ms['reduced']:.2f}); reduced/full extract {rate['extract reduced'] / rate['extract full']:.2f}; "
              f"reduced/full cache build {rate['cache build reduced'] / rate['cache build full']:.2f}; decode+resize CPU "
              f"over forward CPU: full {prep_ms['full'] / ms['forward']:.2f}, reduced {prep_ms['reduced'] / ms['forward']:.2f}",
              flush=True)
        feats_full, feats_red = out["extract full"], out["extract reduced"]
        same = np.array_equal(feats_full, out["forward"])
        cos = cosine(feats_full, feats_red)
        labels = table.labels
        print(f"  full-decode extraction features {'identical to' if same else 'DIFFER from'} the forward pass's; "
              f"reduced vs full: cosine similarity mean {cos.mean():.4f}, min {cos.min():.4f}, 5th percentile "
              f"{np.quantile(cos, 0.05):.4f}")
        print(f"  scores (the project's, on these {n} images): LogME full {logme(feats_full, labels):.4f}, reduced "
              f"{logme(feats_red, labels):.4f}; linear_probe full {linear_probe(feats_full, labels):.4f}, reduced "
              f"{linear_probe(feats_red, labels):.4f}", flush=True)
    print(f"\nload average at end {os.getloadavg()[0]:.2f} (other processes on the machine slow every side)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
