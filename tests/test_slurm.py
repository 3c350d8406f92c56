"""Sweeps through ``hydra/launcher=slurm`` (our preset over submitit_slurm) on a real one-node SLURM cluster.

The cluster (tests/slurm_cluster.py) is slurmctld + slurmd on 127.0.0.1 with one partition; sbatch, srun and
scontrol are SLURM's own. What runs for real: the preset composed into an sbatch script (its ``setup`` line,
the partition from ``MEDXFER_SLURM_PARTITION``), one job array per multirun with one task per cell, submitit
inside each task, the SQLite store written by the array's tasks at once; and, for a fine-tune trial, a
time-out: the signal SLURM sends ``signal_delay_s`` before a job's limit (USR2) delivered to the running task by
slurmd, submitit's handler counting it against ``max_num_timeout`` and calling the launcher's ``checkpoint()``,
``scontrol requeue``, the job run again by SLURM and the trial resuming from its ``last.ckpt``.

Two shortcuts, both around SLURM's clock rather than medxfer: the test sends that USR2 itself
(``scancel --signal=USR2``, as submitit's own ``SlurmJob._interrupt(timeout=True)``) once the trial has written
its first ``last.ckpt`` (freezing the trial with SIGSTOP until the signal is pending in it, so that it lands
mid-training however fast this machine trains), because slurmctld checks time limits only every 30 s, so a limit
that really runs out would make the outcome depend on how fast this machine trains; and it releases the requeued job at once
(``scontrol update StartTime=now``) instead of waiting the ~120 s slurmctld holds it.

Adapted to this CPU node on the command line, as a user would on a cluster without GPUs:
``gpus_per_node=null cpus_per_task=1 mem_gb=1``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from conftest import TINY
from slurm_cluster import SlurmCluster, missing_slurm, slurm_required, start_slurm

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]
CPU_NODE = ["hydra.launcher.gpus_per_node=null", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1"]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory) -> SlurmCluster:
    """A one-node cluster for this module; skipped only where SLURM cannot start, and never in CI."""
    reason = missing_slurm()
    if reason:
        if slurm_required():
            pytest.fail(f"SLURM is required here (CI or MEDXFER_REQUIRE_SLURM=1) but cannot start: {reason}")
        pytest.skip(reason)
    try:
        cluster = start_slurm(tmp_path_factory.mktemp("slurm"))
    except (OSError, RuntimeError, subprocess.SubprocessError) as err:
        if slurm_required():
            raise
        pytest.skip(f"the test SLURM cluster did not start: {err}")
    try:
        yield cluster
    finally:
        cluster.stop()


def _project(root: Path) -> Path:
    """A project root whose ``.venv`` is this checkout's, so that the preset's ``setup`` line works unchanged."""
    (root / ".venv").symlink_to(REPO / ".venv")
    return root


def _sweep(command: str, args: list[str], root: Path, cluster: SlurmCluster, timeout: float) -> str:
    env = {**os.environ, "MEDXFER_ROOT": str(root), "HF_HUB_OFFLINE": "1", "MEDXFER_SLURM_PARTITION": cluster.partition,
           **cluster.env}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [str(BIN / command), "-m", "hydra/launcher=slurm", *CPU_NODE, *args, f"hydra.sweep.dir={root}/sweep"]
    try:
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        out = (err.stdout or b"").decode(errors="replace") + (err.stderr or b"").decode(errors="replace")
        pytest.fail(f"{command} did not finish within {timeout:.0f} s\n{out[-3000:]}\n{_job_logs(root)}\n"
                    f"{cluster.logs()}")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{output[-4000:]}\n{_job_logs(root)}"
    return output


def _job_logs(root: Path, tail: int = 2500) -> str:
    """The end of every task's submitit log (stdout and stderr), for failure messages and checks."""
    parts = []
    for log in sorted((root / "sweep" / ".submitit").rglob("*.out")) + sorted((root / "sweep" / ".submitit").rglob("*.err")):
        parts.append(f"--- {log.name} ---\n{log.read_text(errors='replace')[-tail:]}")
    return "\n".join(parts)


