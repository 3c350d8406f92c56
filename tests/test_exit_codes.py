"""Every command ends as docs/operations.md says: a bad option or bad input exits 2 with one message and no
traceback, SIGINT exits 130 and SIGTERM 143 with one line, whatever the command.

The commands run in this process through their installed entry points (``[project.scripts]``), with the work
they would do replaced by a signal or an error: what is checked is how the command ends, not the stage.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import tomllib
from pathlib import Path

import pytest

from medxfer.data.tables import DataError

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]

# per command: arguments it accepts, a mistyped option, and the function its work goes through
COMMANDS = {
    "medxfer-score": (["model=efficientnet_lite0"], ["model=efficientnet_litee0"], "medxfer.stages.score.run_score"),
    "medxfer-finetune": (["model=efficientnet_lite0"], ["finetune=smokee"], "medxfer.stages.finetune.run_finetune"),
    "medxfer-analyze": ([], ["tracking=sqlitee"], "medxfer.stages.analyze.run_analyze"),
    "medxfer-study": ([], ["no_such_option=1"], "medxfer.workflows.study.run_study"),
    "medxfer-reproduce": (["0123abcd"], [], "medxfer.workflows.reproduce.reproduce"),
    "medxfer-rank": (["dataset=synthetic_mri"], ["preprocess=smokee"], "medxfer.stages.rank.run_rank"),
    "medxfer-zoo": (["list"], ["list", "format=json", "no_such_key=1"], "medxfer.stages.zoo.run_zoo"),
    "medxfer-data": (["dataset=synthetic_mri"], ["dataset=isic2019x"], "medxfer.stages.data.run_data"),
    "medxfer-evidence": ([], ["tracking=sqlitee"], "medxfer.cli.evidence.write_evidence"),
}


def test_every_installed_command_is_covered():
    assert set(COMMANDS) == set(SCRIPTS)


def _run(script: str, args: list[str], monkeypatch, tmp_path) -> int:
    """Run ``script``'s entry point in this process as the shell would; its exit status."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MEDXFER_ROOT", str(tmp_path))
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(sys, "argv", [script, *args, *([] if script in ("medxfer-zoo", "medxfer-reproduce")
                                                       else [f"hydra.run.dir={tmp_path}/hydra"])])
    module, _, func = SCRIPTS[script].partition(":")
    try:
        getattr(importlib.import_module(module), func)()
    except SystemExit as stopped:
        return 0 if stopped.code is None else stopped.code
    return 0


def _replace_work(monkeypatch, target: str, work) -> None:
    module, _, name = target.rpartition(".")
    monkeypatch.setattr(importlib.import_module(module), name, work)


@pytest.mark.parametrize("script", sorted(COMMANDS))
def test_a_mistyped_option_exits_2_with_one_message(script, monkeypatch, tmp_path, capsys):
    good, bad, target = COMMANDS[script]
    if script == "medxfer-reproduce":  # argparse's own usage error, as Hydra's commands give for a bad option
        bad = ["0123abcd", "not-an-override"]
    _replace_work(monkeypatch, target, lambda *a, **k: pytest.fail("the work ran despite the bad option"))
    code = _run(script, bad, monkeypatch, tmp_path)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    assert script == "medxfer-reproduce" or f"{script}: error: " in err, err


@pytest.mark.parametrize("script", sorted(COMMANDS))
def test_its_own_error_exits_2_with_one_message(script, monkeypatch, tmp_path, capsys):
    good, _, target = COMMANDS[script]

    def fails(*args, **kwargs):
        raise DataError("labels.csv row 7: label '' is empty")

    _replace_work(monkeypatch, target, fails)
    code = _run(script, good, monkeypatch, tmp_path)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    assert err.strip().splitlines() == [f"{script}: error: labels.csv row 7: label '' is empty"]


@pytest.mark.parametrize("signum,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
@pytest.mark.parametrize("script", sorted(COMMANDS))
def test_an_interrupt_exits_130_or_143(script, signum, status, monkeypatch, tmp_path, capsys):
    good, _, target = COMMANDS[script]

    def interrupted(*args, **kwargs):
        os.kill(os.getpid(), signum)  # as `kill` or Ctrl-C would, while the work runs
        pytest.fail("the signal did not stop the work")

    _replace_work(monkeypatch, target, interrupted)
    code = _run(script, good, monkeypatch, tmp_path)
    err = capsys.readouterr().err
    assert code == status, err
    assert "Traceback" not in err
    assert signal.Signals(signum).name in err
