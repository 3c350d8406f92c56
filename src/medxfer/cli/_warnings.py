"""Warnings at the entry points: third-party noise that is not the user's business is dropped, medxfer's own
warnings (``ScoreWarning``, ``EnsembleWarning``, ``UndefinedCorrelation``, ...) become log lines of their module's
logger instead of Python's two-line ``file:line: Category: message`` + source line, and a medxfer warning of the
same form is shown once per command (each run keeps its own in ``warnings.txt``).

Called first thing in each command's ``main``, before the stages (and torch, Lightning, MLflow) are imported, so
that import-time warnings are filtered too; a joblib or submitit worker runs ``main``'s body, so it filters as well.
"""

from __future__ import annotations

import logging
import re
import warnings

# (message regex, category): warnings of libraries about themselves, printed in every process.
KNOWN_THIRD_PARTY = (
    # torch deprecates LeafSpec; Lightning's pytree helper still builds one on every predict/fit call
    (r".*isinstance\(treespec, LeafSpec\).*", FutureWarning),
    # Lightning sees Debian's slurm client installed and suggests srun; medxfer's SLURM launcher uses submitit
    (r"The `srun` command is available on your system but is not used", Warning),
)


def filter_known_warnings() -> None:
    """Drop :data:`KNOWN_THIRD_PARTY` warnings, show medxfer's warnings as log lines, and each kind of medxfer
    log warning once per command."""
    global _python_showwarning
    for message, category in KNOWN_THIRD_PARTY:
        warnings.filterwarnings("ignore", message=message, category=category)
    if warnings.showwarning is not _show_as_log_line:
        _python_showwarning = warnings.showwarning
        warnings.showwarning = _show_as_log_line
    for handler in logging.getLogger().handlers:  # Hydra's console and file handlers, set up before main runs
        if _ONCE not in handler.filters:
            handler.addFilter(_ONCE)


_python_showwarning = warnings.showwarning


def _show_as_log_line(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` for the commands: a warning class of medxfer's is logged by the logger of the
    module that defines it (so :class:`OncePerCommand` sees it); any other goes to Python's display."""
    if file is None and category.__module__.split(".")[0] == "medxfer":
        logging.getLogger(category.__module__).warning("%s", message)
    else:
        _python_showwarning(message, category, filename, lineno, file, line)


class OncePerCommand(logging.Filter):
    """Lets a medxfer warning through the first time its form is seen (numbers aside): "GBC uses 9 PCA
    components ..." on one split and "... 11 ..." on the next are one warning. The first one says that repeats
    are not shown."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[tuple[str, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not record.name.startswith("medxfer"):
            return True
        decided = getattr(record, "_medxfer_once", None)  # the console and the file handler see the same record
        if decided is not None:
            return decided
        form = re.sub(r"\d+(\.\d+)?", "#", record.getMessage())
        key = (record.name, form)
        first = key not in self._seen
        self._seen.add(key)
        if first:
            record.msg, record.args = f"{record.getMessage()} (similar warnings are not repeated in this command)", None
        record._medxfer_once = first
        return first


# one instance on every handler: a record is judged once, whatever the number of handlers
_ONCE = OncePerCommand()
