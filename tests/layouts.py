"""Write one real her2st region in the other input layouts: Space Ranger, AnnData, TIFF pyramid.

The writers follow the published formats (10x Genomics feature-barcode matrix HDF5 and
Matrix Market folder, Space Ranger's spatial folder, the scanpy/squidpy AnnData layout, a
tiled TIFF with resolution tags), so the readers meet what the tools write.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.io
import scipy.sparse as sp
import tifffile
from PIL import Image

POSITION_COLUMNS = ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]
POSITION_VARIANTS = ("tissue_positions_list.csv", "tissue_positions.csv", "tissue_positions.parquet")


def read_her2st_region(row: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return the counts (spots x genes) and selected spots of a her2st row, indexed ``<x>x<y>``."""
    counts = pd.read_csv(row["counts"], sep="\t", index_col=0)
    spots = pd.read_csv(row["spots"], sep="\t")
    spots = spots[spots["selected"] == 1]
    spots.index = spots["x"].astype(str) + "x" + spots["y"].astype(str)
    return counts, spots.loc[counts.index]


def write_10x_h5(path: Path, counts: pd.DataFrame) -> None:
    """Write counts as a Cell Ranger 3+ feature-barcode matrix HDF5 (genes x barcodes, CSC)."""
    matrix = sp.csr_matrix(counts.to_numpy(dtype=np.int32))  # barcodes x genes CSR = genes x barcodes CSC
    genes = counts.columns.astype(str)
    with h5py.File(path, "w") as h5:
        group = h5.create_group("matrix")
        group.create_dataset("barcodes", data=np.array(counts.index, dtype="S"))
        group.create_dataset("data", data=matrix.data.astype(np.int32))
        group.create_dataset("indices", data=matrix.indices.astype(np.int64))
        group.create_dataset("indptr", data=matrix.indptr.astype(np.int64))
        group.create_dataset("shape", data=np.array([len(genes), len(counts)], dtype=np.int32))
        features = group.create_group("features")
        features.create_dataset("id", data=np.array([f"ENSG{i:011d}" for i in range(len(genes))], dtype="S"))
        features.create_dataset("name", data=np.array(genes, dtype="S"))
        features.create_dataset("feature_type", data=np.array(["Gene Expression"] * len(genes), dtype="S"))
        features.create_dataset("genome", data=np.array(["GRCh38"] * len(genes), dtype="S"))
        features.create_dataset("_all_tag_keys", data=np.array(["genome"], dtype="S"))


def write_10x_mtx(folder: Path, counts: pd.DataFrame) -> None:
    """Write counts as a Cell Ranger 3+ Matrix Market folder (matrix.mtx.gz is genes x barcodes)."""
    folder.mkdir(parents=True, exist_ok=True)
    with gzip.open(folder / "matrix.mtx.gz", "wb") as handle:
        scipy.io.mmwrite(handle, sp.coo_matrix(counts.to_numpy(dtype=np.int64).T), field="integer")
    features = pd.DataFrame(
        {"id": [f"ENSG{i:011d}" for i in range(counts.shape[1])], "name": counts.columns, "type": "Gene Expression"}
    )
    features.to_csv(folder / "features.tsv.gz", sep="\t", header=False, index=False)
    pd.Series(counts.index).to_csv(folder / "barcodes.tsv.gz", sep="\t", header=False, index=False)


def positions_table(spots: pd.DataFrame, *, extra_off_tissue: int = 0) -> pd.DataFrame:
    """Space Ranger positions of the spots, plus ``extra_off_tissue`` spots outside the matrix."""
    table = pd.DataFrame(
        {
            "barcode": spots.index,
            "in_tissue": 1,
            "array_row": spots["y"].to_numpy(),
            "array_col": spots["x"].to_numpy(),
            "pxl_row_in_fullres": spots["pixel_y"].to_numpy(),
            "pxl_col_in_fullres": spots["pixel_x"].to_numpy(),
        }
    )
    extra = pd.DataFrame(
        {
            "barcode": [f"OFF{i:04d}-1" for i in range(extra_off_tissue)],
            "in_tissue": 0,
            "array_row": 0,
            "array_col": np.arange(extra_off_tissue),
            "pxl_row_in_fullres": 5.0,
            "pxl_col_in_fullres": 5.0 + np.arange(extra_off_tissue),
        }
    )
    return pd.concat([extra, table], ignore_index=True)[POSITION_COLUMNS]


