"""Duplicate images in a dataset: the same file listed twice, or two files with the same bytes.

A duplicate that the random split puts in train and test leaks the test set into training (and inflates every
score and accuracy), so by default it is an error naming the rows; ``dataset.duplicates=drop`` keeps the first
listing of each image and drops the others with a warning. Copies with different labels are always an error:
which label is right is the user's call.

Identical contents are found cheaply: every file is stat-ed (as the feature cache's content digest does anyway),
and only files that share a size are read and hashed.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np

from medxfer.data.tables import DataError
from medxfer.digests import file_sha256

log = logging.getLogger(__name__)

POLICIES = ("error", "drop")
#: Groups named in a message; the count says how many there are in all.
SHOWN = 5


def check_policy(policy: str | None, dataset: str) -> str:
    """``dataset.duplicates`` checked (None means the default, ``error``)."""
    policy = policy or "error"
    if policy not in POLICIES:
        raise DataError(f"dataset {dataset!r}: dataset.duplicates={policy!r}; expected one of {list(POLICIES)}")
    return policy


def identical_files(paths: Sequence[Path]) -> dict[int, int]:
    """For each file whose bytes equal an earlier file's (by position), the index of the first such file.
    Missing or unreadable files are left out (the reader's other checks name them)."""
    by_size: dict[int, list[int]] = defaultdict(list)
    for i, path in enumerate(paths):
        try:
            by_size[os.stat(path).st_size].append(i)
        except OSError:
            continue
    first_of: dict[int, int] = {}
    for candidates in by_size.values():
        if len(candidates) < 2:
            continue
        seen: dict[str, int] = {}
        for i in candidates:
            try:
                digest = file_sha256(paths[i])
            except OSError:
                continue
            if digest in seen:
                first_of[i] = seen[digest]
            else:
                seen[digest] = i
    return first_of


def duplicate_groups(paths: Sequence[Path], *, contents: bool = True) -> list[list[int]]:
    """Groups (of two or more indices, each sorted, in order of first appearance) of entries that name the same
    image: the same resolved path, or (``contents``) files with the same bytes."""
    parent = list(range(len(paths)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_by_path: dict[str, int] = {}
    for i, path in enumerate(paths):
        first = first_by_path.setdefault(str(path), i)
        if first != i:
            parent[find(i)] = find(first)
    if contents:
        unique = sorted(first_by_path.values())
        for i, first in identical_files([paths[j] for j in unique]).items():
            parent[find(unique[i])] = find(unique[first])
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(len(paths)):
        groups[find(i)].append(i)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: g[0])


def resolve_duplicates(
    paths: Sequence[Path], labels: Sequence[str], rows: Sequence[str], *, source: str, policy: str,
    contents: bool = True,
) -> np.ndarray:
    """The indices to keep of a dataset's entries (``paths`` with their raw ``labels``; ``rows[i]`` says where
    entry ``i`` came from, e.g. ``row 14``), under ``dataset.duplicates=policy``.

    ``error``: any duplicate is a :class:`DataError` naming the rows. ``drop``: the first entry of each group is
    kept, the others are dropped with one warning. Either way a group whose labels differ is an error.
    """
    groups = duplicate_groups(paths, contents=contents)
    if not groups:
        return np.arange(len(paths))

    def describe(group: list[int]) -> str:
        where = ", ".join(rows[i] for i in group[:6]) + (", ..." if len(group) > 6 else "")
        names = {str(paths[i]) for i in group}
        what = str(paths[group[0]]) if len(names) == 1 else "identical files " + ", ".join(
            str(paths[i]) for i in group[:3]) + (", ..." if len(group) > 3 else "")
        return f"{what} ({where})"

    conflicting = [g for g in groups if len({labels[i] for i in g}) > 1]
    if conflicting:
        shown = "; ".join(describe(g) + " labels " + "/".join(dict.fromkeys(labels[i] for i in g))
                          for g in conflicting[:SHOWN])
        raise DataError(
            f"{source}: {len(conflicting)} image(s) listed more than once with different labels: {shown}",
            hint="keep one listing of each image, with its right label",
        )
    extra = sum(len(g) - 1 for g in groups)
    shown = "; ".join(describe(g) for g in groups[:SHOWN]) + ("; ..." if len(groups) > SHOWN else "")
    if policy == "error":
        raise DataError(
            f"{source}: {len(groups)} image(s) listed more than once ({extra} extra listing(s)), e.g. {shown}. "
            "A random split could put the copies in train and test",
            hint="remove the extra rows, or add dataset.duplicates=drop to keep the first listing of each image",
        )
    drop = {i for g in groups for i in g[1:]}
    log.warning("%s: dropped %d duplicate listing(s) of %d image(s) (dataset.duplicates=drop), e.g. %s",
                source, extra, len(groups), shown)
    return np.array([i for i in range(len(paths)) if i not in drop], dtype=np.int64)
