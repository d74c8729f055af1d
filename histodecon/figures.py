"""Figures of the report: backbone benchmark, spatial maps, scatter plots and label checks.

Every ``plot_*`` function takes tables, returns a matplotlib Figure and leaves its inputs
unchanged; :func:`save_figure` writes it atomically. Figures are built panel by panel from a
list of panel specifications, so the number of axes is known before saving (tests count
them). Colours of slides and cell types come from matplotlib's qualitative "tab10"/"tab20"
maps in sorted order, so the same name has the same colour in every figure of a run.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # Cluster nodes have no display. This call must precede the pyplot import.
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.collections import EllipseCollection  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from histodecon.io import atomic_path  # noqa: E402
from histodecon.keys import LABEL_PREFIX, PRED_PREFIX, SLIDE_COL  # noqa: E402
from histodecon.metrics import BACKBONE_COL, CELL_TYPE_COL, REGRESSOR_COL, pearson_columns  # noqa: E402
from histodecon.stats import fold_means  # noqa: E402

logger = logging.getLogger(__name__)

__all__ = [
    "save_figure",
    "plot_benchmark",
    "plot_scatter",
    "SpatialMapData",
    "plot_spatial_maps",
    "plot_signatures",
    "plot_label_agreement",
    "plot_tile_heatmap",
]

CONTROL_COLOUR = "0.55"
MODEL_COLOUR = "tab:blue"
# Marker genes per type shown in the signature heatmap.
SIGNATURE_GENES_PER_TYPE = 5
DPI = 110


def save_figure(fig: Figure, path: str | Path) -> None:
    """Write ``fig`` as PNG to ``path`` atomically and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI)
    plt.close(fig)
    logger.info("wrote figure %s", path)


def _grid(n_panels: int, *, ncols: int, panel_size: tuple[float, float]) -> tuple[Figure, list]:
    """Return a figure with ``n_panels`` axes on a grid of ``ncols`` columns (extra cells removed)."""
    nrows = max(1, math.ceil(n_panels / ncols))
    ncols = min(ncols, n_panels)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(panel_size[0] * ncols, panel_size[1] * nrows), squeeze=False, constrained_layout=True
    )
    flat = list(axes.ravel())
    for extra in flat[n_panels:]:
        extra.remove()
    return fig, flat[:n_panels]


def _pair_name(backbone: str, regressor: str, control: bool) -> str:
    return f"{backbone} / {regressor}" + (" (control)" if control else "")


def _interval_panel(
    ax, rows: pd.DataFrame, points: Mapping[tuple[str, str], np.ndarray], *, title: str, row_labels: bool
) -> None:
    """Draw one row per pair: fold points, mean (diamond) and bootstrap interval (bar).

    A pair without any defined value (the mean regressor: constant prediction) is marked
    "undefined" in place of its points.
    """
    rng = np.random.default_rng(0)  # jitter only; fixed so figures are reproducible
    for y, row in enumerate(rows.itertuples(index=False)):
        pair = (getattr(row, BACKBONE_COL), getattr(row, REGRESSOR_COL))
        colour = CONTROL_COLOUR if row.control else MODEL_COLOUR
        values = points.get(pair, np.array([]))
        ax.scatter(values, y + rng.uniform(-0.15, 0.15, len(values)), s=14, color=colour, alpha=0.6, lw=0)
        if np.isfinite(row.pearson_ci_low):
            ax.plot([row.pearson_ci_low, row.pearson_ci_high], [y, y], color=colour, lw=2.5, alpha=0.8)
        if np.isfinite(row.pearson_fold_mean):
            ax.scatter([row.pearson_fold_mean], [y], marker="D", s=30, color="black", zorder=3)
        else:
            ax.text(0.02, y, "undefined (constant prediction)", fontsize=7, color=colour, va="center", transform=ax.get_yaxis_transform())
    ax.set_yticks(range(len(rows)))
    if row_labels:
        names = [_pair_name(r[BACKBONE_COL], r[REGRESSOR_COL], r["control"]) for _, r in rows.iterrows()]
        ax.set_yticklabels(names, fontsize=8)
        for label, control in zip(ax.get_yticklabels(), rows["control"], strict=True):
            label.set_color(CONTROL_COLOUR if control else "black")
    else:
        ax.set_yticklabels([])
    ax.axvline(0, color="0.8", lw=0.8, zorder=0)
    ax.set_ylim(len(rows) - 0.4, -0.6)  # first row on top, room for the last
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("Pearson r (held-out slides)", fontsize=8)


