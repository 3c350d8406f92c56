"""Analysis: correlations of transferability scores with fine-tuned accuracy, ensembles of scores, and the paper's
figures."""

from medxfer.analysis.correlation import AnalysisError, UndefinedCorrelation, correlate
from medxfer.analysis.ensembles import (
    Ensemble,
    EnsembleWarning,
    add_ensembles,
    apply_pooling,
    fit_linear_pooling,
    linear_lodo,
    mean_rank,
    mean_zscore,
    parse_ensembles,
)

__all__ = [
    "AnalysisError", "Ensemble", "EnsembleWarning", "UndefinedCorrelation", "add_ensembles", "apply_pooling",
    "correlate", "fit_linear_pooling", "linear_lodo", "mean_rank", "mean_zscore", "parse_ensembles",
]
