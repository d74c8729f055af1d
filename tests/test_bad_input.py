"""Bad input stops early with a message that names the slide, the file, the value and the fix.

Every case runs the stage entry point that would meet the input in the workflow. It checks
the message, that no output or temporary file is left behind, and that the input files are
unchanged (SHA-256 before and after). Cases covered elsewhere: duplicate and
unsafe slide ids (test_samples.py), fewer than two slides or patients for cross-validation
(test_cv.py::test_folds_single_slide, test_workflow.py::test_single_patient_folds_rejected_early),
missing backbone weights (test_backbones.py::test_uni_without_weights_raises and
::test_missing_configured_path_raises).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import her2st_paths
from histodecon.counts import RawCountsError
from histodecon.ingest import MicronsPerPixelError, SpotPositionError
from histodecon.labels import ReferenceDataError, SharedGenesError
from histodecon.pipeline import cell_type_labels, ingest_slide, reference_signatures
from histodecon.readers import InputError
from histodecon.samples import SampleSheetError, read_sample_sheet
from histodecon.slide import SlideReadError
from layouts import positions_table, read_her2st_region, write_positions, write_space_ranger, write_spatial_h5ad

LABELS = {
    "reference_epochs": 2,
    "reference_batch_size": 64,
    "mapping_epochs": 2,
    "posterior_samples": 10,
    "min_shared_genes": 100,
    "seed": 0,
    "accelerator": "cpu",
    "n_cells_per_location": 30,
    "detection_alpha": 20,
}


def checksums(paths) -> dict[str, str]:
    """SHA-256 of every file under ``paths`` (files or folders)."""
    digests = {}
    for path in map(Path, paths):
        for file in sorted([path] if path.is_file() else path.rglob("*")):
            if file.is_file():
                digests[str(file)] = hashlib.sha256(file.read_bytes()).hexdigest()
    return digests


def fails_cleanly(error: type[Exception], call, *, inputs, outputs) -> str:
    """Run ``call``; check it raises ``error``, writes none of ``outputs`` and leaves ``inputs`` unchanged."""
    before = checksums(p for p in inputs if p and Path(p).exists())
    with pytest.raises(error) as info:
        call()
    for output in map(Path, outputs):
        assert not output.exists(), output
        assert not list(output.parent.glob(f".{output.stem}.tmp-*")), output.parent
    assert checksums(p for p in inputs if p and Path(p).exists()) == before
    return str(info.value)


def ingest_fails(error: type[Exception], row: dict, tmp_path: Path, **options) -> str:
    output = tmp_path / "results" / f"{row['slide']}.h5ad"
    inputs = [row.get("counts"), row.get("spots"), row.get("image")]
    return fails_cleanly(error, lambda: ingest_slide(row, output, **options), inputs=inputs, outputs=[output])


@pytest.fixture(scope="module")
def c2_row(tiny_data) -> dict:
    return tiny_data["sheet"].iloc[0].to_dict()


@pytest.fixture(scope="module")
def c2_region(c2_row):
    return read_her2st_region(c2_row)


def her2st_row_with(tmp_path: Path, c2_row: dict, *, counts: pd.DataFrame | None = None, spots: pd.DataFrame | None = None) -> dict:
    """Copy of the C2 row whose counts or spot file are replaced by the given tables."""
    row = dict(c2_row)
    if counts is not None:
        row["counts"] = str(tmp_path / "C2.tsv.gz")
        counts.to_csv(row["counts"], sep="\t")
    if spots is not None:
        row["spots"] = str(tmp_path / "C2_selection.tsv")
        spots.to_csv(row["spots"], sep="\t", index=False)
    return row


# 1. Normalised or log-transformed counts.


def test_log_normalised_counts(tmp_path, c2_row, c2_region):
    counts = np.log1p(c2_region[0])
    message = ingest_fails(RawCountsError, her2st_row_with(tmp_path, c2_row, counts=counts), tmp_path)
    assert "slide C2" in message
    assert str(tmp_path / "C2.tsv.gz") in message
    assert "non-integer values (e.g. " in message
    assert "raw UMI counts" in message


def test_scaled_counts_negative(tmp_path, c2_row, c2_region):
    counts = c2_region[0] - c2_region[0].mean()
    message = ingest_fails(RawCountsError, her2st_row_with(tmp_path, c2_row, counts=counts), tmp_path)
    assert "negative values (minimum -" in message


def test_h5ad_normalised_x_points_to_counts_key(tmp_path, c2_row, c2_region):
    counts, spots = c2_region
    path = tmp_path / "C2.h5ad"
    write_spatial_h5ad(path, counts, spots, library_id="C2", spot_diameter_px=145.0)
    row = {**c2_row, "format": "h5ad", "counts": str(path), "spots": "", "platform": "legacy_st", "counts_key": "X"}
    message = ingest_fails(RawCountsError, row, tmp_path)
    assert str(path) in message
    assert "counts_key" in message


# 2. Reference: missing label column, rare cell type.


def signatures_fail(tmp_path: Path, tiny_data: dict, *, label_key: str, min_cells_per_type: int) -> str:
    """Run the reference regression stage on the tiny reference and return its error message."""
    reference = {"path": str(tiny_data["reference"]), "label_key": label_key, "min_cells_per_type": min_cells_per_type}
    outputs = {"signatures_out": tmp_path / "signatures.parquet", "elbo_tsv": tmp_path / "elbo.tsv", "elbo_png": tmp_path / "elbo.png"}
    return fails_cleanly(
        ReferenceDataError,
        lambda: reference_signatures(reference=reference, labels=LABELS, **outputs),
        inputs=[tiny_data["reference"]],
        outputs=outputs.values(),
    )


def test_reference_label_column_missing(tmp_path, tiny_data):
    message = signatures_fail(tmp_path, tiny_data, label_key="cell_type", min_cells_per_type=10)
    assert str(tiny_data["reference"]) in message
    assert "'cell_type'" in message
    assert "celltype_major" in message  # the columns it does have
    assert "reference.label_key" in message


def test_reference_rare_cell_type(tmp_path, tiny_data):
    message = signatures_fail(tmp_path, tiny_data, label_key="celltype_major", min_cells_per_type=20)
    assert "'Normal Epithelial': 10" in message
    assert "fewer than 20 cells" in message
    assert "reference.exclude_types" in message


# 3. Too few genes shared by the reference and the slides.


def test_too_few_shared_genes(tmp_path, c2_row):
    slide = tmp_path / "C2.h5ad"
    ingest_slide(c2_row, slide)
    signatures = tmp_path / "signatures.parquet"
    types = ["B-cells", "T-cells"]
    table = pd.DataFrame(np.ones((150, 2)), columns=[f"mean:{t}" for t in types])
    table.insert(0, "gene", [f"ENSG{i:011d}" for i in range(150)])
    table.to_parquet(signatures)
    outputs = {"C2": tmp_path / "labels" / "C2.parquet"}
    elbo = {"elbo_tsv": tmp_path / "labels" / "elbo.tsv", "elbo_png": tmp_path / "labels" / "elbo.png"}
    message = fails_cleanly(
        SharedGenesError,
        lambda: cell_type_labels(slides=[slide], signatures=signatures, labels=LABELS, outputs=outputs, **elbo),
        inputs=[slide, signatures],
        outputs=[*outputs.values(), *elbo.values()],
    )
    assert "only 0 genes are shared" in message
    assert "ENSG00000000000" in message
    assert "labels.min_shared_genes" in message


# 4. Spots outside the image, x and y swapped, spots off tissue.


def test_spots_outside_image(tmp_path, c2_row, c2_region):
    spots = pd.read_csv(c2_row["spots"], sep="\t")
    spots[["pixel_x", "pixel_y"]] *= 4  # positions of an image four times larger
    message = ingest_fails(SpotPositionError, her2st_row_with(tmp_path, c2_row, spots=spots), tmp_path)
    assert "slide C2" in message
    assert "0% of 30 spot centres fall inside image" in message
    assert c2_row["image"] in message
    assert "full-resolution image" in message


def test_swapped_x_and_y(tmp_path):
    """A wide crop with the spots at its right end: swapped, the spots fall below the image."""
    paths = her2st_paths("C2")
    counts = pd.read_csv(paths["counts"], sep="\t", index_col=0)
    spots = pd.read_csv(paths["spots"], sep="\t")
    spots = spots[(spots["selected"] == 1) & (spots["y"] <= spots["y"].min() + 4)]
    x0, y0 = int(spots["pixel_x"].min()) - 3000, int(spots["pixel_y"].min()) - 300
    x1, y1 = int(spots["pixel_x"].max()) + 300, int(spots["pixel_y"].max()) + 300
    with Image.open(paths["image"]) as image:
        image.crop((x0, y0, x1, y1)).save(tmp_path / "wide.jpg", quality=90)
    spots = spots.assign(pixel_x=spots["pixel_y"] - y0, pixel_y=spots["pixel_x"] - x0)  # swapped
    keep = spots["x"].astype(str) + "x" + spots["y"].astype(str)
    counts.loc[counts.index.intersection(keep)].to_csv(tmp_path / "C2.tsv.gz", sep="\t")
    spots.to_csv(tmp_path / "C2_selection.tsv", sep="\t", index=False)
    row = {
        "slide": "C2", "patient": "C", "format": "her2st", "counts": str(tmp_path / "C2.tsv.gz"),
        "spots": str(tmp_path / "C2_selection.tsv"), "image": str(tmp_path / "wide.jpg"),
    }
    message = ingest_fails(SpotPositionError, row, tmp_path)
    assert "With x and y swapped 100% would fall inside" in message
    assert "x is the image column (pixel_x" in message


def test_spots_off_tissue(tmp_path):
    """Positions shifted 2,500 px up (aligned to another image) fall mostly on glass."""
    paths = her2st_paths("C2")
    spots = pd.read_csv(paths["spots"], sep="\t").assign(pixel_y=lambda t: t["pixel_y"] - 2500)
    row = {"slide": "C2", "patient": "C", "format": "her2st", "counts": str(paths["counts"]), "image": str(paths["image"])}
    row = her2st_row_with(tmp_path, row, spots=spots)
    message = ingest_fails(SpotPositionError, row, tmp_path)
    assert "of the spot centres lie on tissue detected in" in message
    assert "ingest.min_spots_on_tissue" in message


# 5. µm/px: none from any source; sources that disagree; the sheet overrides.


def test_no_microns_per_pixel_source(tmp_path, c2_row, c2_region):
    counts, spots = c2_region
    path = tmp_path / "one_spot.h5ad"
    write_spatial_h5ad(path, counts.iloc[:1], spots.iloc[:1], library_id="C2", spot_diameter_px=0.0)
    row = {**c2_row, "format": "h5ad", "counts": str(path), "spots": "", "platform": "legacy_st", "counts_key": "raw"}
    message = ingest_fails(MicronsPerPixelError, row, tmp_path)
    assert "slide C2: no µm/px from any source" in message
    assert "microns_per_pixel column of the sample sheet" in message


def disagreeing_space_ranger(tmp_path: Path, c2_row: dict, c2_region) -> dict:
    """A Space Ranger folder whose spot_diameter_fullres measures 55 µm on a legacy-ST slide."""
    counts, spots = c2_region
    counts_path, spatial = write_space_ranger(tmp_path / "outs", counts, spots, variant="tissue_positions.csv", spot_diameter_px=80.0)
    return {**c2_row, "format": "visium", "counts": str(counts_path), "spots": str(spatial), "platform": "legacy_st"}


def test_disagreeing_microns_per_pixel(tmp_path, c2_row, c2_region):
    message = ingest_fails(MicronsPerPixelError, disagreeing_space_ranger(tmp_path, c2_row, c2_region), tmp_path)
    assert "slide C2: µm/px sources disagree by more than 10%" in message
    assert "spot_diameter gives 1.2500" in message
    assert "spot_grid_pitch gives 0.6" in message
    assert "write it in the microns_per_pixel column" in message


def test_sheet_value_overrides_disagreement(tmp_path, c2_row, c2_region):
    row = {**disagreeing_space_ranger(tmp_path, c2_row, c2_region), "microns_per_pixel": 0.69}
    output = tmp_path / "C2.h5ad"
    ingest_slide(row, output)
    assert ad.read_h5ad(output).uns["histodecon"]["microns_per_pixel_source"] == "sample_sheet"


# 6. Duplicate barcodes (duplicate and unsafe slide ids: test_samples.py).


def test_duplicate_barcodes_her2st(tmp_path, c2_row, c2_region):
    counts = pd.concat([c2_region[0], c2_region[0].iloc[:2]])
    message = ingest_fails(InputError, her2st_row_with(tmp_path, c2_row, counts=counts), tmp_path)
    assert "slide C2" in message
    assert f"has duplicate spot rows: {list(c2_region[0].index[:2])}" in message


def test_duplicate_barcodes_visium_positions(tmp_path, c2_row, c2_region):
    row = disagreeing_space_ranger(tmp_path, c2_row, c2_region)
    table = positions_table(c2_region[1])
    write_positions(Path(row["spots"]), pd.concat([table, table.iloc[-1:]]), "tissue_positions.csv")
    message = ingest_fails(InputError, row, tmp_path)
    assert "tissue_positions.csv has duplicate barcodes" in message


# 7. Missing, unreadable or truncated image.


def test_missing_image(tmp_path, c2_row):
    row = {**c2_row, "image": str(tmp_path / "absent.jpg")}
    message = ingest_fails(SlideReadError, row, tmp_path)
    assert f"slide C2: image file not found: {tmp_path / 'absent.jpg'}" in message
    assert "`image` column" in message


def test_unreadable_image(tmp_path, c2_row):
    path = tmp_path / "notes.jpg"
    path.write_text("not an image")
    message = ingest_fails(SlideReadError, {**c2_row, "image": str(path)}, tmp_path)
    assert f"slide C2: cannot read image {path}" in message


def test_truncated_image(tmp_path, c2_row):
    data = Path(c2_row["image"]).read_bytes()
    path = tmp_path / "truncated.jpg"
    path.write_bytes(data[: len(data) // 2])
    message = ingest_fails(SlideReadError, {**c2_row, "image": str(path)}, tmp_path)
    assert "truncated" in message
    assert "re-export or re-download" in message


def test_corrupt_tiff(tmp_path, c2_row):
    path = tmp_path / "broken.tif"
    path.write_bytes(b"II*\x00" + bytes(64))
    message = ingest_fails(SlideReadError, {**c2_row, "image": str(path)}, tmp_path)
    assert f"slide C2: cannot read image {path}" in message


# 8. No spots left after tissue filtering (all spots below the patch tissue threshold: test_cv.py).


def test_no_spots_in_tissue(tmp_path, c2_row, c2_region):
    row = disagreeing_space_ranger(tmp_path, c2_row, c2_region)
    write_positions(Path(row["spots"]), positions_table(c2_region[1]).assign(in_tissue=0), "tissue_positions.csv")
    message = ingest_fails(InputError, row, tmp_path)
    assert "slide C2: no spots left" in message
    assert "30 not in tissue" in message
    assert "ingest.in_tissue_only" in message


# 9. Sample sheet rows that fail the schema, reported with their line.


SHEET_HEADER = "slide\tpatient\tformat\tcounts\tspots\timage\tplatform\n"


def sheet_error(tmp_path: Path, body: str) -> str:
    path = tmp_path / "samples.tsv"
    path.write_text(SHEET_HEADER + body)
    before = checksums([path])
    with pytest.raises(SampleSheetError) as info:
        read_sample_sheet(path)
    assert checksums([path]) == before
    return str(info.value)


def test_sheet_unknown_format_names_line(tmp_path):
    message = sheet_error(tmp_path, "A\tP\ther2st\tc\ts\ti\t\n# a comment\nB\tP\tvisium_hd\tc\ts\ti\t\n")
    assert "line 4 (slide B): unknown format 'visium_hd'" in message
    assert "['h5ad', 'her2st', 'visium']" in message


def test_sheet_format_column_empty(tmp_path):
    message = sheet_error(tmp_path, "A\tP\th5ad\ta.h5ad\t\ti.jpg\t\n")
    assert "line 2 (slide A): format h5ad needs the columns ['counts', 'image', 'platform']" in message
    assert "['platform'] are empty" in message


def test_sheet_unknown_platform(tmp_path):
    message = sheet_error(tmp_path, "A\tP\th5ad\ta.h5ad\t\ti.jpg\tslide_seq\n")
    assert "unknown platform 'slide_seq'" in message


def test_sheet_missing_column(tmp_path):
    path = tmp_path / "samples.tsv"
    path.write_text("slide\tpatient\tformat\tcounts\nA\tP\ther2st\tc\n")
    with pytest.raises(SampleSheetError, match=r"lacks the columns \['image'\]"):
        read_sample_sheet(path)
