"""Cut one H&E patch per spot at a fixed physical field of view.

A patch is defined in µm: ``field_of_view_um`` wide, sampled at ``microns_per_pixel``, so it
has ``field_of_view_um / microns_per_pixel`` pixels a side (112 µm at 0.5 µm/px is 224 px, the
protocol of HEST-Benchmark and the input of most pathology encoders). The box is centred on
the spot centre in full-resolution pixels and resampled from the slide's own µm/px.

Patch file layout (HDF5), read by the embedding stage:

- ``images``: uint8 ``(n_spots, patch_px, patch_px, 3)``, RGB, one chunk per patch;
- ``barcode``, ``x_px``, ``y_px`` (centre, full-resolution pixels), ``tissue_fraction`` (0-1),
  ``padded`` (the box left the image and was filled with white);
- attributes ``slide``, ``patch_px``, ``field_of_view_um``, ``patch_microns_per_pixel``,
  ``source_microns_per_pixel`` and ``source_microns_per_pixel_source``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata as ad
import h5py
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from histodecon import keys
from histodecon.io import atomic_path
from histodecon.keys import BARCODE_COL, PADDED_COL, PATCH_IMAGES, PATCH_TABLE_COLUMNS, TISSUE_FRACTION_COL
from histodecon.provenance import active_record
from histodecon.slide import Slide, open_slide
from histodecon.tissue import saturation, saturation_threshold

logger = logging.getLogger(__name__)

__all__ = ["patch_size_px", "tissue_threshold", "tissue_fraction", "extract_patches", "write_patch_file", "PatchFileInfo", "read_patch_file_info"]

THUMBNAIL_PX = 2048  # longer side of the thumbnail on which the tissue threshold is set
# Patch file attributes copied into the embedding metadata.
PATCH_GEOMETRY_ATTRS = (
    "patch_px",
    "field_of_view_um",
    "patch_microns_per_pixel",
    "source_microns_per_pixel",
    "source_microns_per_pixel_source",
)


def patch_size_px(*, field_of_view_um: float, microns_per_pixel: float) -> int:
    """Return the side of a patch in pixels, rejecting a field of view that is not whole pixels."""
    size = field_of_view_um / microns_per_pixel
    if abs(size - round(size)) > 1e-6 or round(size) < 8:
        raise ValueError(
            f"field of view {field_of_view_um} µm at {microns_per_pixel} µm/px is {size:.3f} px; choose values "
            "whose ratio is a whole number of at least 8 pixels (e.g. 112 µm at 0.5 µm/px = 224 px)."
        )
    return int(round(size))


def tissue_threshold(slide: Slide) -> float:
    """Return the HSV saturation above which a pixel of ``slide`` counts as tissue."""
    thumbnail, _ = slide.thumbnail(THUMBNAIL_PX)
    return saturation_threshold(thumbnail)


def tissue_fraction(patches: np.ndarray, threshold: float) -> np.ndarray:
    """Return the fraction of pixels above the saturation ``threshold`` per patch, ``(n,)``."""
    return (saturation(patches) > threshold).mean(axis=(1, 2)).astype(np.float32)


def extract_patches(
    adata: ad.AnnData,
    *,
    field_of_view_um: float,
    microns_per_pixel: float,
    image_path: str | Path | None = None,
) -> tuple[np.ndarray, pd.DataFrame, dict]:
    """Cut a patch centred on every spot of an ingested slide.

    Parameters
    ----------
    adata
        Ingested slide: spot centres in ``obsm["spatial"]`` (full-resolution pixels,
        x = column) and µm/px in ``uns["histodecon"]``.
    field_of_view_um
        Side of the patch in µm.
    microns_per_pixel
        Pixel size of the patch in µm/px.
    image_path
        H&E image; defaults to the path recorded at ingest.

    Returns
    -------
    images
        uint8 ``(n_spots, patch_px, patch_px, 3)``.
    table
        One row per spot: barcode, centre, tissue fraction and padded flag.
    attrs
        Patch geometry and the source µm/px with its origin.
    """
    info = adata.uns[keys.HISTODECON_UNS_KEY]
    source_mpp = float(info[keys.MPP_KEY])
    slide_id = str(adata.obs[keys.SLIDE_COL].iloc[0])
    patch_px = patch_size_px(field_of_view_um=field_of_view_um, microns_per_pixel=microns_per_pixel)
    half_box = field_of_view_um / source_mpp / 2.0

    start = time.perf_counter()
    slide = open_slide(image_path or info["image_path"])
    threshold = tissue_threshold(slide)
    centres = np.asarray(adata.obsm[keys.SPATIAL_KEY], dtype=np.float64)
    images = np.empty((adata.n_obs, patch_px, patch_px, 3), dtype=np.uint8)
    padded = np.zeros(adata.n_obs, dtype=bool)
    for i, (x, y) in enumerate(tqdm(centres, desc=f"patches {slide_id}", unit="spot", mininterval=5)):
        box = (x - half_box, y - half_box, x + half_box, y + half_box)
        images[i], padded[i] = slide.read_box(box, patch_px)

    table = pd.DataFrame(
        {
            keys.BARCODE_COL: adata.obs_names.astype(str),
            keys.X_PX_COL: centres[:, 0],
            keys.Y_PX_COL: centres[:, 1],
            keys.TISSUE_FRACTION_COL: tissue_fraction(images, threshold),
            keys.PADDED_COL: padded,
        }
    )
    if padded.any():
        logger.warning(
            "%s: %d of %d patches leave the image and were padded with white (flagged in column %r): %s",
            slide_id, int(padded.sum()), len(padded), keys.PADDED_COL, list(table.loc[padded, keys.BARCODE_COL][:5]),
        )
    attrs = {
        "slide": slide_id,
        "patch_px": patch_px,
        "field_of_view_um": float(field_of_view_um),
        "patch_microns_per_pixel": float(microns_per_pixel),
        "source_microns_per_pixel": source_mpp,
        "source_microns_per_pixel_source": str(info[keys.MPP_SOURCE_KEY]),
        "tissue_saturation_threshold": threshold,
        "image_path": str(slide.path),
    }
    logger.info(
        "%s: %d patches of %d px (%.0f µm at %.3f µm/px, cut from %.1f px at %.4f µm/px) in %.1f s; "
        "median tissue fraction %.2f",
        slide_id, len(table), patch_px, field_of_view_um, microns_per_pixel, 2 * half_box, source_mpp,
        time.perf_counter() - start, float(table[keys.TISSUE_FRACTION_COL].median()),
    )
    return images, table, attrs


def write_patch_file(path: str | Path, images: np.ndarray, table: pd.DataFrame, attrs: Mapping) -> None:
    """Write patches, their table and attributes to an HDF5 file, atomically.

    The active provenance record is stored as the JSON attribute ``provenance``. Datasets
    carry no creation times, so the same patches give the same bytes.
    """
    record = active_record()
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        chunks = (1, *images.shape[1:]) if len(images) else None
        h5.create_dataset(keys.PATCH_IMAGES, data=images, chunks=chunks, track_times=False)
        h5.create_dataset(
            keys.BARCODE_COL, data=table[keys.BARCODE_COL].to_numpy(dtype=object), dtype=h5py.string_dtype(), track_times=False
        )
        for column in keys.PATCH_TABLE_COLUMNS[1:]:
            h5.create_dataset(column, data=table[column].to_numpy(), track_times=False)
        for name, value in attrs.items():
            h5.attrs[name] = value
        if record is not None:
            h5.attrs[keys.PROVENANCE_KEY] = json.dumps(record, sort_keys=True)


@dataclass(frozen=True)
class PatchFileInfo:
    """Spot table and geometry of a patch file.

    Attributes
    ----------
    path
        The patch file.
    slide
        Slide id from the file's ``slide`` attribute.
    spots
        One row per patch, in file order, with the columns of ``PATCH_TABLE_COLUMNS``.
    patch_px
        Side P of the stored patches in pixels.
    microns_per_pixel
        Pixel size of the stored patches in µm/px.
    geometry
        The attributes named in :data:`PATCH_GEOMETRY_ATTRS`, for metadata.
    """

    path: Path
    slide: str
    spots: pd.DataFrame
    patch_px: int
    microns_per_pixel: float
    geometry: dict[str, Any]

    @property
    def n_spots(self) -> int:
        return len(self.spots)


def _attr_value(value: Any) -> Any:
    """Convert an HDF5 attribute to a plain Python value for JSON metadata."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_patch_file_info(patch_file: str | Path) -> PatchFileInfo:
    """Read the spot table and attributes of a patch file, without the images.

    Raises
    ------
    FileNotFoundError
        If ``patch_file`` does not exist.
    ValueError
        If a dataset or attribute is missing or the images are not uint8 (n, P, P, 3).
    """
    path = Path(patch_file)
    if not path.is_file():
        raise FileNotFoundError(f"patch file {path} not found; run the patches rule for this slide first")
    fix = "Re-create it with the patches rule of this histodecon version."
    with h5py.File(path, "r") as h5:
        missing = [name for name in (PATCH_IMAGES, *PATCH_TABLE_COLUMNS) if name not in h5]
        missing += [f"attribute {name}" for name in ("slide", *PATCH_GEOMETRY_ATTRS) if name not in h5.attrs]
        if missing:
            raise ValueError(f"patch file {path} lacks {', '.join(missing)}. {fix}")
        images = h5[PATCH_IMAGES]
        n_spots = images.shape[0]
        if images.ndim != 4 or images.shape[1] != images.shape[2] or images.shape[3] != 3 or images.dtype != np.uint8:
            raise ValueError(
                f"patch file {path}: dataset {PATCH_IMAGES!r} must be uint8 with shape (n_spots, P, P, 3), "
                f"got {images.dtype} {images.shape}. {fix}"
            )
        columns = {BARCODE_COL: h5[BARCODE_COL].asstr()[()]}
        for name in PATCH_TABLE_COLUMNS[1:]:
            columns[name] = h5[name][()]
        lengths = {name: len(values) for name, values in columns.items()}
        if any(length != n_spots for length in lengths.values()):
            raise ValueError(f"patch file {path}: {n_spots} images but column lengths {lengths}. {fix}")
        geometry = {name: _attr_value(h5.attrs[name]) for name in PATCH_GEOMETRY_ATTRS}
        slide = str(_attr_value(h5.attrs["slide"]))
        patch_px = int(images.shape[1])

    spots = pd.DataFrame(columns)
    spots[BARCODE_COL] = spots[BARCODE_COL].astype(str)
    spots[TISSUE_FRACTION_COL] = spots[TISSUE_FRACTION_COL].astype(np.float32)
    spots[PADDED_COL] = spots[PADDED_COL].astype(bool)
    if geometry["patch_px"] != patch_px:
        raise ValueError(f"patch file {path}: attribute patch_px={geometry['patch_px']} but images are {patch_px} px. {fix}")
    return PatchFileInfo(
        path=path,
        slide=slide,
        spots=spots,
        patch_px=patch_px,
        microns_per_pixel=float(geometry["patch_microns_per_pixel"]),
        geometry=geometry,
    )
