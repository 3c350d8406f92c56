"""Leaks across given splits (``split.source=files``): validation or test images that are byte-identical to a
training image, training images that are copies of each other, and groups (patients, lesions) that have images
in more than one split.

A published protocol is a measuring instrument's input, not something to repair silently: by default
(``dataset.leaks=keep``) the splits are read as published and every leak is counted, warned about once, and
recorded on each run (:meth:`LeakReport.tags`). ``dataset.leaks=drop_leaked`` removes the leaked validation and
test rows and keeps one row of each group of byte-identical training images; that reads other tables, so the
cells' data digests change with it.

Identical bytes are found by :func:`medxfer.data.duplicates.duplicate_groups` (a stat per file, a hash only for
files of equal size); groups come from the dataset's group column or group table.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medxfer.data.duplicates import duplicate_groups
from medxfer.data.tables import DataError, SampleTable

log = logging.getLogger(__name__)

POLICIES = ("keep", "drop_leaked")
#: (split, the earlier split it may leak from): a validation image seen in training, a test image seen in
#: training or validation (which picks the checkpoint), an OOD image seen in training.
PAIRS = (("val", "train"), ("test", "train"), ("test", "val"), ("ood", "train"))
#: Examples named in a message.
SHOWN = 3


def check_policy(policy: str | None, dataset: str) -> str:
    """``dataset.leaks`` checked (None means the default, ``keep``)."""
    policy = policy or "keep"
    if policy not in POLICIES:
        raise DataError(f"dataset {dataset!r}: dataset.leaks={policy!r}; expected one of {list(POLICIES)} "
                        "(keep: the splits as published, leaks reported; drop_leaked: leaked val/test rows and "
                        "training copies removed)")
    return policy


@dataclass
class LeakReport:
    """What :func:`find_leaks` found, over the splits as given (before ``max_samples``).

    Attributes:
        policy: ``keep`` or ``drop_leaked``.
        identical: ``"<split>_in_<other>"`` -> rows of ``split`` byte-identical to a row of ``other`` (see
            :data:`PAIRS`; only pairs whose splits are present).
        train_copies: training rows that are byte-identical copies of an earlier training row.
        groups: ``"<split>_groups_in_<other>"`` -> rows of ``split`` whose group has a row in ``other`` (None
            without groups).
        group_counts: ``"<split>_groups_in_<other>"`` -> the number of such groups.
        conflicts: groups of byte-identical images whose labels differ.
        dropped: rows removed per split (``drop_leaked``; empty under ``keep``).
        examples: ``"<key>"`` -> a few ids of leaked rows, for messages and ``medxfer-data``.
        rows: ``"<split>"`` -> the row indices (into the table as given) of every leaked row of that split.
        ids: ``"<split>"`` -> the sample ids of those rows (they survive subsampling; the analysis reads a
            fine-tuned model's accuracy on the test rows that do not leak by them).
    """

    policy: str
    identical: dict[str, int]
    train_copies: int
    groups: dict[str, int] | None = None
    group_counts: dict[str, int] = field(default_factory=dict)
    conflicts: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    rows: dict[str, list[int]] = field(default_factory=dict, repr=False)
    ids: dict[str, list[str]] = field(default_factory=dict, repr=False)

    @property
    def any(self) -> bool:
        """Whether anything leaks (an identical image, a training copy or a shared group)."""
        return bool(self.train_copies or any(self.identical.values()) or any((self.groups or {}).values()))

    def tags(self) -> dict[str, str]:
        """The run tags: ``leak/policy``, ``leak/<split>_in_<other>``, ``leak/train_copies``,
        ``leak/<split>_groups_in_<other>`` (rows) and ``leak/dropped_<split>`` under ``drop_leaked``."""
        tags = {"leak/policy": self.policy, "leak/train_copies": str(self.train_copies)}
        tags.update({f"leak/{k}": str(v) for k, v in self.identical.items()})
        tags.update({f"leak/{k}": str(v) for k, v in (self.groups or {}).items()})
        tags.update({f"leak/dropped_{k}": str(v) for k, v in self.dropped.items()})
        return tags

    def message(self, dataset: str, sizes: dict[str, int]) -> str:
        """One warning line with the counts (``sizes``: rows per split as given)."""
        parts = [f"{n} of {sizes[k.split('_in_')[0]]} {k.split('_in_')[0]} images are byte-identical to a "
                 f"{k.split('_in_')[1]} image" for k, n in self.identical.items() if n]
        if self.train_copies:
            parts.append(f"{self.train_copies} training images are copies of other training images")
        for k, n in (self.groups or {}).items():
            if n:
                split, other = k.split("_groups_in_")
                parts.append(f"{n} of {sizes[split]} {split} images belong to a group ({self.group_counts[k]} "
                             f"groups) with an image in {other}")
        if self.conflicts:
            parts.append(f"{self.conflicts} groups of identical images carry different labels")
        if self.policy == "keep":
            what = "kept as published (dataset.leaks=keep; dataset.leaks=drop_leaked removes them)"
        else:
            what = "removed (dataset.leaks=drop_leaked): " + ", ".join(f"{n} {k}" for k, n in self.dropped.items())
        return f"dataset {dataset!r}: the given splits leak: " + "; ".join(parts) + f"; {what}"


def _identical(tables: dict[str, SampleTable]) -> list[list[tuple[str, int]]]:
    """Groups of byte-identical images over all ``tables`` (file-based ones), as (split, row) lists."""
    where: list[tuple[str, int]] = []
    paths = []
    for split, table in tables.items():
        if table.paths is None:
            continue
        where += [(split, i) for i in range(len(table))]
        paths += list(table.paths)
    groups = duplicate_groups(paths, contents=True)
    return [[where[i] for i in g] for g in groups]


def find_leaks(tables: dict[str, SampleTable], policy: str = "keep") -> LeakReport:
    """Count the leaks between ``tables`` (``train``, ``val``, ``test`` and optionally ``ood``; absent splits
    left out) and, for each split, which rows leak; ``drop_leaked`` also lists the rows :func:`apply_policy`
    removes."""
    identical_groups = _identical(tables)
    leaked: dict[str, set[int]] = {s: set() for s in tables}
    identical = {f"{s}_in_{o}": set() for s, o in PAIRS if s in tables and o in tables}
    examples: dict[str, list[str]] = {}
    copies: set[int] = set()
    conflicts = 0
    for group in identical_groups:
        splits = {s for s, _ in group}
        if len({int(tables[s].labels[i]) for s, i in group}) > 1:
            conflicts += 1
        train_rows = sorted(i for s, i in group if s == "train")
        copies.update(train_rows[1:])
        for key in identical:
            split, other = key.split("_in_")
            if other in splits:
                for s, i in group:
                    if s == split:
                        identical[key].add(i)
    for key, rows in identical.items():
        split = key.split("_in_")[0]
        if split != "ood":  # the OOD set is reported, never edited: it is another dataset
            leaked[split] |= rows
        examples[key] = [tables[split].ids[i] for i in sorted(rows)[:SHOWN]]
    group_rows = None
    group_counts: dict[str, int] = {}
    with_groups = {s: t for s, t in tables.items() if t.groups is not None and s != "ood"}
    if "train" in with_groups:
        group_rows = {}
        members = {s: {str(g) for g in t.groups if str(g)} for s, t in with_groups.items()}
        for split, other in PAIRS:
            if split not in with_groups or other not in with_groups:
                continue
            key = f"{split}_groups_in_{other}"
            rows = {i for i, g in enumerate(tables[split].groups) if str(g) and str(g) in members[other]}
            group_rows[key] = len(rows)
            group_counts[key] = len({str(tables[split].groups[i]) for i in rows})
            leaked[split] |= rows
            examples[key] = [f"{tables[split].ids[i]} ({tables[split].groups[i]})" for i in sorted(rows)[:SHOWN]]
    leaked["train"] |= copies
    examples["train_copies"] = [tables["train"].ids[i] for i in sorted(copies)[:SHOWN]] if "train" in tables else []
    report = LeakReport(policy=policy, identical={k: len(v) for k, v in identical.items()},
                        train_copies=len(copies), groups=group_rows, group_counts=group_counts,
                        conflicts=conflicts, examples=examples,
                        rows={s: sorted(r) for s, r in leaked.items() if s != "ood"},
                        ids={s: [tables[s].ids[i] for i in sorted(r)] for s, r in leaked.items() if s != "ood"})
    return report


def apply_policy(tables: dict[str, SampleTable], report: LeakReport, dataset: str) -> dict[str, SampleTable]:
    """The tables the policy reads: as given (``keep``), or without the leaked rows (``drop_leaked``). Under
    ``drop_leaked``, byte-identical images with different labels are an error: which label is right is the
    user's call."""
    if report.policy == "keep" or not report.any:
        return tables
    if report.conflicts:
        raise DataError(
            f"dataset {dataset!r}: {report.conflicts} group(s) of byte-identical images carry different labels; "
            "dataset.leaks=drop_leaked cannot tell which copy to keep",
            hint="fix the labels in the split files, or read the splits as published (dataset.leaks=keep)",
        )
    out = dict(tables)
    for split, rows in report.rows.items():
        if rows:
            gone = set(rows)
            keep = np.array([i for i in range(len(tables[split])) if i not in gone], dtype=np.int64)
            out[split] = tables[split].subset(keep, tables[split].name)
            report.dropped[split] = len(rows)
    return out


def leak_summary(report: LeakReport | None) -> dict[str, Any] | None:
    """The report as plain data for ``medxfer-data format=json``."""
    if report is None:
        return None
    return {"policy": report.policy, "identical": report.identical, "train_copies": report.train_copies,
            "groups": report.groups, "group_counts": report.group_counts, "conflicts": report.conflicts,
            "dropped": report.dropped, "examples": report.examples}
