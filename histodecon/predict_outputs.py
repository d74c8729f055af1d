"""Open-format outputs of a predicted slide: AnnData, QuPath GeoJSON and heatmaps.

- The ``.h5ad`` has one observation per tile and the predicted abundance of each cell type
  as a variable, so ``squidpy.pl.spatial_scatter(adata, color="T-cells", shape="square")``
  plots it directly. Tile centres are in ``obsm["spatial"]`` and the thumbnail is in
  ``uns["spatial"]``, in the layout squidpy and scanpy read.
- The GeoJSON has one square detection per tile, with the composition as QuPath
  measurements. It is written feature by feature, so a slide of 100,000 tiles never sits in
  memory as one JSON object.
- One PNG per cell type paints the tile grid over the H&E thumbnail.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from histodecon import keys
from histodecon.export import detection_feature, type_colours
from histodecon.io import atomic_directory, atomic_path
from histodecon.predict import TILE_COL

logger = logging.getLogger(__name__)

__all__ = ["tiles_anndata", "write_tile_geojson", "heatmap_name", "write_heatmaps"]


def _types(table: pd.DataFrame) -> list[str]:
    return keys.strip_prefix(table.columns, keys.PRED_PREFIX)


def tiles_anndata(table: pd.DataFrame, *, slide: str, thumbnail: np.ndarray, thumbnail_scale: float, tile_px: float, info: dict) -> ad.AnnData:
    """Return the predicted tiles of one slide as AnnData in the squidpy/scanpy spatial layout.

    ``X`` (n_tiles, n_types) is the predicted abundance, ``obsm["proportion"]`` the share of
    each type, ``obs`` the tile's grid position, centre in µm and tissue fraction.
    ``uns["spatial"][slide]`` contains the thumbnail as its ``hires`` image, with
    ``tissue_hires_scalef`` and ``spot_diameter_fullres`` (the tile side in pixels).
    """
    types = _types(table)
    obs = table[[TILE_COL, "grid_row", "grid_col", "x_um", "y_um", keys.TISSUE_FRACTION_COL]].set_index(TILE_COL)
    obs.index = obs.index.astype(str)
    adata = ad.AnnData(
        X=table[[keys.PRED_PREFIX + t for t in types]].to_numpy(dtype=np.float32),
        obs=obs,
        var=pd.DataFrame(index=pd.Index(types, name="cell_type")),
    )
    adata.obsm[keys.SPATIAL_KEY] = table[[keys.X_PX_COL, keys.Y_PX_COL]].to_numpy(dtype=np.float64)
    proportion = table[[keys.PROPORTION_PREFIX + t for t in types]].set_axis(types, axis=1)
    proportion.index = adata.obs_names
    adata.obsm["proportion"] = proportion
    adata.uns["spatial"] = {
        slide: {
            "images": {keys.HIRES_IMAGE_KEY: thumbnail},
            "scalefactors": {keys.HIRES_SCALE_KEY: thumbnail_scale, keys.SPOT_DIAMETER_KEY: tile_px},
            "metadata": {},
        }
    }
    # Upstream provenance records contain lists of records, which AnnData cannot store. The
    # h5ad gets its own record when it is written, and that record carries their sources.
    adata.uns[keys.HISTODECON_UNS_KEY] = _without_provenance(json.loads(json.dumps(info, default=str)))
    return adata


def _without_provenance(value):
    if isinstance(value, dict):
        return {k: _without_provenance(v) for k, v in value.items() if k != keys.PROVENANCE_KEY}
    return value


def write_tile_geojson(table: pd.DataFrame, *, tile_px: float, path: str | Path) -> int:
    """Write one square QuPath detection per tile to ``path``; return the number of features.

    Coordinates are full-resolution pixels; each ring runs counter-clockwise as the numbers
    read and is closed. ``measurements`` contains ``pred <type>`` and ``pred proportion <type>``;
    ``classification`` is the type with the largest prediction.
    """
    types = _types(table)
    colours = type_colours(types)
    preds = table[[keys.PRED_PREFIX + t for t in types]].to_numpy(dtype=np.float64)
    shares = table[[keys.PROPORTION_PREFIX + t for t in types]].to_numpy(dtype=np.float64)
    half = tile_px / 2
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        handle.write('{"type": "FeatureCollection", "features": [')
        for i, (tile, x, y) in enumerate(zip(table[TILE_COL], table[keys.X_PX_COL], table[keys.Y_PX_COL], strict=True)):
            ring = [[x - half, y - half], [x + half, y - half], [x + half, y + half], [x - half, y + half], [x - half, y - half]]
            measurements = {f"pred {t}": preds[i, j] for j, t in enumerate(types)}
            measurements.update({f"pred proportion {t}": shares[i, j] for j, t in enumerate(types)})
            dominant = types[int(np.argmax(preds[i]))]
            feature = detection_feature(str(tile), ring, measurements=measurements, classification=dominant, colour=colours[dominant])
            handle.write(("," if i else "") + json.dumps(feature, allow_nan=False))
        handle.write("]}")
    return len(table)


def heatmap_name(cell_type: str) -> str:
    """Return the file name of a cell type's heatmap: the name with every run of other
    characters than letters, digits, ``-`` and ``+`` turned into ``_``, then ``.png``."""
    return re.sub(r"[^A-Za-z0-9+-]+", "_", cell_type) + ".png"


def write_heatmaps(
    table: pd.DataFrame, *, thumbnail: np.ndarray, thumbnail_scale: float, tile_px: float, slide: str, unit: str, folder: str | Path
) -> list[Path]:
    """Write one heatmap PNG per cell type into ``folder``; return their paths.

    Each tile is painted as a square of its true size over the thumbnail, coloured from 0
    to the 99th percentile of that type's predictions. The PNGs are drawn into a temporary
    folder that is renamed to ``folder`` when all are written.
    """
    from histodecon.figures import plot_tile_heatmap, save_figure

    names = []
    xy = table[[keys.X_PX_COL, keys.Y_PX_COL]].to_numpy(dtype=np.float64)
    with atomic_directory(folder) as tmp:
        for cell_type in _types(table):
            figure = plot_tile_heatmap(
                thumbnail,
                scale=thumbnail_scale,
                centres_px=xy,
                tile_px=tile_px,
                values=table[keys.PRED_PREFIX + cell_type].to_numpy(dtype=np.float64),
                title=f"{slide}: predicted {cell_type}",
                unit=unit,
            )
            names.append(heatmap_name(cell_type))
            save_figure(figure, tmp / names[-1])
    return [Path(folder) / name for name in names]
