"""Build an encoder from any registry record (:mod:`histodecon.registry`).

:func:`load_encoder` turns a :class:`BackboneSpec` into an encoder with two steps, which the
embedding stage can run in different processes. ``preprocess`` resizes, crops and
normalises a uint8 batch; it is picklable, so DataLoader workers can run it.
``forward_embedding`` applies the network and the embedding rule. ``encode`` chains both.

Weights are resolved in this order: a local file or folder given by the ``weights``
argument (``backbone_weights`` in config/config.yaml), then the Hugging Face hub, which
also reads a populated offline cache (``HF_HUB_OFFLINE=1``). Gated repositories use the
user's token from the environment or ``hf auth login``; the token is never logged. If
neither yields weights, :class:`MissingWeightsError` lists the places searched and the fix.
Code from a model repository runs only for entries the config lists in
``embedding.trust_remote_code``.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from histodecon.registry import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BackboneSpec,
    EmbeddingRule,
    UnknownBackboneError,
    get_backbone,
    list_backbones,
)

logger = logging.getLogger(__name__)

__all__ = [
    "BackboneSpec",
    "ConchEncoder",
    "Encoder",
    "EmbeddingRule",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IncompatibleWeightsError",
    "MissingWeightsError",
    "Preprocess",
    "RemoteCodeError",
    "TimmEncoder",
    "TransformersEncoder",
    "UnknownBackboneError",
    "get_backbone",
    "list_backbones",
    "load_encoder",
    "resize_patches",
]

# Widths of the token rules relative to the model width (timm's ``num_features``).
_TOKEN_RULE_WIDTH_FACTOR = {"cls": 1, "cls_mean_patch": 2, "pooled": 1, "avgpool_map": 1}
_WEIGHTS_CONFIG_KEY = "backbone_weights"
_REMOTE_CODE_CONFIG_KEY = "embedding.trust_remote_code"
# create_kwargs keys whose string values are import paths of layer classes.
_LAYER_KWARGS = ("mlp_layer", "act_layer", "norm_layer")


class MissingWeightsError(RuntimeError):
    """Pretrained weights of a backbone that were found neither locally nor on the hub."""


class IncompatibleWeightsError(RuntimeError):
    """A weights file whose tensors do not match the backbone's architecture."""


class RemoteCodeError(RuntimeError):
    """A backbone whose hub loading runs repository code that the config has not allowed."""


class Encoder(Protocol):
    """Interface shared by all encoders that :func:`load_encoder` returns."""

    spec: BackboneSpec
    weights_source: str
    feature_names: tuple[str, ...] | None
    preprocess: Callable[[torch.Tensor], torch.Tensor]

    def to(self, device: torch.device | str) -> Encoder: ...

    def eval(self) -> Encoder: ...

    def forward_embedding(self, batch: torch.Tensor) -> torch.Tensor:
        """Map a preprocessed batch to embeddings, shape (n, embedding_dim)."""
        ...

    def encode(self, images: torch.Tensor, *, microns_per_pixel: float) -> torch.Tensor:
        """Map uint8 RGB patches, shape (n, P, P, 3), to embeddings, shape (n, embedding_dim)."""
        ...