def plot_benchmark(benchmark: pd.DataFrame, types: pd.DataFrame, metric_tables: Mapping[tuple[str, str], pd.DataFrame]) -> Figure:
    """Plot per-fold Pearson of every backbone x regressor, overall and per cell type.

    Parameters
    ----------
    benchmark : DataFrame
        Output of :func:`histodecon.benchmark.benchmark_table` (sorted best first).
    types : DataFrame
        Output of :func:`histodecon.benchmark.type_intervals`.
    metric_tables : mapping
        Pair to the per-slide-and-type table of :func:`histodecon.metrics.evaluate`.

    Panel 0 shows the mean over cell types; then one panel per cell type, in the same row
    order, sorted by the overall mean. Controls (random-weight encoders, the mean
    regressor) are grey. Axes: ``1 + n_types``.
    """
    control = benchmark.set_index([BACKBONE_COL, REGRESSOR_COL])["control"]
    cell_types = sorted(types[CELL_TYPE_COL].unique())
    ncols = 4
    fig, axes = _grid(1 + len(cell_types), ncols=ncols, panel_size=(4.2, 0.35 * len(benchmark) + 1.2))
    overall_points = {pair: fold_means(t, "pearson")["pearson"].to_numpy() for pair, t in metric_tables.items()}
    _interval_panel(axes[0], benchmark, overall_points, title="mean over cell types", row_labels=True)
    order = list(zip(benchmark[BACKBONE_COL], benchmark[REGRESSOR_COL], strict=True))
    for i, (ax, cell_type) in enumerate(zip(axes[1:], cell_types, strict=True), start=1):
        rows = types[types[CELL_TYPE_COL] == cell_type].set_index([BACKBONE_COL, REGRESSOR_COL]).reindex(order)
        rows["control"] = control.reindex(rows.index).to_numpy()
        points = {
            pair: fold_means(t[t[CELL_TYPE_COL] == cell_type], "pearson")["pearson"].to_numpy()
            for pair, t in metric_tables.items()
        }
        _interval_panel(ax, rows.reset_index(), points, title=cell_type, row_labels=i % ncols == 0)
    fig.suptitle("Held-out Pearson per fold (dots), mean (diamond) and 95 % fold bootstrap interval (bar)", fontsize=10)
    return fig


