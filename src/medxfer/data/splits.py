"""Train/val/test splits: seeded, stratified and group-aware (``split.source: random``), or given as files
(``split.source: files``, e.g. a paper's published splits); and the checks that no sample or group crosses them."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from medxfer.data.readers import SourceSpec, missing_data_error, read_csv
from medxfer.data.tables import DataError, SampleTable, recode

SPLIT_SOURCES = ("random", "files")
SPLIT_FILE_KEYS = ("train", "val", "test")


def split_table(
    table: SampleTable, *, val: float, test: float, seed: int, by_group: bool = True
) -> dict[str, SampleTable]:
    """Split ``table`` into ``train``, ``val`` and ``test`` tables.

    Stratified by class: each class contributes about ``val`` and ``test`` of its samples to those splits.
    When the table has groups and ``by_group`` is true, whole groups move together, so a patient never spans
    two splits; a group is placed with the class of most of its images.  Deterministic for a given seed.
    """
    if not (0 < val < 1 and 0 < test < 1 and val + test < 1):
        raise DataError(f"dataset split fractions val={val}, test={test} must be in (0, 1) with val + test < 1")
    n = len(table)
    if n == 0:
        raise DataError(f"{table.name}: the dataset is empty, nothing to split")
    if table.groups is not None and by_group:
        _, group_codes = np.unique(table.groups.astype(str), return_inverse=True)
    else:
        group_codes = np.arange(n)
    n_groups = int(group_codes.max()) + 1
    # majority class per group
    counts = np.zeros((n_groups, table.n_classes), dtype=np.int64)
    np.add.at(counts, (group_codes, table.labels), 1)
    group_class = counts.argmax(axis=1)
    group_size = counts.sum(axis=1)
    rng = np.random.default_rng(seed)
    assign = np.full(n_groups, 2, dtype=np.int64)  # 0 = test, 1 = val, 2 = train
    for c in range(table.n_classes):
        groups_c = np.flatnonzero(group_class == c)
        if len(groups_c) < 3:
            unit = "patients/groups" if table.groups is not None and by_group else "samples"
            raise DataError(
                f"{table.name}: class {table.class_names[c]!r} has {len(groups_c)} {unit}; at least 3 are needed "
                "to put it in the train, val and test splits"
            )
        groups_c = rng.permutation(groups_c)
        total = group_size[groups_c].sum()
        targets = (max(1, round(test * total)), max(1, round(val * total)))
        filled = [0, 0]
        for g in groups_c:
            for s in (0, 1):
                if filled[s] < targets[s]:
                    assign[g] = s
                    filled[s] += group_size[g]
                    break
        if (assign[groups_c] == 2).sum() == 0:  # a few huge groups: keep the last one for training
            assign[groups_c[-1]] = 2
    sample_split = assign[group_codes]
    out = {}
    for code, split in ((2, "train"), (1, "val"), (0, "test")):
        idx = np.flatnonzero(sample_split == code)
        out[split] = table.subset(idx, f"{table.name}/{split}")
    return out


def stratified_subsample(table: SampleTable, max_samples: int | None, seed: int) -> SampleTable:
    """At most ``max_samples`` rows, keeping class proportions (every class keeps at least one row)."""
    if max_samples is None or len(table) <= max_samples:
        return table
    if max_samples < table.n_classes:
        raise DataError(f"{table.name}: max_samples={max_samples} is smaller than the {table.n_classes} classes")
    rng = np.random.default_rng(seed)
    present = np.unique(table.labels)
    quota = {c: max(1, int(round(max_samples * (table.labels == c).mean()))) for c in present}
    keep = []
    for c in present:
        idx = np.flatnonzero(table.labels == c)
        keep.append(rng.choice(idx, size=min(len(idx), quota[c]), replace=False))
    return table.subset(np.sort(np.concatenate(keep)), table.name)


def split_source(split_cfg: dict[str, Any], dataset: str) -> str:
    """``split.source`` of a dataset config (default ``random``), checked."""
    source = split_cfg.get("source") or "random"
    if source not in SPLIT_SOURCES:
        raise DataError(f"dataset {dataset!r}: unknown split.source {source!r}; expected one of {list(SPLIT_SOURCES)}")
    return source


def split_file(split_cfg: dict[str, Any], key: str, dataset: str) -> Path:
    """The file ``split.<key>`` names, under ``split.root`` unless absolute; a missing file is an error."""
    name = split_cfg.get(key)
    if not name:
        raise DataError(
            f"dataset {dataset!r}: split.source=files needs split.{key}, a CSV file (relative to split.root)"
        )
    path = Path(str(split_cfg.get("root") or ".")).expanduser() / str(name)
    if not path.is_file():
        raise DataError(f"dataset {dataset!r}: split file {path} (split.{key}) not found")
    return path


def read_split_files(spec: SourceSpec, split_cfg: dict[str, Any]) -> dict[str, SampleTable]:
    """The ``train``, ``val`` and ``test`` tables of the CSV files ``split.train``, ``split.val``, ``split.test``,
    read with the dataset's CSV settings (columns, ``strip_prefix``, ``label_map``, ``classes``; images under
    ``spec.root``). Classes are those of ``spec.classes``, else the sorted union over the three files, so a class
    missing from one file keeps its code."""
    if spec.source != "csv":
        raise DataError(
            f"dataset {spec.name!r}: split.source=files reads CSV files, but dataset.source is {spec.source!r}; "
            "set dataset.source=csv"
        )
    if not spec.root.is_dir():
        raise missing_data_error(spec, spec.root)
    paths = {key: split_file(split_cfg, key, spec.name) for key in SPLIT_FILE_KEYS}  # all there before any is read
    # within a file, the same path twice follows dataset.duplicates; files with equal bytes are leaks, counted
    # (and removed under dataset.leaks=drop_leaked) by medxfer.data.leaks; the same path in two files is refused
    # by check_split_files
    tables = {key: read_csv(dataclasses.replace(spec, name=f"{spec.name}/{key}", csv=str(path)), contents=False)
              for key, path in paths.items()}
    classes = spec.classes or tuple(sorted({c for t in tables.values() for c in t.class_names}))
    return {k: recode(t, classes, f"split file split.{k} of dataset {spec.name!r}") for k, t in tables.items()}


def _across(values: dict[str, Any]) -> dict[str, list[str]]:
    seen: dict[str, list[str]] = {}
    for split, items in values.items():
        for item in dict.fromkeys(str(v) for v in items):
            seen.setdefault(item, []).append(split)
    return {item: splits for item, splits in seen.items() if len(splits) > 1}


def samples_across_splits(tables: dict[str, SampleTable]) -> dict[str, list[str]]:
    """Images that appear in more than one of ``tables`` (by resolved file, or by id for in-memory images),
    each with the splits it is in."""
    return _across({k: (t.ids if t.paths is None else t.paths) for k, t in tables.items() if t is not None})


def groups_across_splits(tables: dict[str, SampleTable]) -> dict[str, list[str]]:
    """Groups (patients) with samples in more than one of ``tables``, each with the splits it is in; tables
    without groups are left out."""
    return _across({k: t.groups for k, t in tables.items() if t is not None and t.groups is not None})


def check_split_files(tables: dict[str, SampleTable], split_cfg: dict[str, Any], dataset: str, group_col: str | None) -> None:
    """Refuse given splits that share an image, or (``split.by_group``, the default) a group."""
    shared = samples_across_splits(tables)
    if shared:
        first = next(iter(shared))
        raise DataError(
            f"dataset {dataset!r}: {len(shared)} image(s) are in more than one split file, e.g. {first} in "
            f"{' and '.join(shared[first])}; fix split.{'/'.join(SPLIT_FILE_KEYS)}"
        )
    if not split_cfg.get("by_group", True):
        return
    groups = groups_across_splits(tables)
    if groups:
        first = next(iter(groups))
        raise DataError(
            f"dataset {dataset!r}: {len(groups)} group(s) of column {group_col!r} have images in more than one split "
            f"file, e.g. {first!r} in {', '.join(groups[first])}; split.by_group=true wants each group in one split. "
            "Set dataset.split.by_group=false to use the files as they are (medxfer-data lists the groups)"
        )


def check_images_exist(tables: dict[str, SampleTable], root: Path, dataset: str, hint: str | None) -> None:
    """Refuse split files whose images are not under the dataset root, before a model runs on them."""
    missing = {k: t.missing_files() for k, t in tables.items() if t is not None}
    total = sum(len(rows) for rows in missing.values())
    if not total:
        return
    split, rows = next((k, rows) for k, rows in missing.items() if rows)
    counts = ", ".join(f"{k} {len(r)} of {len(tables[k])}" for k, r in missing.items() if r)
    raise DataError(
        f"dataset {dataset!r}: {total} image file(s) missing ({counts}), e.g. {tables[split].paths[rows[0]]} "
        f"(split {split}). dataset.root={root} (dataset.ood.root for the OOD set) must hold the images at the "
        f"paths the split files give; `medxfer-data dataset={dataset}` lists them all."
        + (f"\n{hint}" if hint else "")
    )
