"""Readers that turn files on disk into :class:`SampleTable` objects.

Supported sources (``source:`` in a dataset config):

* ``csv``: a CSV file with an image column and a label column (or one-hot label columns) and an optional
  group column (patient id); image paths are relative to the dataset root.
* ``folder``: an image folder whose class is a directory level (``<root>/<class>/.../<image>``).
* ``medmnist``: a MedMNIST+ ``.npz`` file (``train_images``, ``train_labels``, ``val_...``, ``test_...``).
* ``synthetic``: the synthetic benchmark, generated on first use as PNG files plus a CSV, then read as ``csv``.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medxfer.data.duplicates import check_policy, resolve_duplicates
from medxfer.data.tables import DataError, SampleTable, encode_labels, resolve_under

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")
MEDMNIST_HINT = (
    "MedMNIST+ files are not downloaded by medxfer. Get '{flag}_{size}.npz' (or '{flag}.npz' for 28 px) "
    "from https://zenodo.org/records/10519652 (or `pip install medmnist` and download it on a machine with "
    "internet) and put it in {root}"
)


@dataclass(frozen=True)
class SourceSpec:
    """Where and how to read one image collection (a dataset, or its out-of-distribution set).

    Built from a dataset config node by :func:`source_from_config`; every field has the meaning of the config
    key of the same name (see ``conf/dataset/README.md``).
    """

    name: str
    source: str
    root: Path
    csv: str = "labels.csv"
    image_col: str = "image"
    label_col: str = "label"
    group_col: str | None = None
    label_columns: tuple[str, ...] | None = None
    image_template: str = "{image}"
    strip_prefix: str | None = None
    label_map: dict[str, str] | None = None
    classes: tuple[str, ...] | None = None
    label_level: int = 0
    group_pattern: str | None = None
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS
    allow_absolute_paths: bool = False
    medmnist_flag: str | None = None
    medmnist_size: int = 28
    synthetic: dict[str, Any] = field(default_factory=dict)
    download_hint: str | None = None
    duplicates: str = "error"  # error | drop: an image listed twice, or two files with the same bytes


def source_from_config(node: dict[str, Any]) -> SourceSpec:
    """Make a :class:`SourceSpec` from a plain dict (a resolved dataset or dataset.ood config node)."""
    known = set(SourceSpec.__dataclass_fields__)
    ignored = {"split", "ood", "max_samples", "description", "licence", "leaks", "group_table"}
    unknown = sorted(set(node) - known - ignored - {"medmnist"})
    if unknown:
        raise DataError(f"dataset {node.get('name')!r}: unknown config keys {unknown}; known: {sorted(known)}")
    if node.get("root") in (None, "", "???"):
        raise DataError(f"dataset {node.get('name')!r}: dataset.root is not set; pass dataset.root=/path/to/data")
    kwargs = {k: v for k, v in node.items() if k in known}
    kwargs["root"] = Path(str(node["root"])).expanduser()
    for key in ("label_columns", "extensions", "classes"):
        if kwargs.get(key) is not None:
            kwargs[key] = tuple(kwargs[key])
    if kwargs.get("label_map"):
        # read_csv reads every column as text, so a YAML key 0 must match the label "0"
        kwargs["label_map"] = {str(k): v for k, v in kwargs["label_map"].items()}
    if node.get("medmnist"):
        kwargs["medmnist_flag"] = node["medmnist"].get("flag")
        kwargs["medmnist_size"] = int(node["medmnist"].get("size", 28))
    kwargs["synthetic"] = dict(node.get("synthetic") or {})
    kwargs["duplicates"] = check_policy(node.get("duplicates"), str(node.get("name")))
    return SourceSpec(**kwargs)


#: The keys of a ``source: path`` dataset that are its own (``conf/dataset/path.yaml``), not a reader's.
PATH_KEYS = ("path",)


def path_source(node: dict[str, Any]) -> dict[str, Any]:
    """A ``source: path`` dataset node (``dataset.path=<folder or CSV file>``) as the ``csv`` or ``folder`` node it
    stands for: a path ending in ``.csv`` is a CSV (image paths relative to its folder), anything else a folder
    ``<class>/<image>``. ``name: null`` becomes the folder's name (a CSV's: its folder's); ``group_col: auto``
    becomes ``group`` when the CSV has that column. Other nodes are returned unchanged."""
    if node.get("source") != "path":
        return node
    value = node.get("path")
    if value in (None, "", "???"):
        raise DataError("dataset.path is not set; pass dataset.path=<a folder <class>/<image>, or a CSV file>")
    path = Path(str(value)).expanduser().absolute()
    out = {k: v for k, v in node.items() if k not in PATH_KEYS}
    if path.suffix.lower() == ".csv":
        out.update(source="csv", root=str(path.parent), csv=path.name)
        out.pop("label_level", None)
        out.pop("group_pattern", None)
        if out.get("group_col") == "auto":
            out["group_col"] = "group" if "group" in _csv_header(path) else None
        default_name = path.parent.name
    else:
        if path.is_file():
            raise DataError(f"dataset.path={path}: a file that is not a .csv; pass a folder <class>/<image>, or a CSV "
                            "file (image,label[,group])")
        if path.is_dir() and (path / "labels.csv").is_file() and not any(p.is_dir() for p in path.iterdir()):
            raise DataError(f"dataset.path={path}: a folder without class folders, holding labels.csv; pass "
                            f"dataset.path={path / 'labels.csv'}")
        out.update(source="folder", root=str(path))
        for key in ("csv", "image_col", "label_col", "group_col"):
            out.pop(key, None)
        default_name = path.name
    out["name"] = out.get("name") or re.sub(r"[^A-Za-z0-9_.-]+", "_", default_name).strip("_") or "dataset"
    return out


def _csv_header(path: Path) -> list[str]:
    try:
        return list(pd.read_csv(path, nrows=0, dtype=str).columns)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return []  # reading the dataset reports it, naming the file


def check_two_classes(table: SampleTable, where: str) -> None:
    """Refuse a collection with fewer than two images or two classes, naming ``where`` (the path given)."""
    counts = table.class_counts()
    if len(table) < 2 or len(counts) < 2:
        found = ", ".join(f"{c!r}: {n}" for c, n in counts.items()) or "none"
        raise DataError(f"{where}: {len(table)} image(s) in {len(counts)} class(es) ({found}); ranking and "
                        "fine-tuning need at least 2 classes with 3 images each (a folder <class>/<image> with a "
                        "folder per class, or a CSV with a label column)")


def read_source(spec: SourceSpec) -> SampleTable | dict[str, SampleTable]:
    """Read a source: one table, or for MedMNIST its predefined ``train``/``val``/``test`` tables."""
    if spec.source == "synthetic":
        return read_csv(_generate(spec))
    if spec.source == "csv":
        return read_csv(spec)
    if spec.source == "folder":
        return read_folder(spec)
    if spec.source == "medmnist":
        return read_medmnist(spec)
    raise DataError(f"dataset {spec.name!r}: unknown source {spec.source!r}; expected csv, folder, medmnist or synthetic")


def missing_data_error(spec: SourceSpec, what: Path) -> DataError:
    """The error for a dataset folder or file that is not there: what to set, and where to download."""
    hint = f"\n{spec.download_hint}" if spec.download_hint else ""
    return DataError(
        f"dataset {spec.name!r}: {what} does not exist. Set dataset.root=/path/to/{spec.name} "
        f"(currently {spec.root}).{hint}"
    )


def _generate(spec: SourceSpec) -> SourceSpec:
    from medxfer.data.synthetic import generate_synthetic

    params = dict(spec.synthetic)
    task = params.pop("task", spec.name)
    csv_path = generate_synthetic(task, spec.root, **params)
    return SourceSpec(**{**spec.__dict__, "source": "csv", "csv": Path(csv_path).name, "group_col": spec.group_col or "group"})


def read_csv(spec: SourceSpec, *, contents: bool = True) -> SampleTable:
    """Read a CSV table of images; the error names the file and the row at fault.

    An image listed in two rows (or, with ``contents``, two files with the same bytes) is an error or dropped,
    as ``spec.duplicates`` says (:mod:`medxfer.data.duplicates`).

    ``spec.csv`` is relative to ``spec.root`` or absolute (a published split file kept apart from the images).
    Each image path loses ``strip_prefix`` (the paper's CSVs start every path with ``/``, meaning the dataset
    root), then goes through ``image_template`` and is resolved under the root.
    """
    path = spec.root / spec.csv
    if not spec.root.exists():
        raise missing_data_error(spec, spec.root)
    if not path.is_file():
        raise missing_data_error(spec, path)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not a readable CSV file: {err}") from None
    if spec.image_col not in df.columns:
        raise DataError(f"{path}: no column {spec.image_col!r} for image paths; set dataset.image_col=<column>; "
                        f"columns found: {list(df.columns)}")
    if spec.label_columns:
        missing = [c for c in spec.label_columns if c not in df.columns]
        if missing:
            raise DataError(f"{path}: one-hot label columns {missing} missing; columns are {list(df.columns)}")
        onehot = df[list(spec.label_columns)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
        bad = np.flatnonzero(~np.isfinite(onehot).all(axis=1) | (onehot.max(axis=1) <= 0))
        if len(bad):
            raise DataError(f"{path}: row {bad[0] + 2} has no positive one-hot label in {list(spec.label_columns)}")
        raw = [spec.label_columns[i] for i in onehot.argmax(axis=1)]
    else:
        if spec.label_col not in df.columns:
            raise DataError(f"{path}: no column {spec.label_col!r} for labels; set dataset.label_col=<column>; "
                            f"columns found: {list(df.columns)}")
        raw = df[spec.label_col].tolist()
    empty = [i for i, v in enumerate(raw) if str(v).strip() == ""]
    if empty:
        raise DataError(f"{path}: row {empty[0] + 2} has an empty label (column {spec.label_col!r})")
    groups = None
    if spec.group_col:
        if spec.group_col not in df.columns:
            raise DataError(f"{path}: group column {spec.group_col!r} not found; set dataset.group_col=<column> (or "
                            f"null for none); columns found: {list(df.columns)}")
        groups = df[spec.group_col].to_numpy(dtype=object)
    images = df[spec.image_col].tolist()
    keep = np.arange(len(df))
    raw = [str(v) for v in raw]
    if spec.label_map:
        mapped = [spec.label_map.get(v, v) for v in raw]
        keep = np.array([i for i, v in enumerate(mapped) if v is not None and v != "__drop__"], dtype=np.int64)
        raw = [mapped[i] for i in keep]
    paths, ids = [], []
    for i in keep:
        where = f"{path} row {i + 2}"
        value = str(images[i])
        if value.strip() == "":
            raise DataError(f"{where}: empty image path (column {spec.image_col!r})")
        if spec.strip_prefix:
            if not value.startswith(spec.strip_prefix):
                raise DataError(f"{where}: image path {value!r} does not start with strip_prefix {spec.strip_prefix!r}")
            value = value[len(spec.strip_prefix):]
        rel = spec.image_template.format(image=value)
        ids.append(rel)
        paths.append(resolve_under(spec.root, rel, allow_absolute=spec.allow_absolute_paths, where=where))
    unique = resolve_duplicates(paths, raw, [f"row {i + 2}" for i in keep], source=str(path),
                                policy=spec.duplicates, contents=contents)
    if len(unique) < len(paths):
        keep, paths, ids, raw = keep[unique], [paths[j] for j in unique], [ids[j] for j in unique], [raw[j] for j in unique]
    labels, names = encode_labels(raw, str(path), spec.classes, [f"row {i + 2}" for i in keep])
    return SampleTable(
        name=spec.name, labels=labels, class_names=names, paths=tuple(paths),
        groups=None if groups is None else groups[keep], ids=tuple(ids),
    )


def read_folder(spec: SourceSpec) -> SampleTable:
    """Read ``<root>/.../<class>/.../<image>``; the class is the directory at ``label_level`` below the root
    (0 = first level, -1 = the image's own folder); ``group_pattern`` is a regex whose first group, searched
    in the file name, gives the group (e.g. BreakHis patient ids)."""
    if not spec.root.is_dir():
        raise missing_data_error(spec, spec.root)
    exts = {e.lower() for e in spec.extensions}
    files = sorted(p for p in spec.root.rglob("*") if p.suffix.lower() in exts and p.is_file())
    if not files:
        raise DataError(f"dataset {spec.name!r}: no image files ({', '.join(sorted(exts))}) under {spec.root}")
    raw, groups, rels = [], [], []
    pattern = re.compile(spec.group_pattern) if spec.group_pattern else None
    kept = []
    for f in files:
        rel = f.relative_to(spec.root)
        dirs = rel.parts[:-1]
        try:
            label = dirs[spec.label_level]
        except IndexError:
            raise DataError(
                f"dataset {spec.name!r}: {f} has no class folder at label_level={spec.label_level} below {spec.root}"
            ) from None
        if spec.label_map:
            label = spec.label_map.get(label, label)
            if label is None or label == "__drop__":
                continue
        if pattern:
            m = pattern.search(f.name)
            if not m:
                raise DataError(f"dataset {spec.name!r}: file name {f.name} does not match group_pattern {spec.group_pattern!r}")
            groups.append(m.group(1))
        raw.append(label)
        rels.append(str(rel))
        kept.append(f)
    unique = resolve_duplicates(kept, raw, rels, source=str(spec.root), policy=spec.duplicates)
    if len(unique) < len(kept):
        raw, rels, kept = [raw[j] for j in unique], [rels[j] for j in unique], [kept[j] for j in unique]
        groups = [groups[j] for j in unique] if pattern else groups
    labels, names = encode_labels(raw, str(spec.root), spec.classes, [str(f) for f in kept])
    return SampleTable(
        name=spec.name, labels=labels, class_names=names, paths=tuple(kept),
        groups=np.array(groups, dtype=object) if pattern else None, ids=tuple(rels),
    )


def read_medmnist(spec: SourceSpec) -> dict[str, SampleTable]:
    """Read a MedMNIST+ ``.npz`` file from ``root`` (no download): predefined train/val/test splits."""
    flag, size = spec.medmnist_flag, spec.medmnist_size
    if not flag:
        raise DataError(f"dataset {spec.name!r}: medmnist.flag is not set (e.g. pathmnist, dermamnist)")
    candidates = [spec.root / f"{flag}_{size}.npz"] + ([spec.root / f"{flag}.npz"] if size == 28 else [])
    path = next((c for c in candidates if c.is_file()), None)
    if path is None:
        raise DataError(
            f"dataset {spec.name!r}: {candidates[0]} not found. " + MEDMNIST_HINT.format(flag=flag, size=size, root=spec.root)
        )
    try:
        npz = np.load(path, allow_pickle=False)
        arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: not a readable MedMNIST .npz file: {err}") from None
    tables = {}
    all_labels = []
    for split in ("train", "val", "test"):
        if f"{split}_images" not in arrays or f"{split}_labels" not in arrays:
            raise DataError(f"{path}: missing arrays {split}_images/{split}_labels; found {sorted(arrays)}")
        lab = arrays[f"{split}_labels"]
        if lab.ndim == 2 and lab.shape[1] > 1:
            raise DataError(f"{path}: {split}_labels has {lab.shape[1]} columns (multi-label); medxfer needs one label per image")
        all_labels.append(lab.reshape(-1))
    raw = [str(v) for v in np.concatenate(all_labels)]
    if spec.label_map:
        raw = [spec.label_map.get(v, v) for v in raw]
    codes, names = encode_labels(raw, str(path), spec.classes)
    start = 0
    for split, lab in zip(("train", "val", "test"), all_labels):
        images = arrays[f"{split}_images"]
        if images.dtype != np.uint8:
            raise DataError(f"{path}: {split}_images has dtype {images.dtype}, expected uint8")
        tables[split] = SampleTable(
            name=f"{spec.name}/{split}", labels=codes[start:start + len(lab)], class_names=names, images=images,
            ids=tuple(f"{split}:{i}" for i in range(len(lab))),
        )
        start += len(lab)
    return tables


def read_group_table(root: Path, node: dict[str, Any], dataset: str) -> dict[str, str]:
    """Image id -> group from a metadata table (``dataset.group_table``: ``csv``, under ``root`` unless absolute;
    ``key``, the column of image ids; ``group``, the column of groups), e.g. HAM10000's ``image_id`` ->
    ``lesion_id``. A table that is missing, lacks a column, or gives one image two groups is an error."""
    for k in ("csv", "key", "group"):
        if not node.get(k):
            raise DataError(f"dataset {dataset!r}: dataset.group_table.{k} is not set (csv, key and group are needed)")
    path = Path(str(node["csv"])).expanduser()
    path = path if path.is_absolute() else root / path
    if not path.is_file():
        raise DataError(f"dataset {dataset!r}: group table {path} (dataset.group_table.csv) not found")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not a readable CSV file: {err}") from None
    missing = [node[k] for k in ("key", "group") if node[k] not in df.columns]
    if missing:
        raise DataError(f"{path}: no column {missing[0]!r} (dataset.group_table); columns are {list(df.columns)}")
    groups: dict[str, str] = {}
    for row, (key, group) in enumerate(zip(df[node["key"]], df[node["group"]]), start=2):
        if groups.setdefault(key, group) != group:
            raise DataError(f"{path} row {row}: image {key!r} has group {group!r} here and {groups[key]!r} earlier")
    return groups


def with_group_table(table: SampleTable, groups: dict[str, str], source: str) -> SampleTable:
    """``table`` with each image's group looked up by its file name without extension; an image the table does
    not list is an error naming it."""
    keys = [Path(i).stem for i in table.ids]
    unknown = [i for i, k in enumerate(keys) if k not in groups]
    if unknown:
        raise DataError(f"{table.name}: {len(unknown)} image(s) have no row in the group table {source}, e.g. "
                        f"{table.ids[unknown[0]]} (looked up as {keys[unknown[0]]!r})")
    return dataclasses.replace(table, groups=np.array([groups[k] for k in keys], dtype=object))
