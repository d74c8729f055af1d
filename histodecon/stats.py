"""Uncertainty of cross-validated scores: fold-level bootstrap intervals and paired tests.

The unit of resampling is the cross-validation fold (one held-out slide or patient), not the
spot: spots of one slide share a model, a staining batch and a label fit, so they are far
from independent, and a spot-level interval would be much too narrow.

With few folds both tools are coarse. Five folds give at most 5**5 distinct bootstrap
means, and the smallest two-sided p-value an exact Wilcoxon signed-rank test can reach is
2 / 2**5 = 0.0625; tables report ``n_folds`` so readers can judge.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.stats import wilcoxon

logger = logging.getLogger(__name__)

__all__ = ["BOOTSTRAP_RESAMPLES", "CONFIDENCE", "bootstrap_interval", "fold_means", "paired_tests"]

BOOTSTRAP_RESAMPLES = 2000
CONFIDENCE = 0.95


def bootstrap_interval(
    values: Sequence[float], *, seed: int, n_resamples: int = BOOTSTRAP_RESAMPLES, confidence: float = CONFIDENCE
) -> tuple[float, float]:
    """Return the percentile bootstrap interval of the mean of ``values`` (one per fold).

    NaN values are dropped first. Fewer than 2 values give ``(nan, nan)``. The generator is
    seeded, so the interval is the same on every run.
    """
    finite = np.asarray([v for v in values if np.isfinite(v)], dtype=np.float64)
    if len(finite) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = finite[rng.integers(0, len(finite), size=(n_resamples, len(finite)))].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def fold_means(table: pd.DataFrame, value: str, *, by: Sequence[str] = ()) -> pd.DataFrame:
    """Average ``value`` first within each fold, then return one row per fold (and ``by`` group).

    A per-slide-and-type table becomes one value per fold: the mean over its cell types
    and slides, NaN skipped. Columns: ``fold``, the ``by`` columns, ``value``.
    """
    keys = ["fold", *by]
    return table.groupby(keys, sort=True)[value].mean().reset_index()


def paired_tests(
    per_fold: Mapping[tuple[str, str], pd.Series],
    *,
    controls: Mapping[tuple[str, str], Sequence[tuple[str, str]]],
    metric: str,
    higher_is_better: bool,
    seed: int,
) -> pd.DataFrame:
    """Compare each model with its controls fold by fold.

    Parameters
    ----------
    per_fold : mapping
        ``(backbone, regressor)`` to a Series of the metric indexed by fold.
    controls : mapping
        ``(backbone, regressor)`` to the ``(backbone, regressor)`` pairs it is compared with.
    metric : str
        Name written in the ``metric`` column.
    higher_is_better : bool
        Sign of ``difference``: it is always "model better than control" when positive.
    seed : int
        Seed of the bootstrap interval of the mean difference.

    Returns
    -------
    DataFrame
        One row per model and control. Columns: ``backbone``, ``regressor``,
        ``control_backbone``, ``control_regressor``, ``metric`` and ``n_folds`` (folds
        where both are defined). Then ``model_mean``, ``control_mean``, ``difference``
        (mean over folds) and ``difference_ci_low``/``_high`` (fold bootstrap).
        ``n_better`` counts the folds where the model wins. ``p_value`` is the two-sided
        Wilcoxon signed-rank test on the paired fold values (scipy's ``method="auto"``:
        exact without ties up to 50 folds), NaN with fewer than 2 folds or when every
        difference is zero.
    """
    rows = []
    for model, model_controls in sorted(controls.items()):
        for control in model_controls:
            paired = pd.concat({"model": per_fold[model], "control": per_fold[control]}, axis=1).dropna()
            sign = 1.0 if higher_is_better else -1.0
            difference = sign * (paired["model"] - paired["control"])
            p_value = float("nan")
            if len(difference) >= 2 and (difference != 0).any():
                p_value = float(wilcoxon(difference, alternative="two-sided", method="auto").pvalue)
            low, high = bootstrap_interval(difference.tolist(), seed=seed)
            rows.append(
                {
                    "backbone": model[0],
                    "regressor": model[1],
                    "control_backbone": control[0],
                    "control_regressor": control[1],
                    "metric": metric,
                    "n_folds": len(paired),
                    "model_mean": paired["model"].mean(),
                    "control_mean": paired["control"].mean(),
                    "difference": difference.mean(),
                    "difference_ci_low": low,
                    "difference_ci_high": high,
                    "n_better": int((difference > 0).sum()),
                    "p_value": p_value,
                }
            )
    columns = [
        "backbone", "regressor", "control_backbone", "control_regressor", "metric", "n_folds", "model_mean",
        "control_mean", "difference", "difference_ci_low", "difference_ci_high", "n_better", "p_value",
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=columns)