def plot_scatter(predictions: pd.DataFrame, *, title: str) -> Figure:
    """Plot held-out prediction against label per cell type, spots coloured by slide.

    Each panel's title gives the Pearson r over all spots pooled and the mean of per-slide
    r (NaN slides skipped). The dashed line is y = x. Axes: ``n_types``.
    """
    types = [c[len(LABEL_PREFIX) :] for c in predictions.columns if c.startswith(LABEL_PREFIX)]
    slides = sorted(predictions[SLIDE_COL].unique())
    colours = dict(zip(slides, plt.get_cmap("tab10").colors * (len(slides) // 10 + 1), strict=False))
    fig, axes = _grid(len(types), ncols=3, panel_size=(3.3, 3.1))
    for ax, cell_type in zip(axes, types, strict=True):
        label, pred = predictions[LABEL_PREFIX + cell_type], predictions[PRED_PREFIX + cell_type]
        for slide in slides:
            on_slide = predictions[SLIDE_COL] == slide
            ax.scatter(label[on_slide], pred[on_slide], s=5, alpha=0.5, color=colours[slide], lw=0, label=slide)
        pooled = pearson_columns(label.to_numpy(), pred.to_numpy())[0]
        per_slide = [pearson_columns(label[predictions[SLIDE_COL] == s].to_numpy(), pred[predictions[SLIDE_COL] == s].to_numpy())[0] for s in slides]
        slide_mean = np.nanmean(per_slide) if np.isfinite(per_slide).any() else np.nan
        limits = [min(label.min(), pred.min()), max(label.max(), pred.max())]
        ax.plot(limits, limits, ls="--", color="0.5", lw=0.8)
        ax.set_title(f"{cell_type}\npooled r = {pooled:.2f}, slide mean r = {slide_mean:.2f}", fontsize=8)
        ax.set_xlabel("label (cell2location)", fontsize=8)
        ax.set_ylabel("held-out prediction", fontsize=8)
    axes[0].legend(fontsize=6, markerscale=2, title="slide", title_fontsize=6)
    fig.suptitle(title, fontsize=10)
    return fig


class SpatialMapData:
    """Thumbnail and spot geometry of one slide, taken from its AnnData, for a spatial map.

    Parameters
    ----------
    image : array, shape ``(h, w, 3)``
        The slide thumbnail (``uns["spatial"][lib]["images"]["hires"]``).
    scale : float
        Thumbnail pixels per full-resolution pixel (``tissue_hires_scalef``).
    spatial_px : array, shape ``(n_spots, 2)``
        Spot centres in full-resolution pixels (x = column, y = row).
    spot_diameter_px : float
        Spot diameter in full-resolution pixels.
    """

    def __init__(self, image: np.ndarray, scale: float, spatial_px: np.ndarray, spot_diameter_px: float) -> None:
        self.image, self.scale = image, scale
        self.spatial_px, self.spot_diameter_px = spatial_px, spot_diameter_px


# Maximum side, in pixels, of the H&E drawn under each spatial map. Each of the 2 x n_types
# panels draws its own copy, so a full thumbnail (2,000 px) would make the figure slow.
MAP_IMAGE_PX = 500


def _map_background(data: SpatialMapData) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """Return the thumbnail cropped to the spots (plus a margin of 2 spots) and shrunk to
    at most :data:`MAP_IMAGE_PX`, with its extent in thumbnail pixels (left, right, bottom, top)."""
    from PIL import Image

    xy = data.spatial_px * data.scale
    margin = 2 * data.spot_diameter_px * data.scale
    height, width = data.image.shape[:2]
    left, right = int(max(xy[:, 0].min() - margin, 0)), int(min(xy[:, 0].max() + margin, width))
    top, bottom = int(max(xy[:, 1].min() - margin, 0)), int(min(xy[:, 1].max() + margin, height))
    crop = Image.fromarray(np.ascontiguousarray(data.image[top:bottom, left:right]))
    crop.thumbnail((MAP_IMAGE_PX, MAP_IMAGE_PX), Image.Resampling.LANCZOS)
    return np.asarray(crop), (left, right, bottom, top)


def _spots(ax, data: SpatialMapData, values: np.ndarray, *, vmax: float, cmap: str) -> EllipseCollection:
    xy = data.spatial_px * data.scale
    diameter = data.spot_diameter_px * data.scale
    spots = EllipseCollection(diameter, diameter, 0.0, units="xy", offsets=xy, offset_transform=ax.transData, cmap=cmap)
    spots.set_array(np.ma.masked_invalid(values))
    spots.set_clim(0.0, vmax)
    spots.set_alpha(0.85)
    ax.add_collection(spots)
    ax.set_xticks([])
    ax.set_yticks([])
    return spots


def plot_spatial_maps(
    data: SpatialMapData, labels: pd.DataFrame, preds: pd.DataFrame, *, title: str, unit: str, cmap: str = "viridis"
) -> Figure:
    """Draw, per cell type, the label and the held-out prediction side by side on the H&E.

    Parameters
    ----------
    data : SpatialMapData
        Thumbnail and spot geometry, rows in the order of ``labels``.
    labels, preds : DataFrame, shape ``(n_spots, n_types)``
        Values per spot and cell type (columns are the types, in the same order). Spots
        without a prediction (left out by the tissue filter) are NaN and not drawn.
    title, unit : str
        Figure title and the colour bar's unit.

    Both panels of a type share one colour scale, from 0 to the 99th percentile of the two
    together, and one colour bar. Axes: ``3 * n_types`` (two maps and a colour bar each).
    """
    types = list(labels.columns)
    background, extent = _map_background(data)
    per_row = 3
    n_rows = math.ceil(len(types) / per_row)
    fig = plt.figure(figsize=(per_row * 6.2, n_rows * 3.0), constrained_layout=True)
    grid = fig.add_gridspec(n_rows, per_row * 2)
    for i, cell_type in enumerate(types):
        row, col = divmod(i, per_row)
        values = {"label": labels[cell_type].to_numpy(dtype=float), "prediction": preds[cell_type].to_numpy(dtype=float)}
        both = np.concatenate([v[np.isfinite(v)] for v in values.values()])
        vmax = float(np.percentile(both, 99)) if len(both) else 1.0
        vmax = vmax if vmax > 0 else 1.0
        for j, (kind, spot_values) in enumerate(values.items()):
            ax = fig.add_subplot(grid[row, 2 * col + j])
            ax.imshow(background, extent=extent, alpha=0.6)  # paler H&E so the spot colours read
            ax.set_xlim(extent[0], extent[1])
            ax.set_ylim(extent[2], extent[3])
            spots = _spots(ax, data, spot_values, vmax=vmax, cmap=cmap)
            ax.set_title(f"{cell_type}: {kind}", fontsize=8)
        colourbar = fig.colorbar(spots, ax=fig.axes[-2:], shrink=0.8, pad=0.01)
        colourbar.set_label(unit, fontsize=7)
        colourbar.ax.tick_params(labelsize=6)
    fig.suptitle(title, fontsize=10)
    return fig


def plot_signatures(signatures: pd.DataFrame, *, genes_per_type: int = SIGNATURE_GENES_PER_TYPE) -> Figure:
    """Heatmap of the reference signatures for each type's top marker genes.

    Parameters
    ----------
    signatures : DataFrame, shape ``(n_genes, n_types)``
        Mean expression per cell type (cell2location ``RegressionModel``), genes as index.

    Markers of a type are the genes with the largest share of their expression in that
    type. Colours are ``log1p`` expression z-scored per gene across types. Axes: 2 (the
    heatmap and its colour bar).
    """
    share = signatures.div(signatures.sum(axis=1).replace(0, np.nan), axis=0)
    genes: list[str] = []
    for cell_type in signatures.columns:
        top = share[cell_type].drop(genes, errors="ignore").nlargest(genes_per_type).index
        genes.extend(top)
    logged = np.log1p(signatures.loc[genes])
    z = logged.sub(logged.mean(axis=1), axis=0).div(logged.std(axis=1).replace(0, 1), axis=0)
    fig, ax = plt.subplots(figsize=(0.5 * len(signatures.columns) + 3, 0.16 * len(genes) + 1.8), constrained_layout=True)
    image = ax.imshow(z.to_numpy(), aspect="auto", cmap="RdBu_r", vmin=-2.5, vmax=2.5)
    ax.set_xticks(range(len(z.columns)))
    ax.set_xticklabels(z.columns, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(genes)))
    ax.set_yticklabels(genes, fontsize=6)
    fig.colorbar(image, ax=ax, label="log1p expression, z-score across types")
    ax.set_title(f"Reference signatures: top {genes_per_type} marker genes per type", fontsize=9)
    return fig


def plot_label_agreement(spots: pd.DataFrame, agreement: pd.DataFrame) -> Figure:
    """Scatter our cell2location proportions against the published ones, per published type.

    Parameters
    ----------
    spots : DataFrame
        Matched spots: ``slide``, ``barcode``, then ``ours:<type>`` and ``published:<type>``
        per published type (proportions over the mapped types).
    agreement : DataFrame
        Output of :func:`histodecon.metrics.label_agreement` (titles show its Pearson).

    Axes: ``n_published_types``.
    """
    types = list(agreement["published_type"])
    slides = sorted(spots[SLIDE_COL].unique())
    colours = dict(zip(slides, plt.get_cmap("tab10").colors * (len(slides) // 10 + 1), strict=False))
    fig, axes = _grid(len(types), ncols=4, panel_size=(3.0, 3.0))
    summary = agreement.set_index("published_type")
    for ax, published_type in zip(axes, types, strict=True):
        for slide in slides:
            on_slide = spots[SLIDE_COL] == slide
            ax.scatter(
                spots.loc[on_slide, f"published:{published_type}"], spots.loc[on_slide, f"ours:{published_type}"],
                s=5, alpha=0.5, lw=0, color=colours[slide], label=slide,
            )  # fmt: skip
        ax.plot([0, 1], [0, 1], ls="--", color="0.5", lw=0.8)
        row = summary.loc[published_type]
        ax.set_title(
            f"{published_type} ({row['our_types']})\npooled r = {row['pearson_pooled']:.2f}, "
            f"slide mean r = {row['pearson_slide_mean']:.2f}",
            fontsize=7,
        )
        ax.set_xlabel("published proportion", fontsize=8)
        ax.set_ylabel("our cell2location proportion", fontsize=8)
    axes[0].legend(fontsize=6, markerscale=2, title="slide", title_fontsize=6)
    fig.suptitle("Label cross-check: cell2location (ours) against the study's published proportions", fontsize=10)
    return fig



def plot_tile_heatmap(
    thumbnail: np.ndarray, *, scale: float, centres_px: np.ndarray, tile_px: float, values: np.ndarray, title: str, unit: str
) -> Figure:
    """Paint predicted values of square tiles over an H&E thumbnail.

    Parameters
    ----------
    thumbnail : array, shape ``(h, w, 3)``
        The slide thumbnail; ``scale`` is thumbnail pixels per full-resolution pixel.
    centres_px : array, shape ``(n_tiles, 2)``
        Tile centres in full-resolution pixels (x = column).
    tile_px : float
        Side of a tile in full-resolution pixels.
    values : array, shape ``(n_tiles,)``
        One value per tile; the colour scale runs from 0 to the 99th percentile.

    Axes: 3 (the H&E alone, the heatmap over it, the colour bar).
    """
    from matplotlib.collections import PolyCollection

    half = tile_px * scale / 2
    xy = np.asarray(centres_px, dtype=np.float64) * scale
    squares = np.stack(
        [xy + [-half, -half], xy + [half, -half], xy + [half, half], xy + [-half, half]], axis=1
    )
    finite = values[np.isfinite(values)]
    vmax = float(np.percentile(finite, 99)) if len(finite) else 1.0
    vmax = vmax if vmax > 0 else 1.0
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.2), constrained_layout=True)
    for ax in axes:
        ax.imshow(thumbnail, alpha=1.0 if ax is axes[0] else 0.5)
        ax.set_xticks([])
        ax.set_yticks([])
    margin = 4 * half
    for ax in axes:  # zoom on the tiles: the thumbnail may be mostly glass
        ax.set_xlim(max(xy[:, 0].min() - margin, 0), min(xy[:, 0].max() + margin, thumbnail.shape[1]))
        ax.set_ylim(min(xy[:, 1].max() + margin, thumbnail.shape[0]), max(xy[:, 1].min() - margin, 0))
    tiles = PolyCollection(squares, array=np.ma.masked_invalid(values), cmap="viridis", alpha=0.8, linewidths=0)
    tiles.set_clim(0.0, vmax)
    axes[1].add_collection(tiles)
    axes[0].set_title("H&E", fontsize=9)
    axes[1].set_title("prediction", fontsize=9)
    colourbar = fig.colorbar(tiles, ax=axes[1], shrink=0.8)
    colourbar.set_label(unit, fontsize=8)
    fig.suptitle(title, fontsize=10)
    return fig
