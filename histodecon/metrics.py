"""Evaluation of held-out predictions and agreement of labels with published proportions.

Pearson correlation is computed per cell type across the spots of one slide, as in the
Hist2Cell evaluation, and also over all held-out spots concatenated ("pooled"). The two
differ: the pooled value also rewards getting the between-slide differences right. Tables
name each one explicitly.

A cell type whose label or prediction is constant on a slide has no defined correlation.
Its Pearson and Spearman values are NaN, flagged in the ``constant`` column, left out of
every mean and counted in ``n_excluded``. The mean baseline predicts a constant per slide,
so all its per-slide correlations are NaN by construction.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from histodecon.composition import colocalisation_score, jensen_shannon, spatial_weights
from histodecon.keys import BARCODE_COL, FOLD_COL, LABEL_PREFIX, PRED_PREFIX, SLIDE_COL, strip_prefix

logger = logging.getLogger(__name__)

__all__ = [
    "pearson_columns",
    "mean_pearson",
    "evaluate",
    "SlidePositions",
    "evaluate_slides",
    "pooled_pearson",
    "summarize",
    "summary_markdown",
    "label_agreement",
    "label_agreement_spots",
    "METRICS",
]

# Per-slide metrics of :func:`evaluate`, in column order.
METRICS = ("pearson", "spearman", "l1", "mse")
CELL_TYPE_COL = "cell_type"
BACKBONE_COL = "backbone"
REGRESSOR_COL = "regressor"


def pearson_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Return the Pearson correlation of each column pair, shape ``(n_types,)``.

    A column that is constant in ``a`` or in ``b`` gives NaN, and so does every column
    when there are fewer than 2 rows.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim == 1:
        a, b = a[:, None], b[:, None]
    if a.shape[0] < 2:
        return np.full(a.shape[1], np.nan)
    constant = (np.ptp(a, axis=0) == 0) | (np.ptp(b, axis=0) == 0)
    a_centred = a - a.mean(axis=0)
    b_centred = b - b.mean(axis=0)
    denominator = np.sqrt((a_centred**2).sum(axis=0) * (b_centred**2).sum(axis=0))
    with np.errstate(divide="ignore", invalid="ignore"):
        r = (a_centred * b_centred).sum(axis=0) / denominator
    r[constant] = np.nan
    return np.clip(r, -1.0, 1.0)


def mean_pearson(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Return the mean over types of the per-type Pearson, skipping NaN (NaN if all are NaN)."""
    r = pearson_columns(y_true, y_pred)
    return float(np.nanmean(r)) if np.isfinite(r).any() else float("nan")


def _cell_types(predictions: pd.DataFrame) -> list[str]:
    types = strip_prefix(predictions.columns, LABEL_PREFIX)
    missing = [t for t in types if PRED_PREFIX + t not in predictions.columns]
    if not types or missing:
        raise ValueError(
            f"prediction table needs matching {LABEL_PREFIX!r} and {PRED_PREFIX!r} columns; "
            f"found label types {types}, without predictions for {missing}"
        )
    return types


def _slide_metrics(labels: np.ndarray, preds: np.ndarray) -> dict[str, np.ndarray]:
    constant = (np.ptp(labels, axis=0) == 0) | (np.ptp(preds, axis=0) == 0)
    spearman = pearson_columns(rankdata(labels, axis=0), rankdata(preds, axis=0))
    spearman[constant] = np.nan
    return {
        "pearson": pearson_columns(labels, preds),
        "spearman": spearman,
        "l1": np.abs(preds - labels).mean(axis=0),
        "mse": ((preds - labels) ** 2).mean(axis=0),
        "constant": constant,
    }


