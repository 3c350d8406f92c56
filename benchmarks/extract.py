"""Time ``extract_features`` against the bare forward pass on preloaded tensors, in the same run.

    PYTHONPATH=src .venv/bin/python benchmarks/extract.py            # efficientnet_lite0, 200 images, 128 and 224 px
    PYTHONPATH=src .venv/bin/python benchmarks/extract.py --quick    # 64 images, 128 px, two models
    PYTHONPATH=src .venv/bin/python benchmarks/extract.py --jpeg --image-size 1024   # ISIC-like JPEGs

Data: the synthetic dermoscopy task (``synthetic_derm``, seeded) drawn once as ``--image-size`` px PNGs (or
re-encoded as JPEGs) under ``<cache_dir>/bench-extract``. For each crop size (``--sizes``, resize = crop / 0.875
as the paper's 256/224) the first model is timed three ways: (a) the forward pass alone over tensors decoded and
normalised beforehand (what the model costs; timed before and after the others, averaged), (b) ``extract_features`` from the image files with the default
loader (``num_workers: auto``, no decoded-image cache), (c) ``extract_features`` from a warm decoded-image cache.
Then ``--models`` share one preprocessing (``--models-size``), as a study's models do: the time to extract all of
them without the decoded-image cache and with it (starting empty, so the first model decodes), against the sum of
their forward passes. The features of every path are checked equal to the forward pass's.

CPU seconds (this process and its loader workers) are printed beside the wall-clock times: on a machine shared
with other work they vary less. The last line is ``extract/forward <ratio>``: throughput of (b) over (a), the smallest over the sizes.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from medxfer.data.decoded import DecodedImageCache
from medxfer.data.loading import available_cores, resolve_num_workers
from medxfer.data.readers import SourceSpec, read_csv
from medxfer.data.synthetic import generate_synthetic
from medxfer.data.tables import SampleTable
from medxfer.data.transforms import Preprocess, eval_transform, resolve_preprocess
from medxfer.models.extract import FeatureExtractor, extract_features
from medxfer.models.zoo import ModelSpec, create_model, model_data_config, resolve_weights
from medxfer.workflows.grid import compose_config


def synthetic_table(cache_dir: Path, n: int, image_size: int, jpeg: bool) -> SampleTable:
    """``n`` synthetic_derm images (half per class) as files; JPEG copies (quality 95) when ``jpeg``."""
    root = cache_dir / "bench-extract" / f"synthetic_derm-{n}-{image_size}px"
    generate_synthetic("synthetic_derm", root, n_per_class=n // 2, image_size=image_size, progress=False)
    table = read_csv(SourceSpec(name="bench", source="csv", root=root))
    if not jpeg:
        return table
    from PIL import Image

    out = root.parent / f"{root.name}-jpeg"
    paths = []
    for path in table.paths:
        target = out / Path(path).relative_to(root).with_suffix(".jpg")
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(path) as img:
                img.convert("RGB").save(target, quality=95)
        paths.append(target)
    return SampleTable(name="bench-jpeg", labels=table.labels, class_names=table.class_names, paths=tuple(paths))


def load_model(name: str, cache_dir: str) -> tuple[torch.nn.Module, ModelSpec]:
    c = compose_config("score", [f"model={name}"])
    spec = ModelSpec.from_config(dict(c.model))
    model = create_model(spec, resolve_weights(spec, cache_dir=cache_dir))
    return model.eval(), spec


def preprocess_for(model, spec, size: int) -> Preprocess:
    return resolve_preprocess(model_data_config(model, spec), {"input_size": size, "resize": int(size / 0.875)})


def preload(table: SampleTable, preprocess: Preprocess) -> torch.Tensor:
    transform = eval_transform(preprocess)
    return torch.stack([transform(table.load_image(i)) for i in range(len(table))])


CPU = {"s": 0.0}  # CPU seconds of the last timed call, this process and its finished loader workers


def cpu_seconds() -> float:
    """CPU time of this process plus its exited children (loader workers are joined when a loader ends)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def forward(model, images: torch.Tensor, labels: np.ndarray, batch_size: int) -> tuple[float, np.ndarray]:
    """Seconds of the forward pass ``extract_features`` runs (features and source head) over preloaded
    tensors, after one untimed warm-up batch; and the features."""
    step = FeatureExtractor(model).eval()
    y = torch.from_numpy(labels)
    with torch.inference_mode():
        step.predict_step((images[:batch_size], y[:batch_size]), 0)
        start, cpu = time.perf_counter(), cpu_seconds()
        feats = [step.predict_step((images[i:i + batch_size], y[i:i + batch_size]), i)[0]
                 for i in range(0, len(images), batch_size)]
        seconds = time.perf_counter() - start
    CPU["s"] = cpu_seconds() - cpu
    return seconds, torch.cat(feats).numpy()


def extract(model, table, preprocess, batch_size, num_workers, decoded) -> tuple[float, np.ndarray]:
    start, cpu = time.perf_counter(), cpu_seconds()
    feats = extract_features(model, table, preprocess, batch_size=batch_size, num_workers=num_workers,
                             accelerator="cpu", progress=False, decoded=decoded)
    CPU["s"] = cpu_seconds() - cpu
    return time.perf_counter() - start, feats.features


