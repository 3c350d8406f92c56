"""The data check: read a dataset as the score and fine-tune stages would and report what it holds and what is
wrong with it, without building a model or touching the tracking store."""

from __future__ import annotations

import contextlib
import json
import sys

from omegaconf import DictConfig, OmegaConf

from medxfer.data.audit import DataReport, audit_dataset, format_report
from medxfer.cells import digest_store
from medxfer.data.datasets import load_dataset
from medxfer.data.fetch import fetch_dataset

FORMATS = ("text", "json")


def run_data(cfg: DictConfig) -> DataReport:
    """The report of the dataset ``cfg.dataset`` (splits, subsampling and OOD set exactly as the stages read
    them); ``cfg.images`` chooses how far images are read (``none``, ``open``, ``decode``) with ``cfg.workers``
    threads. Given split files that share an image or a group are reported, not refused."""
    c = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    if c["format"] not in FORMATS:
        raise ValueError(f"format={c['format']!r}: expected one of {list(FORMATS)}")
    dataset = c["dataset"]
    # synthetic data is generated on first use and says so on stdout; keep stdout for the report (format=json)
    with contextlib.redirect_stdout(sys.stderr):
        data = load_dataset(dataset, check_splits=False)
    return audit_dataset(
        data, by_group=bool((dataset.get("split") or {}).get("by_group", True)),
        group_column=(dataset.get("group_table") or {}).get("group") or dataset.get("group_col"),
        ood_group_column=(dataset.get("ood") or {}).get("group_col"), images=c["images"], workers=int(c["workers"]),
    )


def render(report: DataReport, fmt: str) -> str:
    """The report as ``text`` (a table and lists) or ``json`` (:meth:`DataReport.as_dict`)."""
    if fmt == "json":
        return json.dumps(report.as_dict(), indent=2)
    return format_report(report)


def run_fetch(cfg: DictConfig) -> dict[str, int]:
    """``medxfer-data fetch <dataset>``: download the dataset's pinned public archive and place its files, checked,
    under ``dataset.root`` (:func:`medxfer.data.fetch.fetch_dataset`); a dataset without one is an error saying
    where to get it."""
    c = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    dataset = c["dataset"]
    return fetch_dataset(
        dataset["name"], dataset["root"], url=(c.get("fetch") or {}).get("url"), progress=c.get("progress"),
        digests=digest_store(c["paths"]["cache_dir"]), hint=dataset.get("download_hint"),
    )