def evaluate(predictions: pd.DataFrame) -> pd.DataFrame:
    """Compute per slide and cell type the agreement of held-out predictions with labels.

    Parameters
    ----------
    predictions : DataFrame
        Output of :func:`histodecon.cv.cross_validate`: ``slide``, ``barcode``, ``fold``,
        ``label:<type>`` and ``pred:<type>`` per spot.

    Returns
    -------
    DataFrame
        One row per slide and cell type, sorted by both. Columns: ``slide``, ``fold``,
        ``cell_type``, ``pearson``, ``spearman``, ``l1`` (mean absolute error, target
        units), ``mse`` (target units squared), ``n_spots`` and ``constant``. The last is
        True where label or prediction is constant on the slide, and then Pearson and
        Spearman are NaN.
    """
    types = _cell_types(predictions)
    rows = []
    for slide, spots in predictions.groupby(SLIDE_COL, sort=True):
        labels = spots[[LABEL_PREFIX + t for t in types]].to_numpy(dtype=np.float64)
        preds = spots[[PRED_PREFIX + t for t in types]].to_numpy(dtype=np.float64)
        values = _slide_metrics(labels, preds)
        fold = spots[FOLD_COL].iloc[0] if FOLD_COL in spots else -1
        for i, cell_type in enumerate(types):
            row = {SLIDE_COL: slide, FOLD_COL: fold, CELL_TYPE_COL: cell_type}
            row.update({name: values[name][i] for name in METRICS})
            row["n_spots"] = len(spots)
            row["constant"] = bool(values["constant"][i])
            rows.append(row)
    table = pd.DataFrame(rows)
    n_constant = int(table["constant"].sum())
    if n_constant:
        logger.info(
            "%d of %d slide x cell-type pairs have a constant label or prediction; their Pearson is NaN",
            n_constant,
            len(table),
        )
    return table


@dataclass(frozen=True)
class SlidePositions:
    """Spot centres of one slide for the neighbour graph.

    Attributes
    ----------
    spatial_px : DataFrame
        Indexed by barcode, columns ``x`` and ``y`` in full-resolution pixels.
    pitch_px : float
        Centre-to-centre distance of neighbouring grid spots, in those pixels.
    """

    spatial_px: pd.DataFrame
    pitch_px: float


def evaluate_slides(predictions: pd.DataFrame, positions: Mapping[str, SlidePositions]) -> pd.DataFrame:
    """Compute per slide the composition metrics of :mod:`histodecon.composition`.

    Parameters
    ----------
    predictions : DataFrame
        As for :func:`evaluate`.
    positions : mapping
        Slide to its :class:`SlidePositions`; every predicted barcode must have a position.

    Returns
    -------
    DataFrame
        One row per slide with ``slide``, ``fold`` and ``n_spots``. ``jsd_mean`` and
        ``jsd_median`` summarise the Jensen–Shannon divergence of per-spot composition, in
        bits. ``n_jsd_excluded`` counts spots where label or prediction sums to zero.
        ``colocalisation`` is the Pearson over type pairs of bivariate Moran's I, labels
        against predictions, and ``colocalisation_mad`` the mean absolute difference of
        those values. ``n_type_pairs`` and ``mean_neighbours`` describe the spot graph.
    """
    types = _cell_types(predictions)
    rows = []
    for slide, spots in predictions.groupby(SLIDE_COL, sort=True):
        if slide not in positions:
            raise ValueError(f"no spot positions for slide {slide!r}; positions were given for {sorted(positions)}")
        place = positions[slide]
        barcodes = spots[BARCODE_COL].astype(str)
        missing = barcodes[~barcodes.isin(place.spatial_px.index)]
        if len(missing):
            raise ValueError(
                f"slide {slide!r}: {len(missing)} predicted barcodes have no position in the ingested slide "
                f"(first: {missing.iloc[0]!r}); rerun ingest and cross-validation so both come from the same input"
            )
        labels = spots[[LABEL_PREFIX + t for t in types]].to_numpy(dtype=np.float64)
        preds = spots[[PRED_PREFIX + t for t in types]].to_numpy(dtype=np.float64)
        divergence = jensen_shannon(labels, preds)
        weights = spatial_weights(place.spatial_px.loc[barcodes, ["x", "y"]].to_numpy(), pitch_px=place.pitch_px)
        coloc = colocalisation_score(labels, preds, weights)
        rows.append(
            {
                SLIDE_COL: slide,
                FOLD_COL: spots[FOLD_COL].iloc[0] if FOLD_COL in spots else -1,
                "n_spots": len(spots),
                "jsd_mean": float(np.nanmean(divergence)) if np.isfinite(divergence).any() else np.nan,
                "jsd_median": float(np.nanmedian(divergence)) if np.isfinite(divergence).any() else np.nan,
                "n_jsd_excluded": int(np.isnan(divergence).sum()),
                "colocalisation": coloc.score,
                "colocalisation_mad": coloc.mean_abs_difference,
                "n_type_pairs": coloc.n_pairs,
                "mean_neighbours": float(np.diff(weights.indptr).mean()),
            }
        )
    return pd.DataFrame(rows)