def resize_patches(images: torch.Tensor, *, size: int) -> torch.Tensor:
    """Convert uint8 RGB patches to channels-first float and resize them to ``size``.

    Parameters
    ----------
    images
        uint8 tensor, shape (n, P, P, 3).
    size
        Output side in pixels. Bicubic interpolation with antialiasing (as the model cards'
        PIL resizes) is used when P differs from ``size``.

    Returns
    -------
    torch.Tensor
        float32, shape (n, 3, size, size), values in [0, 255] on the device of ``images``.
    """
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != torch.uint8:
        raise ValueError(f"expected uint8 patches of shape (n, P, P, 3), got {images.dtype} with shape {tuple(images.shape)}")
    pixels = images.permute(0, 3, 1, 2).float()
    if pixels.shape[-2:] != (size, size):
        pixels = F.interpolate(pixels, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
        pixels = pixels.clamp_(0.0, 255.0)
    return pixels


class Preprocess:
    """Resize, centre-crop and normalise uint8 patches for one backbone; picklable.

    Call it with uint8 patches, shape (n, P, P, 3); it returns float32, shape (n, 3, S, S)
    with S = ``spec.input_px``. Patches are resized to ``spec.resize_px`` and centre-cropped
    to S when the record sets ``resize_px``, else resized to S.
    """

    def __init__(self, spec: BackboneSpec) -> None:
        self.input_px = spec.input_px
        self.resize_px = spec.resize_px or spec.input_px
        self.mean = torch.tensor(spec.mean).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(spec.std).view(1, 3, 1, 1) * 255.0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        pixels = resize_patches(images, size=self.resize_px)
        if self.resize_px != self.input_px:
            top = (self.resize_px - self.input_px) // 2
            pixels = pixels[:, :, top : top + self.input_px, top : top + self.input_px]
        return (pixels - self.mean.to(pixels.device)) / self.std.to(pixels.device)


class _NetworkEncoder(torch.nn.Module):
    """Shared part of the network encoders: preprocessing and the no-autograd ``encode``."""

    feature_names = None

    def __init__(self, spec: BackboneSpec, *, weights_source: str) -> None:
        super().__init__()
        self.spec = spec
        self.weights_source = weights_source
        self.preprocess = Preprocess(spec)

    def forward_embedding(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_embedding(self.preprocess(images))

    @torch.inference_mode()
    def encode(self, images: torch.Tensor, *, microns_per_pixel: float | None = None) -> torch.Tensor:
        """Embed uint8 patches, shape (n, P, P, 3), into float32, shape (n, embedding_dim), without autograd.

        ``microns_per_pixel`` is accepted for interface compatibility with the morphology
        encoder and ignored: the caller supplies patches at ``spec.microns_per_pixel``.
        """
        return self(images).float()


def _token_rule(rule: EmbeddingRule, tokens: torch.Tensor, n_prefix: int) -> torch.Tensor:
    """Read an embedding from tokens (n, 1 + registers + patches, width); class token first."""
    cls_token = tokens[:, 0]
    if rule == "cls":
        return cls_token
    # Register tokens sit between the class token and the patch tokens; they are left out.
    return torch.cat([cls_token, tokens[:, n_prefix:].mean(dim=1)], dim=1)


class TimmEncoder(_NetworkEncoder):
    """A timm network with its preprocessing and embedding rule.

    Parameters
    ----------
    spec
        Registry record.
    model
        timm model built from ``spec`` with its weights loaded.
    weights_source
        Human-readable origin of the weights, stored in output metadata.
    """

    def __init__(self, spec: BackboneSpec, model: torch.nn.Module, *, weights_source: str) -> None:
        super().__init__(spec, weights_source=weights_source)
        self.model = model.eval()

    def forward_embedding(self, pixels: torch.Tensor) -> torch.Tensor:
        """Apply the network and the embedding rule to normalised pixels, shape (n, 3, S, S)."""
        rule = self.spec.embedding_rule
        if rule == "avgpool_map":
            return self.model(pixels)[-1].mean(dim=(2, 3))
        tokens = self.model.forward_features(pixels)
        if rule == "pooled":
            return self.model.forward_head(tokens, pre_logits=True)
        return _token_rule(rule, tokens, self.model.num_prefix_tokens)


class ConchVision(torch.nn.Module):
    """CONCH's image tower without the projection: timm ViT trunk, attentional pooler, layer norm.

    Module names follow CONCH's ``VisualModel`` (``trunk``, ``attn_pool_contrast``,
    ``ln_contrast``), so the ``visual.*`` weights of a CONCH checkpoint load strictly. The
    pooler is open_clip's ``AttentionalPooler``, the class CONCH's fork of open_clip uses.
    """

    def __init__(self, spec: BackboneSpec, trunk: torch.nn.Module) -> None:
        from open_clip.transformer import AttentionalPooler

        super().__init__()
        self.trunk = trunk
        self.attn_pool_contrast = AttentionalPooler(
            d_model=spec.pooler["d_model"], context_dim=trunk.num_features, n_head=spec.pooler["n_head"], n_queries=spec.pooler["n_queries"]
        )
        self.ln_contrast = torch.nn.LayerNorm(spec.pooler["d_model"])

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        tokens = self.trunk.forward_features(pixels)
        return self.ln_contrast(self.attn_pool_contrast(tokens)[:, 0])


class ConchEncoder(_NetworkEncoder):
    """CONCH embeddings as ``encode_image(proj_contrast=False, normalize=False)`` gives them."""

    def __init__(self, spec: BackboneSpec, model: ConchVision, *, weights_source: str) -> None:
        super().__init__(spec, weights_source=weights_source)
        self.model = model.eval()

    def forward_embedding(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixels)


class TransformersEncoder(_NetworkEncoder):
    """A Hugging Face transformers vision model; tokens from ``last_hidden_state``."""

    def __init__(self, spec: BackboneSpec, model: torch.nn.Module, *, weights_source: str) -> None:
        super().__init__(spec, weights_source=weights_source)
        self.model = model.eval()

    def forward_embedding(self, pixels: torch.Tensor) -> torch.Tensor:
        tokens = self.model(pixel_values=pixels).last_hidden_state
        return _token_rule(self.spec.embedding_rule, tokens, 1 + self.spec.num_register_tokens)


def _resolved_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Replace import paths of layer classes in ``create_kwargs`` by the classes."""
    resolved = dict(kwargs)
    for key in _LAYER_KWARGS:
        if isinstance(resolved.get(key), str):
            module, _, name = resolved[key].rpartition(".")
            resolved[key] = getattr(importlib.import_module(module), name)
    return resolved


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path, device="cpu")
    return torch.load(path, map_location="cpu", weights_only=True)


def _create_timm_model(spec: BackboneSpec, *, pretrained: bool, seed: int) -> torch.nn.Module:
    """Build the network of ``spec``. Random parameters come from ``seed``, not the global RNG."""
    import timm

    name = f"hf-hub:{spec.hub_id}" if pretrained else spec.architecture
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return timm.create_model(name, pretrained=pretrained, **_resolved_kwargs(spec.create_kwargs))


def _load_strict(spec: BackboneSpec, model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Load ``state_dict`` into ``model`` strictly, after dropping keys of truncated layers."""
    kept = {k: v for k, v in state_dict.items() if not k.startswith(spec.ignore_weight_prefixes)}
    try:
        model.load_state_dict(kept, strict=True)
    except RuntimeError as err:
        raise IncompatibleWeightsError(
            f"weights {source} do not match architecture {spec.architecture!r} of backbone {spec.name!r} "
            f"(created with {dict(spec.create_kwargs)}): {err}. Check that {_WEIGHTS_CONFIG_KEY}: {{{spec.name}: ...}} "
            f"in the config file points at the {spec.name} checkpoint."
        ) from err


def _missing_weights_message(spec: BackboneSpec, weights: Path | None, hub_error: str | None) -> str:
    from huggingface_hub import constants

    configured = f"{weights} (not found)" if weights is not None else "none set"
    looked_at = [f"configured path ({_WEIGHTS_CONFIG_KEY}.{spec.name}): {configured}"]
    if spec.hub_id is not None:
        offline = " (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else ""
        looked_at.append(f"Hugging Face hub {spec.hub_id} with cache dir {constants.HF_HUB_CACHE}{offline}: {str(hub_error).rstrip('. ')}")
    else:
        looked_at.append("Hugging Face hub: the entry has no hub_id")
    what = "the folder saved by save_pretrained (config.json and weights)" if spec.family == "transformers" else "/path/to/pytorch_model.bin"
    fixes = [f"set `{_WEIGHTS_CONFIG_KEY}: {{{spec.name}: {what}}}` in the config file (config/config.yaml by default)"]
    if spec.hub_id is not None:
        fixes.append(
            f"request access on https://huggingface.co/{spec.hub_id}, run `hf auth login` "
            "(or set HF_TOKEN), and run once with network access to fill the cache"
        )
    return f"no weights found for backbone {spec.name!r}. Looked at: " + "; ".join(looked_at) + ". To fix, " + ", or ".join(fixes) + "."


def _hub_failure(spec: BackboneSpec, err: Exception) -> MissingWeightsError:
    # huggingface_hub raises OSError or ValueError subclasses for offline mode, missing cache
    # entries, gated repositories and connection failures.
    return MissingWeightsError(_missing_weights_message(spec, None, f"{type(err).__name__}: {err}"))


def _build_timm_encoder(spec: BackboneSpec, *, weights: Path | None, seed: int, allow_remote_code: bool) -> TimmEncoder:
    if weights is not None:
        if not weights.is_file():
            raise MissingWeightsError(_missing_weights_message(spec, weights, hub_error="not tried"))
        model = _create_timm_model(spec, pretrained=False, seed=seed)
        _load_strict(spec, model, _load_state_dict(weights), f"file {weights}")
        source = f"file {weights}"
    elif spec.pretrained:
        try:
            model = _create_timm_model(spec, pretrained=True, seed=seed)
        except (OSError, ValueError) as err:
            raise _hub_failure(spec, err) from err
        source = f"Hugging Face hub {spec.hub_id}"
    else:
        model = _create_timm_model(spec, pretrained=False, seed=seed)
        source = f"random init (seed {seed})"
    _check_width(spec, _timm_width(spec, model))
    logger.info("backbone %s: weights from %s", spec.name, source)
    return TimmEncoder(spec, model, weights_source=source)


def _timm_width(spec: BackboneSpec, model: torch.nn.Module) -> int:
    if spec.embedding_rule == "avgpool_map":
        return int(model.feature_info.channels()[-1])
    if spec.embedding_rule in ("cls", "cls_mean_patch") and getattr(model, "cls_token", None) is None:
        raise ValueError(
            f"backbone {spec.name!r} uses embedding_rule {spec.embedding_rule!r}, but its network has no class token. "
            "Use embedding_rule 'pooled' for it."
        )
    return model.num_features * _TOKEN_RULE_WIDTH_FACTOR[spec.embedding_rule]


def _check_width(spec: BackboneSpec, width: int) -> None:
    """Raise ValueError when the built network cannot produce the spec's embedding width."""
    if width != spec.embedding_dim:
        raise ValueError(
            f"backbone {spec.name!r} declares embedding_dim={spec.embedding_dim}, but its network gives {width} "
            f"with embedding_rule {spec.embedding_rule!r}. Set embedding_dim={width} in its registry entry."
        )


def _conch_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keep the image tower's weights of a CONCH checkpoint (``visual.*``), minus the caption and projection heads."""
    if any(key.startswith("visual.") for key in state_dict):
        state_dict = {k.removeprefix("visual."): v for k, v in state_dict.items() if k.startswith("visual.")}
    unused = ("attn_pool_caption.", "ln_caption.", "proj_contrast", "head.")
    return {k: v for k, v in state_dict.items() if not k.startswith(unused)}


def _build_conch_encoder(spec: BackboneSpec, *, weights: Path | None, seed: int, allow_remote_code: bool) -> ConchEncoder:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ConchVision(spec, _create_timm_model(spec, pretrained=False, seed=seed))
    if weights is None:
        from huggingface_hub import hf_hub_download

        try:
            weights = Path(hf_hub_download(spec.hub_id, spec.hub_filename))
        except (OSError, ValueError) as err:
            raise _hub_failure(spec, err) from err
        source = f"Hugging Face hub {spec.hub_id}/{spec.hub_filename}"
    elif not weights.is_file():
        raise MissingWeightsError(_missing_weights_message(spec, weights, hub_error="not tried"))
    else:
        source = f"file {weights}"
    _load_strict(spec, model, _conch_state_dict(_load_state_dict(weights)), source)
    _check_width(spec, spec.pooler["d_model"])
    logger.info("backbone %s: weights from %s", spec.name, source)
    return ConchEncoder(spec, model, weights_source=source)


def _build_transformers_encoder(spec: BackboneSpec, *, weights: Path | None, seed: int, allow_remote_code: bool) -> TransformersEncoder:
    from transformers import AutoModel

    if spec.trust_remote_code and not allow_remote_code:
        raise RemoteCodeError(
            f"backbone {spec.name!r} loads with code from the hub repository {spec.hub_id} (trust_remote_code). "
            f"Read that code, then allow it by adding {spec.name} to {_REMOTE_CODE_CONFIG_KEY} in the config file."
        )
    kwargs = {"trust_remote_code": allow_remote_code, **spec.model_kwargs}
    if weights is not None:
        if not (weights / "config.json").is_file():
            raise MissingWeightsError(_missing_weights_message(spec, weights, hub_error="not tried"))
        model = AutoModel.from_pretrained(weights, local_files_only=True, **kwargs)
        source = f"folder {weights}"
    else:
        try:
            model = AutoModel.from_pretrained(spec.hub_id, **kwargs)
        except (OSError, ValueError) as err:
            raise _hub_failure(spec, err) from err
        source = f"Hugging Face hub {spec.hub_id}"
    factor = _TOKEN_RULE_WIDTH_FACTOR[spec.embedding_rule]
    _check_width(spec, model.config.hidden_size * factor)
    logger.info("backbone %s: weights from %s", spec.name, source)
    return TransformersEncoder(spec, model, weights_source=source)


def _build_morphology_encoder(spec: BackboneSpec, *, weights: Path | None, seed: int, allow_remote_code: bool) -> Encoder:
    from histodecon.morphology import MorphologyEncoder

    if weights is not None:
        raise ValueError(
            f"backbone {spec.name!r} has no weights, but a weights file {weights} was given. "
            f"Remove {spec.name} from {_WEIGHTS_CONFIG_KEY} in the config file."
        )
    logger.info("backbone %s: hand-crafted features, no weights", spec.name)
    return MorphologyEncoder(spec)


_BUILDERS: Mapping[str, Callable[..., Encoder]] = MappingProxyType(
    {
        "timm": _build_timm_encoder,
        "conch": _build_conch_encoder,
        "transformers": _build_transformers_encoder,
        "morphology": _build_morphology_encoder,
    }
)


def load_encoder(
    spec: BackboneSpec | str,
    *,
    weights: str | Path | None = None,
    seed: int = 0,
    trust_remote_code: Collection[str] = (),
) -> Encoder:
    """Build the encoder of a registry entry in evaluation mode on the CPU.

    Parameters
    ----------
    spec
        Registry record, or the name of one.
    weights
        Local weights: a ``.safetensors`` file or a ``torch.save`` state dict (loaded with
        ``weights_only=True``) for timm and CONCH entries; the folder written by
        ``save_pretrained`` for transformers entries. Loaded strictly; takes precedence
        over the hub.
    seed
        Seed of the random initialisation of control entries.
    trust_remote_code
        Names of entries whose hub repository code may run (``embedding.trust_remote_code``).

    Returns
    -------
    Encoder
        Object with ``preprocess`` (uint8 (n, P, P, 3) to the network input),
        ``forward_embedding`` and ``encode`` (uint8 to float32, shape (n, embedding_dim)),
        and ``weights_source`` naming where the weights came from.

    Raises
    ------
    UnknownBackboneError
        If ``spec`` is a name that is not registered.
    MissingWeightsError
        If a pretrained entry has no readable local file and the hub (or its cache) fails.
    IncompatibleWeightsError
        If the weights do not match the architecture.
    RemoteCodeError
        If the entry needs repository code that ``trust_remote_code`` does not allow.
    """
    if isinstance(spec, str):
        spec = get_backbone(spec)
    weights_path = Path(weights) if weights is not None else None
    encoder = _BUILDERS[spec.family](spec, weights=weights_path, seed=seed, allow_remote_code=spec.name in trust_remote_code)
    return encoder.eval()
