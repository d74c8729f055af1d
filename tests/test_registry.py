"""Every registry entry against its sources: architecture, token rule, normalisation, loading paths.

Each transformer entry is built with random weights at a small width and depth, but with its
own creation arguments: patch size, register tokens, SwiGLU MLP and embedding rule. The
tests therefore check the rule that reads the embedding without downloading any weights. Loading is
checked through a local file or folder and through an offline Hugging Face cache that the
test fills, in a fresh process that sees only that cache.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from timm.layers import GluMlp

from histodecon.backbones import (
    ConchEncoder,
    ConchVision,
    MissingWeightsError,
    RemoteCodeError,
    TimmEncoder,
    TransformersEncoder,
    load_encoder,
)
from histodecon.registry import get_backbone, list_backbones

SMALL_VIT = {"depth": 1, "embed_dim": 48, "num_heads": 2}
PIXELS = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))

# Architecture facts per timm ViT entry, from the source named in each registry entry:
# (patch size, register tokens, SwiGLU MLP).
TIMM_VIT_FACTS = {
    "vit_small_random": (16, 0, False),
    "uni": (16, 0, False),
    "uni2_h": (14, 8, True),
    "virchow": (14, 0, True),
    "virchow2": (14, 4, True),
    "gigapath": (16, 0, True),
    "h_optimus_0": (14, 4, True),
    "h_optimus_1": (14, 4, True),
    "h0_mini": (14, 4, True),
    "kaiko_vitb8": (8, 0, False),
    "kaiko_vitl14": (14, 4, False),
}
# transformers entries: (config class, patch size of the small test model, register tokens).
TRANSFORMERS_FACTS = {
    "phikon": ("ViTConfig", 16, 0),
    "phikon_v2": ("Dinov2Config", 16, 0),
    "hibou_b": ("Dinov2WithRegistersConfig", 14, 4),
    "hibou_l": ("Dinov2WithRegistersConfig", 14, 4),
}
# Normalisation per entry, as written in each source.
NORMALISATION = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # UNI, Virchow, GigaPath, Phikon cards
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),  # CONCH constants.py
    "hoptimus": ((0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517)),  # H-optimus-0 config.json
    "hibou": ((0.7068, 0.5755, 0.722), (0.195, 0.2316, 0.1816)),  # hibou example.ipynb
    "kaiko": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # kaiko README.md
}
EXPECTED_NORMALISATION = {
    "vit_small_random": "imagenet", "resnet50_trunc": "imagenet", "uni": "imagenet", "uni2_h": "imagenet",
    "conch": "clip", "virchow": "imagenet", "virchow2": "imagenet", "gigapath": "imagenet",
    "h_optimus_0": "hoptimus", "h_optimus_1": "hoptimus", "h0_mini": "hoptimus", "phikon": "imagenet",
    "phikon_v2": "imagenet", "hibou_b": "hibou", "hibou_l": "hibou", "kaiko_vitb8": "kaiko", "kaiko_vitl14": "kaiko",
}
# Embedding widths at full size, from the model cards and reference code.
EXPECTED_WIDTH = {
    "resnet50_trunc": 1024, "uni": 1024, "uni2_h": 1536, "conch": 512, "virchow": 2560, "virchow2": 2560,
    "gigapath": 1536, "h_optimus_0": 1536, "h_optimus_1": 1536, "h0_mini": 1536, "phikon": 768, "phikon_v2": 1024,
    "hibou_b": 768, "hibou_l": 1024, "kaiko_vitb8": 768, "kaiko_vitl14": 1024,
}


def test_registry_has_every_requested_entry():
    assert set(EXPECTED_WIDTH) | {"morphology", "vit_small_random"} == set(list_backbones())


@pytest.mark.parametrize("name", sorted(EXPECTED_WIDTH))
def test_full_size_width(name):
    assert get_backbone(name).embedding_dim == EXPECTED_WIDTH[name]


@pytest.mark.parametrize("name", sorted(EXPECTED_NORMALISATION))
def test_normalisation_matches_source(name):
    mean, std = NORMALISATION[EXPECTED_NORMALISATION[name]]
    assert get_backbone(name).mean == mean
    assert get_backbone(name).std == std


def small_timm_spec(name: str):
    spec = get_backbone(name)
    factor = 2 if spec.embedding_rule == "cls_mean_patch" else 1
    return dataclasses.replace(spec, create_kwargs={**spec.create_kwargs, **SMALL_VIT}, embedding_dim=48 * factor, pretrained=False)


@pytest.mark.parametrize("name", sorted(TIMM_VIT_FACTS))
def test_small_timm_vit_architecture(name):
    """Patch size, register tokens and MLP type come from the entry's creation arguments."""
    patch, registers, swiglu = TIMM_VIT_FACTS[name]
    model = load_encoder(small_timm_spec(name), seed=0).model
    assert model.patch_embed.patch_size == (patch, patch)
    assert model.num_prefix_tokens == 1 + registers
    assert isinstance(model.blocks[0].mlp, GluMlp) == swiglu


