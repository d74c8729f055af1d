"""Sample sheet checks."""

from __future__ import annotations

import pytest

from histodecon.samples import SampleSheetError, read_sample_sheet

HEADER = "slide\tpatient\tformat\tcounts\tspots\timage\n"


def write_sheet(tmp_path, body: str):
    path = tmp_path / "samples.tsv"
    path.write_text(HEADER + body)
    return path


def test_sheet_reads_optional_columns(tmp_path):
    sheet = read_sample_sheet(write_sheet(tmp_path, "A1\tP1\ther2st\tc\ts\ti.jpg\n"))
    assert list(sheet.index) == ["A1"]
    assert sheet.loc["A1", "published_proportions"] == ""
    assert sheet["microns_per_pixel"].isna().all()


def test_sheet_duplicate_slides_rejected(tmp_path):
    path = write_sheet(tmp_path, "A1\tP1\ther2st\tc\ts\ti\nA1\tP1\ther2st\tc\ts\ti\n")
    with pytest.raises(SampleSheetError, match="duplicate slide ids \\['A1'\\]"):
        read_sample_sheet(path)


def test_sheet_unsafe_slide_id_rejected(tmp_path):
    path = write_sheet(tmp_path, "../x\tP1\ther2st\tc\ts\ti\n")
    with pytest.raises(SampleSheetError, match="not safe file names"):
        read_sample_sheet(path)


def test_sheet_missing_column_named(tmp_path):
    path = tmp_path / "samples.tsv"
    path.write_text("slide\tpatient\nA\tB\n")
    with pytest.raises(SampleSheetError, match="'format'"):
        read_sample_sheet(path)
