"""Analysis: correlations of transferability scores with fine-tuned accuracy, and the paper's figures."""

from medxfer.analysis.correlation import AnalysisError, UndefinedCorrelation, correlate

__all__ = ["AnalysisError", "UndefinedCorrelation", "correlate"]
