"""medxfer's own errors: one base class, and how an entry point reports one to a person.

Every error medxfer raises on purpose (bad data, a bad option, missing weights, an unusable tracking store, a
score that cannot be computed) derives from :class:`MedxferError`. Its message says what was expected, what was
found, where, and what to do; the entry points print it without a traceback (``HYDRA_FULL_ERROR=1`` shows one)
and exit with :attr:`MedxferError.exit_code`. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

#: Exit status of a command stopped by one of medxfer's own errors (bad input, bad option, unusable store).
EXIT_BAD_INPUT = 2


class MedxferError(Exception):
    """An error medxfer raises on purpose; ``hint`` (optional) is what to do about it, printed under the message."""

    exit_code: int = EXIT_BAD_INPUT

    def __init__(self, message: str = "", *args: object, hint: str | None = None):
        super().__init__(message, *args)
        self.hint = hint


class ConfigError(MedxferError, ValueError):
    """An option that cannot work; the message names the option (``preprocess.input_size=-5``)."""


def full_error_requested() -> bool:
    """Whether the user asked for tracebacks of medxfer's own errors: Hydra's ``HYDRA_FULL_ERROR=1``."""
    return os.environ.get("HYDRA_FULL_ERROR", "").strip().lower() not in ("", "0", "false", "no")


def command_name() -> str:
    """The command being run (``medxfer-score``), for the start of an error line."""
    path = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path()
    if path.parent.name == "cli" and path.parent.parent.name == "medxfer" and path.suffix == ".py":
        return f"medxfer-{path.stem}"  # python -m medxfer.cli.<name>
    return path.name if path.name.startswith("medxfer") else "medxfer"


def _unwrap_worker_message(message: str, name: str) -> str:
    """A DataLoader worker's error comes back as ``Caught <name> in DataLoader worker process N. Original
    Traceback ...`` with the message on its last lines: keep only the message."""
    if "Original Traceback (most recent call last):" not in message:
        return message
    found = list(re.finditer(rf"^(?:[\w.]+\.)?{re.escape(name)}: ", message, re.M))
    return message[found[-1].end():].strip() if found else message


def format_error(err: MedxferError) -> str:
    """The lines printed for ``err``: ``<command>: error: <message>`` and, when there is one, its hint."""
    message = _unwrap_worker_message(str(err).strip(), type(err).__name__) or type(err).__name__
    lines = [f"{command_name()}: error: {message}"]
    if err.hint:
        lines.append(f"  hint: {err.hint}")
    return "\n".join(lines)


def exit_with_message(err: MedxferError) -> None:
    """Print ``err`` as a message on stderr and exit with its code; with ``HYDRA_FULL_ERROR=1``, raise it
    again instead (the traceback is then printed)."""
    if full_error_requested():
        raise err
    print(format_error(err), file=sys.stderr, flush=True)
    sys.exit(err.exit_code)