def pooled_pearson(predictions: pd.DataFrame) -> pd.Series:
    types = _cell_types(predictions)
    r = pearson_columns(
        predictions[[LABEL_PREFIX + t for t in types]].to_numpy(dtype=np.float64),
        predictions[[PRED_PREFIX + t for t in types]].to_numpy(dtype=np.float64),
    )
    return pd.Series(r, index=pd.Index(types, name=CELL_TYPE_COL), name="pearson_pooled")


def summarize(
    metric_tables: Mapping[tuple[str, str], pd.DataFrame],
    *,
    prediction_tables: Mapping[tuple[str, str], pd.DataFrame] | None = None,
) -> pd.DataFrame:
    """Summarise per-slide metrics over slides for each backbone, regressor and cell type.

    Parameters
    ----------
    metric_tables : mapping
        ``(backbone, regressor)`` to the output of :func:`evaluate`.
    prediction_tables : mapping, optional
        ``(backbone, regressor)`` to the prediction table behind each metric table. When
        given, ``pearson_pooled`` is the Pearson over all held-out spots concatenated;
        otherwise that column is NaN.

    Returns
    -------
    DataFrame
        Columns ``backbone``, ``regressor``, ``cell_type``, then ``<metric>_slide_mean``
        and ``<metric>_slide_std`` (sample standard deviation over slides, NaN excluded)
        for pearson, spearman, l1 and mse, ``pearson_pooled``, ``n_slides`` and
        ``n_excluded`` (slides where Pearson is NaN).
    """
    parts = []
    for (backbone, regressor), table in sorted(metric_tables.items()):
        grouped = table.groupby(CELL_TYPE_COL, sort=True)
        summary = pd.DataFrame(index=pd.Index(sorted(table[CELL_TYPE_COL].unique()), name=CELL_TYPE_COL))
        for metric in METRICS:
            summary[f"{metric}_slide_mean"] = grouped[metric].mean()
            summary[f"{metric}_slide_std"] = grouped[metric].std(ddof=1)
        pooled = None
        if prediction_tables is not None and (backbone, regressor) in prediction_tables:
            pooled = pooled_pearson(prediction_tables[(backbone, regressor)])
        summary["pearson_pooled"] = pooled if pooled is not None else np.nan
        summary["n_slides"] = grouped[SLIDE_COL].nunique()
        summary["n_excluded"] = grouped["pearson"].apply(lambda values: int(values.isna().sum()))
        summary = summary.reset_index()
        summary.insert(0, REGRESSOR_COL, regressor)
        summary.insert(0, BACKBONE_COL, backbone)
        parts.append(summary)
    if not parts:
        raise ValueError("no metric tables to summarise; pass at least one (backbone, regressor) table")
    return pd.concat(parts, ignore_index=True)


