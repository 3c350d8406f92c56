"""Transferability scores: the seven of Chaves et al. (DART 2023), exact and fast.

``compute_scores(features, labels, probs)`` returns ``{"hscore": ..., "reg_hscore": ..., "nce": ...,
"leep": ..., "nleep": ..., "logme": ..., "gbc": ...}``; each score also has its own function.  Every score is
"higher = better".  Values equal a literal NumPy / scikit-learn implementation of the paper's code (see
``tests/scores_reference.py``) to a relative 1e-6, an order of magnitude faster: one covariance
eigendecomposition serves H-Score, the regularized H-Score, LogME and both PCAs, and N-LEEP's mixture is
fitted in torch float64 from scikit-learn's own k-means start.

Notes on exactness: all arithmetic is float64, float32 inputs included.  GBC uses an exact PCA (the paper's
code silently used a randomized one on large inputs); LEEP ignores source classes without probability mass
(the paper's code returns NaN); N-LEEP depends on the sample order through its k-means++ start, as in the
paper's code.  See each score's docstring.

New scores register themselves with one line, ``register_score("name", fn, needs_probs=...)``, in a module
imported below.  Invalid inputs raise :class:`ScoreError`; documented fallbacks warn with :class:`ScoreWarning`.
Importing this package does not import torch or scikit-learn; they load on first use.
"""

from medxfer.scores.errors import ScoreError, ScoreWarning
from medxfer.scores.registry import REGISTRY, ScoreSpec, available_scores, register_score
from medxfer.scores.inputs import ScoreInputs

# Score modules register themselves on import; this order is the default order of compute_scores.
from medxfer.scores.hscore import hscore, reg_hscore
from medxfer.scores.nce import nce
from medxfer.scores.leep import leep
from medxfer.scores.nleep import nleep
from medxfer.scores.logme import logme
from medxfer.scores.gbc import gbc
from medxfer.scores.compute import compute_scores

__all__ = [
    "REGISTRY",
    "ScoreError",
    "ScoreInputs",
    "ScoreSpec",
    "ScoreWarning",
    "available_scores",
    "compute_scores",
    "gbc",
    "hscore",
    "leep",
    "logme",
    "nce",
    "nleep",
    "reg_hscore",
    "register_score",
]
