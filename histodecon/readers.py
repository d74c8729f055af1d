"""Readers of spot counts and positions, one per sample sheet ``format``.

Each reader turns one sample sheet row into :class:`SpotData`: raw counts, barcodes, genes,
spot centres in full-resolution pixels and the spot diameter the files record, if any. The
shared checks, the choice of µm/px and the AnnData layout live in :mod:`histodecon.ingest`.

Formats:

- ``her2st``: legacy ST as the her2st study published it (``<slide>.tsv.gz`` counts with
  rows ``<x>x<y>``, ``<slide>_selection.tsv`` spot file).
- ``visium``: Space Ranger output: ``filtered_feature_bc_matrix.h5`` or the
  ``filtered_feature_bc_matrix/`` folder, and the ``spatial/`` folder (or one positions file
  in it) with ``tissue_positions_list.csv`` (no header), ``tissue_positions.csv`` (header)
  or ``tissue_positions.parquet``, and ``scalefactors_json.json``.
- ``h5ad``: AnnData with ``obsm["spatial"]`` in full-resolution pixels, counts in ``X``,
  ``.raw`` or a layer, and optionally the scanpy/squidpy ``uns["spatial"]`` scale factors.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

logger = logging.getLogger(__name__)

__all__ = ["Platform", "PLATFORMS", "SpotData", "InputError", "READERS", "read_her2st", "read_visium", "read_h5ad"]

VISIUM_POSITION_FILES = ("tissue_positions.parquet", "tissue_positions.csv", "tissue_positions_list.csv")
VISIUM_POSITION_COLUMNS = ("barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres")
SCALEFACTORS_FILE = "scalefactors_json.json"


class InputError(ValueError):
    """An input file whose content cannot be ingested; the message names the file and the fix."""


@dataclass(frozen=True)
class Platform:
    """Spot geometry of a spatial transcriptomics platform, in µm.

    Attributes
    ----------
    spot_diameter_um
        Physical diameter of a capture spot.
    spot_pitch_um
        Centre-to-centre distance of neighbouring spots.
    fullres_spot_diameter_um
        Diameter that a ``spot_diameter_fullres`` scale factor measures, in µm.
    """

    name: str
    spot_diameter_um: float
    spot_pitch_um: float
    fullres_spot_diameter_um: float


# Legacy ST (Ståhl et al., Science 2016; her2st methods): 100 µm spots, 200 µm apart on a
# square grid. Visium (10x Genomics): 55 µm spots, 100 µm apart on a hexagonal grid; Space
# Ranger's spot_diameter_fullres spans "a theoretical 65 µm spot" (Space Ranger 1.3 docs,
# spatial outputs), not the 55 µm capture area, so 55 / spot_diameter_fullres would
# underestimate µm/px by 15 %.
PLATFORMS = {
    "legacy_st": Platform("legacy_st", spot_diameter_um=100.0, spot_pitch_um=200.0, fullres_spot_diameter_um=100.0),
    "visium": Platform("visium", spot_diameter_um=55.0, spot_pitch_um=100.0, fullres_spot_diameter_um=65.0),
}


@dataclass(frozen=True)
class SpotData:
    """Counts and positions of one section as a reader found them.

    Attributes
    ----------
    counts
        Counts, float32 CSR ``(n_spots, n_genes)``; checked for raw integers by the caller.
    barcodes, genes
        Spot and gene names, in the order of ``counts``.
    pixel_xy
        Spot centres ``(n_spots, 2)`` in full-resolution pixels, x = column, y = row.
    array_rowcol
        Array row and column ``(n_spots, 2)`` of each spot, or None when the input has none.
    spot_diameter_px
        Space Ranger ``spot_diameter_fullres`` (px of ``platform.fullres_spot_diameter_um``),
        or None.
    files
        Input files by role (``counts``, ``spots``, ...), for messages and provenance.
    n_dropped
        Spots left out by the reader, by reason (e.g. ``not_in_tissue``).
    """

    counts: sp.csr_matrix
    barcodes: pd.Index
    genes: pd.Index
    pixel_xy: np.ndarray
    array_rowcol: np.ndarray | None
    spot_diameter_px: float | None
    files: dict[str, Path]
    n_dropped: dict[str, int]


def _read_text_table(path: Path, *, slide: str, what: str, **kwargs) -> pd.DataFrame:
    try:
        return pd.read_csv(path, **kwargs)
    except (OSError, ValueError, EOFError) as error:
        raise InputError(f"slide {slide}: cannot read the {what} {path}: {error}. Check that the file is complete.") from error


def read_her2st(row: Mapping, *, in_tissue_only: bool = True) -> SpotData:
    """Read one legacy-ST section as the her2st study published it.

    ``counts`` is ``<slide>.tsv.gz`` (spots x genes, rows named ``<x>x<y>`` in array units);
    ``spots`` is ``<slide>_selection.tsv`` with array ``x``/``y`` and full-resolution
    ``pixel_x`` (column) and ``pixel_y`` (row); with ``in_tissue_only`` only rows with
    ``selected == 1`` (spots under tissue) are kept.
    """
    slide = str(row["slide"])
    counts_path, spots_path = Path(row["counts"]), Path(row["spots"])
    counts = _read_text_table(counts_path, slide=slide, what="counts file", sep="\t", index_col=0)
    counts.index = counts.index.astype(str)
    spots = _read_text_table(spots_path, slide=slide, what="spot file", sep="\t")
    missing = {"x", "y", "pixel_x", "pixel_y"} - set(spots.columns)
    if missing:
        raise InputError(
            f"slide {slide}: spot file {spots_path} lacks the columns {sorted(missing)}; a her2st selection file "
            f"has x, y, new_x, new_y, pixel_x, pixel_y and selected (found {list(spots.columns)})."
        )
    n_dropped = {}
    if in_tissue_only and "selected" in spots.columns:
        n_dropped["not_in_tissue"] = int((spots["selected"] != 1).sum())
        spots = spots[spots["selected"] == 1]
    spots.index = spots["x"].astype(int).astype(str) + "x" + spots["y"].astype(int).astype(str)
    _reject_duplicates(counts.index, slide=slide, path=counts_path, what="spot rows")
    _reject_duplicates(spots.index, slide=slide, path=spots_path, what="spots (x, y)")
    shared = counts.index.intersection(spots.index, sort=False)
    n_dropped["not_in_spot_file"] = len(counts) - len(shared)
    counts, spots = counts.loc[shared], spots.loc[shared]
    return SpotData(
        counts=sp.csr_matrix(counts.to_numpy(dtype=np.float32)),
        barcodes=pd.Index(shared.astype(str)),
        genes=pd.Index(counts.columns.astype(str)),
        pixel_xy=spots[["pixel_x", "pixel_y"]].to_numpy(dtype=np.float64),
        array_rowcol=spots[["y", "x"]].to_numpy(dtype=np.int64),
        spot_diameter_px=None,
        files={"counts": counts_path, "spots": spots_path},
        n_dropped=n_dropped,
    )


def _reject_duplicates(names: pd.Index, *, slide: str, path: Path, what: str) -> None:
    duplicated = names[names.duplicated()].unique()
    if len(duplicated):
        raise InputError(
            f"slide {slide}: {path} has duplicate {what}: {list(duplicated[:5])} ({len(duplicated)} in all). Each spot "
            "must appear once; remove the repeated rows or fix the barcodes."
        )


def _read_10x_counts(path: Path, *, slide: str) -> ad.AnnData:
    """Read a Space Ranger feature-barcode matrix (``.h5`` file or ``matrix.mtx.gz`` folder)."""
    import scanpy as sc

    try:
        if path.is_dir():
            adata = sc.read_10x_mtx(path, var_names="gene_symbols", make_unique=False, gex_only=True)
        else:
            adata = sc.read_10x_h5(path, gex_only=True)
    except (OSError, ValueError, KeyError) as error:
        raise InputError(
            f"slide {slide}: cannot read the Space Ranger matrix {path}: {error}. Give filtered_feature_bc_matrix.h5 "
            "or the filtered_feature_bc_matrix/ folder (barcodes.tsv.gz, features.tsv.gz, matrix.mtx.gz)."
        ) from error
    return adata


def _visium_positions_file(spots: Path, *, slide: str) -> Path:
    if spots.is_file():
        return spots
    for name in VISIUM_POSITION_FILES:
        if (spots / name).is_file():
            return spots / name
    raise InputError(
        f"slide {slide}: no spot positions in {spots}; expected one of {list(VISIUM_POSITION_FILES)} there. Point the "
        "`spots` column at Space Ranger's spatial/ folder or at the positions file itself."
    )


def _read_visium_positions(path: Path, *, slide: str) -> pd.DataFrame:
    if path.suffix == ".parquet":
        positions = pd.read_parquet(path)
    else:
        with path.open() as handle:
            has_header = handle.readline().startswith("barcode")
        names = None if has_header else list(VISIUM_POSITION_COLUMNS)
        positions = _read_text_table(path, slide=slide, what="positions file", header=0 if has_header else None, names=names)
    missing = [c for c in VISIUM_POSITION_COLUMNS if c not in positions.columns]
    if missing:
        raise InputError(
            f"slide {slide}: positions file {path} lacks the columns {missing} (found {list(positions.columns)}); "
            f"Space Ranger writes {list(VISIUM_POSITION_COLUMNS)}."
        )
    positions["barcode"] = positions["barcode"].astype(str)
    _reject_duplicates(pd.Index(positions["barcode"]), slide=slide, path=path, what="barcodes")
    return positions.set_index("barcode")


def _read_scalefactors(folder: Path, *, slide: str) -> float | None:
    path = folder / SCALEFACTORS_FILE
    if not path.is_file():
        logger.info("%s: no %s in %s; µm/px will not use the spot diameter", slide, SCALEFACTORS_FILE, folder)
        return None
    try:
        value = json.loads(path.read_text()).get("spot_diameter_fullres")
    except (OSError, ValueError) as error:
        raise InputError(f"slide {slide}: cannot read {path}: {error}. Restore Space Ranger's {SCALEFACTORS_FILE}.") from error
    return float(value) if value else None


def read_visium(row: Mapping, *, in_tissue_only: bool = True) -> SpotData:
    """Read one Space Ranger (Visium) output.

    ``counts`` is ``filtered_feature_bc_matrix.h5`` or the ``filtered_feature_bc_matrix/``
    folder; ``spots`` is the ``spatial/`` folder or a positions file in it. Positions give
    ``pxl_row_in_fullres`` (y) and ``pxl_col_in_fullres`` (x) of spot centres; with
    ``in_tissue_only`` only spots with ``in_tissue == 1`` are kept.
    """
    slide = str(row["slide"])
    counts_path, spots_path = Path(row["counts"]), Path(row["spots"])
    matrix = _read_10x_counts(counts_path, slide=slide)
    _reject_duplicates(matrix.obs_names, slide=slide, path=counts_path, what="barcodes")
    matrix.var_names_make_unique()
    positions_path = _visium_positions_file(spots_path, slide=slide)
    positions = _read_visium_positions(positions_path, slide=slide)

    unknown = matrix.obs_names.difference(positions.index)
    if len(unknown):
        raise InputError(
            f"slide {slide}: {len(unknown)} of {matrix.n_obs} barcodes of {counts_path} are not in {positions_path} "
            f"(e.g. {list(unknown[:3])}). The matrix and the spatial folder must come from the same Space Ranger run."
        )
    positions = positions.loc[matrix.obs_names]
    n_dropped = {}
    if in_tissue_only:
        in_tissue = positions["in_tissue"].to_numpy() == 1
        n_dropped["not_in_tissue"] = int((~in_tissue).sum())
        matrix, positions = matrix[in_tissue], positions[in_tissue]
    return SpotData(
        counts=sp.csr_matrix(matrix.X, dtype=np.float32),
        barcodes=pd.Index(matrix.obs_names.astype(str)),
        genes=pd.Index(matrix.var_names.astype(str)),
        pixel_xy=positions[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(dtype=np.float64),
        array_rowcol=positions[["array_row", "array_col"]].to_numpy(dtype=np.int64),
        spot_diameter_px=_read_scalefactors(positions_path.parent, slide=slide),
        files={"counts": counts_path, "spots": positions_path},
        n_dropped=n_dropped,
    )


def _h5ad_counts(adata: ad.AnnData, counts_key: str, *, slide: str, path: Path) -> tuple[sp.csr_matrix, pd.Index]:
    """Return the count matrix named by ``counts_key`` (``X``, ``raw`` or ``layers/<name>``) and its genes."""
    fix = "Set the sample sheet's counts_key to X, raw or layers/<name> of the layer with raw counts."
    if counts_key == "X":
        matrix, genes = adata.X, adata.var_names
    elif counts_key == "raw":
        if adata.raw is None:
            raise InputError(f"slide {slide}: {path} has no .raw, but counts_key is 'raw'. {fix}")
        matrix, genes = adata.raw.X, adata.raw.var_names
    elif counts_key.startswith("layers/"):
        layer = counts_key.removeprefix("layers/")
        if layer not in adata.layers:
            raise InputError(
                f"slide {slide}: {path} has no layer {layer!r} (counts_key {counts_key!r}); its layers are "
                f"{list(adata.layers)}. {fix}"
            )
        matrix, genes = adata.layers[layer], adata.var_names
    else:
        raise InputError(f"slide {slide}: counts_key {counts_key!r} for {path} is not valid. {fix}")
    if matrix is None:
        raise InputError(f"slide {slide}: {path} has no matrix in {counts_key}. {fix}")
    return sp.csr_matrix(matrix, dtype=np.float32), pd.Index(genes.astype(str))


def _h5ad_spot_diameter(adata: ad.AnnData, *, slide: str, path: Path) -> float | None:
    libraries = adata.uns.get("spatial", {})
    if not isinstance(libraries, Mapping) or not libraries:
        return None
    if slide in libraries:
        library = libraries[slide]
    elif len(libraries) == 1:
        library = next(iter(libraries.values()))
    else:
        raise InputError(
            f"slide {slide}: {path} contains several libraries in uns['spatial'] ({sorted(libraries)}) and none is named "
            f"{slide!r}. Split the file into one section per file, or name the slide after its library id."
        )
    value = library.get("scalefactors", {}).get("spot_diameter_fullres")
    return float(value) if value else None


def read_h5ad(row: Mapping, *, in_tissue_only: bool = True) -> SpotData:
    """Read one section saved as AnnData (scanpy/squidpy layout).

    ``counts`` is the ``.h5ad``; spot centres come from ``obsm["spatial"]`` in
    full-resolution pixels (x = column); counts from ``counts_key``; array coordinates from
    ``obs["array_row"]``/``["array_col"]`` when present. With ``in_tissue_only``, spots with
    ``obs["in_tissue"] == 0`` are dropped.
    """
    slide = str(row["slide"])
    path = Path(row["counts"])
    try:
        adata = ad.read_h5ad(path)
    except (OSError, ValueError, KeyError) as error:
        raise InputError(f"slide {slide}: cannot read AnnData file {path}: {error}. Check that it is a complete .h5ad.") from error
    if "spatial" not in adata.obsm:
        raise InputError(
            f"slide {slide}: {path} has no obsm['spatial'] (its obsm keys: {list(adata.obsm)}). Store the spot centres "
            "in full-resolution pixels there, x = column and y = row, as scanpy and squidpy do."
        )
    _reject_duplicates(adata.obs_names, slide=slide, path=path, what="barcodes (obs names)")
    counts_key = str(row.get("counts_key") or "X")
    matrix, genes = _h5ad_counts(adata, counts_key, slide=slide, path=path)
    pixel_xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)[:, :2]
    keep = np.ones(adata.n_obs, dtype=bool)
    n_dropped = {}
    if in_tissue_only and "in_tissue" in adata.obs:
        keep = adata.obs["in_tissue"].to_numpy() == 1
        n_dropped["not_in_tissue"] = int((~keep).sum())
    array_rowcol = None
    if {"array_row", "array_col"} <= set(adata.obs.columns):
        array_rowcol = adata.obs[["array_row", "array_col"]].to_numpy(dtype=np.int64)[keep]
    return SpotData(
        counts=matrix[keep],
        barcodes=pd.Index(adata.obs_names[keep].astype(str)),
        genes=genes,
        pixel_xy=pixel_xy[keep],
        array_rowcol=array_rowcol,
        spot_diameter_px=_h5ad_spot_diameter(adata, slide=slide, path=path),
        files={"counts": path},
        n_dropped=n_dropped,
    )


READERS: dict[str, Callable[..., SpotData]] = {"her2st": read_her2st, "visium": read_visium, "h5ad": read_h5ad}
