"""Tests of the hand-crafted morphology features on real her2st crops and synthetic stains."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from skimage.color import hed2rgb

from histodecon.backbones import get_backbone, load_encoder
from histodecon.morphology import FEATURE_NAMES, MorphologyEncoder, morphology_features

HER2ST = Path("/work/shared/data/her2st/data")
SLIDE_IMAGE = HER2ST / "ST-imgs/C/C2/5714_HE_BT_C2.jpg"
SPOT_TABLE = HER2ST / "ST-spotfiles/C2_selection.tsv"
CROP_PX = 162
PATCH_PX = 224
SLIDE_MICRONS_PER_PIXEL = 0.69  # approximate scan resolution of her2st
PATCH_MICRONS_PER_PIXEL = CROP_PX * SLIDE_MICRONS_PER_PIXEL / PATCH_PX
# Spots by array coordinate "<x>x<y>", chosen by eye on slide C2.
DENSE_SPOT = "17x23"  # tumour with crowded nuclei
STROMA_SPOT = "20x15"  # pink stroma with few nuclei
OTHER_SPOTS = ("21x26", "23x26", "13x21", "27x20", "27x24", "25x23")

pytestmark = pytest.mark.skipif(not SLIDE_IMAGE.is_file(), reason=f"her2st image {SLIDE_IMAGE} not available")


@pytest.fixture(scope="module")
def crops() -> dict[str, np.ndarray]:
    """Real H&E patches, uint8 (224, 224, 3), keyed by spot array coordinate."""
    Image.MAX_IMAGE_PIXELS = None
    spots = pd.read_csv(SPOT_TABLE, sep="\t")
    spots.index = spots["x"].astype(str) + "x" + spots["y"].astype(str)
    half = CROP_PX // 2
    patches = {}
    with Image.open(SLIDE_IMAGE) as slide:
        for spot in (DENSE_SPOT, STROMA_SPOT, *OTHER_SPOTS):
            x, y = round(spots.at[spot, "pixel_x"]), round(spots.at[spot, "pixel_y"])
            crop = slide.crop((x - half, y - half, x + half, y + half)).resize((PATCH_PX, PATCH_PX), Image.BILINEAR)
            patches[spot] = np.array(crop.convert("RGB"))
    return patches


def features_of(rgb: np.ndarray, microns_per_pixel: float = PATCH_MICRONS_PER_PIXEL) -> pd.Series:
    return pd.Series(morphology_features(rgb, microns_per_pixel=microns_per_pixel), index=FEATURE_NAMES)


def stain_patch(hematoxylin: float, eosin: float) -> np.ndarray:
    """Uniform uint8 RGB patch with the given optical densities, made with skimage's inverse deconvolution."""
    hed = np.zeros((64, 64, 3))
    hed[..., 0] = hematoxylin
    hed[..., 1] = eosin
    return (hed2rgb(hed) * 255).round().astype(np.uint8)


WHITE_PATCH = np.full((PATCH_PX, PATCH_PX, 3), 255, dtype=np.uint8)


def test_feature_names_unique() -> None:
    assert len(set(FEATURE_NAMES)) == len(FEATURE_NAMES)


def test_width_matches_names(crops: dict[str, np.ndarray]) -> None:
    features = morphology_features(crops[DENSE_SPOT], microns_per_pixel=PATCH_MICRONS_PER_PIXEL)
    assert features.shape == (len(FEATURE_NAMES),)
    assert get_backbone("morphology").embedding_dim == len(FEATURE_NAMES)


def test_features_finite_on_crops(crops: dict[str, np.ndarray]) -> None:
    for spot, rgb in crops.items():
        features = morphology_features(rgb, microns_per_pixel=PATCH_MICRONS_PER_PIXEL)
        assert np.isfinite(features).all(), spot


def test_features_finite_on_white() -> None:
    assert np.isfinite(morphology_features(WHITE_PATCH, microns_per_pixel=0.5)).all()


def test_lbp_histogram_sums_to_one(crops: dict[str, np.ndarray]) -> None:
    features = features_of(crops[STROMA_SPOT])
    assert features.filter(like="lbp_uniform_").sum() == pytest.approx(1.0)


