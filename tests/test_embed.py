"""Tests of the embedding stage on patch files built from real her2st crops."""

from __future__ import annotations

import importlib.metadata

import logging
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from histodecon.backbones import load_encoder
from histodecon import embed as embed_module
from histodecon.embed import cpu_has_native_bf16, embed_slide, embedding_columns
from histodecon.patches import read_patch_file_info
from histodecon.io import read_parquet_metadata
from histodecon.morphology import FEATURE_NAMES

HER2ST = Path("/work/shared/data/her2st/data")
SLIDE_IMAGE = HER2ST / "ST-imgs/C/C2/5714_HE_BT_C2.jpg"
SPOT_TABLE = HER2ST / "ST-spotfiles/C2_selection.tsv"
SLIDE_MICRONS_PER_PIXEL = 0.69  # approximate scan resolution of her2st
CROP_PX = 162  # 162 px x 0.69 µm/px = 112 µm
PATCH_PX = 224
FIELD_OF_VIEW_UM = 112.0
N_SPOTS = 12

pytestmark = pytest.mark.skipif(not SLIDE_IMAGE.is_file(), reason=f"her2st image {SLIDE_IMAGE} not available")


@pytest.fixture(scope="module")
def spot_crops() -> tuple[pd.DataFrame, np.ndarray]:
    """First 12 spots of slide C2 and their patches, uint8 (12, 224, 224, 3)."""
    Image.MAX_IMAGE_PIXELS = None
    spots = pd.read_csv(SPOT_TABLE, sep="\t").head(N_SPOTS).reset_index(drop=True)
    spots["barcode"] = spots["x"].astype(str) + "x" + spots["y"].astype(str)
    half = CROP_PX // 2
    patches = []
    with Image.open(SLIDE_IMAGE) as slide:
        for x, y in zip(spots["pixel_x"].round().astype(int), spots["pixel_y"].round().astype(int)):
            crop = slide.crop((x - half, y - half, x + half, y + half)).resize((PATCH_PX, PATCH_PX), Image.BILINEAR)
            patches.append(np.array(crop.convert("RGB")))
    return spots, np.stack(patches)


def write_patch_file(
    path: Path,
    spots: pd.DataFrame,
    images: np.ndarray,
    *,
    patch_microns_per_pixel: float = FIELD_OF_VIEW_UM / PATCH_PX,
) -> Path:
    """Write a patch file in the layout of histodecon.patches."""
    n_spots, patch_px = images.shape[:2]
    with h5py.File(path, "w") as h5:
        h5.create_dataset("images", data=images, chunks=(1, patch_px, patch_px, 3) if n_spots else None)
        h5.create_dataset("barcode", data=spots["barcode"].tolist(), dtype=h5py.string_dtype())
        h5.create_dataset("x_px", data=spots["pixel_x"].to_numpy(np.float64))
        h5.create_dataset("y_px", data=spots["pixel_y"].to_numpy(np.float64))
        tissue_fraction = (images.mean(axis=3) < 220).mean(axis=(1, 2)).astype(np.float32)
        h5.create_dataset("tissue_fraction", data=tissue_fraction)
        h5.create_dataset("padded", data=np.arange(n_spots) == 0)  # flag one spot to check the copy
        h5.attrs["slide"] = "C2"
        h5.attrs["patch_px"] = patch_px
        h5.attrs["field_of_view_um"] = patch_microns_per_pixel * patch_px
        h5.attrs["patch_microns_per_pixel"] = patch_microns_per_pixel
        h5.attrs["source_microns_per_pixel"] = SLIDE_MICRONS_PER_PIXEL
        h5.attrs["source_microns_per_pixel_source"] = "test constant"
    return path


@pytest.fixture(scope="module")
def patch_file(tmp_path_factory: pytest.TempPathFactory, spot_crops: tuple[pd.DataFrame, np.ndarray]) -> Path:
    spots, images = spot_crops
    return write_patch_file(tmp_path_factory.mktemp("patches") / "C2.h5", spots, images)


@pytest.fixture(scope="module")
def morphology_run(patch_file: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, Path]:
    output = tmp_path_factory.mktemp("embeddings") / "morphology" / "C2.parquet"
    table = embed_slide(patch_file, output, backbone="morphology", batch_size=5)
    return table, output


