"""Seeded, stratified train/val/test splits that keep a group (patient) inside one split."""

from __future__ import annotations

import numpy as np

from medxfer.data.tables import DataError, SampleTable


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
