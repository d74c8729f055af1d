"""Patches centred on spots at a fixed field of view in µm."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from histodecon import keys
from histodecon.ingest import read_slide
from histodecon.patches import extract_patches, patch_size_px, read_patch_file_info, write_patch_file
from histodecon.slide import PlainImageSlide, SlideReadError, open_slide


@pytest.fixture(scope="module")
def c2(tiny_data):
    return read_slide(tiny_data["sheet"].iloc[0].to_dict())


def test_patch_size_from_microns():
    assert patch_size_px(field_of_view_um=112, microns_per_pixel=0.5) == 224


def test_patch_size_rejects_fractional_pixels():
    with pytest.raises(ValueError, match="whole number"):
        patch_size_px(field_of_view_um=100, microns_per_pixel=0.3)


def test_extract_patches_shapes(c2):
    images, table, attrs = extract_patches(c2, field_of_view_um=112, microns_per_pixel=0.5)
    assert images.shape == (c2.n_obs, 224, 224, 3)
    assert images.dtype == np.uint8
    assert list(table[keys.BARCODE_COL]) == list(c2.obs_names)
    assert attrs["patch_px"] == 224
    assert attrs["source_microns_per_pixel"] == pytest.approx(0.69, abs=0.02)


def test_extract_patches_tissue_fraction_in_range(c2):
    _, table, _ = extract_patches(c2, field_of_view_um=112, microns_per_pixel=0.5)
    fraction = table[keys.TISSUE_FRACTION_COL]
    assert fraction.between(0, 1).all()
    assert fraction.median() > 0.2  # the tiny slides are central tissue blocks


def test_patch_centred_on_known_mark(tmp_path):
    """A black square drawn at a fractional centre must land in the middle of the patch."""
    canvas = np.full((400, 600, 3), 255, dtype=np.uint8)
    canvas[190:211, 290:311] = 0  # 21 px square centred on (300, 200)
    path = tmp_path / "mark.png"
    Image.fromarray(canvas).save(path)
    slide = PlainImageSlide(path)
    patch, padded = slide.read_box((300.5 - 50, 200.5 - 50, 300.5 + 50, 200.5 + 50), 100)
    dark = np.argwhere(patch.mean(axis=2) < 128)
    centre = dark.mean(axis=0)
    assert not padded
    assert centre[0] == pytest.approx(49.5, abs=0.75)  # row
    assert centre[1] == pytest.approx(49.5, abs=0.75)  # column


def test_patch_off_image_is_padded_and_flagged(tmp_path):
    path = tmp_path / "grey.png"
    Image.fromarray(np.full((100, 100, 3), 100, dtype=np.uint8)).save(path)
    patch, padded = PlainImageSlide(path).read_box((-50, -50, 50, 50), 100)
    assert padded
    assert patch.shape == (100, 100, 3)
    assert patch[10, 10].tolist() == [255, 255, 255]
    assert patch[90, 90].tolist() == [100, 100, 100]


def test_patch_file_roundtrip(c2, tmp_path):
    images, table, attrs = extract_patches(c2, field_of_view_um=112, microns_per_pixel=0.5)
    path = tmp_path / "C2.h5"
    write_patch_file(path, images, table, attrs)
    info = read_patch_file_info(path)
    assert list(info.spots[keys.BARCODE_COL]) == list(table[keys.BARCODE_COL])
    assert info.geometry["field_of_view_um"] == 112.0
    assert not list(tmp_path.glob(".*tmp*"))


def test_missing_image_names_sheet_column(tmp_path):
    with pytest.raises(SlideReadError, match="image"):
        open_slide(tmp_path / "absent.jpg")


def test_truncated_jpeg_is_rejected(tiny_data, tmp_path):
    data = (tiny_data["root"] / "C2.jpg").read_bytes()
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(data[: len(data) // 3])
    with pytest.raises(SlideReadError, match="broken.jpg"):
        open_slide(broken)
