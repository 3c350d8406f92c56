"""What a dataset holds and what is wrong with it, without running a model: class counts per split, groups, and
every problem found (missing or unreadable images, an image or a group in two splits, empty splits).

``medxfer-data`` prints this report; it is what to run before a long GPU job.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from medxfer.data.leaks import leak_summary
from medxfer.data.splits import groups_across_splits, samples_across_splits
from medxfer.data.tables import DatasetSplits, SampleTable

SPLITS = ("train", "val", "test", "ood")
IMAGE_CHECKS = ("none", "open", "decode")


@dataclass
class DataReport:
    """The report of :func:`audit_dataset`.

    Attributes:
        dataset: the dataset config's name.
        counts: per split (``train``, ``val``, ``test``, ``ood``) the number of samples of each class, in code
            order; None for a split the dataset lacks (no OOD set).
        groups: ``column`` (the group column or None), ``ood_column`` (the OOD set's), ``by_group`` (whether a
            group must stay in one split), ``per_split`` (distinct groups per split, None without groups) and
            ``across_splits`` (group -> the splits of train, val, test it is in).
        problems: one dict per problem, with ``kind`` (``missing_file``, ``unreadable_image``,
            ``image_in_several_splits``, ``group_in_several_splits``, ``empty_split``, ``class_not_in_train``)
            and the split, file, group or class concerned.
        leaks: the leaks between given splits (``split.source=files``; :func:`medxfer.data.leaks.leak_summary`):
            counted and listed, not problems (``dataset.leaks=keep`` reads the splits as published).
        absent: split -> why it is left out (none of its files are there, e.g. an OOD set not downloaded); the
            stages run without it, so it is not a problem.
    """

    dataset: str
    counts: dict[str, dict[str, int] | None]
    groups: dict[str, Any]
    problems: list[dict[str, Any]] = field(default_factory=list)
    leaks: dict[str, Any] | None = None
    absent: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """``{"train": {"<class>": n, ...}, "val": ..., "test": ..., "ood": ..., "groups": ..., "problems": [...],
        "leaks": {...} or null, "dataset": name}``: the JSON that ``medxfer-data format=json`` prints."""
        return {**self.counts, "groups": self.groups, "problems": self.problems, "leaks": self.leaks,
                "absent": self.absent, "dataset": self.dataset}


def _image_problem(path: str, check: str) -> str | None:
    try:
        with Image.open(path) as img:
            if check == "decode":
                img.load()
            else:
                img.verify()  # header and, for PNG, the chunk checksums; no decoding
    except FileNotFoundError:
        return "file not found"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        return str(err) or type(err).__name__
    return None


def _file_problems(split: str, table: SampleTable, images: str, workers: int) -> list[dict[str, Any]]:
    if table.paths is None:
        return []
    missing = table.missing_files()
    problems = [{"kind": "missing_file", "split": split, "sample": table.ids[i], "path": str(table.paths[i])}
                for i in missing]
    if images == "none":
        return problems
    gone = set(missing)
    present = [i for i in range(len(table)) if i not in gone]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # file reads: threads overlap the I/O waits
        errors = list(pool.map(lambda i: _image_problem(str(table.paths[i]), images), present))
    problems += [{"kind": "unreadable_image", "split": split, "sample": table.ids[i], "path": str(table.paths[i]),
                  "error": err} for i, err in zip(present, errors) if err is not None]
    return problems


def audit_dataset(data: DatasetSplits, *, by_group: bool = True, group_column: str | None = None,
                  ood_group_column: str | None = None, images: str = "open", workers: int = 4) -> DataReport:
    """Count, per split, the samples of each class and the groups, and list every problem found.

    ``images``: ``open`` reads each image's header (``PIL.Image.verify``), ``decode`` decodes every image (slow,
    finds truncated files), ``none`` only checks that the files exist. A group in more than one of train, val
    and test is a problem when ``by_group`` (the split config's ``by_group``), and is listed under ``groups``
    either way. An image in two splits (the OOD set included) is always a problem.
    """
    if images not in IMAGE_CHECKS:
        raise ValueError(f"images={images!r}: expected one of {list(IMAGE_CHECKS)}")
    tables = {s: data.split(s) if s != "ood" or data.ood is not None else None for s in SPLITS}
    counts = {s: (t.class_counts() if t is not None else None) for s, t in tables.items()}
    problems: list[dict[str, Any]] = []
    for split, table in tables.items():
        if table is not None and len(table) == 0:
            problems.append({"kind": "empty_split", "split": split})
    absent = [c for c, n in counts["train"].items() if n == 0]
    problems += [{"kind": "class_not_in_train", "split": "train", "class": c} for c in absent]
    for sample, splits in samples_across_splits(tables).items():
        problems.append({"kind": "image_in_several_splits", "sample": sample, "splits": splits})
    in_distribution = {s: tables[s] for s in ("train", "val", "test")}
    across = groups_across_splits(in_distribution)
    if by_group:
        problems += [{"kind": "group_in_several_splits", "group": g, "splits": s} for g, s in across.items()]
    for split, table in tables.items():
        if table is not None:
            problems += _file_problems(split, table, images, workers)
    groups = {
        "column": group_column,
        "ood_column": ood_group_column,
        "by_group": by_group,
        "per_split": {s: (int(len(np.unique(t.groups.astype(str)))) if t is not None and t.groups is not None else None)
                      for s, t in tables.items()},
        "across_splits": across,
    }
    return DataReport(dataset=data.name, counts=counts, groups=groups, problems=problems,
                      leaks=leak_summary(data.leaks), absent=dict(data.absent))


def format_report(report: DataReport, *, limit: int = 20) -> str:
    """The report as text: a class-count table, the groups, and the problems (``limit`` listed per kind)."""
    classes = next(list(c) for c in report.counts.values() if c is not None)
    width = max(len(c) for c in [*classes, "split", "total"]) + 2
    lines = [f"dataset {report.dataset}", "split".ljust(7) + "".join(c.rjust(width) for c in [*classes, "total"])]
    for split, counts in report.counts.items():
        if counts is None:
            lines.append(f"{split:<7}" + (f"  (absent: {report.absent[split]})" if split in report.absent
                                          else "(none)".rjust(width)))
            continue
        lines.append(f"{split:<7}" + "".join(str(counts[c]).rjust(width) for c in classes)
                     + str(sum(counts.values())).rjust(width))
    g = report.groups
    per = ", ".join(f"{s} {n}" for s, n in g["per_split"].items() if n is not None and s != "ood")
    if not per:
        lines.append("groups: none (no group column)")
    else:
        across = g["across_splits"]
        note = "" if not across else (
            f"; {len(across)} in more than one of train/val/test"
            + ("" if g["by_group"] else " (split.by_group=false: reported, not a problem)")
        )
        lines.append(f"groups ({g['column']}): {per}{note}")
    if g["per_split"].get("ood") is not None:
        lines.append(f"OOD groups ({g['ood_column']}): {g['per_split']['ood']}")
    lines += _leak_lines(report)
    if not report.problems:
        lines.append("problems: none")
        return "\n".join(lines)
    lines.append(f"problems: {len(report.problems)}")
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for p in report.problems:
        by_kind.setdefault(p["kind"], []).append(p)
    for kind, items in by_kind.items():
        lines.append(f"  {kind}: {len(items)}")
        for p in items[:limit]:
            lines.append("    " + ", ".join(f"{k}={v}" for k, v in p.items() if k != "kind"))
        if len(items) > limit:
            lines.append(f"    ... {len(items) - limit} more (format=json lists every one)")
    return "\n".join(lines)


def _leak_lines(report: DataReport) -> list[str]:
    leaks = report.leaks
    if leaks is None:
        return []
    sizes = {s: sum(c.values()) for s, c in report.counts.items() if c is not None}
    if leaks["dropped"]:  # the counts above are after the drop: the given splits were larger
        sizes = {s: n + leaks["dropped"].get(s, 0) for s, n in sizes.items()}
    found = {**leaks["identical"], "train_copies": leaks["train_copies"], **(leaks["groups"] or {})}
    if not any(found.values()):
        return [f"leaks (dataset.leaks={leaks['policy']}): none between the given splits"]
    what = ("kept as published" if leaks["policy"] == "keep"
            else "removed: " + ", ".join(f"{n} {s}" for s, n in leaks["dropped"].items()))
    lines = [f"leaks (dataset.leaks={leaks['policy']}: {what}; counts over the splits as given)"]
    for key, n in found.items():
        if not n:
            continue
        eg = ", ".join(leaks["examples"].get(key, []))
        if key == "train_copies":
            text = f"{n} training images are byte-identical copies of another training image"
        elif "_groups_in_" in key:
            split, other = key.split("_groups_in_")
            text = (f"{n} of {sizes.get(split, '?')} {split} images have a group ({leaks['group_counts'][key]} "
                    f"groups) with an image in {other}")
        else:
            split, other = key.split("_in_")
            text = f"{n} of {sizes.get(split, '?')} {split} images are byte-identical to a {other} image"
        lines.append(f"  {key}: {text}" + (f", e.g. {eg}" if eg else ""))
    if leaks["conflicts"]:
        lines.append(f"  conflicts: {leaks['conflicts']} groups of identical images carry different labels")
    return lines
