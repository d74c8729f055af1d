"""Read spatial transcriptomics sections into one AnnData layout at their true physical scale.

Every format (see :mod:`histodecon.readers`) ends in the same per-slide AnnData:

- ``X``: raw UMI counts, float32 CSR holding integers, spots x genes;
- ``obs``: ``barcode`` (index), ``slide``, ``patient``, and ``array_row``/``array_col`` when
  the input has array coordinates;
- ``obsm["spatial"]``: spot centres in full-resolution image pixels, (x = column, y = row);
- ``uns["spatial"][slide]``: the scanpy/squidpy layout, a ``hires`` thumbnail and the
  scale factors ``tissue_hires_scalef``, ``spot_diameter_fullres`` and ``microns_per_pixel``;
- ``uns["histodecon"]``: µm/px and its source, every source found, spot geometry, input
  files and the checks' figures.

µm/px comes from the first of these that exists: the sample sheet, the image metadata,
Space Ranger's ``spot_diameter_fullres``, the spot grid pitch. Sources other than the
sheet that disagree by more than :data:`MPP_TOLERANCE` stop the run; a sheet value
overrides them and the disagreement is logged.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from histodecon import keys
from histodecon.counts import check_raw_counts
from histodecon.readers import PLATFORMS, READERS, InputError, Platform, SpotData
from histodecon.samples import DEFAULT_PLATFORM
from histodecon.slide import Slide, SlideReadError, open_slide
from histodecon.tissue import fraction_on_mask, tissue_mask

logger = logging.getLogger(__name__)

__all__ = [
    "MppEstimate",
    "MicronsPerPixelError",
    "SpotPositionError",
    "read_slide",
    "resolve_microns_per_pixel",
    "spot_pitch_px",
]

HIRES_MAX_PX = 2000  # longer side of the thumbnail stored for scanpy/squidpy plots
MPP_TOLERANCE = 0.10  # largest relative difference between two µm/px sources
MIN_SPOTS_IN_IMAGE = 0.5  # fewer spot centres inside the image than this fraction stops ingest
NEIGHBOUR_CUTOFF = 1.25  # neighbours of a spot lie within this factor of the nearest distance
SWAPPED_EVIDENCE = 0.8  # fraction of spots that must fit once x and y are swapped to say so


class MicronsPerPixelError(ValueError):
    """No source of µm/px, or sources that disagree."""


class SpotPositionError(ValueError):
    """Spot centres that do not fall on the image or its tissue."""


@dataclass(frozen=True)
class MppEstimate:
    """One estimate of µm per full-resolution pixel and where it came from."""

    value: float
    source: str  # sample_sheet, image_metadata, spot_diameter or spot_grid_pitch
    detail: str


def spot_pitch_px(pixel_xy: np.ndarray) -> float | None:
    """Return the centre-to-centre pitch of a spot grid, in pixels.

    Every distance from a spot to its up to 6 nearest neighbours that lies within
    :data:`NEIGHBOUR_CUTOFF` times the median nearest-neighbour distance counts as one
    neighbour pitch (4 per spot on the legacy-ST square grid, 6 on the Visium hexagonal
    grid; diagonals, at 1.41 and 1.73 times the pitch, fall outside); the pitch is their
    median. The nearest-neighbour distance alone is biased low when positions are
    jittered: on her2st it reads 271 px for a pitch of 290 px. None for fewer than 2 spots.
    """
    if len(pixel_xy) < 2:
        return None
    k = min(len(pixel_xy), 7)
    distances, _ = cKDTree(pixel_xy).query(pixel_xy, k=k)
    neighbours = distances[:, 1:]
    cutoff = NEIGHBOUR_CUTOFF * float(np.median(neighbours[:, 0]))
    return float(np.median(neighbours[neighbours <= cutoff]))


def resolve_microns_per_pixel(slide: str, estimates: list[MppEstimate]) -> MppEstimate:
    """Pick µm/px from ``estimates`` (ordered by trust) and check that they agree.

    Raises
    ------
    MicronsPerPixelError
        When there is no estimate, or when two estimates other than the sample sheet's differ
        by more than :data:`MPP_TOLERANCE`.
    """
    listing = "; ".join(f"{e.source} {e.value:.4f} µm/px ({e.detail})" for e in estimates)
    if not estimates:
        raise MicronsPerPixelError(
            f"slide {slide}: no µm/px from any source (no sample sheet value, no image metadata, no Space Ranger "
            "spot_diameter_fullres, fewer than 2 spots for the grid pitch). Fill the microns_per_pixel column of the "
            "sample sheet with the scanner's pixel size in µm."
        )
    chosen = estimates[0]
    derived = [e for e in estimates if e.source != "sample_sheet"]
    pairs = [(a, b) for i, a in enumerate(derived) for b in derived[i + 1 :]]
    conflict = next((p for p in pairs if abs(p[0].value - p[1].value) > MPP_TOLERANCE * min(p[0].value, p[1].value)), None)
    if conflict is not None:
        first, second = conflict
        message = (
            f"slide {slide}: µm/px sources disagree by more than {MPP_TOLERANCE:.0%}: {first.source} gives "
            f"{first.value:.4f} ({first.detail}) but {second.source} gives {second.value:.4f} ({second.detail})"
        )
        if chosen.source != "sample_sheet":
            raise MicronsPerPixelError(
                f"{message}. Check the image and the platform column; once you know the right value, write it in "
                f"the microns_per_pixel column of the sample sheet, which overrides the others. All sources: {listing}."
            )
        logger.warning("%s; the sample sheet's %.4f µm/px overrides them", message, chosen.value)
    others = f"; all sources: {listing}" if len(estimates) > 1 else ""
    logger.info("%s: %.4f µm/px from %s (%s)%s", slide, chosen.value, chosen.source, chosen.detail, others)
    return chosen


def _mpp_estimates(row: Mapping, spots: SpotData, image: Slide, platform: Platform) -> list[MppEstimate]:
    estimates = []
    sheet_value = row.get("microns_per_pixel")
    if sheet_value is not None and sheet_value != "" and not pd.isna(sheet_value):
        estimates.append(MppEstimate(float(sheet_value), "sample_sheet", "microns_per_pixel column"))
    if image.microns_per_pixel is not None:
        estimates.append(MppEstimate(image.microns_per_pixel, "image_metadata", str(image.path)))
    if spots.spot_diameter_px:
        value = platform.fullres_spot_diameter_um / spots.spot_diameter_px
        detail = f"spot_diameter_fullres {spots.spot_diameter_px:.2f} px = {platform.fullres_spot_diameter_um:.0f} µm"
        estimates.append(MppEstimate(value, "spot_diameter", detail))
    pitch = spot_pitch_px(spots.pixel_xy)
    if pitch:
        detail = f"{pitch:.1f} px between neighbouring spots = {platform.spot_pitch_um:.0f} µm ({platform.name})"
        estimates.append(MppEstimate(platform.spot_pitch_um / pitch, "spot_grid_pitch", detail))
    return estimates


def _fraction_inside(pixel_xy: np.ndarray, width: int, height: int) -> float:
    inside = (pixel_xy[:, 0] >= 0) & (pixel_xy[:, 1] >= 0) & (pixel_xy[:, 0] < width) & (pixel_xy[:, 1] < height)
    return float(inside.mean())


def check_spot_positions(
    slide: str, spots: SpotData, image: Slide, thumbnail: np.ndarray, scale: float, *, min_on_tissue: float
) -> dict[str, float]:
    """Stop when most spot centres fall outside the image or on background.

    Returns the fractions of spots inside the image and on detected tissue. The error message
    mentions when swapping x and y would put the spots on the image or its tissue.
    """
    width, height = image.dimensions
    where = f"spot positions of slide {slide} ({spots.files.get('spots', spots.files['counts'])})"
    swapped = spots.pixel_xy[:, ::-1]
    inside = _fraction_inside(spots.pixel_xy, width, height)
    inside_swapped = _fraction_inside(swapped, width, height)
    example = ", ".join(f"{b} at ({x:.0f}, {y:.0f})" for b, (x, y) in zip(spots.barcodes[:2], spots.pixel_xy[:2]))
    if inside < MIN_SPOTS_IN_IMAGE:
        if inside_swapped >= SWAPPED_EVIDENCE:
            hint = (
                f"With x and y swapped {inside_swapped:.0%} would fall inside, so the columns look swapped: x is the "
                "image column (pixel_x, pxl_col_in_fullres) and y the row (pixel_y, pxl_row_in_fullres)."
            )
        else:
            hint = (
                "Check that the image is the full-resolution image the positions refer to (not a downscaled copy "
                "such as tissue_hires_image.png) and that the positions are in full-resolution pixels."
            )
        raise SpotPositionError(
            f"{where}: only {inside:.0%} of {len(spots.barcodes)} spot centres fall inside image {image.path} "
            f"({width} x {height} px); e.g. {example}. {hint}"
        )
    mask = tissue_mask(thumbnail)
    on_tissue = fraction_on_mask(mask, spots.pixel_xy, scale)
    on_tissue_swapped = fraction_on_mask(mask, swapped, scale)
    if on_tissue < min_on_tissue:
        if on_tissue_swapped >= max(SWAPPED_EVIDENCE, on_tissue + 0.3):
            hint = (
                f"With x and y swapped {on_tissue_swapped:.0%} would be on tissue, so the columns look swapped: x is "
                "the image column (pixel_x, pxl_col_in_fullres) and y the row (pixel_y, pxl_row_in_fullres)."
            )
        else:
            hint = (
                "Check that the image belongs to this section and that the positions are aligned to it. For pale "
                "tissue (fat) that the saturation threshold misses, lower ingest.min_spots_on_tissue in the config."
            )
        raise SpotPositionError(
            f"{where}: only {on_tissue:.0%} of the spot centres lie on tissue detected in {image.path} "
            f"(ingest.min_spots_on_tissue = {min_on_tissue}). {hint}"
        )
    if inside < 1.0:
        logger.warning("%s: %.1f %% of spot centres lie outside the image; their patches will be padded", slide, 100 * (1 - inside))
    logger.info("%s: %.0f %% of spot centres inside the image, %.0f %% on detected tissue", slide, 100 * inside, 100 * on_tissue)
    return {"fraction_in_image": inside, "fraction_on_tissue": on_tissue}


def _platform(row: Mapping) -> Platform:
    name = row.get("platform") or DEFAULT_PLATFORM.get(str(row["format"]))
    if name not in PLATFORMS:
        raise InputError(
            f"slide {row['slide']}: platform {name!r} is not known; valid platforms: {sorted(PLATFORMS)}. Fill the "
            "platform column of the sample sheet."
        )
    return PLATFORMS[name]


def _open_image(row: Mapping) -> Slide:
    try:
        return open_slide(row["image"])
    except SlideReadError as error:
        raise SlideReadError(f"slide {row['slide']}: {error}") from error


def read_slide(row: Mapping, *, in_tissue_only: bool = True, min_spots_on_tissue: float = 0.5) -> ad.AnnData:
    """Read the section of a sample sheet row with the reader named in its ``format`` column.

    Parameters
    ----------
    row
        Sample sheet row: ``slide``, ``patient``, ``format``, ``counts``, ``spots``,
        ``image`` and the optional ``microns_per_pixel``, ``platform`` and ``counts_key``.
    in_tissue_only
        Keep only spots the input marks as under tissue (Visium ``in_tissue``, her2st
        ``selected``).
    min_spots_on_tissue
        Fewest spot centres (fraction) that must lie on tissue detected in the image.

    Returns
    -------
    AnnData in the layout of this module's docstring.
    """
    slide, fmt = str(row["slide"]), str(row["format"])
    try:
        reader = READERS[fmt]
    except KeyError:
        raise InputError(f"slide {slide}: unknown format {fmt!r}; valid formats: {sorted(READERS)}. Fix the `format` column.") from None
    platform = _platform(row)
    spots = reader(row, in_tissue_only=in_tissue_only)
    dropped = ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in spots.n_dropped.items() if n)
    if len(spots.barcodes) == 0:
        raise InputError(
            f"slide {slide}: no spots left in {spots.files['counts']} after keeping spots under tissue ({dropped or 'none dropped'}). "
            "Check that the counts and positions belong to this section and that its tissue flags are set; set "
            "ingest.in_tissue_only to false to keep every spot."
        )
    if dropped:
        logger.info("%s: left out %s", slide, dropped)
    hint = "Set the counts_key column of the sample sheet to raw or layers/<name> of the raw counts." if fmt == "h5ad" else ""
    check_raw_counts(spots.counts, what=f"counts of slide {slide}", path=spots.files["counts"], hint=hint)

    image = _open_image(row)
    thumbnail, scale = image.thumbnail(HIRES_MAX_PX)
    checks = check_spot_positions(slide, spots, image, thumbnail, scale, min_on_tissue=min_spots_on_tissue)
    estimates = _mpp_estimates(row, spots, image, platform)
    mpp = resolve_microns_per_pixel(slide, estimates)

    obs = pd.DataFrame({keys.SLIDE_COL: slide, keys.PATIENT_COL: str(row["patient"])}, index=pd.Index(spots.barcodes, name=keys.BARCODE_COL))
    if spots.array_rowcol is not None:
        obs[keys.ARRAY_ROW_COL] = spots.array_rowcol[:, 0]
        obs[keys.ARRAY_COL_COL] = spots.array_rowcol[:, 1]
    adata = ad.AnnData(X=spots.counts, obs=obs, var=pd.DataFrame(index=pd.Index(spots.genes, name="gene")))
    adata.obsm[keys.SPATIAL_KEY] = spots.pixel_xy
    adata.uns[keys.SPATIAL_KEY] = {
        slide: {
            "images": {keys.HIRES_IMAGE_KEY: thumbnail},
            "scalefactors": {
                keys.HIRES_SCALE_KEY: scale,
                keys.SPOT_DIAMETER_KEY: platform.spot_diameter_um / mpp.value,
                keys.MPP_KEY: mpp.value,
            },
            "metadata": {"source_image_path": str(image.path)},
        }
    }
    adata.uns[keys.HISTODECON_UNS_KEY] = {
        keys.MPP_KEY: mpp.value,
        keys.MPP_SOURCE_KEY: mpp.source,
        "microns_per_pixel_detail": mpp.detail,
        "microns_per_pixel_estimates": {e.source: e.value for e in estimates},
        "format": fmt,
        "platform": platform.name,
        "spot_diameter_um": platform.spot_diameter_um,
        "spot_pitch_um": platform.spot_pitch_um,
        "image_path": str(image.path),
        "image_width_px": image.dimensions[0],
        "image_height_px": image.dimensions[1],
        "input_files": {role: str(path) for role, path in spots.files.items()},
        "spots_dropped": dict(spots.n_dropped),
        **checks,
    }
    logger.info("%s: %d spots x %d genes, %.4f µm/px (%s)", slide, adata.n_obs, adata.n_vars, mpp.value, mpp.source)
    return adata
