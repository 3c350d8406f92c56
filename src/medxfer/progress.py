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


_position: tuple[int, int, float | None] | None = None


@contextlib.contextmanager
def counting(done: int, total: int, left_s: float | None = None) -> Iterator[None]:
    """Within this block the cell a stage runs is number ``done`` of ``total`` (the study sets it around each
    stage call), so its start and end lines say where the stage stands; ``left_s``, an estimate of the seconds
    the stage still needs (:class:`StageClock`), is shown with it."""
    global _position
    before, _position = _position, (done, total, left_s)
    try:
        yield
    finally:
        _position = before


def cell_position() -> str:
    """``" 3/42"`` (or ``" 3/42, ~12 min left"``) inside :func:`counting`, else empty: the suffix of a stage's
    ``[score]`` label."""
    if _position is None:
        return ""
    done, total, left_s = _position
    return f" {done}/{total}" + ("" if left_s is None else f", ~{format_duration(left_s)} left")


def format_duration(seconds: float) -> str:
    """``"40 s"``, ``"12 min"``, ``"1 h 05 min"``: a time left, as precise as an estimate deserves."""
    seconds = max(0.0, float(seconds))
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


class StageClock:
    """The time a stage still needs: the mean time of the cells it has run so far, times the cells left.

    A cell found already FINISHED costs next to nothing and is not counted as a sample; the cells left are assumed
    to run (the estimate is an upper bound on a rerun). No estimate before the first cell has run."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.seen = 0
        self.ran = 0
        self.spent = 0.0

    def record(self, seconds: float, ran: bool) -> None:
        """One more cell of the stage is done: it took ``seconds`` and ``ran`` (False: it was skipped)."""
        self.seen += 1
        if ran:
            self.ran += 1
            self.spent += seconds

    def left_s(self) -> float | None:
        """Seconds the cells not yet seen will take, or None before any cell has run."""
        if not self.ran:
            return None
        return self.spent / self.ran * (self.total - self.seen)
