"""Job resources from input sizes: growth with the attempt and deferral for inputs not made yet."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from histodecon import resources


@pytest.mark.parametrize(
    "estimate",
    [
        lambda attempt: resources.ingest_mem_mb(92.0, attempt),
        lambda attempt: resources.cell2location_mem_mb(910, 15_700, attempt),
        lambda attempt: resources.cell2location_runtime_min(910, 1200, reference=False, attempt=attempt),
        lambda attempt: resources.embed_mem_mb(1024, attempt),
        lambda attempt: resources.embed_runtime_min(1024, 187, attempt),
    ],
)
def test_estimates_grow_with_attempt(estimate):
    assert estimate(2) >= 2 * estimate(1) - 1
    assert estimate(3) > estimate(2)


def test_estimates_cover_measured_peaks():
    """Peaks of the her2st demo (docs/benchmarks.md) fit in the first attempt's request."""
    assert resources.ingest_mem_mb(9274 * 9911 / 1e6, 1) >= 1519
    assert resources.cell2location_mem_mb(910, 15_700, 1) >= 1934
    assert resources.cell2location_mem_mb(1564, 29_733, 1) >= 1397
    assert resources.embed_mem_mb(384, 1) >= 1746
    assert resources.embed_mem_mb(1024, 1) >= 3109


def test_larger_models_ask_for_more():
    assert resources.embed_mem_mb(None, 1) < resources.embed_mem_mb(384, 1) < resources.embed_mem_mb(1536, 1)


def test_missing_input_names_file(tmp_path):
    path = str(tmp_path / "C2.h5")
    with pytest.raises(FileNotFoundError) as info:
        resources.patch_count(path)
    assert info.value.filename == path  # Snakemake matches this against the job's inputs


def test_h5ad_shape_reads_header(tiny_data):
    import anndata as ad

    path = tiny_data["reference"]
    assert resources.h5ad_shape(path) == ad.read_h5ad(path, backed="r").shape


def test_patch_count(tmp_path):
    path = tmp_path / "p.h5"
    with h5py.File(path, "w") as h5:
        h5.create_dataset("images", data=np.zeros((7, 4, 4, 3), dtype=np.uint8))
    assert resources.patch_count(path) == 7


def test_image_megapixels_from_header(tiny_data):
    from PIL import Image

    path = tiny_data["sheet"].iloc[0]["image"]
    with Image.open(path) as image:
        expected = image.width * image.height / 1e6
    assert resources.image_megapixels(path) == pytest.approx(expected)
