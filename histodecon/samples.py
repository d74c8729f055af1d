"""Sample sheet loading: one row per section, checked before any job runs."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pandas as pd

logger = logging.getLogger(__name__)

__all__ = ["SampleSheetError", "read_sample_sheet", "SAFE_ID"]

SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
REQUIRED_COLUMNS = ("slide", "patient", "format", "counts", "spots", "image")
OPTIONAL_COLUMNS = ("microns_per_pixel", "published_proportions")


class SampleSheetError(ValueError):
    """A sample sheet that cannot drive the workflow."""


def read_sample_sheet(path: str | Path) -> pd.DataFrame:
    """Read the sample sheet, check ids and return it indexed by slide, in file order.

    Every column is read as text except ``microns_per_pixel`` (float, NaN when empty);
    optional columns are added empty when absent.
    """
    path = Path(path)
    dtypes = {column: str for column in (*REQUIRED_COLUMNS, "published_proportions")}
    sheet = pd.read_csv(path, sep="\t", comment="#", dtype=dtypes, keep_default_na=False, na_values={"microns_per_pixel": [""]})
    missing = [c for c in REQUIRED_COLUMNS if c not in sheet.columns]
    if missing:
        raise SampleSheetError(
            f"sample sheet {path} lacks the columns {missing}; required: {list(REQUIRED_COLUMNS)} "
            f"(optional: {list(OPTIONAL_COLUMNS)}). Columns found: {list(sheet.columns)}."
        )
    if sheet.empty:
        raise SampleSheetError(f"sample sheet {path} has no rows; add one row per section.")
    if "microns_per_pixel" not in sheet.columns:
        sheet["microns_per_pixel"] = float("nan")
    sheet["microns_per_pixel"] = pd.to_numeric(sheet["microns_per_pixel"], errors="raise").astype(float)
    if "published_proportions" not in sheet.columns:
        sheet["published_proportions"] = ""

    for column in ("slide", "patient"):
        unsafe = [value for value in sheet[column] if not SAFE_ID.match(value)]
        if unsafe:
            raise SampleSheetError(
                f"sample sheet {path}: {column} ids {unsafe} are not safe file names; use letters, digits, "
                "'.', '_' and '-', starting with a letter or digit."
            )
    duplicated = sheet["slide"][sheet["slide"].duplicated()].unique().tolist()
    if duplicated:
        raise SampleSheetError(f"sample sheet {path}: duplicate slide ids {duplicated}; each row needs its own slide id.")
    return sheet.set_index("slide", drop=False)