def same(a: np.ndarray, b: np.ndarray) -> str:
    return "identical" if np.array_equal(a, b) else f"DIFFERENT (max abs diff {np.abs(a - b).max():.2e})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--models", default="efficientnet_lite0,efficientnet_lite1,efficientnet_lite2",
                        help="comma-separated models extracted with one preprocessing (empty: skip that part)")
    parser.add_argument("--n", type=int, default=200, help="images")
    parser.add_argument("--image-size", type=int, default=512, help="side of the synthetic images on disk")
    parser.add_argument("--jpeg", action="store_true", help="JPEG files instead of PNG")
    parser.add_argument("--sizes", default="128,224", help="crop sizes of the forward/extract comparison")
    parser.add_argument("--models-size", type=int, default=224, help="crop size of the M-model comparison")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", default="auto")
    parser.add_argument("--quick", action="store_true", help="64 images of 256 px, 128 px, two models")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.image_size, args.sizes, args.models_size = 64, 256, "128", 128
        args.models = "efficientnet_lite0,efficientnet_lite1"
    workers = args.num_workers if args.num_workers == "auto" else int(args.num_workers)
    cache_dir = os.environ.get("MEDXFER_CACHE_DIR") or str(Path(__file__).resolve().parents[1] / ".cache" / "medxfer")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    table = synthetic_table(Path(cache_dir), args.n, args.image_size, args.jpeg)
    print(f"{len(table)} {'JPEG' if args.jpeg else 'PNG'} images of {args.image_size} px; batch {args.batch_size}; "
          f"torch threads {torch.get_num_threads()}; cores available {available_cores()}; num_workers={workers} -> "
          f"{resolve_num_workers(workers, option='--num-workers', batches=-(-len(table) // args.batch_size))}; "
          f"load average at start {os.getloadavg()[0]:.2f}", flush=True)

    model, spec = load_model(args.model, cache_dir)
    ratios = {}
    with tempfile.TemporaryDirectory(prefix="bench-decoded-") as tmp:
        for size in [int(s) for s in args.sizes.split(",")]:
            p = preprocess_for(model, spec, size)
            images = preload(table, p)
            cache = DecodedImageCache(Path(tmp) / f"single-{size}")
            cache.images(table, p, num_workers=resolve_num_workers(workers, option="--num-workers"))
            # forward before and after the extractions, averaged: a change of the machine's load during the
            # measurement then shifts both sides alike
            before_s, ref = forward(model, images, table.labels, args.batch_size)
            fwd_cpu = CPU["s"]
            ext_s, feats = extract(model, table, p, args.batch_size, workers, None)
            ext_cpu = CPU["s"]
            warm_s, warm = extract(model, table, p, args.batch_size, workers, cache)
            warm_cpu = CPU["s"]
            after_s, _ = forward(model, images, table.labels, args.batch_size)
            fwd_s, fwd_cpu = (before_s + after_s) / 2, (fwd_cpu + CPU["s"]) / 2
            n = len(table)
            ratios[size] = fwd_s / ext_s
            print(f"{args.model} {size} px: forward {n / fwd_s:.1f} img/s; extract_features {n / ext_s:.1f} img/s "
                  f"({same(feats, ref)}); from a warm decoded cache {n / warm_s:.1f} img/s ({same(warm, ref)})")
            print(f"CPU seconds: forward {fwd_cpu:.1f}, extract_features {ext_cpu:.1f} (forward/extract "
                  f"{fwd_cpu / ext_cpu:.3f}), warm decoded cache {warm_cpu:.1f} ({fwd_cpu / warm_cpu:.3f})")
            print(f"extract/forward@{size}px {fwd_s / ext_s:.3f}  (warm decoded cache: {fwd_s / warm_s:.3f})", flush=True)

        names = [m for m in args.models.split(",") if m]
        if names:
            size = args.models_size
            cache = DecodedImageCache(Path(tmp) / "models")
            total = {"forward": 0.0, "without": 0.0, "with": 0.0}
            cpu = {"forward": 0.0, "without": 0.0, "with": 0.0}
            for name in names:
                m, s = load_model(name, cache_dir)
                p = preprocess_for(m, s, size)
                fwd_s, ref = forward(m, preload(table, p), table.labels, args.batch_size)
                cpu["forward"] += CPU["s"]
                without_s, without = extract(m, table, p, args.batch_size, workers, None)
                cpu["without"] += CPU["s"]
                with_s, with_ = extract(m, table, p, args.batch_size, workers, cache)
                cpu["with"] += CPU["s"]
                total["forward"] += fwd_s
                total["without"] += without_s
                total["with"] += with_s
                print(f"{name} {size} px: forward {fwd_s:.1f} s, extract without decoded cache {without_s:.1f} s "
                      f"({same(without, ref)}), with it {with_s:.1f} s ({same(with_, ref)})", flush=True)
            print(f"{len(names)} models at {size} px: forward passes {total['forward']:.1f} s; extraction without the "
                  f"decoded cache {total['without']:.1f} s ({total['without'] / total['forward']:.3f}x), with it "
                  f"{total['with']:.1f} s ({total['with'] / total['forward']:.3f}x)")
            print(f"CPU seconds: forward passes {cpu['forward']:.1f}; without the decoded cache {cpu['without']:.1f} "
                  f"({cpu['without'] / cpu['forward']:.3f}x), with it {cpu['with']:.1f} ({cpu['with'] / cpu['forward']:.3f}x)")
            print(f"models/forward without-cache {total['without'] / total['forward']:.3f} "
                  f"with-cache {total['with'] / total['forward']:.3f}")
    print(f"load average at end {os.getloadavg()[0]:.2f} (other processes on the machine slow both sides)")
    print(f"extract/forward {min(ratios.values()):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
