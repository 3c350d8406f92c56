"""Retry tracking-store writes that SQLite refuses with "database is locked".

MLflow's SQLite store already waits up to 20 s for a lock (``PRAGMA busy_timeout``), but SQLite answers
"database is locked" at once, without waiting, when a transaction that has read tries to write while another
process writes (waiting could deadlock). MLflow's writes read first (the run's status, the experiment), so
parallel workers on one SQLite file (``hydra/launcher=joblib``) do hit it. The write was rolled back, so doing
it again is safe: every MLflow call medxfer makes goes through :func:`retry_locked`.
"""

from __future__ import annotations

import logging
import os
import random
import time
from typing import Any, Callable, TypeVar

from medxfer.errors import ConfigError, MedxferError

log = logging.getLogger(__name__)

T = TypeVar("T")

LOCK_MESSAGES = ("database is locked", "database table is locked", "database schema is locked")
#: Tries before giving up; with the back-off below, 12 tries wait about 15 s in all (on top of SQLite's own 20 s
#: busy wait per try). ``MEDXFER_TRACKING_RETRIES`` changes it.
DEFAULT_ATTEMPTS = 12
FIRST_DELAY_S = 0.05
MAX_DELAY_S = 3.0
#: Retrying longer than this (in all) prints a warning line saying what the command waits for.
LOUD_AFTER_S = 3.0


class TrackingLocked(MedxferError, RuntimeError):
    """The tracking store stayed locked through every retry."""


def is_lock_error(err: BaseException) -> bool:
    """Whether ``err``, or an exception it was raised from, is SQLite's "database is locked"."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(current).lower()
        if any(message in text for message in LOCK_MESSAGES):
            return True
        current = current.__cause__ or current.__context__
    return False


def _attempts() -> int:
    raw = os.environ.get("MEDXFER_TRACKING_RETRIES", "")
    if not raw:
        return DEFAULT_ATTEMPTS
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"MEDXFER_TRACKING_RETRIES must be a whole number of tries, got {raw!r}") from None
    if value < 1:
        raise ConfigError(f"MEDXFER_TRACKING_RETRIES must be at least 1, got {value}")
    return value


def retry_locked(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``, tried again with jittered exponential back-off while the store is locked.

    Other errors pass through at once. After the last try, raises :class:`TrackingLocked` naming the call.
    """
    attempts = _attempts()
    delay = FIRST_DELAY_S
    waited = 0.0
    for attempt in range(1, attempts + 1):
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - MLflow wraps SQLAlchemy's errors in several types
            if not is_lock_error(err):
                raise
            if attempt == attempts:
                name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
                raise TrackingLocked(
                    f"the tracking store was still locked after {attempts} tries of {name}: {' '.join(str(err).split())[:300]}. "
                    "Too many parallel writers for one SQLite file: lower hydra.launcher.n_jobs, raise "
                    "MEDXFER_TRACKING_RETRIES, or use tracking=server / tracking=postgres"
                ) from err
            pause = min(delay, MAX_DELAY_S) * random.uniform(0.5, 1.5)
            # short waits (parallel workers take turns) stay quiet; once the wait adds up, say what it waits for
            loud = waited < LOUD_AFTER_S <= waited + pause
            (log.warning if loud else log.info)(
                "the tracking store is locked by another writer: %s waited %.1f s so far (try %d of %d); retrying",
                getattr(fn, "__qualname__", None) or type(fn).__qualname__, waited + pause, attempt, attempts)
            waited += pause
            time.sleep(pause)
            delay *= 2
    raise AssertionError("unreachable")  # pragma: no cover
