"""The analysis run's description states the answer: best scores with intervals, the ceiling, the figures."""

from __future__ import annotations

import numpy as np
import pandas as pd

from medxfer.analysis.correlation import correlate
from medxfer.analysis.report import describe_study


def test_description_lists_the_best_scores_with_intervals_the_ceiling_and_the_figures():
    rng = np.random.default_rng(0)
    rows = []
    for d in ("synthetic_derm", "synthetic_mri"):
        acc = rng.uniform(0.5, 0.9, size=6)
        for i, a in enumerate(acc):
            rows += [{"dataset": d, "model": f"m{i}", "score": "good", "value": a + rng.normal(0, 0.01), "target": a},
                     {"dataset": d, "model": f"m{i}", "score": "noise", "value": rng.normal(), "target": a}]
    corr = correlate(pd.DataFrame(rows), n_boot=200)
    reliability = pd.DataFrame({"dataset": ["synthetic_derm", "synthetic_mri"], "ceiling": [0.81, 0.77]})
    text = describe_study("default", [f"m{i}" for i in range(6)], ["synthetic_derm", "synthetic_mri"], corr,
                          reliability, ["/x/correlation_iid.png"], synthetic=True)
    good = corr.set_index(["score", "dataset"]).loc[("good", "ALL")]
    assert f"| `good` | " in text and f"{good['tau']:.2f} [{good['tau_lo']:.2f}, {good['tau_hi']:.2f}]" in text
    assert text.index("`good`") < text.index("`noise`")  # sorted by the pooled tau
    assert "`synthetic_derm` 0.81" in text and "synthetic benchmark" in text
    assert "correlation_iid.png" in text and "6 models" in text
    assert "unknown" in describe_study("s", ["a"], ["d"], corr, None, [])
