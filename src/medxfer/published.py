"""Published reference tables shipped with medxfer (``src/medxfer/reference/<name>``), read as the analysis'
long table: the paper's transferability scores and fine-tuned test balanced accuracies, and the class counts
of the test set each accuracy was measured on (counted from the vendored split files, not typed in)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from medxfer.config import reference_dir
from medxfer.data.tables import DataError
from medxfer.errors import ConfigError

#: The reference tables medxfer ships: name -> the paper's task -> its split folder under ``splits/``.
REFERENCES = {
    "chaves2023": {"brain_tumor_kaggle": "brain_tumor", "breakhis": "breakhis", "skin_splits": "isic19"},
}
PERFORMANCES = "task_performances.csv"
SCORES = "transf_metrics_values.csv"


@dataclass(frozen=True)
class ReferenceTable:
    """A published study: ``table`` is the long table ``dataset, model, score, value, target`` (``target``: the
    published test balanced accuracy; scores without the ``_score`` suffix); ``class_counts``: dataset -> test
    samples per class code 0..C-1; ``splits``: dataset -> the split file they were counted from."""

    name: str
    table: pd.DataFrame
    class_counts: dict[str, np.ndarray]
    splits: dict[str, Path]


def _read(path: Path, columns: list[str]) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path)
    except FileNotFoundError:
        raise DataError(f"reference table {path} is missing; reinstall medxfer") from None
    absent = [c for c in columns if c not in frame.columns]
    if absent:
        raise DataError(f"{path}: columns {absent} are missing; it has {list(frame.columns)}")
    return frame


def split_class_counts(split_file: Path) -> np.ndarray:
    """Samples per class code (0..max) in a published test split (column ``label``)."""
    labels = _read(split_file, ["label"])["label"]
    if not pd.api.types.is_integer_dtype(labels) or (labels < 0).any():
        raise DataError(f"{split_file}: column label holds {labels.dtype} values; expected class codes 0..C-1")
    counts = np.bincount(labels.to_numpy(np.int64))
    if (counts == 0).any():
        raise DataError(f"{split_file}: class code(s) {np.flatnonzero(counts == 0).tolist()} have no test sample")
    return counts


def read_reference(name: str) -> ReferenceTable:
    """The reference ``name`` (one of :data:`REFERENCES`) as a :class:`ReferenceTable`."""
    if name not in REFERENCES:
        raise ConfigError(f"reference={name!r} is not shipped with medxfer; known: {sorted(REFERENCES)}")
    root = Path(reference_dir(name))
    perf = _read(root / PERFORMANCES, ["task", "model", "test_acc_score"])
    scores = _read(root / SCORES, ["task", "model", "metric", "value"])
    tasks = REFERENCES[name]
    unknown = sorted((set(perf["task"]) | set(scores["task"])) - set(tasks))
    if unknown:
        raise DataError(f"{root}: task(s) {unknown} have no split folder in medxfer's list ({sorted(tasks)})")
    if perf.duplicated(["task", "model"]).any():
        task, model = perf.loc[perf.duplicated(["task", "model"]), ["task", "model"]].iloc[0]
        raise DataError(f"{root / PERFORMANCES}: task {task!r} model {model!r} is listed twice")
    t = scores.merge(perf, on=["task", "model"], how="left", validate="many_to_one")
    lost = t[t["test_acc_score"].isna()]
    if len(lost):
        raise DataError(f"{root / SCORES}: task {lost['task'].iloc[0]!r} model {lost['model'].iloc[0]!r} has scores "
                        f"but no accuracy in {PERFORMANCES}")
    table = pd.DataFrame({"dataset": t["task"], "model": t["model"], "score": t["metric"].str.removesuffix("_score"),
                          "value": t["value"].astype(float), "target": t["test_acc_score"].astype(float)})
    splits = {task: root / "splits" / folder / "test.csv" for task, folder in tasks.items() if task in set(perf["task"])}
    return ReferenceTable(name, table, {task: split_class_counts(path) for task, path in splits.items()}, splits)
