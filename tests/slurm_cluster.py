"""A real single-node SLURM cluster on 127.0.0.1 for the tests: munged, slurmctld and slurmd in a temporary folder.

SLURM comes from Debian's packages (``apt-get install slurm-wlm munge``; ``.ci/run`` installs them). Everything
the cluster writes lives under one folder: its munge key and socket, ``slurm.conf`` and ``cgroup.conf``, the
controller's state, the node's spool, the logs. Clients find it through ``SLURM_CONF`` (``SlurmCluster.env``),
so a SLURM installation of the machine, if any, is never touched. The node is this host (its real name and
CPUs, as ``slurmd -C`` reports them) with one partition; process tracking is ``proctrack/linuxproc`` and there
are no cgroups, so it runs in a container too. The daemons run as root (SlurmUser=root), as they must to start
jobs; where they cannot start the tests skip, unless ``CI`` or ``MEDXFER_REQUIRE_SLURM=1`` is set: there a
cluster that does not start is a failure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from servers import free_port

PARTITION = "debug"
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "squeue", "sinfo", "scontrol", "scancel")


def slurm_required() -> bool:
    """True where a cluster that does not start must fail the tests instead of skipping them (CI)."""
    return bool(os.environ.get("CI")) or os.environ.get("MEDXFER_REQUIRE_SLURM") == "1"


def missing_slurm() -> str | None:
    """Why a cluster cannot be started here (binaries missing, not root), or None."""
    missing = [b for b in (*DAEMONS, *CLIENTS) if shutil.which(b) is None
               and not Path("/usr/sbin", b).is_file()]
    if missing:
        return f"SLURM binaries missing ({', '.join(missing)}): apt-get install slurm-wlm munge"
    if os.geteuid() != 0:
        return "slurmd must run as root to start jobs; these tests start their own cluster only as root"
    return None


def _binary(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


@dataclass
class SlurmCluster:
    """A running cluster: ``env`` points SLURM's commands (and submitit, through them) at it."""

    root: Path
    conf: Path
    node: str
    cpus: int
    partition: str = PARTITION
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def run(self, *cmd: str, timeout: float = 30) -> str:
        """A SLURM client command against this cluster; returns its stdout, raises on failure."""
        proc = subprocess.run(list(cmd), env={**os.environ, **self.env}, capture_output=True, text=True,
                              timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}: {proc.stderr.strip()}")
        return proc.stdout

    def node_state(self) -> str:
        return self.run("sinfo", "-h", "-N", "-n", self.node, "-o", "%T").strip()

    def jobs(self) -> list[dict[str, str]]:
        """Every job the controller knows (finished ones too, for ``MinJobAge``): ``scontrol show job`` fields."""
        out = self.run("scontrol", "-o", "show", "job")
        if "No jobs in the system" in out:
            return []
        return [dict(f.split("=", 1) for f in line.split() if "=" in f) for line in out.splitlines() if line.strip()]

    @contextlib.contextmanager
    def releasing_requeued_jobs(self) -> Iterator[list[str]]:
        """While inside, start requeued jobs at once: slurmctld makes a requeued batch job wait about 120 s
        (``Reason=BeginTime``, hard-coded) before it is eligible again; ``scontrol update StartTime=now`` is what
        an administrator would run. Yields the ids released, filled in as they are."""
        released: list[str] = []
        stop = threading.Event()

        def watch() -> None:
            while not stop.wait(1.0):
                try:
                    pending = self.run("squeue", "-h", "-t", "PD", "-o", "%i %r", timeout=15).split("\n")
                    for job_id, _, reason in (line.partition(" ") for line in pending if line.strip()):
                        if reason.strip() == "BeginTime":
                            self.run("scontrol", "update", f"JobId={job_id}", "StartTime=now", timeout=15)
                            released.append(job_id)
                except (RuntimeError, subprocess.TimeoutExpired):
                    continue  # the next round tries again

        thread = threading.Thread(target=watch, name="release-requeued", daemon=True)
        thread.start()
        try:
            yield released
        finally:
            stop.set()
            thread.join(timeout=30)

    def logs(self, tail: int = 3000) -> str:
        """The end of each daemon's log, for failure messages."""
        parts = []
        for name in DAEMONS:
            log = self.root / f"{name}.log"
            if log.is_file():
                parts.append(f"--- {log} ---\n{log.read_text(errors='replace')[-tail:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        """Cancel every job, then stop the daemons (TERM, then KILL) and any job step they left behind."""
        if "slurmctld" in self.processes and self.processes["slurmctld"].poll() is None:
            try:
                self.run("scancel", "--full", "--partition", self.partition, timeout=15)
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline and self.run("squeue", "-h", "-o", "%i", timeout=15).strip():
                    time.sleep(0.5)
            except (RuntimeError, subprocess.TimeoutExpired):
                pass  # the daemons go down below anyway
        for name in reversed(DAEMONS):
            process = self.processes.get(name)
            if process is None or process.poll() is not None:
                continue
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=15)
        for pid in self._stray_steps():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _stray_steps(self) -> list[int]:
        """slurmstepd processes of this cluster still alive: slurmd started them with our ``SLURM_CONF``."""
        marker = f"SLURM_CONF={self.conf}".encode()
        found = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                if os.path.basename(os.readlink(proc / "exe")) != "slurmstepd":
                    continue
                if marker in (proc / "environ").read_bytes().split(b"\0"):
                    found.append(int(proc.name))
            except OSError:
                continue
        return found


def _node_line() -> tuple[str, int, str]:
    """This host's node definition as slurmd detects it (name, CPUs, sockets, cores, memory)."""
    out = subprocess.run([_binary("slurmd"), "-C"], capture_output=True, text=True, timeout=60, check=True).stdout
    line = next(l for l in out.splitlines() if l.startswith("NodeName="))
    fields = dict(part.split("=", 1) for part in line.split())
    return fields["NodeName"], int(fields["CPUs"]), line


def _start_munge(root: Path, env: dict[str, str]) -> tuple[subprocess.Popen, Path]:
    folder = root / "munge"
    folder.mkdir(mode=0o700)
    key = folder / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    socket_path = folder / "munge.socket"
    process = subprocess.Popen(
        [_binary("munged"), "--foreground", "--force", f"--socket={socket_path}", f"--key-file={key}",
         f"--pid-file={folder / 'munged.pid'}", f"--seed-file={folder / 'munged.seed'}",
         f"--log-file={root / 'munged.log'}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env=env,
    )
    _wait_for(lambda: socket_path.exists(), process, "munged", root / "munged.log", 30)
    return process, socket_path


def _write_config(root: Path, node: str, node_line: str, munge_socket: Path) -> Path:
    state, spool = root / "state", root / "spool"
    state.mkdir()
    spool.mkdir()
    (root / "cgroup.conf").write_text("# no cgroups: proctrack/linuxproc and task/none do not use them\n"
                                      "CgroupPlugin=autodetect\nIgnoreSystemd=yes\n")
    conf = root / "slurm.conf"
    conf.write_text("\n".join([
        "ClusterName=medxfer-test",
        f"SlurmctldHost={node}(127.0.0.1)",
        f"SlurmctldPort={free_port()}",
        f"SlurmdPort={free_port()}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={munge_socket}",
        f"StateSaveLocation={state}",
        f"SlurmdSpoolDir={spool}",
        f"SlurmctldPidFile={root / 'slurmctld.pid'}",
        f"SlurmdPidFile={root / 'slurmd.pid'}",
        f"SlurmctldLogFile={root / 'slurmctld.log'}",
        f"SlurmdLogFile={root / 'slurmd.log'}",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/none",
        "MpiDefault=none",
        "SwitchType=switch/none",
        "SchedulerType=sched/backfill",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_CPU",  # each task takes CPUs only: memory is not a consumable here
        "ReturnToService=2",
        "KillWait=5",  # seconds between SIGTERM and SIGKILL at a time limit (default 30)
        "MinJobAge=600",  # keep finished jobs visible to squeue/scontrol for the length of a test
        f"{node_line} NodeAddr=127.0.0.1 State=UNKNOWN",
        f"PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP",
        "",
    ]))
    return conf


def _wait_for(ready, process: subprocess.Popen | None, name: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            text = log.read_text(errors="replace")[-3000:] if log.is_file() else "(no log)"
            raise RuntimeError(f"{name} exited with {process.returncode}:\n{text}")
        try:
            if ready():
                return
        except (RuntimeError, subprocess.TimeoutExpired):
            pass
        time.sleep(0.5)
    text = log.read_text(errors="replace")[-3000:] if log.is_file() else "(no log)"
    raise RuntimeError(f"{name} not ready within {timeout:.0f} s:\n{text}")


def start_slurm(root: Path) -> SlurmCluster:
    """Start munged, slurmctld and slurmd under ``root`` and wait until the node is idle.

    Raises RuntimeError (with the daemons' logs) when the cluster does not come up; whatever did start is
    stopped first.
    """
    reason = missing_slurm()
    if reason:
        raise FileNotFoundError(reason)
    root.mkdir(parents=True, exist_ok=True)
    node, cpus, node_line = _node_line()
    if node != socket.gethostname().split(".")[0]:
        raise RuntimeError(f"slurmd -C names this node {node!r}, but its hostname is {socket.gethostname()!r}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    munged, munge_socket = _start_munge(root, env)
    conf = _write_config(root, node, node_line, munge_socket)
    env["SLURM_CONF"] = str(conf)
    cluster = SlurmCluster(root=root, conf=conf, node=node, cpus=cpus, processes={"munged": munged})
    try:
        cluster.processes["slurmctld"] = subprocess.Popen(
            [_binary("slurmctld"), "-D", "-i", "-f", str(conf)], stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT, env=env, cwd=root)
        _wait_for(lambda: cluster.run("scontrol", "ping", timeout=10).count("UP") >= 1,
                  cluster.processes["slurmctld"], "slurmctld", root / "slurmctld.log", 60)
        cluster.processes["slurmd"] = subprocess.Popen(
            [_binary("slurmd"), "-D", "-f", str(conf), "-N", node], stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT, env=env, cwd=root)
        _wait_for(lambda: cluster.node_state() == "idle", cluster.processes["slurmd"], "slurmd",
                  root / "slurmd.log", 90)
    except BaseException as err:
        logs = cluster.logs()
        cluster.stop()
        if isinstance(err, Exception):
            raise RuntimeError(f"the test SLURM cluster did not start: {err}\n{logs}") from err
        raise
    return cluster
