"""What a command writes into a log file: no progress bars, one line when a cell starts and one when it ends,
no third-party noise, each medxfer warning once."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from conftest import TINY
from medxfer.cli._warnings import OncePerCommand, filter_known_warnings
from medxfer.progress import StageClock, cell_position, counting, format_duration, show_progress

BIN = Path(sys.executable).parent


def test_progress_auto_means_a_terminal(monkeypatch):
    class Stream:
        def __init__(self, tty):
            self.tty = tty

        def isatty(self):
            return self.tty

    monkeypatch.setattr(sys, "stderr", Stream(False))
    assert show_progress("auto") is False and show_progress(None) is False and show_progress(True) is True
    monkeypatch.setattr(sys, "stderr", Stream(True))
    assert show_progress("auto") is True and show_progress(False) is False
    with pytest.raises(ValueError, match=r"extract\.progress='sometimes': expected true, false or auto"):
        show_progress("sometimes", "extract.progress")


def test_cell_position_inside_the_study():
    assert cell_position() == ""
    with counting(3, 42):
        assert cell_position() == " 3/42"
    with counting(3, 42, 720.0):
        assert cell_position() == " 3/42, ~12 min left"
    assert cell_position() == ""


def test_the_time_left_comes_from_the_cells_that_ran():
    clock = StageClock(10)
    assert clock.left_s() is None  # nothing measured yet: no guess
    clock.record(0.01, ran=False)  # already FINISHED: no sample, but one cell fewer to go
    assert clock.left_s() is None
    clock.record(20.0, ran=True)
    clock.record(40.0, ran=True)
    assert clock.left_s() == pytest.approx(30.0 * 7)
    assert [format_duration(s) for s in (42, 89.6, 150, 720, 3900)] == ["42 s", "90 s", "2 min", "12 min", "1 h 05 min"]


def test_known_third_party_warnings_are_dropped():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        filter_known_warnings()
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec)`", FutureWarning)
        warnings.warn("The `srun` command is available on your system but is not used. HINT: ...", UserWarning)
        warnings.warn("something the user should see", UserWarning)
    assert [str(w.message) for w in seen] == ["something the user should see"]


def test_a_medxfer_warning_is_shown_once_per_form():
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    once = OncePerCommand()
    handlers = [Keep(), Keep()]  # Hydra's console and file handlers see the same record
    for h in handlers:
        h.addFilter(once)
    log = logging.getLogger("medxfer.test_logs")
    log.propagate, level = False, log.level
    log.setLevel(logging.INFO)
    for h in handlers:
        log.addHandler(h)
    try:
        log.warning("GBC uses %d PCA components instead of 64", 9)
        log.warning("GBC uses %d PCA components instead of 64", 11)  # same form: dropped
        log.warning("model %s was trained on data that overlaps %s", "a", "b")  # another form: shown
        log.info("info is never dropped")
        log.info("info is never dropped")
    finally:
        for h in handlers:
            log.removeHandler(h)
        log.setLevel(level)
    gbc = "GBC uses 9 PCA components instead of 64 (similar warnings are not repeated in this command)"
    overlap = "model a was trained on data that overlaps b (similar warnings are not repeated in this command)"
    assert records == [gbc, gbc, overlap, overlap] + ["info is never dropped"] * 4


@pytest.mark.slow  # a two-job sweep: about a minute on a loaded CPU
def test_score_multirun_log_has_one_start_and_one_end_line_per_cell(tmp_path, shared_data_dir):
    """A sweep of two models with stdout and stderr into one file, as ``make study > log 2>&1``."""
    models = ("efficientnet_lite0", "efficientnet_lite1")
    tiny = [o for o in TINY if "progress" not in o]  # progress=auto: the default, off in a file
    env = {**os.environ, "MEDXFER_ROOT": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    log_path = tmp_path / "log"
    with open(log_path, "w") as log:
        proc = subprocess.run(
            [str(BIN / "medxfer-score"), "-m", f"model={','.join(models)}", "dataset=synthetic_derm",
             f"paths.data_dir={tmp_path / 'data'}", f"hydra.sweep.dir={tmp_path}/sweep", *tiny],
            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=900,
        )
    text = log_path.read_text()
    assert proc.returncode == 0, text[-3000:]
    assert "\r" not in text, "a progress bar wrote carriage returns into the log"
    lines = text.splitlines()
    medxfer_log = re.compile(r"^\[[^]]+\]\[medxfer[.\w]*\]\[[A-Z]+\] - ")  # medxfer's own logging lines
    medxfer_warning = re.compile(r"^\[[^]]+\]\[medxfer[.\w]*\]\[WARNING\] - ")
    other = [ln for ln in lines if not (ln.startswith("[score]") or "[HYDRA]" in ln or medxfer_log.match(ln))]
    assert other == [], "lines that are neither medxfer's nor Hydra's:\n" + "\n".join(other)
    for m in models:
        for split in ("train", "ood"):
            cell = f"{m}@synthetic_derm/{split}: "
            assert sum(ln.startswith(f"[score] {cell}starting") for ln in lines) == 1, text
            ends = [ln for ln in lines if ln.startswith(f"[score] {cell}") and re.search(r" in \d+\.\d+s$", ln)]
            assert len(ends) == 1 and "logme=" in ends[0], text
    forms = [re.sub(r"\d+(\.\d+)?", "#", medxfer_warning.sub("", ln)) for ln in lines if medxfer_warning.match(ln)]
    assert len(forms) == len(set(forms)), "a medxfer warning repeated:\n" + "\n".join(forms)


def test_medxfer_warnings_reach_the_log_as_log_lines_once_each(monkeypatch, capsys):
    """EnsembleWarning, UndefinedCorrelation, ScoreWarning: one log line each, by their module's logger, without
    Python's ``file:line: Category:`` header and the source line that raised them."""
    from medxfer.analysis.correlation import UndefinedCorrelation
    from medxfer.analysis.ensembles import EnsembleWarning
    from medxfer.scores import ScoreWarning

    records = []

    class Keep(logging.Handler):  # stands for Hydra's console and file handlers on the root logger
        def emit(self, record):
            records.append((record.name, record.levelname, record.getMessage()))

    shown_by_python = []
    root, handler = logging.getLogger(), Keep()
    monkeypatch.setattr(warnings, "showwarning", lambda message, category, *a, **k: shown_by_python.append(category))
    monkeypatch.setattr(root, "handlers", [])  # only the stand-in: not handlers earlier in-process commands left
    root.addHandler(handler)
    try:
        filter_known_warnings()
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("the in-distribution table: dataset(s) ['a'] have fewer than 2 models", EnsembleWarning)
            warnings.warn("the in-distribution table: dataset(s) ['a'] have fewer than 2 models", EnsembleWarning)
            warnings.warn("tau undefined (constant score or target), reported as NaN, for dataset/score: a/hscore",
                          UndefinedCorrelation)
            warnings.warn("GBC uses 9 PCA components instead of 64", ScoreWarning)
            warnings.warn("GBC uses 11 PCA components instead of 64", ScoreWarning)  # same form
            warnings.warn("a library's own warning", DeprecationWarning)
    finally:
        root.removeHandler(handler)
    repeat = " (similar warnings are not repeated in this command)"
    assert records == [
        ("medxfer.analysis.ensembles", "WARNING",
         "the in-distribution table: dataset(s) ['a'] have fewer than 2 models" + repeat),
        ("medxfer.analysis.correlation", "WARNING",
         "tau undefined (constant score or target), reported as NaN, for dataset/score: a/hscore" + repeat),
        ("medxfer.scores.errors", "WARNING", "GBC uses 9 PCA components instead of 64" + repeat),
    ]
    assert shown_by_python == [DeprecationWarning]  # not medxfer's: Python's display, unchanged
    assert "Warning" not in capsys.readouterr().err
