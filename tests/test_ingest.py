"""Ingest of her2st legacy-ST sections into the shared AnnData layout."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from histodecon import keys
from histodecon.counts import RawCountsError, check_raw_counts
from histodecon.ingest import read_slide, spot_pitch_px


@pytest.fixture(scope="module")
def c2_row(tiny_data):
    return tiny_data["sheet"].iloc[0].to_dict()


@pytest.fixture(scope="module")
def c2(c2_row):
    return read_slide(c2_row)


def test_ingest_keeps_raw_integer_counts(c2):
    values = c2.X.data
    assert np.all(values == np.round(values))
    assert values.min() >= 0


def test_ingest_shape_matches_inputs(c2, tiny_data):
    assert c2.n_obs == 30
    assert c2.n_vars == len(tiny_data["genes"])


def test_ingest_spatial_in_full_resolution_pixels(c2, c2_row):
    spots = pd.read_csv(c2_row["spots"], sep="\t")
    spots.index = spots["x"].astype(str) + "x" + spots["y"].astype(str)
    expected = spots.loc[c2.obs_names, ["pixel_x", "pixel_y"]].to_numpy()
    np.testing.assert_allclose(c2.obsm[keys.SPATIAL_KEY], expected)


def test_ingest_mpp_from_grid_pitch(c2):
    info = c2.uns[keys.HISTODECON_UNS_KEY]
    assert info[keys.MPP_SOURCE_KEY] == "spot_grid_pitch"
    # her2st images: about 290 px per 200 µm.
    assert info[keys.MPP_KEY] == pytest.approx(0.69, abs=0.02)


def test_ingest_sheet_mpp_overrides(c2_row):
    adata = read_slide({**c2_row, "microns_per_pixel": 0.5})
    assert adata.uns[keys.HISTODECON_UNS_KEY][keys.MPP_KEY] == 0.5
    assert adata.uns[keys.HISTODECON_UNS_KEY][keys.MPP_SOURCE_KEY] == "sample_sheet"


def test_ingest_squidpy_layout(c2):
    library = c2.uns[keys.SPATIAL_KEY]["C2"]
    scalefactors = library["scalefactors"]
    mpp = c2.uns[keys.HISTODECON_UNS_KEY][keys.MPP_KEY]
    assert library["images"][keys.HIRES_IMAGE_KEY].ndim == 3
    assert scalefactors[keys.SPOT_DIAMETER_KEY] == pytest.approx(100.0 / mpp)
    assert 0 < scalefactors[keys.HIRES_SCALE_KEY] <= 1


def test_ingest_unknown_format_names_options(c2_row):
    with pytest.raises(ValueError, match="valid formats"):
        read_slide({**c2_row, "format": "visium_hd"})


def square_grid(pitch: float, n: int = 12) -> np.ndarray:
    return np.array([[x, y] for x in range(n) for y in range(n)], dtype=float) * pitch


def hexagonal_grid(pitch: float, rows: int = 12, cols: int = 24) -> np.ndarray:
    """Visium layout: every other column per row, rows sqrt(3)/2 pitches apart."""
    return np.array([[c * pitch / 2, r * pitch * np.sqrt(3) / 2] for r in range(rows) for c in range(cols) if (r + c) % 2 == 0])


@pytest.mark.parametrize("grid", [square_grid, hexagonal_grid])
def test_spot_pitch_exact_grid(grid):
    assert spot_pitch_px(grid(145.0)) == pytest.approx(145.0)


@pytest.mark.parametrize("grid", [square_grid, hexagonal_grid])
def test_spot_pitch_jittered_grid_unbiased(grid):
    xy = grid(290.0) + np.random.default_rng(0).normal(0, 8, size=(len(grid(290.0)), 2))
    assert spot_pitch_px(xy) == pytest.approx(290.0, rel=0.01)


def test_spot_pitch_needs_two_spots():
    assert spot_pitch_px(np.array([[1.0, 2.0]])) is None


@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        (np.array([[1.0, 2.5]]), "non-integer"),
        (np.array([[1.0, -1.0]]), "negative"),
        (np.array([[np.nan, 1.0]]), "NaN"),
    ],
)
def test_raw_counts_check_rejects(matrix, message):
    with pytest.raises(RawCountsError, match=message):
        check_raw_counts(matrix, what="counts of slide X", path="x.tsv")


def test_raw_counts_check_accepts_integers():
    check_raw_counts(np.array([[0.0, 3.0], [7.0, 1.0]]), what="counts")