def test_dense_crop_beats_white_patch(crops: dict[str, np.ndarray]) -> None:
    dense = features_of(crops[DENSE_SPOT])
    white = features_of(WHITE_PATCH, microns_per_pixel=0.5)
    assert white["nuclei_per_mm2"] == 0
    assert white["nuclear_area_fraction"] == 0
    assert dense["nuclei_per_mm2"] > 1000
    assert dense["nuclear_area_fraction"] > 0.1


def test_dense_crop_beats_stroma(crops: dict[str, np.ndarray]) -> None:
    dense = features_of(crops[DENSE_SPOT])
    stroma = features_of(crops[STROMA_SPOT])
    assert dense["nuclei_per_mm2"] > 3 * stroma["nuclei_per_mm2"]
    assert dense["nuclear_area_fraction"] > stroma["nuclear_area_fraction"]
    assert dense["hematoxylin_mean"] > stroma["hematoxylin_mean"]
    assert stroma["eosin_mean"] > dense["eosin_mean"]


def test_stain_separation_pure_stains() -> None:
    hematoxylin_only = features_of(stain_patch(0.1, 0.0), microns_per_pixel=0.5)
    eosin_only = features_of(stain_patch(0.0, 0.1), microns_per_pixel=0.5)
    assert hematoxylin_only["hematoxylin_mean"] == pytest.approx(0.1, abs=0.005)
    assert hematoxylin_only["eosin_mean"] < 0.005
    assert eosin_only["eosin_mean"] == pytest.approx(0.1, abs=0.005)
    assert eosin_only["hematoxylin_mean"] < 0.005
    assert hematoxylin_only["dab_mean"] < 0.005


def test_density_stable_under_rescale(crops: dict[str, np.ndarray]) -> None:
    """Half the pixels at twice the µm/px should give about the same nuclear density per mm²."""
    encoder = MorphologyEncoder(get_backbone("morphology"))
    full = torch.from_numpy(crops[DENSE_SPOT][None])
    half = torch.from_numpy(np.array(Image.fromarray(crops[DENSE_SPOT]).resize((112, 112), Image.BILINEAR))[None])
    index = FEATURE_NAMES.index("nuclei_per_mm2")
    at_full = float(encoder.encode(full, microns_per_pixel=PATCH_MICRONS_PER_PIXEL)[0, index])
    at_half = float(encoder.encode(half, microns_per_pixel=2 * PATCH_MICRONS_PER_PIXEL)[0, index])
    assert at_half == pytest.approx(at_full, rel=0.3)


def test_encoder_matches_function(crops: dict[str, np.ndarray]) -> None:
    encoder = load_encoder("morphology")
    batch = np.stack([crops[DENSE_SPOT], crops[STROMA_SPOT]])
    encoded = encoder.encode(torch.from_numpy(batch), microns_per_pixel=PATCH_MICRONS_PER_PIXEL)
    expected = np.stack([morphology_features(rgb, microns_per_pixel=PATCH_MICRONS_PER_PIXEL) for rgb in batch])
    assert encoded.dtype == torch.float32
    assert encoded.shape == (2, len(FEATURE_NAMES))
    np.testing.assert_allclose(encoded.numpy(), expected.astype(np.float32))


def test_encoder_empty_batch() -> None:
    encoder = load_encoder("morphology")
    encoded = encoder.encode(torch.zeros((0, PATCH_PX, PATCH_PX, 3), dtype=torch.uint8), microns_per_pixel=0.5)
    assert encoded.shape == (0, len(FEATURE_NAMES))


def test_rejects_float_image() -> None:
    with pytest.raises(ValueError, match="uint8"):
        morphology_features(np.zeros((8, 8, 3)), microns_per_pixel=0.5)


def test_rejects_nonpositive_scale() -> None:
    with pytest.raises(ValueError, match="microns_per_pixel"):
        morphology_features(WHITE_PATCH, microns_per_pixel=0.0)


def test_time_per_patch(crops: dict[str, np.ndarray]) -> None:
    """Guard against order-of-magnitude slowdowns; the target is about 20 ms per 224 px patch."""
    patches = list(crops.values())
    start = time.perf_counter()
    for rgb in patches:
        morphology_features(rgb, microns_per_pixel=PATCH_MICRONS_PER_PIXEL)
    seconds_per_patch = (time.perf_counter() - start) / len(patches)
    assert seconds_per_patch < 0.1
