"""Interrupts: SIGINT (Ctrl-C) and SIGTERM (what SLURM and ``kill`` send) stop a command the same way.

Both raise :class:`Interrupted`, a ``KeyboardInterrupt``, so the run in progress is marked KILLED by
``cell_run`` (tracking), and the entry point exits with ``128 + signal`` (130 for SIGINT, 143 for SIGTERM) after
one line saying what was interrupted. A second signal while the first is being handled exits at once (the
run left RUNNING is reaped as KILLED by the next command, as after SIGKILL).

Lightning catches a ``KeyboardInterrupt`` inside ``fit``/``predict`` and calls ``sys.exit(1)``;
:func:`lightning_interrupts` turns that back into :class:`Interrupted` with the signal that arrived.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Any, Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: The signals a batch system sends a job to checkpoint and requeue it (submitit: USR2, before SLURM's time limit).
JOB_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)

_received: int | None = None


class Interrupted(KeyboardInterrupt):
    """The command was interrupted by ``signum``; ``during`` names what was running (set by the tracking layer)."""

    def __init__(self, signum: int = signal.SIGINT, during: str | None = None):
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = int(signum)
        self.during = during

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def as_interrupted(err: KeyboardInterrupt) -> Interrupted:
    """``err`` as :class:`Interrupted` (a plain ``KeyboardInterrupt`` is a SIGINT)."""
    if isinstance(err, Interrupted):
        return err
    out = Interrupted(_received or signal.SIGINT, getattr(err, "during", None))
    return out


def mark_during(err: BaseException, what: str) -> None:
    """Record on an interrupt what it interrupted (the innermost caller that knows wins)."""
    if getattr(err, "during", None) is None:
        with contextlib.suppress(AttributeError):
            err.during = what  # type: ignore[attr-defined]


_deferring = 0
_pending: int | None = None


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM while inside (e.g. while a checkpoint is written: an interrupt inside ``torch.save``
    breaks its zip writer, "unexpected pos"); one that arrived is raised on the way out, with the work whole.

    Python-level, not a signal mask: the kernel hands a process-directed signal to any thread that does not block
    it (torch's, MLflow's), and Python then runs the handler in the main thread wherever it is. It holds the
    handlers :func:`signals_interrupt` installs (every entry point's); outside it this does nothing."""
    global _deferring, _pending
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
        if not _deferring and _pending is not None:
            signum, _pending = _pending, None
            _handle(signum, None)


def _handle(signum: int, frame: Any) -> None:
    global _received, _pending
    if _deferring:
        _pending = _pending or signum
        return
    if _received is not None:  # a second signal during the shutdown of the first: stop now
        os._exit(128 + signum)
    _received = signum
    raise Interrupted(signum)


def _in_process(pid: int, handler: Any) -> Any:
    """``handler``, run only in process ``pid`` (ignored in the processes forked from it)."""

    def handle(signum: int, frame: Any) -> None:
        if os.getpid() == pid:
            handler(signum, frame)

    return handle


@contextlib.contextmanager
def signals_interrupt() -> Iterator[None]:
    """While inside, SIGINT and SIGTERM raise :class:`Interrupted`; the previous handlers come back on exit.
    Outside the main thread (signal handlers cannot be set there) this does nothing."""
    global _received, _pending
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {s: signal.getsignal(s) for s in SIGNALS}
    _received = _pending = None
    # SLURM signals every process of a job step, data-loader workers too, and a forked worker inherits this
    # process's handlers: it would checkpoint and requeue the job itself (submitit's USR2 handler) or die of
    # the SIGTERM that follows a requeue, and the main process would then fail the trial on "worker killed"
    # instead of exiting for the requeue. Only this process acts on them; it stops its workers itself.
    pid = os.getpid()
    for s in SIGNALS:
        signal.signal(s, _in_process(pid, _handle))
    for s in JOB_SIGNALS:
        handler = signal.getsignal(s)
        if callable(handler):
            before[s] = handler
            signal.signal(s, _in_process(pid, handler))
    try:
        yield
    finally:
        for s, handler in before.items():
            if handler is not None:
                signal.signal(s, handler)
        _received = None


def interrupt_line(err: Interrupted, command: str) -> str:
    """The one line printed for an interrupt: what was interrupted, and that a rerun resumes."""
    name = signal.Signals(err.signum).name
    what = f"run {err.during} (marked KILLED)" if err.during else "before any run started"
    return (f"{command}: interrupted by {name} during {what}; run the same command again to resume "
            "(finished cells are skipped)")


@contextlib.contextmanager
def lightning_interrupts(trainer: Any) -> Iterator[None]:
    """Lightning turns an interrupt during ``fit``/``predict`` into ``sys.exit(1)`` and ignores SIGINT from
    then on: give the caller an :class:`Interrupted` back (so the run is marked KILLED, not FAILED) with the
    signal that arrived, and restore the SIGINT handler."""
    handler = signal.getsignal(signal.SIGINT)
    try:
        yield
    except SystemExit:
        if getattr(trainer, "interrupted", False):
            raise Interrupted(_received or signal.SIGINT) from None
        raise
    finally:
        if handler is not None and signal.getsignal(signal.SIGINT) != handler:
            with contextlib.suppress(ValueError):  # only the main thread may set signal handlers
                signal.signal(signal.SIGINT, handler)