def _markdown_table(frame: pd.DataFrame) -> str:
    def cell(value: object) -> str:
        if isinstance(value, float):
            return "NaN" if np.isnan(value) else f"{value:.3f}"
        return str(value)

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * frame.shape[1]]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def summary_markdown(
    summary: pd.DataFrame, *, benchmark: pd.DataFrame | None = None, tests: pd.DataFrame | None = None
) -> str:
    """Render the output of :func:`summarize` as Markdown tables.

    With ``benchmark`` (:func:`histodecon.benchmark.benchmark_table`) the text opens with
    it: one row per backbone and regressor, best first, with 95 % fold bootstrap intervals.
    With ``tests`` (:func:`histodecon.benchmark.control_tests`) the paired tests against
    the controls follow. Then come one row per backbone and regressor with each metric
    averaged over cell types (NaN types skipped) and the total of excluded slide x type
    pairs, and one row per backbone, regressor and cell type.
    """
    keys = [BACKBONE_COL, REGRESSOR_COL]
    parts = []
    if benchmark is not None:
        columns = [
            *keys, "control", "n_folds", "pearson_fold_mean", "pearson_ci_low", "pearson_ci_high", "pearson_pooled",
            "jsd_fold_mean", "colocalisation_fold_mean", "l1_fold_mean",
        ]  # fmt: skip
        parts.append(
            "Benchmark, best first: fold means with 95 % bootstrap intervals over folds "
            "(pearson: per-slide Pearson averaged over types; jsd: Jensen-Shannon divergence of "
            "per-spot composition, bits; colocalisation: agreement of pairwise bivariate Moran's I).\n\n"
            + _markdown_table(benchmark[columns])
        )
    if tests is not None and len(tests):
        parts.append(
            "Paired tests against controls over folds (difference > 0: the model is better; "
            "p: two-sided exact Wilcoxon signed-rank).\n\n" + _markdown_table(tests)
        )
    overview = summary.groupby(keys, sort=True).agg(
        pearson_slide_mean=("pearson_slide_mean", "mean"),
        pearson_pooled=("pearson_pooled", "mean"),
        spearman_slide_mean=("spearman_slide_mean", "mean"),
        l1_slide_mean=("l1_slide_mean", "mean"),
        mse_slide_mean=("mse_slide_mean", "mean"),
        n_excluded=("n_excluded", "sum"),
    )
    per_type = summary[
        keys
        + [
            CELL_TYPE_COL,
            "pearson_slide_mean",
            "pearson_slide_std",
            "pearson_pooled",
            "l1_slide_mean",
            "n_slides",
            "n_excluded",
        ]
    ]
    parts.append(
        "Mean over cell types of per-slide metrics (pearson_pooled: over all held-out spots).\n\n"
        + _markdown_table(overview.reset_index())
    )
    parts.append("Per cell type, mean and standard deviation over held-out slides.\n\n" + _markdown_table(per_type))
    return "\n\n".join(parts) + "\n"


def _aggregate_types(frame: pd.DataFrame, groups: Mapping[str, Sequence[str]]) -> pd.DataFrame:
    """Sum columns into groups and renormalise each row to sum 1 over the groups."""
    summed = pd.DataFrame({name: frame[list(columns)].sum(axis=1) for name, columns in groups.items()})
    totals = summed.sum(axis=1)
    return summed[totals > 0].div(totals[totals > 0], axis=0)


def _read_published(path: str | os.PathLike) -> pd.DataFrame:
    published = pd.read_csv(path, sep="\t", index_col=0)
    published.index = published.index.astype(str)
    return published


def _matched_slides(
    labels_by_slide: Mapping[str, pd.DataFrame],
    published_by_slide: Mapping[str, str | os.PathLike],
    *,
    type_map: Mapping[str, str],
    prefix: str,
) -> tuple[dict[str, list[str]], list[tuple[str, pd.DataFrame, pd.DataFrame]]]:
    """Return the published types (to our types) and, per slide, both sides' matched proportions."""
    groups: dict[str, list[str]] = {}
    for ours, theirs in sorted(type_map.items()):
        groups.setdefault(theirs, []).append(ours)
    groups = dict(sorted(groups.items()))
    missing_slides = sorted(set(labels_by_slide) - set(published_by_slide))
    if missing_slides:
        logger.warning("label agreement: no published table for slides %s; they are skipped", missing_slides)

    matched = []
    for slide in sorted(set(labels_by_slide) & set(published_by_slide)):
        labels = labels_by_slide[slide].set_index(BARCODE_COL)
        labels.index = labels.index.astype(str)
        ours = labels[[c for c in labels.columns if c.startswith(prefix)]]
        ours.columns = [c[len(prefix) :] for c in ours.columns]
        published = _read_published(published_by_slide[slide])

        absent_ours = sorted(set(type_map) - set(ours.columns))
        absent_theirs = sorted(set(groups) - set(published.columns))
        if absent_ours or absent_theirs:
            raise ValueError(
                f"slide {slide!r}: type_map names types missing from our labels {absent_ours} "
                f"(columns {list(ours.columns)}) or from {published_by_slide[slide]} {absent_theirs} "
                f"(columns {list(published.columns)}); fix the type map"
            )
        unmapped = sorted(set(ours.columns) - set(type_map))
        if unmapped:
            logger.info("slide %s: our types %s are not in the type map and are left out", slide, unmapped)
        extra = sorted(set(published.columns) - set(groups))
        if extra:
            logger.info("slide %s: published types %s are not in the type map and are left out", slide, extra)

        shared = ours.index.intersection(published.index).sort_values()
        logger.info(
            "slide %s: %d barcodes matched, %d only in our labels, %d only in the published table",
            slide,
            len(shared),
            len(ours.index.difference(published.index)),
            len(published.index.difference(ours.index)),
        )
        ours_grouped = _aggregate_types(ours.loc[shared], groups)
        theirs_grouped = _aggregate_types(published.loc[shared], {t: [t] for t in groups})
        both = ours_grouped.index.intersection(theirs_grouped.index)
        if len(both) < len(shared):
            logger.info(
                "slide %s: %d matched spots have zero total over mapped types and are left out",
                slide,
                len(shared) - len(both),
            )
        if len(both) == 0:
            logger.warning("slide %s: no spots left to compare; the slide is skipped", slide)
            continue
        matched.append((slide, ours_grouped.loc[both], theirs_grouped.loc[both]))

    if not matched:
        raise ValueError(
            f"no barcodes matched between our labels (slides {sorted(labels_by_slide)}) and the published "
            f"tables (slides {sorted(published_by_slide)}); check slide names and barcode format"
        )
    return groups, matched