@pytest.mark.parametrize("name", sorted(TIMM_VIT_FACTS))
def test_small_timm_vit_token_rule(name):
    encoder = load_encoder(small_timm_spec(name), seed=0)
    assert isinstance(encoder, TimmEncoder)
    with torch.inference_mode():
        tokens = encoder.model.forward_features(PIXELS)
        embedding = encoder.forward_embedding(PIXELS)
    assert embedding.shape == (2, encoder.spec.embedding_dim)
    assert torch.equal(embedding[:, :48], tokens[:, 0])
    if encoder.spec.embedding_rule == "cls_mean_patch":
        patches = tokens[:, encoder.model.num_prefix_tokens :]
        assert patches.shape[1] == (224 // TIMM_VIT_FACTS[name][0]) ** 2  # registers are not averaged
        assert torch.allclose(embedding[:, 48:], patches.mean(dim=1), atol=1e-6)


def test_resnet50_trunc_pools_layer3():
    encoder = load_encoder(dataclasses.replace(get_backbone("resnet50_trunc"), pretrained=False), seed=0)
    with torch.inference_mode():
        feature_map = encoder.model(PIXELS)[-1]
        embedding = encoder.forward_embedding(PIXELS)
    assert feature_map.shape == (2, 1024, 14, 14)  # layer3: stride 16
    assert torch.allclose(embedding, feature_map.mean(dim=(2, 3)))


def small_conch_spec():
    spec = get_backbone("conch")
    return dataclasses.replace(
        spec, create_kwargs={**spec.create_kwargs, **SMALL_VIT}, pooler={"d_model": 32, "n_head": 2, "n_queries": 1}, embedding_dim=32
    )


def conch_checkpoint(spec, seed: int) -> dict[str, torch.Tensor]:
    """A CONCH-like full-model state dict: image tower under visual.*, plus caption and text keys."""
    torch.manual_seed(seed)
    vision = ConchVision(spec, timm.create_model(spec.architecture, **spec.create_kwargs))
    state = {f"visual.{k}": v.clone() for k, v in vision.state_dict().items()}
    state["visual.proj_contrast"] = torch.randn(32, 32)
    state["visual.ln_caption.weight"] = torch.ones(8)
    state["text.token_embedding.weight"] = torch.randn(4, 8)
    return state


def test_conch_small_architecture_and_rule(tmp_path):
    spec = small_conch_spec()
    path = tmp_path / "pytorch_model.bin"
    torch.save(conch_checkpoint(spec, seed=1), path)
    encoder = load_encoder(spec, weights=path)
    assert isinstance(encoder, ConchEncoder)
    assert encoder.model.trunk.patch_embed.patch_size == (16, 16)
    pixels = torch.randn(2, 3, 448, 448, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        tokens = encoder.model.trunk.forward_features(pixels)
        expected = encoder.model.ln_contrast(encoder.model.attn_pool_contrast(tokens)[:, 0])
        embedding = encoder.forward_embedding(pixels)
    assert tokens.shape[1] == 1 + (448 // 16) ** 2  # the pooler attends to every token
    assert embedding.shape == (2, 32)
    assert torch.equal(embedding, expected)


def test_conch_local_checkpoint_reloads_exactly(tmp_path):
    spec = small_conch_spec()
    state = conch_checkpoint(spec, seed=2)
    path = tmp_path / "pytorch_model.bin"
    torch.save(state, path)
    loaded = load_encoder(spec, weights=path, seed=5).model.state_dict()
    for key, value in loaded.items():
        assert torch.equal(value, state[f"visual.{key}"]), key


def small_transformers_model(name: str):
    import transformers

    config_class, patch, registers = TRANSFORMERS_FACTS[name]
    extra = {"num_register_tokens": registers} if registers else {}
    config = getattr(transformers, config_class)(
        hidden_size=48, num_hidden_layers=1, num_attention_heads=2, intermediate_size=96, image_size=224, patch_size=patch, **extra
    )
    torch.manual_seed(0)
    return transformers.AutoModel.from_config(config, **get_backbone(name).model_kwargs)


def small_transformers_spec(name: str):
    return dataclasses.replace(get_backbone(name), embedding_dim=48, trust_remote_code=False)


@pytest.mark.parametrize("name", sorted(TRANSFORMERS_FACTS))
def test_small_transformers_architecture_and_rule(name):
    spec = get_backbone(name)
    assert spec.architecture == TRANSFORMERS_FACTS[name][0]
    assert spec.num_register_tokens == TRANSFORMERS_FACTS[name][2]
    model = small_transformers_model(name)
    encoder = TransformersEncoder(small_transformers_spec(name), model, weights_source="random")
    with torch.inference_mode():
        hidden = model(pixel_values=PIXELS).last_hidden_state
        embedding = encoder.forward_embedding(PIXELS)
    assert hidden.shape[1] == 1 + spec.num_register_tokens + (224 // TRANSFORMERS_FACTS[name][1]) ** 2
    assert embedding.shape == (2, 48)
    assert torch.equal(embedding, hidden[:, 0])


def test_transformers_local_folder_reloads_exactly(tmp_path):
    model = small_transformers_model("phikon_v2")
    model.save_pretrained(tmp_path / "phikon_v2")
    loaded = load_encoder(small_transformers_spec("phikon_v2"), weights=tmp_path / "phikon_v2").model.state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded[key], value), key


def test_remote_code_entry_refused_without_config():
    with pytest.raises(RemoteCodeError) as info:
        load_encoder("hibou_b")
    message = str(info.value)
    assert "histai/hibou-b" in message
    assert "embedding.trust_remote_code" in message


# Offline Hugging Face cache: a fresh process with HF_HOME pointing at a cache the test fills.

LOAD_IN_FRESH_PROCESS = """
import dataclasses, json, sys, torch
from histodecon.backbones import load_encoder
from histodecon.registry import get_backbone
request = json.loads(sys.argv[1])
spec = dataclasses.replace(get_backbone(request["base"]), **request["replace"])
encoder = load_encoder(spec)
torch.save(encoder.model.state_dict(), request["out"])
print(encoder.weights_source)
"""


def fill_cache(hf_home: Path, repo: str) -> Path:
    """Create the cache folders of ``repo`` and return its snapshot folder."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    root = hf_hub_folder(hf_home, repo)
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True)
    return snapshot


def hf_hub_folder(hf_home: Path, repo: str) -> Path:
    return hf_home / "hub" / ("models--" + repo.replace("/", "--"))


def load_offline(hf_home: Path, tmp_path: Path, base: str, replace: dict) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path / "loaded.pt"
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    env.pop("HF_TOKEN", None)
    request = json.dumps({"base": base, "replace": replace, "out": str(out)})
    result = subprocess.run([sys.executable, "-c", LOAD_IN_FRESH_PROCESS, request], capture_output=True, text=True, env=env, check=False)
    return result, out


def assert_same_state(loaded_path: Path, expected: dict[str, torch.Tensor], prefix: str = "") -> None:
    loaded = torch.load(loaded_path, weights_only=True)
    if not prefix:
        assert set(loaded) == set(expected)
    for key, value in loaded.items():
        assert torch.equal(value, expected[prefix + key]), key


def test_timm_entry_loads_from_offline_cache(tmp_path):
    """A cache laid out as Virchow2's hub repository: config.json without the layer classes, safetensors."""
    from safetensors.torch import save_file

    spec = small_timm_spec("virchow2")
    repo = "histodecon-test/virchow2-small"
    model = load_encoder(spec, seed=4).model
    snapshot = fill_cache(tmp_path / "hf", repo)
    model_args = {k: v for k, v in spec.create_kwargs.items() if k not in ("mlp_layer", "act_layer")}
    config = {"architecture": spec.architecture, "num_classes": 0, "model_args": model_args, "pretrained_cfg": {"input_size": [3, 224, 224]}}
    (snapshot / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, snapshot / "model.safetensors")
    replace = {"create_kwargs": dict(spec.create_kwargs), "embedding_dim": spec.embedding_dim, "hub_id": repo}
    result, out = load_offline(tmp_path / "hf", tmp_path, "virchow2", replace)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Hugging Face hub {repo}" in result.stdout
    assert_same_state(out, model.state_dict())


def test_conch_loads_from_offline_cache(tmp_path):
    spec = small_conch_spec()
    repo = "histodecon-test/conch-small"
    state = conch_checkpoint(spec, seed=3)
    torch.save(state, fill_cache(tmp_path / "hf", repo) / "pytorch_model.bin")
    replace = {"create_kwargs": dict(spec.create_kwargs), "pooler": dict(spec.pooler), "embedding_dim": 32, "hub_id": repo}
    result, out = load_offline(tmp_path / "hf", tmp_path, "conch", replace)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_state(out, state, prefix="visual.")
    # Everything of the image tower but the projection and the caption pooler was loaded.
    assert len(torch.load(out, weights_only=True)) == len([k for k in state if k.startswith("visual.")]) - 2


def test_transformers_entry_loads_from_offline_cache(tmp_path):
    repo = "histodecon-test/phikon-small"
    model = small_transformers_model("phikon")
    model.save_pretrained(fill_cache(tmp_path / "hf", repo))
    result, out = load_offline(tmp_path / "hf", tmp_path, "phikon", {"embedding_dim": 48, "hub_id": repo})
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_state(out, model.state_dict())


@pytest.mark.parametrize("name", ["conch", "phikon", "gigapath"])
def test_empty_offline_cache_names_places_and_fixes(tmp_path, name):
    (tmp_path / "hf" / "hub").mkdir(parents=True)
    result, _ = load_offline(tmp_path / "hf", tmp_path, name, {})
    assert result.returncode != 0
    assert MissingWeightsError.__name__ in result.stderr
    assert f"no weights found for backbone '{name}'" in result.stderr
    assert f"Hugging Face hub {get_backbone(name).hub_id} with cache dir {tmp_path / 'hf' / 'hub'} (HF_HUB_OFFLINE is set)" in result.stderr
    assert "backbone_weights" in result.stderr
    assert "hf auth login" in result.stderr
