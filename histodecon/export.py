"""Per-slide results in open formats: AnnData for scanpy/squidpy and GeoJSON for QuPath.

The ``.h5ad`` is the ingested slide (raw counts, spot centres, thumbnail and scale factors
in the scanpy/squidpy spatial layout) with the cell2location labels and every held-out
prediction added as DataFrames in ``obsm`` (one column per cell type). scanpy and squidpy
colour spots by ``obs`` columns, so plot a type with::

    adata.obs[adata.obsm["label"].columns] = adata.obsm["label"]
    squidpy.pl.spatial_scatter(adata, color="T-cells")

The GeoJSON has one polygon per spot (the spot's circle, full-resolution pixels of the
image named in the sample sheet) with the predicted composition as QuPath measurements,
and the dominant predicted type as its classification. QuPath (0.4 and later) imports it
with File > Import objects, or by dragging the file onto the open image.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from matplotlib import colormaps

from histodecon import keys
from histodecon.composition import composition
from histodecon.io import atomic_path

logger = logging.getLogger(__name__)

__all__ = [
    "LABEL_OBSM_KEY",
    "prediction_key",
    "slide_anndata",
    "spot_polygons",
    "type_colours",
    "detection_feature",
    "spot_geojson",
    "write_geojson",
]

LABEL_OBSM_KEY = "label"
# Vertices of the polygon that represents a round spot. With 32, the area is within 0.7 % of
# the circle's and the file stays small (about 180 spots per her2st section).
SPOT_VERTICES = 32


def prediction_key(backbone: str, regressor: str) -> str:
    """Return the ``obsm`` key of a backbone x regressor's held-out predictions, ``pred_<b>_<r>``.

    Characters other than letters, digits, ``_`` and ``+`` become ``_``, because h5ad
    stores each key as an HDF5 group name.
    """
    return re.sub(r"[^A-Za-z0-9_+]", "_", f"pred_{backbone}_{regressor}")


def _wide(table: pd.DataFrame, prefix: str, index: pd.Index) -> pd.DataFrame:
    values = table.set_index(keys.BARCODE_COL)[[c for c in table.columns if c.startswith(prefix)]]
    values.index = values.index.astype(str)
    values.columns = [c[len(prefix) :] for c in values.columns]
    return values.reindex(index).astype(np.float64)


def slide_anndata(
    adata: ad.AnnData,
    *,
    slide: str,
    labels: pd.DataFrame,
    target_prefix: str,
    predictions: Mapping[tuple[str, str], pd.DataFrame],
) -> ad.AnnData:
    """Return a copy of an ingested slide with labels and held-out predictions in ``obsm``.

    Parameters
    ----------
    adata : AnnData
        The ingested slide (``results/ingest/<slide>.h5ad``); it is not modified.
    slide : str
        Slide id; rows of other slides in ``predictions`` are ignored.
    labels : DataFrame
        The slide's cell2location table (``barcode`` and ``<target_prefix><type>``).
    target_prefix : str
        Prefix of the regression target in ``labels`` (``q05:``, ``mean:`` or ``proportion:``).
    predictions : mapping
        ``(backbone, regressor)`` to its cross-validation predictions (all slides).

    Returns
    -------
    AnnData
        ``obsm["label"]`` (n_spots, n_types) contains the target. ``obsm["pred_<b>_<r>"]``
        contains the held-out prediction of each pair, NaN for spots left out of
        cross-validation (too little tissue in the patch). ``obs["fold"]`` is the fold
        that held the spot out (-1 when none did). ``uns["histodecon"]["predictions"]`` maps each key to
        its backbone and regressor.
    """
    out = adata.copy()
    out.obsm[LABEL_OBSM_KEY] = _wide(labels, target_prefix, out.obs_names)
    keys_info = {}
    fold = pd.Series(-1, index=out.obs_names, dtype=np.int64)
    for (backbone, regressor), table in sorted(predictions.items()):
        on_slide = table[table[keys.SLIDE_COL] == slide]
        key = prediction_key(backbone, regressor)
        out.obsm[key] = _wide(on_slide, keys.PRED_PREFIX, out.obs_names)
        folds = on_slide.set_index(on_slide[keys.BARCODE_COL].astype(str))[keys.FOLD_COL]
        fold.loc[folds.index] = folds.to_numpy()
        keys_info[key] = {"backbone": backbone, "regressor": regressor, "n_predicted": int(len(on_slide))}
    out.obs[keys.FOLD_COL] = fold.to_numpy()
    info = dict(out.uns.get(keys.HISTODECON_UNS_KEY, {}))
    info["predictions"] = keys_info
    info["label_obsm_key"] = LABEL_OBSM_KEY
    info["target_prefix"] = target_prefix
    out.uns[keys.HISTODECON_UNS_KEY] = info
    return out


def spot_polygons(spatial_px: np.ndarray, diameter_px: float, *, n_vertices: int = SPOT_VERTICES) -> np.ndarray:
    """Return one closed ring per spot, shape ``(n_spots, n_vertices + 1, 2)``, pixels (x, y).

    Vertices go counter-clockwise as the numbers read (RFC 7946, section 3.1.6); the last
    repeats the first, as a GeoJSON linear ring requires.
    """
    angles = np.linspace(0.0, 2.0 * np.pi, n_vertices, endpoint=False)
    unit = np.stack([np.cos(angles), np.sin(angles)], axis=1) * (diameter_px / 2.0)
    ring = np.concatenate([unit, unit[:1]], axis=0)
    return np.asarray(spatial_px, dtype=np.float64)[:, None, :] + ring[None, :, :]


def type_colours(types: Sequence[str]) -> dict[str, list[int]]:
    """Return an RGB colour (0-255) per cell type from matplotlib's "tab20", in the given order."""
    palette = colormaps["tab20"].colors
    return {t: [int(round(255 * c)) for c in palette[i % len(palette)]] for i, t in enumerate(types)}


