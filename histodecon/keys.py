"""Names shared across stages: AnnData keys, table columns and file names.

Every stage reads and writes through these constants, so a key is spelled once.
"""

from __future__ import annotations

# AnnData layout of an ingested slide (scanpy/squidpy spatial conventions).
SPATIAL_KEY = "spatial"  # obsm: spot centres, full-resolution pixels, (x = column, y = row)
HIRES_IMAGE_KEY = "hires"  # uns["spatial"][library_id]["images"]
HIRES_SCALE_KEY = "tissue_hires_scalef"  # uns["spatial"][library_id]["scalefactors"]
SPOT_DIAMETER_KEY = "spot_diameter_fullres"  # pixels of the full-resolution image
MPP_KEY = "microns_per_pixel"  # µm per full-resolution pixel
MPP_SOURCE_KEY = "microns_per_pixel_source"
HISTODECON_UNS_KEY = "histodecon"  # uns: provenance of the ingest
PROVENANCE_KEY = "provenance"  # parquet metadata, uns["histodecon"] and patch file attribute

# obs columns of an ingested slide.
SLIDE_COL = "slide"
PATIENT_COL = "patient"
BARCODE_COL = "barcode"
ARRAY_ROW_COL = "array_row"  # spot grid row (squidpy/scanpy Visium naming)
ARRAY_COL_COL = "array_col"  # spot grid column

# Column prefixes of wide tables, one column per cell type or embedding dimension.
Q05_PREFIX = "q05:"  # cell2location 5 % posterior quantile of abundance (cells per spot)
MEAN_PREFIX = "mean:"  # cell2location posterior mean of abundance (cells per spot)
PROPORTION_PREFIX = "proportion:"  # q05 abundance divided by its sum over types
LABEL_PREFIX = "label:"  # regression target in prediction tables
PRED_PREFIX = "pred:"  # held-out prediction in prediction tables
EMBEDDING_PREFIX = "emb_"  # embedding dimensions, zero-padded: emb_0000, emb_0001, ...

TARGET_PREFIXES = {"q05": Q05_PREFIX, "mean": MEAN_PREFIX, "proportion": PROPORTION_PREFIX}

# Columns of per-spot tables.
X_PX_COL = "x_px"  # spot centre, full-resolution column
Y_PX_COL = "y_px"  # spot centre, full-resolution row
FOLD_COL = "fold"
TISSUE_FRACTION_COL = "tissue_fraction"
PADDED_COL = "padded"

# Datasets and attributes of a patch file (HDF5).
PATCH_IMAGES = "images"  # uint8, (n_spots, patch_px, patch_px, 3), RGB
PATCH_TABLE_COLUMNS = (BARCODE_COL, X_PX_COL, Y_PX_COL, TISSUE_FRACTION_COL, PADDED_COL)

# Schema metadata key of every parquet file written by histodecon (JSON).
PARQUET_METADATA_KEY = b"histodecon"


def prefixed_columns(columns, prefix: str) -> list[str]:
    """Return the columns that start with ``prefix``, in their order."""
    return [c for c in columns if c.startswith(prefix)]


def embedding_columns(embedding_dim: int, *, start: int = 0) -> list[str]:
    """Return the embedding column names ``emb_0000`` ... for ``embedding_dim`` dimensions from ``start``."""
    return [f"{EMBEDDING_PREFIX}{index:04d}" for index in range(start, start + embedding_dim)]


def strip_prefix(columns, prefix: str) -> list[str]:
    """Return the cell-type (or dimension) names of prefixed columns."""
    return [c[len(prefix) :] for c in prefixed_columns(columns, prefix)]