def write_positions(folder: Path, table: pd.DataFrame, variant: str) -> Path:
    """Write a positions table as Space Ranger's v1 list (no header), v2 CSV or parquet."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / variant
    if variant == "tissue_positions_list.csv":
        table.to_csv(path, header=False, index=False)
    elif variant == "tissue_positions.csv":
        table.to_csv(path, index=False)
    else:
        table.to_parquet(path, index=False)
    return path


def write_space_ranger(root: Path, counts: pd.DataFrame, spots: pd.DataFrame, *, variant: str, spot_diameter_px: float, matrix: str = "h5") -> tuple[Path, Path]:
    """Write a Space Ranger ``outs/`` folder; return the paths for the ``counts`` and ``spots`` columns."""
    root.mkdir(parents=True, exist_ok=True)
    if matrix == "h5":
        counts_path = root / "filtered_feature_bc_matrix.h5"
        write_10x_h5(counts_path, counts)
    else:
        counts_path = root / "filtered_feature_bc_matrix"
        write_10x_mtx(counts_path, counts)
    spatial = root / "spatial"
    write_positions(spatial, positions_table(spots, extra_off_tissue=5), variant)
    (spatial / "scalefactors_json.json").write_text(
        json.dumps({"spot_diameter_fullres": spot_diameter_px, "tissue_hires_scalef": 0.2, "fiducial_diameter_fullres": 1.5 * spot_diameter_px})
    )
    return counts_path, spatial


def write_spatial_h5ad(path: Path, counts: pd.DataFrame, spots: pd.DataFrame, *, library_id: str, spot_diameter_px: float) -> None:
    """Write the region as scanpy/squidpy would hold it: log-normalised X, raw counts in layers and .raw."""
    raw = sp.csr_matrix(counts.to_numpy(dtype=np.float32))
    adata = ad.AnnData(X=raw.copy(), obs=pd.DataFrame(index=counts.index.astype(str)), var=pd.DataFrame(index=counts.columns.astype(str)))
    adata.layers["counts"] = raw.copy()
    adata.raw = adata.copy()
    totals = np.maximum(np.asarray(raw.sum(axis=1)).ravel(), 1.0)
    adata.X = sp.csr_matrix(np.log1p(raw.multiply(1e4 / totals[:, None]).toarray()).astype(np.float32))
    adata.obs["in_tissue"] = 1
    adata.obs["array_row"] = spots["y"].to_numpy()
    adata.obs["array_col"] = spots["x"].to_numpy()
    adata.obsm["spatial"] = spots[["pixel_x", "pixel_y"]].to_numpy(dtype=np.float64)
    adata.uns["spatial"] = {library_id: {"scalefactors": {"spot_diameter_fullres": spot_diameter_px, "tissue_hires_scalef": 1.0}, "images": {}}}
    adata.write_h5ad(path)


def write_tiff_pyramid(path: Path, rgb: np.ndarray, *, microns_per_pixel: float | None, levels: int = 3, tile: int = 256) -> None:
    """Write a tiled RGB TIFF pyramid (each level half the previous), lossless, with resolution tags in cm."""
    image = Image.fromarray(rgb)
    with tifffile.TiffWriter(path) as tif:
        for level in range(levels):
            factor = 2**level
            if level:
                image = image.resize((max(rgb.shape[1] // factor, 1), max(rgb.shape[0] // factor, 1)), Image.Resampling.BOX)
            extra = {}
            if microns_per_pixel is not None:
                pixels_per_cm = 1e4 / (microns_per_pixel * factor)
                extra = {"resolution": (pixels_per_cm, pixels_per_cm), "resolutionunit": "CENTIMETER"}
            tif.write(
                np.asarray(image), tile=(tile, tile), photometric="rgb", compression="zlib", subfiletype=1 if level else 0, **extra
            )


def write_strip_tiff(path: Path, rgb: np.ndarray, *, microns_per_pixel: float) -> None:
    """Write a plain (strip, untiled) RGB TIFF with resolution tags in cm, which OpenSlide cannot open."""
    pixels_per_cm = 1e4 / microns_per_pixel
    tifffile.imwrite(path, rgb, photometric="rgb", resolution=(pixels_per_cm, pixels_per_cm), resolutionunit="CENTIMETER")
