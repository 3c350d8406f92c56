"""Serialise MLflow's first open of a tracking store across processes.

MLflow creates (or upgrades) a store's tables with alembic the first time a process opens it, and its tracking
store does so without a lock: two processes doing it at once on a new store break each other's migration
("table _alembic_tmp_experiments already exists" on SQLite). Sweeps, SLURM arrays and two users starting at
once all open a new store together, so :func:`setup_tracking <medxfer.tracking.store.setup_tracking>` holds
one of these locks around that first open: a file beside a SQLite database (seen by every machine that sees
the database), a PostgreSQL advisory lock on a PostgreSQL store. Other stores (an MLflow server) build their
own tables once, in the server.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import time
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urlparse

from medxfer.errors import MedxferError

log = logging.getLogger(__name__)

#: How long a process waits for another to finish creating or upgrading a store's tables.
TIMEOUT_S = 300.0
#: The PostgreSQL advisory-lock key medxfer's processes agree on (any fixed 64-bit number).
PG_LOCK_KEY = 0x6D6564786665


class StoreOpeningError(MedxferError, RuntimeError):
    """Another process kept a store's tables locked for longer than :data:`TIMEOUT_S`."""


def first_open_lock(uri: str, sqlite_db: Path | None) -> contextlib.AbstractContextManager[None]:
    """The lock to hold while opening the store at ``uri`` (``sqlite_db``: its SQLite file, if it is one)."""
    scheme = urlparse(uri).scheme.lower().split("+")[0]
    if scheme == "sqlite" and sqlite_db is not None:
        return sqlite_lock(sqlite_db)
    if scheme in ("postgresql", "postgres"):
        return postgres_lock(uri)
    return contextlib.nullcontext()


def _wait(try_lock: Callable[[], bool], what: str, timeout: float, hint: str) -> None:
    start, next_note = time.monotonic(), 10.0
    while not try_lock():
        waited = time.monotonic() - start
        if waited > timeout:
            raise StoreOpeningError(f"another process has held {what} for {waited:.0f} s", hint=hint)
        if waited > next_note:
            log.info("waiting for another process to finish creating the tracking store's tables (%s, %.0f s)",
                     what, waited)
            next_note += 10.0
        time.sleep(0.05)


@contextlib.contextmanager
def sqlite_lock(db: Path, timeout: float = TIMEOUT_S) -> Iterator[None]:
    """An exclusive lock on ``<db folder>/.<db name>.init-lock``: a file of its own, so the database itself is
    never locked for longer than SQLite locks it."""
    lock_path = db.parent / f".{db.name}.init-lock"
    with open(lock_path, "a+b") as handle:
        def try_lock() -> bool:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                return False

        _wait(try_lock, f"{lock_path} while creating the tables of {db}", timeout,
              "wait for it to finish; if no medxfer process is running, delete the lock file")
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def postgres_lock(uri: str, timeout: float = TIMEOUT_S) -> Iterator[None]:
    """PostgreSQL's session advisory lock :data:`PG_LOCK_KEY`, held on a connection of its own."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(uri, poolclass=sqlalchemy.pool.NullPool, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            def try_lock() -> bool:
                return bool(conn.execute(sqlalchemy.text("SELECT pg_try_advisory_lock(:k)"), {"k": PG_LOCK_KEY}).scalar())

            _wait(try_lock, f"PostgreSQL advisory lock {PG_LOCK_KEY} while creating the tracking store's tables",
                  timeout, "wait for it to finish; pg_locks names the session that holds it")
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": PG_LOCK_KEY})
    finally:
        engine.dispose()
