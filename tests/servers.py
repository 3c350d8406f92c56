"""Real servers on 127.0.0.1 for the tests: a throwaway PostgreSQL cluster and an ``mlflow server`` on it.

PostgreSQL comes from Debian's packages (``apt-get install postgresql``; ``.ci/run`` installs it). Tests that need
it skip, saying so, where its binaries are missing. The cluster lives in a temporary folder, listens on a free
port of 127.0.0.1 only, and requires a password (scram-sha-256) that the tests pass through ``PGPASSWORD``, so a
test can check that the password never reaches MLflow.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

PG_USER = "medxfer"
PG_PASSWORD = "pg-secret-3f9a1c"  # a value a test can search for in everything MLflow stored
PG_DATABASE = "mlflow"


def postgres_bin() -> Path | None:
    """The folder of PostgreSQL's server binaries (initdb, pg_ctl), or None."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    found = shutil.which("initdb")
    if found:
        candidates.insert(0, found)
    for path in candidates:
        return Path(os.path.realpath(path)).parent
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres_user(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: CI runs as root, so run its commands as the ``postgres`` user."""
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", "postgres", "--", *cmd]


@dataclass
class Postgres:
    port: int
    datadir: Path
    bindir: Path

    @property
    def uri(self) -> str:
        """The database URI without the password (libpq reads PGPASSWORD)."""
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{PG_DATABASE}"

    def stop(self) -> None:
        subprocess.run(_as_postgres_user([str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "fast", "stop"]),
                       capture_output=True, timeout=60)


def start_postgres(root: Path) -> Postgres:
    bindir = postgres_bin()
    if bindir is None:
        raise FileNotFoundError("PostgreSQL server binaries not found (apt-get install postgresql)")
    root.mkdir(parents=True, exist_ok=True)
    datadir = root / "pgdata"
    pwfile = root / "pgpass.txt"
    pwfile.write_text(PG_PASSWORD + "\n")
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(pwfile, "postgres")
        os.chmod(root, 0o755)
        for parent in root.parents:  # the postgres user must be able to walk down to its data folder
            if str(parent) in ("/", "/tmp"):
                break
            os.chmod(parent, os.stat(parent).st_mode | 0o711)
    subprocess.run(_as_postgres_user([
        str(bindir / "initdb"), "-D", str(datadir), "-U", PG_USER, f"--pwfile={pwfile}",
        "--auth-host=scram-sha-256", "--auth-local=scram-sha-256", "-E", "UTF8", "--no-sync",
    ]), check=True, capture_output=True, timeout=120)
    pwfile.unlink()
    port = free_port()
    log = root / "postgres.log"
    subprocess.run(_as_postgres_user([
        str(bindir / "pg_ctl"), "-D", str(datadir), "-l", str(log), "-w", "-t", "60",
        "-o", f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={root} -c fsync=off",
        "start",
    ]), check=True, capture_output=True, timeout=120)
    server = Postgres(port=port, datadir=datadir, bindir=bindir)
    import psycopg  # SQLAlchemy 2.1's default driver for postgresql:// URIs

    with psycopg.connect(host="127.0.0.1", port=port, user=PG_USER, password=PG_PASSWORD, dbname="postgres",
                         autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {PG_DATABASE}")
    return server


@dataclass
class MlflowServer:
    process: subprocess.Popen
    port: int
    log: Path

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start_mlflow_server(backend_uri: str, artifacts: Path, log: Path, env: dict[str, str]) -> MlflowServer:
    """``mlflow server`` on 127.0.0.1 with ``backend_uri``, serving artifacts from ``artifacts``."""
    port = free_port()
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    handle = log.open("w")
    process = subprocess.Popen(
        [str(mlflow_bin), "server", "--backend-store-uri", backend_uri, "--artifacts-destination", str(artifacts),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=handle, stderr=subprocess.STDOUT, env=env,
    )
    server = MlflowServer(process=process, port=port, log=log)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(server.uri + "/health", timeout=2) as response:
                if response.status == 200:
                    return server
        except OSError:
            time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"mlflow server did not answer /health within 180 s:\n{log.read_text()[-3000:]}")
