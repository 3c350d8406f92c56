"""Build a dataset's train/val/test (and OOD) tables from a plain config dict."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from medxfer.data.leaks import apply_policy, check_policy as check_leak_policy, find_leaks
from medxfer.data.readers import (
    check_two_classes, path_source, read_group_table, read_source, source_from_config, with_group_table,
)
from medxfer.data.splits import (
    check_images_exist, check_split_files, read_split_files, split_file, split_source, split_table, stratified_subsample,
)
from medxfer.data.tables import DataError, DatasetSplits, SampleTable, recode

log = logging.getLogger(__name__)


#: The splits a stage reads unless it says otherwise: fine-tuning trains, validates and tests; the OOD set is read
#: when it is there, and named (not read) when its files are not.
NEEDED = ("train", "val", "test")


def load_dataset(cfg: dict[str, Any], *, check_splits: bool = True, needed: Iterable[str] = NEEDED) -> DatasetSplits:
    """Read, split and (optionally) subsample a dataset described by a resolved ``dataset`` config node.

    Splits come from the source when it defines them (MedMNIST+), from the CSV files ``split.train``,
    ``split.val``, ``split.test`` when ``split.source`` is ``files`` (published splits), otherwise from a seeded
    stratified, group-aware split (``cfg["split"]``).  ``cfg["ood"]``, when set, describes the
    out-of-distribution test set (with ``split.source: files``, ``split.ood`` names its CSV file); its classes
    must exist in the training data (use ``label_map`` to map them). A ``source: path`` node (``dataset.path=``) is
    read as the ``csv`` or ``folder`` node it stands for (:func:`medxfer.data.readers.path_source`), and must hold
    two classes at least.  Given split files that share an image or
    (``split.by_group``) a group are refused unless ``check_splits`` is false (``medxfer-data`` reports them).

    ``needed``: the splits the caller reads. One of them whose image files are missing is an error; another
    split whose files are missing (e.g. an OOD set not downloaded) is left out, named once in a warning and in
    ``DatasetSplits.absent`` (an absent OOD set becomes ``ood=None``). Given splits are also searched for leaks
    (:mod:`medxfer.data.leaks`; ``dataset.leaks``) before ``max_samples`` subsamples them.
    """
    given = cfg.get("path") if cfg.get("source") == "path" else None
    cfg = path_source(cfg)
    name = cfg["name"]
    needed = set(needed)
    spec = source_from_config(cfg)
    split_cfg = dict(cfg.get("split") or {})
    from_files = split_source(split_cfg, name) == "files"
    policy = check_leak_policy(cfg.get("leaks"), name)
    data = read_split_files(spec, split_cfg) if from_files else read_source(spec)
    group_column = spec.group_col
    if cfg.get("group_table"):
        if not from_files:
            raise DataError(f"dataset {name!r}: dataset.group_table is read with split.source=files only")
        node = dict(cfg["group_table"])
        groups = read_group_table(spec.root, node, name)
        data = {k: with_group_table(t, groups, str(node["csv"])) for k, t in data.items()}
        group_column = str(node["group"])
    if from_files and check_splits:
        check_split_files(data, split_cfg, name, group_column)
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
    absent: dict[str, str] = {}
    ood = _read_ood(cfg, from_files, split_cfg, class_names, absent, check="ood" not in needed)
    if from_files:
        present = {**tables, "ood": ood}
        if check_splits:
            check_images_exist({k: t for k, t in present.items() if k in needed}, spec.root, name, spec.download_hint)
        for split, table in present.items():
            if table is None or split in needed or not (rows := table.missing_files()):
                continue
            # unchecked (medxfer-data), a split with some files lists them as problems; without any it is absent
            if check_splits or len(rows) == len(table):
                absent[split] = _absent_message(split, table, rows, cfg)
        if "ood" in absent:
            ood = None
    for split, why in absent.items():
        log.warning("dataset %r: %s", name, why)
    leaks = None
    if from_files:
        given = {k: t for k, t in {**tables, "ood": ood}.items() if t is not None and k not in absent}
        leaks = find_leaks(given, policy)
        if leaks.any:
            tables.update({k: t for k, t in apply_policy(given, leaks, name).items() if k != "ood"})
            log.warning("%s", leaks.message(name, {k: len(t) for k, t in given.items()}))
    limits = dict(cfg.get("max_samples") or {})
    seed = int(split_cfg.get("seed", 0))
    for split in ("train", "val", "test"):
        tables[split] = stratified_subsample(tables[split], limits.get(split), seed)
    if ood is not None:
        ood = stratified_subsample(ood.subset(np.arange(len(ood)), f"{name}/ood"), limits.get("ood"), seed)
    return DatasetSplits(
        name=name, train=tables["train"], val=tables["val"], test=tables["test"], ood=ood,
        class_names=class_names, label_mapping={c: i for i, c in enumerate(class_names)}, absent=absent,
        leaks=leaks,
    )


def _absent_message(split: str, table: SampleTable, rows: list[int], cfg: dict[str, Any]) -> str:
    root = Path(str((cfg.get("ood") or {}).get("root") if split == "ood" else cfg.get("root"))).resolve()
    what = f"OOD set {(cfg.get('ood') or {}).get('name', split)}" if split == "ood" else f"split {split}"
    missing = "all" if len(rows) == len(table) else f"{len(rows):,} of"
    effect = "OOD metrics are not computed" if split == "ood" else "it is not read (not needed here)"
    return (f"{what}: {missing} {len(table):,} files missing under {root} (e.g. {table.paths[rows[0]]}): {effect}")


def _read_ood(cfg: dict[str, Any], from_files: bool, split_cfg: dict[str, Any], class_names: tuple[str, ...],
              absent: dict[str, str], *, check: bool) -> SampleTable | None:
    """The OOD set of ``cfg``, in the training classes; None without one. With ``check`` (the caller does not
    need it), an OOD folder that is not there is recorded in ``absent`` instead of stopping."""
    if not cfg.get("ood"):
        return None
    name = cfg["name"]
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
    if check and ood_spec.source != "synthetic" and not ood_spec.root.exists():  # synthetic: made on first use
        absent["ood"] = f"OOD set {ood_cfg['name']}: {ood_spec.root} does not exist: OOD metrics are not computed"
        return None
    ood_data = read_source(ood_spec)
    if isinstance(ood_data, dict):  # a predefined-split source used as OOD: its test split
        ood_data = ood_data["test"]
    return recode(ood_data, class_names, f"OOD set {ood_cfg['name']!r} of dataset {name!r}")


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