@pytest.fixture(scope="module")
def vit_run(patch_file: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, Path]:
    output = tmp_path_factory.mktemp("embeddings") / "vit_small_random" / "C2.parquet"
    table = embed_slide(patch_file, output, backbone="vit_small_random", batch_size=5, device="cpu", precision="fp32", seed=0)
    return table, output


def test_read_patch_file_info(patch_file: Path, spot_crops: tuple[pd.DataFrame, np.ndarray]) -> None:
    spots, _ = spot_crops
    info = read_patch_file_info(patch_file)
    assert info.slide == "C2"
    assert info.n_spots == N_SPOTS
    assert info.patch_px == PATCH_PX
    assert info.microns_per_pixel == pytest.approx(0.5)
    assert info.spots["barcode"].tolist() == spots["barcode"].tolist()


@pytest.mark.parametrize("run_name, width", [("morphology_run", len(FEATURE_NAMES)), ("vit_run", 384)])
def test_embed_columns_and_order(
    run_name: str, width: int, request: pytest.FixtureRequest, spot_crops: tuple[pd.DataFrame, np.ndarray]
) -> None:
    table, output = request.getfixturevalue(run_name)
    spots, _ = spot_crops
    stored = pd.read_parquet(output)
    assert list(stored.columns) == ["barcode", "tissue_fraction", "padded", *embedding_columns(width)]
    assert stored["barcode"].tolist() == spots["barcode"].tolist()
    assert stored["padded"].tolist() == [True] + [False] * (N_SPOTS - 1)
    assert stored["tissue_fraction"].dtype == np.float32
    assert (stored[embedding_columns(width)].dtypes == np.float32).all()
    assert np.isfinite(stored[embedding_columns(width)].to_numpy()).all()
    pd.testing.assert_frame_equal(stored, table)


@pytest.mark.parametrize("run_name", ["morphology_run", "vit_run"])
def test_embed_metadata(run_name: str, request: pytest.FixtureRequest) -> None:
    _, output = request.getfixturevalue(run_name)
    metadata = read_parquet_metadata(output)
    backbone = "morphology" if run_name == "morphology_run" else "vit_small_random"
    assert metadata["backbone"] == backbone
    assert metadata["backbone_spec"]["name"] == backbone
    assert metadata["slide"] == "C2"
    assert metadata["n_spots"] == N_SPOTS
    assert metadata["device"] == "cpu"
    assert metadata["precision"] == "fp32"
    assert metadata["patch_geometry"]["patch_px"] == PATCH_PX
    assert metadata["patch_geometry"]["source_microns_per_pixel_source"] == "test constant"
    assert metadata["input_microns_per_pixel"] == pytest.approx(0.5)
    assert metadata["weights_source"]
    assert metadata["versions"]["histodecon"]
    assert metadata["versions"]["torch"] == importlib.metadata.version("torch")
    assert metadata["versions"]["timm"]


def test_morphology_metadata_feature_names(morphology_run: tuple[pd.DataFrame, Path]) -> None:
    _, output = morphology_run
    assert read_parquet_metadata(output)["feature_names"] == list(FEATURE_NAMES)


def test_vit_matches_direct_encoding(vit_run: tuple[pd.DataFrame, Path], spot_crops: tuple[pd.DataFrame, np.ndarray]) -> None:
    """Batches of 5 through the DataLoader give the embeddings of one direct batch."""
    table, _ = vit_run
    _, images = spot_crops
    direct = load_encoder("vit_small_random", seed=0).encode(torch.from_numpy(images[:3])).numpy()
    np.testing.assert_allclose(table[embedding_columns(384)].to_numpy()[:3], direct, rtol=1e-4, atol=1e-5)


def test_morphology_rerun_identical(patch_file: Path, morphology_run: tuple[pd.DataFrame, Path], tmp_path: Path) -> None:
    first, _ = morphology_run
    second = embed_slide(patch_file, tmp_path / "again.parquet", backbone="morphology", batch_size=32)
    pd.testing.assert_frame_equal(first, second)


