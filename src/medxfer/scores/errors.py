"""The two exception types of the scores library."""

from __future__ import annotations

from medxfer.errors import MedxferError

__all__ = ["ScoreError", "ScoreWarning"]


class ScoreError(MedxferError, ValueError):
    """Inputs a score cannot be computed on; the message says what was expected, what was found and where."""


class ScoreWarning(UserWarning):
    """A documented fallback was taken (fewer PCA components, a mixture that did not converge, ...).

    Emitted with :func:`warnings.warn`; the caller logs it.  The score value is still finite and usable.
    """
