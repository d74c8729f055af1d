"""Tests of the backbone registry and of load_encoder with random, file and hub weights."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import get_args

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from histodecon.backbones import (
    BackboneSpec,
    EmbeddingRule,
    IncompatibleWeightsError,
    MissingWeightsError,
    UnknownBackboneError,
    get_backbone,
    list_backbones,
    load_encoder,
    resize_patches,
)
from histodecon.backbones import _resolved_kwargs, _timm_width
from histodecon.morphology import FEATURE_NAMES

HER2ST = Path("/work/shared/data/her2st/data")
SLIDE_IMAGE = HER2ST / "ST-imgs/C/C2/5714_HE_BT_C2.jpg"
SPOT_TABLE = HER2ST / "ST-spotfiles/C2_selection.tsv"
CROP_PX = 162  # about 112 µm at the slide's ~0.69 µm/px
PATCH_PX = 224

pytestmark = pytest.mark.skipif(not SLIDE_IMAGE.is_file(), reason=f"her2st image {SLIDE_IMAGE} not available")


@pytest.fixture(scope="module")
def crops() -> np.ndarray:
    """Four real H&E patches centred on her2st spots, uint8, shape (4, 224, 224, 3)."""
    Image.MAX_IMAGE_PIXELS = None
    spots = pd.read_csv(SPOT_TABLE, sep="\t").head(4)
    half = CROP_PX // 2
    patches = []
    with Image.open(SLIDE_IMAGE) as slide:
        for x, y in zip(spots["pixel_x"].round().astype(int), spots["pixel_y"].round().astype(int)):
            crop = slide.crop((x - half, y - half, x + half, y + half)).resize((PATCH_PX, PATCH_PX), Image.BILINEAR)
            patches.append(np.asarray(crop.convert("RGB")))
    return np.stack(patches)


def small_vit_spec(rule: EmbeddingRule, width: int) -> BackboneSpec:
    """ViT-S/16 with 2 blocks and 4 register tokens on 32 px inputs."""
    return dataclasses.replace(
        get_backbone("vit_small_random"),
        name=f"vit_small_reg4_{rule}",
        embedding_rule=rule,
        embedding_dim=width,
        input_px=32,
        create_kwargs={"num_classes": 0, "reg_tokens": 4, "class_token": True, "depth": 2, "img_size": 32},
    )


def uni_depth1_spec() -> BackboneSpec:
    """The UNI architecture and arguments with one transformer block, to keep checkpoints small."""
    uni = get_backbone("uni")
    return dataclasses.replace(uni, name="uni_depth1", create_kwargs={**uni.create_kwargs, "depth": 1})


@pytest.mark.parametrize("name", list_backbones())
def test_registry_entry_consistent(name: str) -> None:
    spec = get_backbone(name)
    assert spec.name == name
    assert spec.embedding_dim > 0
    assert spec.input_px > 0
    assert spec.microns_per_pixel > 0
    assert len(spec.mean) == 3
    assert len(spec.std) == 3
    assert min(spec.std) > 0
    assert spec.embedding_rule in get_args(EmbeddingRule)
    assert spec.source
    assert spec.licence
    if spec.control:
        assert not spec.pretrained
    if spec.family != "morphology":
        assert spec.architecture is not None
        assert spec.embedding_rule != "features"
    if spec.pretrained:
        assert spec.hub_id is not None
        assert spec.hub_id.count("/") == 1


@pytest.mark.parametrize("name", [n for n in list_backbones() if get_backbone(n).family == "timm"])
def test_registry_width_matches_network(name: str) -> None:
    spec = get_backbone(name)
    # The meta device builds the architecture without allocating or initialising weights.
    with torch.device("meta"):
        model = timm.create_model(spec.architecture, pretrained=False, **_resolved_kwargs(spec.create_kwargs))
    assert _timm_width(spec, model) == spec.embedding_dim


def test_morphology_width_matches_names() -> None:
    assert get_backbone("morphology").embedding_dim == len(FEATURE_NAMES)


def test_registry_has_required_entries() -> None:
    assert {"morphology", "vit_small_random", "uni"} <= set(list_backbones())
    assert get_backbone("vit_small_random").control
    assert get_backbone("uni").pretrained


def test_uni_entry_matches_model_card() -> None:
    uni = get_backbone("uni")
    assert uni.hub_id == "MahmoodLab/uni"
    assert uni.architecture == "vit_large_patch16_224"
    assert dict(uni.create_kwargs) == {"init_values": 1e-5, "num_classes": 0, "dynamic_img_size": True}
    assert uni.mean == (0.485, 0.456, 0.406)
    assert uni.std == (0.229, 0.224, 0.225)
    assert uni.embedding_rule == "cls"
    assert uni.embedding_dim == 1024


def test_spec_is_immutable() -> None:
    spec = get_backbone("uni")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.embedding_dim = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        spec.create_kwargs["depth"] = 1  # type: ignore[index]


def test_spec_rejects_invalid_rule() -> None:
    with pytest.raises(ValueError, match="embedding_rule"):
        dataclasses.replace(get_backbone("vit_small_random"), embedding_rule="mean")


def test_unknown_backbone_lists_names() -> None:
    with pytest.raises(UnknownBackboneError) as info:
        get_backbone("uni3")
    message = str(info.value)
    assert "'uni3'" in message
    for name in list_backbones():
        assert name in message


def test_resize_patches_shape_and_range() -> None:
    images = torch.randint(0, 256, (2, 162, 162, 3), dtype=torch.uint8)
    resized = resize_patches(images, size=224)
    assert resized.shape == (2, 3, 224, 224)
    assert resized.dtype == torch.float32
    assert float(resized.min()) >= -1e-3
    assert float(resized.max()) <= 255 + 1e-3


def test_resize_patches_same_size_is_exact() -> None:
    images = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8)
    assert torch.equal(resize_patches(images, size=32), images.permute(0, 3, 1, 2).float())


def test_vit_small_random_shape_finite(crops: np.ndarray) -> None:
    encoder = load_encoder("vit_small_random", seed=0)
    embeddings = encoder.encode(torch.from_numpy(crops[:2]))
    assert embeddings.shape == (2, 384)
    assert embeddings.dtype == torch.float32
    assert torch.isfinite(embeddings).all()
    assert encoder.weights_source == "random init (seed 0)"


def test_vit_small_random_deterministic(crops: np.ndarray) -> None:
    images = torch.from_numpy(crops[:1])
    with torch.inference_mode():
        first = load_encoder("vit_small_random", seed=0).encode(images)
        second = load_encoder("vit_small_random", seed=0).encode(images)
        other_seed = load_encoder("vit_small_random", seed=1).encode(images)
    assert torch.equal(first, second)
    assert not torch.allclose(first, other_seed)


def test_random_init_keeps_global_rng() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_encoder(small_vit_spec("cls", 384), seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_cls_rule_takes_class_token() -> None:
    encoder = load_encoder(small_vit_spec("cls", 384), seed=0)
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        tokens = encoder.model.forward_features(pixels)
        embedding = encoder.forward_embedding(pixels)
    assert tokens.shape == (3, 1 + 4 + 4, 384)  # class token, 4 registers, 2 x 2 patches
    assert embedding.shape == (3, 384)
    assert torch.equal(embedding, tokens[:, 0])


def test_cls_mean_patch_skips_registers() -> None:
    encoder = load_encoder(small_vit_spec("cls_mean_patch", 768), seed=0)
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        tokens = encoder.model.forward_features(pixels)
        embedding = encoder.forward_embedding(pixels)
    patch_mean = tokens[:, 5:].mean(dim=1)  # tokens 1..4 are the registers
    assert embedding.shape == (3, 768)
    assert torch.allclose(embedding[:, :384], tokens[:, 0])
    assert torch.allclose(embedding[:, 384:], patch_mean, atol=1e-6)
    assert not torch.allclose(embedding[:, 384:], tokens[:, 1:].mean(dim=1), atol=1e-4)


def test_pooled_rule_matches_timm_head() -> None:
    encoder = load_encoder(small_vit_spec("pooled", 384), seed=0)
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(encoder.forward_embedding(pixels), encoder.model(pixels))


def test_width_mismatch_raises() -> None:
    spec = dataclasses.replace(small_vit_spec("cls", 384), embedding_dim=100)
    with pytest.raises(ValueError, match="embedding_dim=384"):
        load_encoder(spec)


@pytest.fixture(scope="module")
def uni_depth1_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, torch.Tensor], Path, Path]:
    """State dict of a randomly initialised one-block UNI network, saved as .safetensors and .bin."""
    spec = uni_depth1_spec()
    torch.manual_seed(7)
    model = timm.create_model(spec.architecture, pretrained=False, **spec.create_kwargs)
    state_dict = {key: value.contiguous() for key, value in model.state_dict().items()}
    folder = tmp_path_factory.mktemp("uni_depth1")
    safetensors_path = folder / "model.safetensors"
    bin_path = folder / "pytorch_model.bin"
    save_file(state_dict, safetensors_path)
    torch.save(state_dict, bin_path)
    return state_dict, safetensors_path, bin_path


@pytest.mark.parametrize("file_format", ["safetensors", "bin"])
def test_local_weights_reload_exactly(
    uni_depth1_checkpoint: tuple[dict[str, torch.Tensor], Path, Path], file_format: str
) -> None:
    state_dict, safetensors_path, bin_path = uni_depth1_checkpoint
    path = safetensors_path if file_format == "safetensors" else bin_path
    encoder = load_encoder(uni_depth1_spec(), weights=path, seed=3)
    loaded = encoder.model.state_dict()
    assert set(loaded) == set(state_dict)
    for key, value in state_dict.items():
        assert torch.equal(loaded[key], value), key
    assert str(path) in encoder.weights_source


def test_local_weights_same_embeddings(
    uni_depth1_checkpoint: tuple[dict[str, torch.Tensor], Path, Path], crops: np.ndarray
) -> None:
    _, safetensors_path, bin_path = uni_depth1_checkpoint
    images = torch.from_numpy(crops[:2])
    with torch.inference_mode():
        from_safetensors = load_encoder(uni_depth1_spec(), weights=safetensors_path, seed=0).encode(images)
        from_bin = load_encoder(uni_depth1_spec(), weights=bin_path, seed=1).encode(images)
    assert from_safetensors.shape == (2, 1024)
    assert torch.equal(from_safetensors, from_bin)


def test_weights_of_other_architecture_raise(tmp_path: Path) -> None:
    path = tmp_path / "wrong.safetensors"
    save_file({"head.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(IncompatibleWeightsError, match="do not match architecture 'vit_large_patch16_224'"):
        load_encoder(uni_depth1_spec(), weights=path)


def test_missing_configured_path_raises(tmp_path: Path) -> None:
    path = tmp_path / "absent" / "pytorch_model.bin"
    with pytest.raises(MissingWeightsError) as info:
        load_encoder("uni", weights=path)
    message = str(info.value)
    assert "'uni'" in message
    assert str(path) in message
    assert "backbone_weights" in message


def test_uni_without_weights_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    cache = tmp_path / "hf_home" / "hub"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    # huggingface_hub reads these variables at import, so the module constants are patched too.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    with pytest.raises(MissingWeightsError) as info:
        load_encoder("uni")
    message = str(info.value)
    assert "'uni'" in message
    assert "Hugging Face hub MahmoodLab/uni" in message
    assert str(cache) in message
    assert "configured path" in message
    assert "backbone_weights: {uni: /path/to/pytorch_model.bin}" in message
    assert "hf auth login" in message


def test_morphology_rejects_weights(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="has no weights"):
        load_encoder("morphology", weights=tmp_path / "w.bin")
