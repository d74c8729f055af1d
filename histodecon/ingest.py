"""Read spatial transcriptomics sections into one AnnData layout with their physical scale.

Every reader returns the same per-slide AnnData:

- ``X``: raw UMI counts, float32 CSR holding integers, spots x genes;
- ``obs``: ``barcode`` (index), ``slide``, ``patient``, ``array_x``, ``array_y``;
- ``obsm["spatial"]``: spot centres in full-resolution image pixels, (x = column, y = row);
- ``uns["spatial"][slide]``: the scanpy/squidpy layout, a ``hires`` thumbnail and the
  scale factors ``tissue_hires_scalef``, ``spot_diameter_fullres`` and ``microns_per_pixel``;
- ``uns["histodecon"]``: µm/px, where it came from, spot diameter and pitch in µm, platform.

Readers dispatch from :data:`READERS` on the sample sheet's ``format`` column.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from histodecon import keys
from histodecon.counts import check_raw_counts
from histodecon.slide import open_slide

logger = logging.getLogger(__name__)

__all__ = ["Platform", "PLATFORMS", "READERS", "read_slide", "read_her2st", "grid_pitch_px"]

HIRES_MAX_PX = 2000  # longer side of the thumbnail stored for scanpy/squidpy plots


@dataclass(frozen=True)
class Platform:
    """Spot geometry of a spatial transcriptomics platform, in µm."""

    name: str
    spot_diameter_um: float
    spot_pitch_um: float  # centre-to-centre distance of neighbouring spots


# Legacy ST (Ståhl et al., Science 2016): 100 µm spots on a 200 µm square grid.
# Visium (10x Genomics): 55 µm spots, 100 µm centre to centre on a hexagonal grid.
PLATFORMS = {
    "legacy_st": Platform("legacy_st", spot_diameter_um=100.0, spot_pitch_um=200.0),
    "visium": Platform("visium", spot_diameter_um=55.0, spot_pitch_um=100.0),
}


def grid_pitch_px(array_xy: np.ndarray, pixel_xy: np.ndarray) -> tuple[float, float]:
    """Estimate the spot grid pitch in pixels from array and pixel coordinates.

    Fits the affine map ``pixel = [array_x, array_y, 1] @ A`` by least squares; the pitch
    along each array axis is the length of that axis's row of ``A``. Returns the mean
    pitch in pixels per array step and the root-mean-square residual of the fit in pixels.
    """
    design = np.column_stack([array_xy, np.ones(len(array_xy))])
    coefficients, *_ = np.linalg.lstsq(design, pixel_xy, rcond=None)
    pitch = float(np.mean(np.linalg.norm(coefficients[:2], axis=1)))
    residual = float(np.sqrt(np.mean((design @ coefficients - pixel_xy) ** 2)))
    return pitch, residual


def _read_her2st_counts(path: Path) -> pd.DataFrame:
    counts = pd.read_csv(path, sep="\t", index_col=0)
    counts.index = counts.index.astype(str)
    return counts


def _resolve_mpp(
    *, slide: str, sheet_value: float | None, image_value: float | None, pitch_px: float, platform: Platform
) -> tuple[float, str]:
    """Choose µm/px: the sample sheet first, then image metadata, then the spot grid pitch."""
    grid_value = platform.spot_pitch_um / pitch_px
    if sheet_value is not None and np.isfinite(sheet_value):
        logger.info(
            "%s: %.4f µm/px from the sample sheet (the %s spot grid gives %.4f)",
            slide, sheet_value, platform.name, grid_value,
        )
        return float(sheet_value), "sample_sheet"
    if image_value is not None:
        logger.info("%s: %.4f µm/px from the image metadata", slide, image_value)
        return float(image_value), "image_metadata"
    logger.info(
        "%s: %.4f µm/px from the %s spot grid pitch (%.1f px per %.0f µm)",
        slide, grid_value, platform.name, pitch_px, platform.spot_pitch_um,
    )
    return grid_value, "spot_grid_pitch"


def read_her2st(row: Mapping) -> ad.AnnData:
    """Read one her2st legacy-ST section as published by the study.

    Parameters
    ----------
    row
        Sample sheet row with ``slide``, ``patient``, ``counts`` (``<slide>.tsv.gz``, spots x
        genes, rows named ``<x>x<y>`` in array units), ``spots`` (``<slide>_selection.tsv``
        with array ``x``/``y``, aligned ``new_x``/``new_y`` and full-resolution
        ``pixel_x`` = column and ``pixel_y`` = row), ``image`` and optionally
        ``microns_per_pixel``.

    Returns
    -------
    AnnData of the spots present in both files, in the layout of this module's docstring.
    """
    slide_id = str(row["slide"])
    counts_path, spots_path = Path(row["counts"]), Path(row["spots"])
    platform = PLATFORMS["legacy_st"]

    counts = _read_her2st_counts(counts_path)
    spots = pd.read_csv(spots_path, sep="\t")
    missing = {"x", "y", "pixel_x", "pixel_y"} - set(spots.columns)
    if missing:
        raise ValueError(
            f"{slide_id}: spot file {spots_path} lacks the columns {sorted(missing)}; a her2st "
            "selection file has x, y, new_x, new_y, pixel_x, pixel_y and selected."
        )
    if "selected" in spots.columns:
        spots = spots[spots["selected"] == 1]
    spots.index = spots["x"].astype(int).astype(str) + "x" + spots["y"].astype(int).astype(str)
    shared = counts.index.intersection(spots.index, sort=False)
    if len(shared) == 0:
        raise ValueError(
            f"{slide_id}: no spot of {counts_path} (rows like {list(counts.index[:3])}) is in "
            f"{spots_path} (spots like {list(spots.index[:3])}). Check that both files belong to the same section."
        )
    dropped = len(counts) - len(shared)
    if dropped:
        logger.info("%s: %d of %d spots of the counts file are not under tissue in the spot file", slide_id, dropped, len(counts))
    counts, spots = counts.loc[shared], spots.loc[shared]

    matrix = sp.csr_matrix(counts.to_numpy(dtype=np.float32))
    check_raw_counts(matrix, what=f"counts of slide {slide_id}", path=counts_path)

    array_cols = ["new_x", "new_y"] if {"new_x", "new_y"} <= set(spots.columns) else ["x", "y"]
    pixel_xy = spots[["pixel_x", "pixel_y"]].to_numpy(dtype=np.float64)
    pitch_px, residual = grid_pitch_px(spots[array_cols].to_numpy(dtype=np.float64), pixel_xy)
    logger.info("%s: spot grid pitch %.1f px (fit residual %.1f px over %d spots)", slide_id, pitch_px, residual, len(spots))

    image = open_slide(row["image"])
    sheet_mpp = row.get("microns_per_pixel")
    sheet_mpp = None if sheet_mpp is None or sheet_mpp == "" or pd.isna(sheet_mpp) else float(sheet_mpp)
    mpp, mpp_source = _resolve_mpp(
        slide=slide_id, sheet_value=sheet_mpp, image_value=image.microns_per_pixel, pitch_px=pitch_px, platform=platform
    )

    obs = pd.DataFrame(
        {
            keys.SLIDE_COL: slide_id,
            keys.PATIENT_COL: str(row["patient"]),
            keys.ARRAY_X_COL: spots["x"].astype(int).to_numpy(),
            keys.ARRAY_Y_COL: spots["y"].astype(int).to_numpy(),
        },
        index=pd.Index(shared, name=keys.BARCODE_COL),
    )
    adata = ad.AnnData(X=matrix, obs=obs, var=pd.DataFrame(index=counts.columns.astype(str)))
    adata.obsm[keys.SPATIAL_KEY] = pixel_xy
    _attach_spatial_layout(adata, slide_id=slide_id, image=image, mpp=mpp, mpp_source=mpp_source, platform=platform)
    adata.uns[keys.HISTODECON_UNS_KEY].update(
        {"grid_pitch_px": pitch_px, "grid_fit_residual_px": residual, "counts_path": str(counts_path), "spots_path": str(spots_path)}
    )
    return adata


def _attach_spatial_layout(adata: ad.AnnData, *, slide_id: str, image, mpp: float, mpp_source: str, platform: Platform) -> None:
    """Write the scanpy/squidpy ``uns["spatial"]`` entry and the histodecon provenance."""
    thumbnail, scale = image.thumbnail(HIRES_MAX_PX)
    adata.uns[keys.SPATIAL_KEY] = {
        slide_id: {
            "images": {keys.HIRES_IMAGE_KEY: thumbnail},
            "scalefactors": {
                keys.HIRES_SCALE_KEY: scale,
                keys.SPOT_DIAMETER_KEY: platform.spot_diameter_um / mpp,
                keys.MPP_KEY: mpp,
            },
            "metadata": {"source_image_path": str(image.path)},
        }
    }
    adata.uns[keys.HISTODECON_UNS_KEY] = {
        keys.MPP_KEY: mpp,
        keys.MPP_SOURCE_KEY: mpp_source,
        "platform": platform.name,
        "spot_diameter_um": platform.spot_diameter_um,
        "spot_pitch_um": platform.spot_pitch_um,
        "image_path": str(image.path),
        "image_width_px": image.dimensions[0],
        "image_height_px": image.dimensions[1],
    }


READERS: dict[str, Callable[[Mapping], ad.AnnData]] = {"her2st": read_her2st}


def read_slide(row: Mapping) -> ad.AnnData:
    """Read the slide of a sample sheet row with the reader named in its ``format`` column."""
    fmt = str(row["format"])
    try:
        reader = READERS[fmt]
    except KeyError:
        raise ValueError(
            f"slide {row['slide']}: unknown format {fmt!r}; valid formats: {sorted(READERS)}. Fix the `format` column."
        ) from None
    adata = reader(row)
    logger.info(
        "%s: %d spots x %d genes, %.4f µm/px (%s)",
        row["slide"], adata.n_obs, adata.n_vars,
        adata.uns[keys.HISTODECON_UNS_KEY][keys.MPP_KEY], adata.uns[keys.HISTODECON_UNS_KEY][keys.MPP_SOURCE_KEY],
    )
    return adata
