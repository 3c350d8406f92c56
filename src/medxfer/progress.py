"""What a command shows while it works: progress bars on a terminal only, and where a cell stands in its stage.

In a log file a progress bar is hundreds of carriage-return lines per cell; there the stages print one line when
a cell starts and one when it ends instead (see :func:`cell_position`).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

AUTO = "auto"


def show_progress(setting: Any, option: str = "progress") -> bool:
    """Whether to draw a progress bar for the config value ``setting`` of ``option``: ``true``, ``false``, or
    ``auto`` (also None), which means when stderr is a terminal."""
    if setting is None or (isinstance(setting, str) and setting.lower() == AUTO):
        return _stderr_is_terminal()
    if isinstance(setting, bool):
        return setting
    raise ValueError(f"{option}={setting!r}: expected true, false or auto (a progress bar only on a terminal)")


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


_position: tuple[int, int] | None = None


@contextlib.contextmanager
def counting(done: int, total: int) -> Iterator[None]:
    """Within this block the cell a stage runs is number ``done`` of ``total`` (the study sets it around each
    stage call), so its start and end lines say where the stage stands."""
    global _position
    before, _position = _position, (done, total)
    try:
        yield
    finally:
        _position = before


def cell_position() -> str:
    """``" 3/42"`` inside :func:`counting`, else empty: the suffix of a stage's ``[score]`` label."""
    return "" if _position is None else f" {_position[0]}/{_position[1]}"