def detection_feature(name: str, ring: Sequence[Sequence[float]], *, measurements: dict[str, float], classification: str, colour: list[int]) -> dict:
    """Return a GeoJSON Feature that QuPath imports as a detection.

    ``ring`` is the closed outer ring in full-resolution pixels. Measurements that are not
    finite are left out, because JSON has no NaN.
    """
    return {
        "type": "Feature",
        "id": name,
        "geometry": {"type": "Polygon", "coordinates": [[[round(float(x), 2), round(float(y), 2)] for x, y in ring]]},
        "properties": {
            "objectType": "detection",
            "name": name,
            "classification": {"name": classification, "color": colour},
            "measurements": {key: float(v) for key, v in measurements.items() if np.isfinite(v)},
        },
    }


def spot_geojson(
    adata: ad.AnnData,
    *,
    prediction: str,
    include_labels: bool = True,
) -> dict:
    """Return a GeoJSON FeatureCollection with one detection per spot that has a prediction.

    Parameters
    ----------
    adata : AnnData
        Output of :func:`slide_anndata`.
    prediction : str
        ``obsm`` key of the prediction to export.
    include_labels : bool
        Also store the cell2location label of each type as a measurement.

    Each feature's ``properties`` follow QuPath's GeoJSON: ``objectType`` "detection",
    ``name`` the barcode, ``classification`` the dominant predicted type and its colour,
    and ``measurements`` ``pred <type>`` (target units), ``pred proportion <type>`` and,
    when asked, ``label <type>``. Coordinates are full-resolution pixels (x = column).
    """
    preds = adata.obsm[prediction]
    predicted = preds.notna().all(axis=1).to_numpy()
    types = list(preds.columns)
    colours = type_colours(types)
    values = preds.to_numpy()[predicted]
    shares = composition(values)
    labels = adata.obsm[LABEL_OBSM_KEY].to_numpy()[predicted] if include_labels else None
    (library,) = adata.uns["spatial"].values()  # one image per ingested slide
    diameter = float(library["scalefactors"][keys.SPOT_DIAMETER_KEY])
    rings = spot_polygons(adata.obsm[keys.SPATIAL_KEY][predicted], diameter)
    features = []
    for i, barcode in enumerate(adata.obs_names[predicted]):
        measurements = {f"pred {t}": values[i, j] for j, t in enumerate(types)}
        measurements.update({f"pred proportion {t}": shares[i, j] for j, t in enumerate(types)})
        if labels is not None:
            measurements.update({f"label {t}": labels[i, j] for j, t in enumerate(types)})
        dominant = types[int(np.nanargmax(values[i]))]
        features.append(
            detection_feature(str(barcode), rings[i], measurements=measurements, classification=dominant, colour=colours[dominant])
        )
    logger.info("GeoJSON: %d of %d spots with a prediction (%s)", len(features), adata.n_obs, prediction)
    return {"type": "FeatureCollection", "features": features}


def write_geojson(collection: dict, path: str | Path) -> None:
    """Write a GeoJSON object atomically (UTF-8, no NaN: JSON has none)."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(collection, allow_nan=False), encoding="utf-8")