def _runs(root: Path, experiment: str) -> pd.DataFrame:
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlruns/mlflow.db")
    return mlflow.search_runs(experiment_names=[experiment])


def _array(cluster: SlurmCluster, root: Path, timeout: float = 60) -> list[dict[str, str]]:
    """The SLURM records of the sweep's jobs, found by the job ids submitit named its folders after,
    once they have ended: submitit returns when a task's result is written, before its process has exited."""
    ids = {p.name for p in (root / "sweep" / ".submitit").iterdir() if p.is_dir()}
    deadline = time.monotonic() + timeout
    while True:
        # an array task is <array>_<task>; a sweep of one cell is submitted as a plain job
        jobs = [j for j in cluster.jobs() if j["JobId"] in ids or f"{j.get('ArrayJobId')}_{j.get('ArrayTaskId')}" in ids]
        if not any(j["JobState"] in ("PENDING", "RUNNING", "COMPLETING") for j in jobs) or time.monotonic() > deadline:
            return jobs
        time.sleep(1)


def test_score_sweep_runs_as_one_slurm_array_and_finishes_every_cell_once(slurm, tmp_path, shared_data_dir):
    root = _project(tmp_path)
    models, datasets = ("efficientnet_lite0", "efficientnet_lite1"), ("synthetic_derm", "synthetic_mri")
    output = _sweep("medxfer-score", [f"model={','.join(models)}", f"dataset={','.join(datasets)}", "score=logme",
                                      f"paths.data_dir={shared_data_dir}", *TINY], root, slurm, timeout=600)
    assert "Submitit 'slurm' sweep" in output
    jobs = _array(slurm, root)
    assert len(jobs) == 4 and len({j["ArrayJobId"] for j in jobs}) == 1, jobs  # one array, one task per cell
    assert {j["JobState"] for j in jobs} == {"COMPLETED"} and {j["Partition"] for j in jobs} == {slurm.partition}
    script = next((root / "sweep" / ".submitit").rglob("*_submission.sh")).read_text()
    # the preset's setup line; array_parallelism (16) capped by submitit at the array's size
    assert f"source {root}/.venv/bin/activate" in script and "#SBATCH --array=0-3%4" in script, script
    runs = _runs(root, "default/score")
    cells = list(zip(runs["tags.model"], runs["tags.dataset"], runs["tags.split"]))
    splits = set(runs["tags.split"])  # the in-distribution split's name, and the OOD set's
    assert len(splits) == 2 and "ood" in splits, splits
    expected = {(m, d, s) for m in models for d in datasets for s in splits}
    assert sorted(cells) == sorted(expected)  # each cell exactly once
    assert set(runs["status"]) == {"FINISHED"} and runs["metrics.score/logme"].notna().all()
    assert len(set(runs["tags.pid"])) == 4  # one process per array task


FT_EPOCHS = 30
USR2_BIT = 1 << (signal.SIGUSR2 - 1)  # the signal's bit in /proc/<pid>/status's pending masks


