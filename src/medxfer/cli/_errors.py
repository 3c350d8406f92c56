"""How every entry point ends when something goes wrong: one decorator on the task function.

- medxfer's own errors (:class:`medxfer.errors.MedxferError`) print their message and hint on stderr, without a
  traceback, and exit 2; ``HYDRA_FULL_ERROR=1`` raises them instead, so Hydra prints the traceback.
- SIGINT / SIGTERM print one line (what was interrupted, that a rerun resumes) and exit 130 / 143.
- Any other exception passes through unchanged: it is a bug, and its traceback is what a report needs.
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable, TypeVar

from medxfer.errors import MedxferError, command_name, exit_with_message
from medxfer.interrupts import as_interrupted, interrupt_line, signals_interrupt

F = TypeVar("F", bound=Callable[..., Any])


def reports_errors(task: F) -> F:
    """Wrap an entry point's task function (under ``@hydra.main``) with medxfer's error and interrupt handling."""

    @functools.wraps(task)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        interrupted = None
        try:
            with signals_interrupt():
                try:
                    return task(*args, **kwargs)
                except KeyboardInterrupt as err:  # read the signal while the handler still knows it
                    interrupted = as_interrupted(err)
        except MedxferError as err:
            exit_with_message(err)
        print(interrupt_line(interrupted, command_name()), file=sys.stderr, flush=True)
        sys.exit(interrupted.exit_code)

    return wrapper  # type: ignore[return-value]
