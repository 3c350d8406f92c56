"""Transferability scores: the seven of Chaves et al. (DART 2023), exact and fast, plus opt-in ones.

``compute_scores(features, labels, probs)`` returns ``{"hscore": ..., "reg_hscore": ..., "nce": ...,
"leep": ..., "nleep": ..., "logme": ..., "gbc": ...}``; each score also has its own function.  Every score is
"higher = better".  Values equal a literal NumPy / scikit-learn implementation of the paper's code (see
``tests/scores_reference.py``) to a relative 1e-6, an order of magnitude faster: one covariance
eigendecomposition serves H-Score, the regularized H-Score, LogME and both PCAs, and N-LEEP's mixture is
fitted in torch float64 from scikit-learn's own k-means start.

Opt-in scores run when named (``names=[...]``; ``available_scores(include_opt_in=True)`` lists them all):
``sfda``, ``parc``, ``transrate``, ``etran`` (its energy score), ``pactran`` (negated PACTran-Gaussian),
``knn`` (leave-one-out k-NN balanced accuracy), ``linear_probe`` (held-out logistic-regression balanced
accuracy) and ``imagenet_top1`` (the model's published ImageNet accuracy, option ``top1``).  Options reach a
score through ``compute_scores(..., options={name: {...}})`` or its function's keywords; extra numbers
(subsample sizes, spread over N-LEEP seeds) through ``compute_scores(..., extras={})``.

Notes on exactness: all arithmetic is float64, float32 inputs included.  GBC uses an exact PCA (the paper's
code silently used a randomized one on large inputs); LEEP ignores source classes without probability mass
(the paper's code returns NaN); N-LEEP depends on the sample order through its k-means++ start, as in the
paper's code.  See each score's docstring.

New scores register themselves with one line, ``register_score("name", fn, needs_probs=...)``, in a module
imported below.  Invalid inputs raise :class:`ScoreError`; documented fallbacks warn with :class:`ScoreWarning`.
Importing this package does not import torch or scikit-learn; they load on first use.
"""

from medxfer.scores.errors import ScoreError, ScoreWarning
from medxfer.scores.registry import REGISTRY, ScoreResult, ScoreSpec, available_scores, register_score
from medxfer.scores.inputs import ScoreInputs

# Score modules register themselves on import; this order is the default order of compute_scores.
from medxfer.scores.hscore import hscore, reg_hscore
from medxfer.scores.nce import nce
from medxfer.scores.leep import leep
from medxfer.scores.nleep import nleep
from medxfer.scores.logme import logme
from medxfer.scores.gbc import gbc

# Opt-in scores (register_score(..., default=False)): computed when named.
from medxfer.scores.sfda import sfda
from medxfer.scores.parc import parc
from medxfer.scores.transrate import transrate
from medxfer.scores.etran import etran
from medxfer.scores.pactran import pactran
from medxfer.scores.knn import knn
from medxfer.scores.linear_probe import linear_probe
from medxfer.scores.imagenet_top1 import imagenet_top1
from medxfer.scores.compute import compute_scores

__all__ = [
    "REGISTRY",
    "ScoreError",
    "ScoreInputs",
    "ScoreResult",
    "ScoreSpec",
    "ScoreWarning",
    "available_scores",
    "compute_scores",
    "etran",
    "gbc",
    "hscore",
    "imagenet_top1",
    "knn",
    "leep",
    "linear_probe",
    "logme",
    "nce",
    "nleep",
    "pactran",
    "parc",
    "reg_hscore",
    "register_score",
    "sfda",
    "transrate",
]
