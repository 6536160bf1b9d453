"""Summary statistics for per-utterance scores."""
from __future__ import annotations

import math

import numpy as np

CI_METHOD = "95% CI of the mean, Student t: mean ± t(0.975, n-1)·sd/√n (sd with ddof=1)"


def mean_ci(values) -> dict:
    """Mean, sample sd and 95% t-interval of finite values (failures are excluded before this)."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    n = int(x.size)
    if n == 0:
        return {"mean": None, "std": None, "ci95": [None, None], "n": 0}
    mean = float(x.mean())
    if n == 1:
        return {"mean": mean, "std": None, "ci95": [None, None], "n": 1}
    from scipy.stats import t

    sd = float(x.std(ddof=1))
    half = float(t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return {"mean": mean, "std": sd, "ci95": [mean - half, mean + half], "n": n}