def label_agreement(
    labels_by_slide: Mapping[str, pd.DataFrame],
    published_by_slide: Mapping[str, str | os.PathLike],
    *,
    type_map: Mapping[str, str],
    prefix: str = "proportion:",
) -> pd.DataFrame:
    """Correlate our per-spot proportions with published proportions, per published type.

    Our types are summed into published types with ``type_map`` (several of ours may map
    to one published type). Both sides are then restricted to the mapped published types
    and renormalised per spot to sum 1, so types outside the map do not shift the scale.
    Spots are matched by barcode; unmatched barcodes and types are logged.

    Parameters
    ----------
    labels_by_slide : mapping
        Slide to a labels table with ``barcode`` and ``<prefix><type>`` columns.
    published_by_slide : mapping
        Slide to a TSV of published proportions: first column the barcode, one column per
        published type.
    type_map : mapping
        Our cell type to published cell type.
    prefix : str
        Column prefix of our values in the labels tables.

    Returns
    -------
    DataFrame
        One row per published type: ``published_type``, ``our_types`` (comma-separated),
        ``pearson_pooled`` (all matched spots of all slides), ``pearson_slide_mean``
        (mean of per-slide values, NaN skipped), ``n_slides``, ``n_excluded`` (slides
        with a constant column) and ``n_spots`` (matched spots).
    """
    groups, matched = _matched_slides(labels_by_slide, published_by_slide, type_map=type_map, prefix=prefix)
    ours_parts = [ours for _, ours, _ in matched]
    theirs_parts = [theirs for _, _, theirs in matched]
    slide_r = [pearson_columns(ours.to_numpy(), theirs.to_numpy()) for _, ours, theirs in matched]
    pooled = pearson_columns(pd.concat(ours_parts).to_numpy(), pd.concat(theirs_parts).to_numpy())
    per_slide = np.vstack(slide_r)
    n_spots = sum(len(part) for part in ours_parts)
    rows = []
    for i, (published_type, our_types) in enumerate(groups.items()):
        finite = np.isfinite(per_slide[:, i])
        rows.append(
            {
                "published_type": published_type,
                "our_types": ",".join(our_types),
                "pearson_pooled": pooled[i],
                "pearson_slide_mean": per_slide[finite, i].mean() if finite.any() else np.nan,
                "n_slides": per_slide.shape[0],
                "n_excluded": int((~finite).sum()),
                "n_spots": n_spots,
            }
        )
    return pd.DataFrame(rows)


def label_agreement_spots(
    labels_by_slide: Mapping[str, pd.DataFrame],
    published_by_slide: Mapping[str, str | os.PathLike],
    *,
    type_map: Mapping[str, str],
    prefix: str = "proportion:",
) -> pd.DataFrame:
    """Return the matched spots behind :func:`label_agreement`, one row per slide and barcode.

    Columns: ``slide``, ``barcode``, then ``ours:<type>`` and ``published:<type>`` for each
    published type: proportions over the mapped types, as correlated there.
    """
    _, matched = _matched_slides(labels_by_slide, published_by_slide, type_map=type_map, prefix=prefix)
    parts = []
    for slide, ours, theirs in matched:
        part = pd.concat([ours.add_prefix("ours:"), theirs.add_prefix("published:")], axis=1)
        part.index.name = BARCODE_COL
        part = part.reset_index()
        part.insert(0, SLIDE_COL, slide)
        parts.append(part)
    return pd.concat(parts, ignore_index=True)