def test_workers_give_same_table(patch_file: Path, morphology_run: tuple[pd.DataFrame, Path], tmp_path: Path) -> None:
    first, _ = morphology_run
    with_workers = embed_slide(patch_file, tmp_path / "workers.parquet", backbone="morphology", batch_size=4, num_workers=2)
    pd.testing.assert_frame_equal(first, with_workers)


def test_scale_mismatch_warns(
    tmp_path: Path, spot_crops: tuple[pd.DataFrame, np.ndarray], caplog: pytest.LogCaptureFixture
) -> None:
    spots, images = spot_crops
    path = write_patch_file(tmp_path / "coarse.h5", spots.head(2), images[:2], patch_microns_per_pixel=0.69)
    with caplog.at_level(logging.WARNING, logger="histodecon.embed"):
        table = embed_slide(path, tmp_path / "coarse.parquet", backbone="morphology")
    assert len(table) == 2
    assert any("recommended 0.500 µm/px" in record.getMessage() for record in caplog.records)


def test_matching_scale_does_not_warn(
    tmp_path: Path, spot_crops: tuple[pd.DataFrame, np.ndarray], caplog: pytest.LogCaptureFixture
) -> None:
    spots, images = spot_crops
    path = write_patch_file(tmp_path / "fine.h5", spots.head(2), images[:2], patch_microns_per_pixel=0.52)
    with caplog.at_level(logging.WARNING, logger="histodecon.embed"):
        embed_slide(path, tmp_path / "fine.parquet", backbone="morphology")
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]


def test_empty_patch_file(tmp_path: Path, spot_crops: tuple[pd.DataFrame, np.ndarray]) -> None:
    spots, images = spot_crops
    path = write_patch_file(tmp_path / "empty.h5", spots.head(0), images[:0])
    table = embed_slide(path, tmp_path / "empty.parquet", backbone="morphology")
    assert len(table) == 0
    assert list(table.columns)[3:] == embedding_columns(len(FEATURE_NAMES))


def test_invalid_precision_raises(patch_file: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="valid: auto, fp32, bf16, fp16"):
        embed_slide(patch_file, tmp_path / "x.parquet", backbone="vit_small_random", precision="fp64")  # type: ignore[arg-type]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_cuda_without_gpu_raises(patch_file: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="torch.cuda.is_available"):
        embed_slide(patch_file, tmp_path / "x.parquet", backbone="morphology", device="cuda")


def test_missing_patch_file_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="patches rule"):
        embed_slide(tmp_path / "absent.h5", tmp_path / "x.parquet", backbone="morphology")


def test_patch_file_without_images_raises(tmp_path: Path) -> None:
    path = tmp_path / "broken.h5"
    with h5py.File(path, "w") as h5:
        h5.attrs["slide"] = "C2"
    with pytest.raises(ValueError, match="lacks images"):
        embed_slide(path, tmp_path / "x.parquet", backbone="morphology")


def test_cpu_bf16_flag_detected(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor : 0\nflags : fpu sse2 avx512f avx512_bf16\n")
    assert cpu_has_native_bf16(cpuinfo)


def test_cpu_without_bf16_flag(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor : 0\nflags : fpu sse2 avx2\n")
    assert not cpu_has_native_bf16(cpuinfo)
    assert not cpu_has_native_bf16(tmp_path / "absent")


@pytest.mark.parametrize(("native", "expected"), [(True, "bf16"), (False, "fp32")])
def test_auto_precision_follows_cpu(
    patch_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, native: bool, expected: str
) -> None:
    monkeypatch.setattr(embed_module, "cpu_has_native_bf16", lambda: native)
    embed_slide(patch_file, tmp_path / "auto.parquet", backbone="vit_small_random", batch_size=6, device="cpu")
    assert read_parquet_metadata(tmp_path / "auto.parquet")["precision"] == expected


def test_num_workers_auto_by_device():
    from histodecon.embed import resolve_num_workers

    assert resolve_num_workers("auto", torch.device("cpu")) == 0
    assert 0 <= resolve_num_workers("auto", torch.device("cuda")) <= 4
    assert resolve_num_workers(3, torch.device("cpu")) == 3


def test_num_workers_rejects_negative():
    from histodecon.embed import resolve_num_workers

    with pytest.raises(ValueError, match="'auto' or an integer"):
        resolve_num_workers(-1, torch.device("cpu"))
