"""Build a dataset's train/val/test (and OOD) tables from a plain config dict."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from medxfer.data.readers import check_two_classes, path_source, read_source, source_from_config
from medxfer.data.splits import (
    check_images_exist, check_split_files, read_split_files, split_file, split_source, split_table, stratified_subsample,
)
from medxfer.data.tables import DataError, DatasetSplits, SampleTable, recode


def load_dataset(cfg: dict[str, Any], *, check_splits: bool = True) -> DatasetSplits:
    """Read, split and (optionally) subsample a dataset described by a resolved ``dataset`` config node.

    Splits come from the source when it defines them (MedMNIST+), from the CSV files ``split.train``,
    ``split.val``, ``split.test`` when ``split.source`` is ``files`` (published splits), otherwise from a seeded
    stratified, group-aware split (``cfg["split"]``).  ``cfg["ood"]``, when set, describes the
    out-of-distribution test set (with ``split.source: files``, ``split.ood`` names its CSV file); its classes
    must exist in the training data (use ``label_map`` to map them). A ``source: path`` node (``dataset.path=``) is
    read as the ``csv`` or ``folder`` node it stands for (:func:`medxfer.data.readers.path_source`), and must hold
    two classes at least.  Given split files that share an image or
    (``split.by_group``) a group are refused unless ``check_splits`` is false (``medxfer-data`` reports them).
    """
    given = cfg.get("path") if cfg.get("source") == "path" else None
    cfg = path_source(cfg)
    name = cfg["name"]
    spec = source_from_config(cfg)
    split_cfg = dict(cfg.get("split") or {})
    from_files = split_source(split_cfg, name) == "files"
    data = read_split_files(spec, split_cfg) if from_files else read_source(spec)
    if from_files and check_splits:
        check_split_files(data, split_cfg, name, spec.group_col)
    if given is not None and not isinstance(data, dict):
        check_two_classes(data, f"dataset.path={given}")
    if isinstance(data, dict):
        tables = data
    else:
        tables = split_table(
            data,
            val=float(split_cfg.get("val", 0.15)),
            test=float(split_cfg.get("test", 0.15)),
            seed=int(split_cfg.get("seed", 0)),
            by_group=bool(split_cfg.get("by_group", True)),
        )
    class_names = tables["train"].class_names
    limits = dict(cfg.get("max_samples") or {})
    seed = int(split_cfg.get("seed", 0))
    for split in ("train", "val", "test"):
        tables[split] = stratified_subsample(tables[split], limits.get(split), seed)
    ood = None
    if cfg.get("ood"):
        ood_cfg = dict(cfg["ood"])
        ood_cfg.setdefault("name", f"{name}_ood")
        ood_cfg.setdefault("duplicates", cfg.get("duplicates"))
        ood_spec = source_from_config(ood_cfg)
        if from_files and split_cfg.get("ood"):
            if ood_spec.source != "csv":
                raise DataError(
                    f"dataset {name!r}: split.ood names a CSV file, but dataset.ood.source is {ood_spec.source!r}; "
                    "set dataset.ood.source=csv"
                )
            ood_spec = dataclasses.replace(ood_spec, csv=str(split_file(split_cfg, "ood", name)))
        ood_data = read_source(ood_spec)
        if isinstance(ood_data, dict):  # a predefined-split source used as OOD: its test split
            ood_data = ood_data["test"]
        ood_data = recode(ood_data, class_names, f"OOD set {ood_cfg['name']!r} of dataset {name!r}")
        ood = stratified_subsample(ood_data.subset(np.arange(len(ood_data)), f"{name}/ood"), limits.get("ood"), seed)
    if from_files and check_splits:
        check_images_exist({**tables, "ood": ood}, spec.root, name, spec.download_hint)
    return DatasetSplits(
        name=name, train=tables["train"], val=tables["val"], test=tables["test"], ood=ood,
        class_names=class_names, label_mapping={c: i for i, c in enumerate(class_names)},
    )


def check_scoreable(table: SampleTable) -> None:
    """Refuse a split that transferability scores cannot use: empty, or with fewer than two classes."""
    if len(table) == 0:
        raise DataError(f"split {table.name} is empty: no samples to score")
    present = [table.class_names[c] for c in np.unique(table.labels)]
    if len(present) < 2:
        raise DataError(
            f"split {table.name} has a single class ({present[0]!r}, {len(table)} samples); "
            "transferability scores need at least 2 classes"
        )
