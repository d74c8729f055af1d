"""Tests of combined backbones: config checks and the concatenation of embedding files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from histodecon.combine import CombinedBackboneError, check_combined_backbones, combine_embeddings
from histodecon.io import read_parquet_metadata, write_parquet

REGISTERED = ("morphology", "vit_small_random", "uni")
BARCODES = ["10x12", "10x14", "11x13", "12x12", "12x14"]
GEOMETRY = {
    "field_of_view_um": 112.0,
    "patch_microns_per_pixel": 0.5,
    "patch_px": 224,
    "source_microns_per_pixel": 0.69,
    "source_microns_per_pixel_source": "spot_grid_pitch",
}


def write_embeddings(
    path: Path,
    *,
    backbone: str,
    width: int,
    seed: int,
    scale: float = 1.0,
    barcodes: list[str] = BARCODES,
    geometry: dict | None = None,
    slide: str = "C2",
) -> pd.DataFrame:
    """Write an embedding file in the layout of histodecon.embed, with random float32 values."""
    rng = np.random.default_rng(seed)
    table = pd.DataFrame(
        {
            "barcode": barcodes,
            "tissue_fraction": np.linspace(0.2, 1.0, len(barcodes), dtype=np.float32),
            "padded": np.arange(len(barcodes)) == len(barcodes) - 1,
        }
    )
    values = rng.normal(scale=scale, size=(len(barcodes), width)).astype(np.float32)
    table = pd.concat([table, pd.DataFrame(values, columns=[f"emb_{i:04d}" for i in range(width)])], axis=1)
    metadata = {
        "stage": "embed",
        "backbone": backbone,
        "slide": slide,
        "embedding_dim": width,
        "patch_geometry": GEOMETRY if geometry is None else geometry,
    }
    write_parquet(table, path, metadata=metadata)
    return table


@pytest.fixture
def two_components(tmp_path) -> dict[str, tuple[Path, pd.DataFrame]]:
    paths = {"morphology": tmp_path / "morphology.parquet", "vit_small_random": tmp_path / "vit.parquet"}
    return {
        "morphology": (paths["morphology"], write_embeddings(paths["morphology"], backbone="morphology", width=3, seed=0)),
        "vit_small_random": (
            paths["vit_small_random"],
            write_embeddings(paths["vit_small_random"], backbone="vit_small_random", width=4, seed=1, scale=100.0),
        ),
    }


def inputs(components: dict[str, tuple[Path, pd.DataFrame]]) -> dict[str, Path]:
    return {name: path for name, (path, _) in components.items()}


def test_combine_columns_renumbered_in_order(two_components, tmp_path):
    output = tmp_path / "combined" / "C2.parquet"
    combine_embeddings(inputs(two_components), output, name="morphology+vit_small_random")
    combined = pd.read_parquet(output)
    expected = ["barcode", "tissue_fraction", "padded"] + [f"emb_{i:04d}" for i in range(7)]
    assert list(combined.columns) == expected


def test_combine_values_preserved(two_components, tmp_path):
    output = tmp_path / "C2.parquet"
    returned = combine_embeddings(inputs(two_components), output, name="morphology+vit_small_random")
    combined = pd.read_parquet(output)
    morphology = two_components["morphology"][1]
    vit = two_components["vit_small_random"][1]
    pd.testing.assert_frame_equal(combined, returned)
    assert combined["barcode"].tolist() == BARCODES
    np.testing.assert_array_equal(combined["tissue_fraction"], morphology["tissue_fraction"])
    np.testing.assert_array_equal(combined["padded"], morphology["padded"])
    emb = combined.filter(like="emb_").to_numpy()
    assert emb.dtype == np.float32
    # Raw values, not rescaled, although the second component's values are 100 times larger.
    np.testing.assert_array_equal(emb[:, :3], morphology.filter(like="emb_").to_numpy())
    np.testing.assert_array_equal(emb[:, 3:], vit.filter(like="emb_").to_numpy())


def test_combine_metadata_lists_components(two_components, tmp_path):
    output = tmp_path / "C2.parquet"
    combine_embeddings(inputs(two_components), output, name="morphology+vit_small_random")
    metadata = read_parquet_metadata(output)
    assert metadata["backbone"] == "morphology+vit_small_random"
    assert metadata["stage"] == "combine_embeddings"
    assert metadata["slide"] == "C2"
    assert metadata["n_spots"] == len(BARCODES)
    assert metadata["embedding_dim"] == 7
    assert metadata["patch_geometry"] == GEOMETRY
    assert "numpy" in metadata["versions"]
    components = metadata["components"]
    assert [c["backbone"] for c in components] == ["morphology", "vit_small_random"]
    assert [c["embedding_dim"] for c in components] == [3, 4]
    assert [(c["first_column"], c["last_column"]) for c in components] == [("emb_0000", "emb_0002"), ("emb_0003", "emb_0006")]
    assert components[1]["metadata"]["backbone"] == "vit_small_random"
    assert components[1]["path"] == str(two_components["vit_small_random"][0])


def test_combine_order_follows_mapping(two_components, tmp_path):
    reversed_inputs = dict(reversed(list(inputs(two_components).items())))
    combined = combine_embeddings(reversed_inputs, tmp_path / "C2.parquet", name="vit_small_random+morphology")
    vit = two_components["vit_small_random"][1]
    np.testing.assert_array_equal(combined.filter(like="emb_").to_numpy()[:, :4], vit.filter(like="emb_").to_numpy())


def assert_nothing_written(folder: Path, output: Path) -> None:
    assert not output.exists()
    assert not list(folder.glob(".*tmp*"))


def test_combine_rejects_reordered_barcodes(two_components, tmp_path):
    other = tmp_path / "other.parquet"
    write_embeddings(other, backbone="vit_small_random", width=4, seed=1, barcodes=BARCODES[::-1])
    output = tmp_path / "out" / "C2.parquet"
    with pytest.raises(CombinedBackboneError, match="different barcodes") as raised:
        combine_embeddings({"morphology": two_components["morphology"][0], "vit_small_random": other}, output, name="m+v")
    assert str(other) in str(raised.value)
    assert str(two_components["morphology"][0]) in str(raised.value)
    assert_nothing_written(tmp_path / "out", output)


def test_combine_rejects_missing_spot(two_components, tmp_path):
    other = tmp_path / "other.parquet"
    write_embeddings(other, backbone="vit_small_random", width=4, seed=1, barcodes=BARCODES[:-1])
    output = tmp_path / "C2.parquet"
    with pytest.raises(CombinedBackboneError, match="contain 4 and 5 spots"):
        combine_embeddings({"morphology": two_components["morphology"][0], "vit_small_random": other}, output, name="m+v")
    assert_nothing_written(tmp_path, output)


def test_combine_rejects_other_geometry(two_components, tmp_path):
    other = tmp_path / "other.parquet"
    write_embeddings(other, backbone="vit_small_random", width=4, seed=1, geometry={**GEOMETRY, "patch_microns_per_pixel": 1.0, "patch_px": 112})
    output = tmp_path / "C2.parquet"
    with pytest.raises(CombinedBackboneError, match="different patches") as raised:
        combine_embeddings({"morphology": two_components["morphology"][0], "vit_small_random": other}, output, name="m+v")
    assert "patch_microns_per_pixel: 1.0 against 0.5" in str(raised.value)
    assert "patch_px: 112 against 224" in str(raised.value)
    assert_nothing_written(tmp_path, output)


def test_combine_rejects_other_slide(two_components, tmp_path):
    other = tmp_path / "other.parquet"
    write_embeddings(other, backbone="vit_small_random", width=4, seed=1, slide="C3")
    output = tmp_path / "C2.parquet"
    with pytest.raises(CombinedBackboneError, match="slide: 'C3' against 'C2'"):
        combine_embeddings({"morphology": two_components["morphology"][0], "vit_small_random": other}, output, name="m+v")
    assert_nothing_written(tmp_path, output)


def test_combine_rejects_other_tissue_fraction(two_components, tmp_path):
    other = tmp_path / "other.parquet"
    table = write_embeddings(other, backbone="vit_small_random", width=4, seed=1)
    table.loc[0, "tissue_fraction"] = 0.9
    write_parquet(table, other, metadata=read_parquet_metadata(two_components["vit_small_random"][0]))
    output = tmp_path / "C2.parquet"
    with pytest.raises(CombinedBackboneError, match="different 'tissue_fraction'"):
        combine_embeddings({"morphology": two_components["morphology"][0], "vit_small_random": other}, output, name="m+v")
    assert_nothing_written(tmp_path, output)


def test_combine_rejects_swapped_files(two_components, tmp_path):
    swapped = {"morphology": two_components["vit_small_random"][0], "vit_small_random": two_components["morphology"][0]}
    with pytest.raises(CombinedBackboneError, match="contains backbone 'vit_small_random'"):
        combine_embeddings(swapped, tmp_path / "C2.parquet", name="m+v")


def test_combine_rejects_file_without_geometry(two_components, tmp_path):
    bare = tmp_path / "bare.parquet"
    write_parquet(two_components["vit_small_random"][1], bare, metadata={"backbone": "vit_small_random"})
    with pytest.raises(CombinedBackboneError, match="no 'patch_geometry'"):
        combine_embeddings({"morphology": two_components["morphology"][0], "vit_small_random": bare}, tmp_path / "C2.parquet", name="m+v")


def test_combine_rejects_single_component(two_components, tmp_path):
    with pytest.raises(CombinedBackboneError, match="at least 2 components"):
        combine_embeddings({"morphology": two_components["morphology"][0]}, tmp_path / "C2.parquet", name="m")


def test_combine_handles_slide_without_spots(tmp_path):
    paths = {"morphology": tmp_path / "a.parquet", "vit_small_random": tmp_path / "b.parquet"}
    for seed, (name, path) in enumerate(paths.items()):
        write_embeddings(path, backbone=name, width=2, seed=seed, barcodes=[])
    combined = combine_embeddings(paths, tmp_path / "C2.parquet", name="m+v")
    assert combined.shape == (0, 7)


def test_check_accepts_valid_combinations():
    combined = {"morphology+vit_small_random": ["morphology", "vit_small_random"], "all3": list(REGISTERED)}
    check_combined_backbones(combined, registered=REGISTERED, configured=["morphology"])
    check_combined_backbones({}, registered=REGISTERED)


@pytest.mark.parametrize(
    ("combined", "message"),
    [
        ({"uni": ["morphology", "vit_small_random"]}, "'uni' is a registered backbone"),
        ({"m+v": ["morphology"]}, "at least 2 distinct backbones, got 1"),
        ({"m+v": []}, "at least 2 distinct backbones, got 0"),
        ({"m+m": ["morphology", "morphology"]}, r"\['morphology'\] listed more than once"),
        ({"m+c": ["morphology", "conch"]}, "unknown backbone 'conch'; valid backbones: morphology, vit_small_random, uni"),
        ({"m+v": ["morphology", "vit_small_random"], "mv+u": ["m+v", "uni"]}, r"'m\+v' is itself a combined backbone"),
        ({"m v": ["morphology", "vit_small_random"]}, "invalid name 'm v'"),
        ({"listed": ["morphology", "vit_small_random"]}, "also listed in backbones"),
    ],
)
def test_check_rejects_bad_combination(combined, message):
    with pytest.raises(CombinedBackboneError, match=message) as raised:
        check_combined_backbones(combined, registered=REGISTERED, configured=["morphology", "listed"])
    assert str(raised.value).startswith("combined_backbones: ")
