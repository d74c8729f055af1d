"""Sample sheet loading: one row per section, checked before any job runs.

Columns by ``format`` (``-`` = not used; see README.md, "Sample sheet"):

=========== ========================= ================================ ================
format      counts                    spots                            platform
=========== ========================= ================================ ================
her2st      ``<slide>.tsv.gz``        ``<slide>_selection.tsv``        legacy_st
visium      matrix ``.h5`` or folder  ``spatial/`` or positions file   visium
h5ad        ``.h5ad``                 -                                required
=========== ========================= ================================ ================

``image`` is required for every format; ``microns_per_pixel``, ``published_proportions``
and ``counts_key`` (h5ad: ``X``, ``raw`` or ``layers/<name>``) are optional.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

logger = logging.getLogger(__name__)

__all__ = ["SampleSheetError", "read_sample_sheet", "read_prediction_sheet", "SAFE_ID", "FORMAT_COLUMNS", "DEFAULT_PLATFORM", "PLATFORM_NAMES"]

SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
REQUIRED_COLUMNS = ("slide", "patient", "format", "counts", "image")
OPTIONAL_COLUMNS = ("spots", "microns_per_pixel", "platform", "counts_key", "published_proportions")
# Columns that must be filled, per format.
FORMAT_COLUMNS = {
    "her2st": ("counts", "spots", "image"),
    "visium": ("counts", "spots", "image"),
    "h5ad": ("counts", "image", "platform"),
}
DEFAULT_PLATFORM = {"her2st": "legacy_st", "visium": "visium"}
PLATFORM_NAMES = ("legacy_st", "visium")
COUNTS_KEY = re.compile(r"^(X|raw|layers/.+)$")
HEADER_LINES = 1  # the first line that is not a comment is the header


class SampleSheetError(ValueError):
    """A sample sheet that cannot drive the workflow."""


def _line(sheet: pd.DataFrame, index: int) -> int:
    return int(sheet.loc[index, "_line"])


def _check_rows(sheet: pd.DataFrame, path: Path) -> None:
    """Check each row against its format, naming the line of the file."""
    for index, row in sheet.iterrows():
        where = f"sample sheet {path}, line {_line(sheet, index)} (slide {row['slide'] or '?'})"
        fmt = row["format"]
        if fmt not in FORMAT_COLUMNS:
            raise SampleSheetError(f"{where}: unknown format {fmt!r}; valid formats: {sorted(FORMAT_COLUMNS)}. Fix the format column.")
        empty = [column for column in FORMAT_COLUMNS[fmt] if not row[column]]
        if empty:
            raise SampleSheetError(
                f"{where}: format {fmt} needs the columns {list(FORMAT_COLUMNS[fmt])}, but {empty} are empty. Fill them "
                "(README.md, 'Sample sheet', lists what each holds)."
            )
        if row["platform"] and row["platform"] not in PLATFORM_NAMES:
            raise SampleSheetError(f"{where}: unknown platform {row['platform']!r}; valid platforms: {list(PLATFORM_NAMES)}.")
        if row["counts_key"] and (fmt != "h5ad" or not COUNTS_KEY.match(row["counts_key"])):
            raise SampleSheetError(
                f"{where}: counts_key {row['counts_key']!r} is only for format h5ad, and must be X, raw or "
                "layers/<name>. Empty it, or fix it."
            )
        value = row["microns_per_pixel"]
        if not pd.isna(value) and not value > 0:
            raise SampleSheetError(f"{where}: microns_per_pixel must be a positive number, got {value!r}. Leave it empty to derive it.")


def read_sample_sheet(path: str | Path) -> pd.DataFrame:
    """Read the sample sheet, check ids and formats, and return it indexed by slide, in file order.

    Every column is read as text except ``microns_per_pixel`` (float, NaN when empty);
    optional columns are added empty when absent. Errors name the line of the file.
    """
    path = Path(path)
    text_columns = {column: str for column in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if column != "microns_per_pixel"}
    try:
        sheet = pd.read_csv(path, sep="\t", comment="#", dtype=text_columns, keep_default_na=False, na_values={"microns_per_pixel": [""]})
    except (OSError, ValueError) as error:
        raise SampleSheetError(f"cannot read sample sheet {path}: {error}. It must be a tab-separated file with a header line.") from error
    missing = [c for c in REQUIRED_COLUMNS if c not in sheet.columns]
    if missing:
        raise SampleSheetError(
            f"sample sheet {path} lacks the columns {missing}; required: {list(REQUIRED_COLUMNS)} "
            f"(optional: {list(OPTIONAL_COLUMNS)}). Columns found: {list(sheet.columns)}."
        )
    if sheet.empty:
        raise SampleSheetError(f"sample sheet {path} has no rows; add one row per section.")
    for column in OPTIONAL_COLUMNS:
        if column not in sheet.columns:
            sheet[column] = float("nan") if column == "microns_per_pixel" else ""
    # Line numbers for messages; comment lines are not counted by pandas, so count them here.
    data_lines = [i for i, line in enumerate(path.read_text().splitlines(), start=1) if line.strip() and not line.startswith("#")]
    sheet["_line"] = data_lines[HEADER_LINES : HEADER_LINES + len(sheet)]
    try:
        sheet["microns_per_pixel"] = pd.to_numeric(sheet["microns_per_pixel"], errors="raise").astype(float)
    except ValueError as error:
        raise SampleSheetError(f"sample sheet {path}: microns_per_pixel must be a number or empty: {error}.") from error

    for column in ("slide", "patient"):
        unsafe = [(_line(sheet, i), value) for i, value in sheet[column].items() if not SAFE_ID.match(value)]
        if unsafe:
            raise SampleSheetError(
                f"sample sheet {path}: {column} ids that are not safe file names (line, value): {unsafe}; use letters, "
                "digits, '.', '_' and '-', starting with a letter or digit."
            )
    duplicated = sheet["slide"][sheet["slide"].duplicated(keep=False)]
    if len(duplicated):
        lines = {value: [_line(sheet, i) for i in duplicated.index[duplicated == value]] for value in duplicated.unique()}
        raise SampleSheetError(
            f"sample sheet {path}: duplicate slide ids {sorted(lines)} on lines {lines}; each row needs its own slide id."
        )
    _check_rows(sheet, path)
    return sheet.drop(columns="_line").set_index("slide", drop=False)


def read_prediction_sheet(path: str | Path, *, training_slides: Sequence[str] = ()) -> pd.DataFrame:
    """Read the sheet of images to predict on, indexed by slide, in file order.

    Columns: ``slide`` (id, a safe file name), ``image`` (path of the H&E image) and the
    optional ``microns_per_pixel`` (float). Where it is empty (NaN), the image's own
    metadata gives the µm/px. An id that is also a training slide is rejected, because both write files named
    after the slide id and a reader could mistake one for the other.
    """
    path = Path(path)
    try:
        sheet = pd.read_csv(path, sep="\t", comment="#", dtype={"slide": str, "image": str}, keep_default_na=False, na_values={"microns_per_pixel": [""]})
    except (OSError, ValueError) as error:
        raise SampleSheetError(f"cannot read prediction sheet {path}: {error}. It must be a tab-separated file with a header line.") from error
    missing = [c for c in ("slide", "image") if c not in sheet.columns]
    if missing:
        raise SampleSheetError(
            f"prediction sheet {path} is missing the columns {missing}; required: ['slide', 'image'] (optional: "
            f"['microns_per_pixel']). Columns found: {list(sheet.columns)}."
        )
    if sheet.empty:
        raise SampleSheetError(f"prediction sheet {path} has no rows; add one row per image.")
    if "microns_per_pixel" not in sheet.columns:
        sheet["microns_per_pixel"] = float("nan")
    try:
        sheet["microns_per_pixel"] = pd.to_numeric(sheet["microns_per_pixel"], errors="raise").astype(float)
    except ValueError as error:
        raise SampleSheetError(f"prediction sheet {path}: microns_per_pixel must be a number or empty: {error}.") from error
    unsafe = [value for value in sheet["slide"] if not SAFE_ID.match(value)]
    duplicated = sorted(set(sheet["slide"][sheet["slide"].duplicated()]))
    clashing = sorted(set(sheet["slide"]) & set(training_slides))
    problems = []
    if unsafe:
        problems.append(f"ids that are not safe file names {unsafe} (use letters, digits, '.', '_' and '-')")
    if duplicated:
        problems.append(f"duplicate ids {duplicated}")
    if clashing:
        problems.append(f"ids that are also training slides {clashing} (rename them, e.g. with a suffix)")
    if (sheet["image"].str.strip() == "").any():
        problems.append("rows without an image path")
    if problems:
        raise SampleSheetError(f"prediction sheet {path}: " + "; ".join(problems) + ".")
    return sheet.set_index("slide", drop=False)