def _trial_processes(root: Path) -> list[int]:
    """The pids of the submitit tasks running a trial of the project ``root`` (this one-node cluster is this host)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:  # exited, or not ours to read
            continue
        # the task's python, not the srun that started it (srun's command line names the module too)
        if b"python" in Path(argv[0].decode()).name.encode() and b"submitit.core._submit" in argv \
                and f"MEDXFER_ROOT={root}".encode() in environ:
            pids.append(int(proc.name))
    return pids


def _usr2_pending(pid: int) -> bool:
    masks = {k: v for k, _, v in (line.partition(":") for line in Path(f"/proc/{pid}/status").read_text().splitlines())}
    return bool((int(masks["SigPnd"], 16) | int(masks["ShdPnd"], 16)) & USR2_BIT)


@contextlib.contextmanager
def _time_out_once_checkpointed(cluster: SlurmCluster, root: Path) -> Iterator[list[str]]:
    """While inside: once the running trial has written its first ``last.ckpt``, send its job the signal SLURM
    sends ``signal_delay_s`` before the time limit (``scancel --signal=USR2``, delivered by slurmd to the task like
    the real one; submitit's own ``SlurmJob._interrupt(timeout=True)``). Once only. Yields the job ids signalled.

    The trial is frozen (SIGSTOP) from its first checkpoint until the signal is pending in it, then thawed: the
    signal lands mid-training however fast this machine trains and however slowly slurmctld answers."""
    signalled: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        while not signalled and not stop.wait(0.05):
            if not list(root.glob("**/last.ckpt")):
                continue
            frozen = _trial_processes(root)
            for pid in frozen:
                os.kill(pid, signal.SIGSTOP)
            try:
                running = cluster.run("squeue", "-h", "-t", "R", "-o", "%i", timeout=30).split()
                for job_id in running:
                    cluster.run("scancel", "--signal=USR2", job_id, timeout=30)
                    signalled.append(job_id)
                deadline = time.monotonic() + 60
                while frozen and not all(_usr2_pending(pid) for pid in frozen) and time.monotonic() < deadline:
                    time.sleep(0.05)
            except (RuntimeError, subprocess.TimeoutExpired, OSError):
                continue
            finally:
                for pid in frozen:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGCONT)

    thread = threading.Thread(target=watch, name="time-out", daemon=True)
    thread.start()
    try:
        yield signalled
    finally:
        stop.set()
        thread.join(timeout=90)


def test_finetune_trial_timed_out_on_slurm_is_requeued_and_resumes_from_last_ckpt(slurm, tmp_path, shared_data_dir):
    root = _project(tmp_path)
    tiny = [o for o in TINY if not o.startswith("extract.")]
    args = ["model=efficientnet_lite0", "dataset=synthetic_derm", "trial=0", "finetune=smoke", "ood_scores=[]",
            f"finetune.max_epochs={FT_EPOCHS}", "finetune.batch_size=8", "finetune.progress=false",
            f"paths.data_dir={shared_data_dir}", *tiny, "hydra.launcher.timeout_min=10"]
    with slurm.releasing_requeued_jobs() as released, _time_out_once_checkpointed(slurm, root) as signalled:
        _sweep("medxfer-finetune", args, root, slurm, timeout=540)
    logs = _job_logs(root, tail=20000)
    (job,) = _array(slurm, root)
    assert signalled and released and job["JobState"] == "COMPLETED" and job["Restarts"] == "1", job
    script = next((root / "sweep" / ".submitit").rglob("*_submission.sh")).read_text()
    assert "#SBATCH --signal=USR2@120" in script and "#SBATCH --time=10" in script, script
    # submitit counted a time-out (not a preemption) against the preset's max_num_timeout=3, and requeued
    assert "Caught signal SIGUSR2 on" in logs and "this job is timed-out" in logs, logs
    # and requeued the job (SLURM's SIGTERM for the requeue may end the task before submitit logs "Requeued")
    assert "Calling checkpoint method" in logs and "DUE TO JOB REQUEUE" in logs, logs
    runs = _runs(root, "default/finetune").sort_values("start_time")
    assert list(runs["status"]) == ["KILLED", "FINISHED"], runs[[c for c in ("status", "tags.error") if c in runs]]
    first, final = runs.iloc[0], runs.iloc[1]
    assert first["tags.cell"] == final["tags.cell"] and pd.isna(first.get("tags.resumed_from_epoch"))
    client = MlflowClient()
    before = [m.step for m in client.get_metric_history(first["run_id"], "train/loss")]
    after = [m.step for m in client.get_metric_history(final["run_id"], "train/loss")]
    resumed = int(final["tags.resumed_from_epoch"])
    # the requeued attempt went on after the last epoch the first one checkpointed, up to the configured count
    assert 1 <= resumed < FT_EPOCHS and after == list(range(resumed, FT_EPOCHS)), (before, after)
    # killed mid-epoch: at most the one epoch after the last checkpoint is redone (the signal can land after that
    # epoch's train/loss is logged and before its checkpoint is written, or the other way round)
    assert before == list(range(len(before))) and resumed - 1 <= len(before) <= resumed + 1
    assert not list(root.rglob("last.ckpt")) and Path(final["tags.checkpoint_path"]).is_file()
