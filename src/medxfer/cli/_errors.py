"""How every entry point ends when something goes wrong: one decorator on the task function.

- medxfer's own errors (:class:`medxfer.errors.MedxferError`) print their message and hint on stderr, without a
  traceback, and exit 2; ``HYDRA_FULL_ERROR=1`` raises them instead, so Hydra prints the traceback.
- An override Hydra cannot compose (a mistyped option or key) is a bad option too: one message, exit 2, whether
  ``@hydra.main`` composes it (before the task function runs) or the command composes itself (``medxfer-zoo``).
- SIGINT / SIGTERM print one line (what was interrupted, that a rerun resumes) and exit 130 / 143.
- Any other exception passes through unchanged: it is a bug, and its traceback is what a report needs.
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable, TypeVar

from hydra.errors import CompactHydraException
from omegaconf.errors import OmegaConfBaseException

from medxfer.errors import ConfigError, MedxferError, command_name, exit_with_message
from medxfer.interrupts import as_interrupted, interrupt_line, signals_interrupt

F = TypeVar("F", bound=Callable[..., Any])


def as_config_error(err: CompactHydraException) -> ConfigError:
    """Hydra's composition error as medxfer's: the same message (with OmegaConf's cause, as Hydra prints it)."""
    message = str(err).strip()
    if isinstance(err.__cause__, OmegaConfBaseException):
        message += "\n" + str(err.__cause__).strip()
    return ConfigError(message)


def _composition_errors_exit_2() -> None:
    """Make ``@hydra.main`` report a composition error as a bad option (exit 2), not with its own exit 1.

    Hydra composes before the task function, inside ``hydra._internal.utils.run_and_report``, which prints the
    message of such an error and exits 1, the status it also gives a bug. Its functions look ``run_and_report`` up
    in their module at call time, so wrapping the module attribute reaches every call; when a Hydra version has
    no such attribute, nothing is wrapped and composition errors keep Hydra's status.
    """
    from hydra._internal import utils

    original = getattr(utils, "run_and_report", None)
    if original is None or getattr(original, "_medxfer_wrapped", False):
        return

    def run_and_report(func: Callable[[], Any]) -> Any:
        def reported() -> Any:
            try:
                return func()
            except CompactHydraException as err:
                exit_with_message(as_config_error(err))  # raises again under HYDRA_FULL_ERROR=1

        return original(reported)

    run_and_report._medxfer_wrapped = True  # type: ignore[attr-defined]
    utils.run_and_report = run_and_report


_composition_errors_exit_2()


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
        except CompactHydraException as err:  # a command that composes its config itself
            exit_with_message(as_config_error(err))
        print(interrupt_line(interrupted, command_name()), file=sys.stderr, flush=True)
        sys.exit(interrupted.exit_code)

    return wrapper  # type: ignore[return-value]
