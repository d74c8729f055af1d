"""Backbone benchmark: one row per backbone x regressor with fold bootstrap intervals, and
paired tests of every model against the controls.

Controls are the registry's random-weight encoders (``control=True``) and the ``mean``
regressor, which predicts the training mean of every type. Each model is tested against

- every control backbone with the same regressor, on the fold mean of per-slide Pearson
  (does the pretrained encoder beat random weights?), and
- the ``mean`` regressor on the same backbone, on the fold mean of L1 (the mean baseline's
  per-slide Pearson is undefined: its prediction is constant on a slide).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping

import numpy as np
import pandas as pd

from histodecon.keys import FOLD_COL
from histodecon.metrics import BACKBONE_COL, CELL_TYPE_COL, REGRESSOR_COL, pooled_pearson
from histodecon.stats import bootstrap_interval, fold_means, paired_tests

logger = logging.getLogger(__name__)

__all__ = ["MEAN_REGRESSOR", "is_control", "benchmark_table", "type_intervals", "control_tests"]

MEAN_REGRESSOR = "mean"
Pair = tuple[str, str]


def is_control(pair: Pair, control_backbones: Collection[str]) -> bool:
    """Return True for a control: a random-weight backbone or the mean regressor."""
    return pair[0] in control_backbones or pair[1] == MEAN_REGRESSOR


def _interval_columns(prefix: str, values: pd.Series, seed: int) -> dict[str, float]:
    low, high = bootstrap_interval(values.tolist(), seed=seed)
    return {f"{prefix}_fold_mean": values.mean(), f"{prefix}_ci_low": low, f"{prefix}_ci_high": high}


def benchmark_table(
    metric_tables: Mapping[Pair, pd.DataFrame],
    slide_tables: Mapping[Pair, pd.DataFrame],
    prediction_tables: Mapping[Pair, pd.DataFrame],
    *,
    control_backbones: Collection[str],
    seed: int,
) -> pd.DataFrame:
    """Summarise each backbone x regressor over folds, sorted by mean Pearson (best first).

    Parameters
    ----------
    metric_tables : mapping
        Pair to the per-slide-and-type table of :func:`histodecon.metrics.evaluate`.
    slide_tables : mapping
        Pair to the per-slide table of :func:`histodecon.metrics.evaluate_slides`.
    prediction_tables : mapping
        Pair to its held-out predictions (for the pooled Pearson).
    control_backbones : collection
        Backbones that are negative controls.
    seed : int
        Seed of every bootstrap.

    Returns
    -------
    DataFrame
        ``backbone``, ``regressor``, ``control``, ``n_folds``. Then, for pearson (mean over
        types and slides within a fold), jsd, colocalisation and l1: ``<m>_fold_mean``,
        ``<m>_ci_low`` and ``<m>_ci_high`` (95 % percentile bootstrap over folds). Last,
        ``pearson_pooled``: the mean over types of the Pearson over all held-out spots.
    """
    rows = []
    for pair in sorted(metric_tables):
        metrics, slides = metric_tables[pair], slide_tables[pair]
        row = {BACKBONE_COL: pair[0], REGRESSOR_COL: pair[1], "control": is_control(pair, control_backbones)}
        row["n_folds"] = metrics[FOLD_COL].nunique()
        row.update(_interval_columns("pearson", fold_means(metrics, "pearson")["pearson"], seed))
        row["pearson_pooled"] = float(np.nanmean(pooled_pearson(prediction_tables[pair]))) if pair in prediction_tables else np.nan
        row.update(_interval_columns("jsd", fold_means(slides, "jsd_mean")["jsd_mean"], seed))
        row.update(_interval_columns("colocalisation", fold_means(slides, "colocalisation")["colocalisation"], seed))
        row.update(_interval_columns("l1", fold_means(metrics, "l1")["l1"], seed))
        rows.append(row)
    table = pd.DataFrame(rows)
    return table.sort_values("pearson_fold_mean", ascending=False, na_position="last", kind="stable").reset_index(drop=True)


def type_intervals(metric_tables: Mapping[Pair, pd.DataFrame], *, seed: int) -> pd.DataFrame:
    """Return per backbone x regressor x cell type the fold values of Pearson and their interval.

    Returns
    -------
    DataFrame
        ``backbone``, ``regressor``, ``cell_type``, ``pearson_fold_mean``, ``pearson_ci_low``,
        ``pearson_ci_high``, ``n_folds`` (folds with a defined Pearson).
    """
    rows = []
    for pair in sorted(metric_tables):
        per_fold = fold_means(metric_tables[pair], "pearson", by=[CELL_TYPE_COL])
        for cell_type, values in per_fold.groupby(CELL_TYPE_COL, sort=True)["pearson"]:
            row = {BACKBONE_COL: pair[0], REGRESSOR_COL: pair[1], CELL_TYPE_COL: cell_type}
            row.update(_interval_columns("pearson", values, seed))
            row["n_folds"] = int(values.notna().sum())
            rows.append(row)
    return pd.DataFrame(rows)


def control_tests(metric_tables: Mapping[Pair, pd.DataFrame], *, control_backbones: Collection[str], seed: int) -> pd.DataFrame:
    """Test every model against its controls, fold by fold (see the module docstring).

    Returns the table of :func:`histodecon.stats.paired_tests` for Pearson against control
    backbones, then for L1 against the mean regressor; empty when nothing is comparable.
    """
    pairs = set(metric_tables)
    pearson_controls: dict[Pair, list[Pair]] = {}
    l1_controls: dict[Pair, list[Pair]] = {}
    for pair in sorted(pairs):
        backbone, regressor = pair
        if regressor == MEAN_REGRESSOR:
            continue
        if backbone not in control_backbones:
            matched = [(c, regressor) for c in sorted(control_backbones) if (c, regressor) in pairs]
            if matched:
                pearson_controls[pair] = matched
        if (backbone, MEAN_REGRESSOR) in pairs:
            l1_controls[pair] = [(backbone, MEAN_REGRESSOR)]

    def per_fold(metric: str) -> dict[Pair, pd.Series]:
        return {pair: fold_means(table, metric).set_index(FOLD_COL)[metric] for pair, table in metric_tables.items()}

    parts = [
        paired_tests(per_fold("pearson"), controls=pearson_controls, metric="pearson", higher_is_better=True, seed=seed),
        paired_tests(per_fold("l1"), controls=l1_controls, metric="l1", higher_is_better=False, seed=seed),
    ]
    if not pearson_controls:
        logger.info("no model has a control backbone with the same regressor; only tests against the mean regressor")
    return pd.concat([p for p in parts if len(p)], ignore_index=True) if any(len(p) for p in parts) else parts[0]
