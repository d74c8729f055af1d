"""Registry of patch encoders ("backbones") and the one builder that loads any of them.

Each entry is a frozen :class:`BackboneSpec` record: where the architecture and weights
come from, the input size and pixel scale it expects, its normalisation, how an embedding
is read from its output tokens, and its licence. :func:`load_encoder` turns any record
into an encoder whose ``encode`` method maps a uint8 RGB batch, shape (n, P, P, 3), to
float32 embeddings, shape (n, spec.embedding_dim).

Weights of pretrained entries are resolved in this order: a local file given by the
``weights`` argument (``backbone_weights`` in config/config.yaml), then the Hugging Face
hub through timm, which also reads a populated offline cache. If neither yields weights,
:class:`MissingWeightsError` lists the places searched and the fix.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, Protocol, get_args

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

__all__ = [
    "BackboneSpec",
    "Encoder",
    "EmbeddingRule",
    "IncompatibleWeightsError",
    "MissingWeightsError",
    "TimmEncoder",
    "UnknownBackboneError",
    "get_backbone",
    "list_backbones",
    "load_encoder",
    "resize_patches",
]

BackboneFamily = Literal["timm", "morphology"]
EmbeddingRule = Literal["cls", "cls_mean_patch", "pooled", "features"]
"""Rule that reads the embedding from a backbone's output.

- ``cls``: the class token after the final norm, width = model width.
- ``cls_mean_patch``: the class token concatenated with the mean of the patch tokens
  (class and register tokens excluded), width = 2 x model width.
- ``pooled``: timm's own pooling head without classifier (``forward_head(pre_logits=True)``).
- ``features``: hand-crafted features of the ``morphology`` family.
"""

# Widths of the token rules relative to the model width (timm's ``num_features``).
_TOKEN_RULE_WIDTH_FACTOR = {"cls": 1, "cls_mean_patch": 2, "pooled": 1}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_WEIGHTS_CONFIG_KEY = "backbone_weights"


class UnknownBackboneError(ValueError):
    """A backbone name that is not in the registry."""


class MissingWeightsError(RuntimeError):
    """Pretrained weights of a backbone that were found neither locally nor on the hub."""


class IncompatibleWeightsError(RuntimeError):
    """A weights file whose tensors do not match the backbone's architecture."""


@dataclass(frozen=True)
class BackboneSpec:
    """Registry record of one patch encoder.

    Attributes
    ----------
    name
        Registry key, used in config files and output metadata.
    family
        ``"timm"`` for networks built with :func:`timm.create_model`, ``"morphology"`` for the
        hand-crafted features of :mod:`histodecon.morphology`.
    embedding_rule
        How the embedding is read from the output, see :data:`EmbeddingRule`.
    embedding_dim
        Width of the embedding (number of ``emb_`` columns).
    input_px
        Side of the square input in pixels; patches of another size are resized to it.
    microns_per_pixel
        Recommended pixel size of the input in µm/px (the scale the encoder was trained at).
    mean, std
        Per-channel RGB normalisation applied to pixel values in [0, 1].
    pretrained
        Whether the encoder needs trained weights (from a file or the hub).
    control
        Whether the entry is a negative control (random weights) that every pretrained
        encoder is expected to beat.
    architecture
        timm architecture name used to build the network for a local weights file or a random init.
    hub_id
        timm hub id (``hf-hub:owner/repo``) of the pretrained weights, or None.
    create_kwargs
        Keyword arguments for :func:`timm.create_model`, read-only.
    licence
        Licence and access terms of the weights.
    source
        Where the facts of this entry were taken from (model card, reference code).
    """

    name: str
    family: BackboneFamily
    embedding_rule: EmbeddingRule
    embedding_dim: int
    input_px: int
    microns_per_pixel: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pretrained: bool
    control: bool
    architecture: str | None = None
    hub_id: str | None = None
    create_kwargs: Mapping[str, Any] = field(default_factory=dict)
    licence: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "create_kwargs", MappingProxyType(dict(self.create_kwargs)))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        self._validate()

    def _validate(self) -> None:
        prefix = f"backbone {self.name!r}:"
        if self.family not in get_args(BackboneFamily):
            raise ValueError(f"{prefix} invalid family {self.family!r}; valid: {get_args(BackboneFamily)}")
        if self.embedding_rule not in get_args(EmbeddingRule):
            raise ValueError(f"{prefix} invalid embedding_rule {self.embedding_rule!r}; valid: {get_args(EmbeddingRule)}")
        if (self.family == "morphology") != (self.embedding_rule == "features"):
            raise ValueError(f"{prefix} embedding_rule 'features' is for the morphology family only, got {self.embedding_rule!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"{prefix} mean and std need 3 values with std > 0, got mean={self.mean} std={self.std}")
        if self.embedding_dim <= 0 or self.input_px <= 0 or self.microns_per_pixel <= 0:
            raise ValueError(
                f"{prefix} embedding_dim, input_px and microns_per_pixel must be positive, got "
                f"{self.embedding_dim}, {self.input_px}, {self.microns_per_pixel}"
            )
        if self.family == "timm" and self.architecture is None and self.hub_id is None:
            raise ValueError(f"{prefix} a timm backbone needs an architecture or a hub_id")
        if self.pretrained and self.control:
            raise ValueError(f"{prefix} a control has random weights, so it cannot be pretrained")
        if self.hub_id is not None and not self.hub_id.startswith("hf-hub:"):
            raise ValueError(f"{prefix} hub_id must start with 'hf-hub:', got {self.hub_id!r}")

    def to_metadata(self) -> dict[str, Any]:
        """Return the fields as a JSON-serialisable dict, for output metadata."""
        record = {f.name: getattr(self, f.name) for f in fields(self)}
        record["create_kwargs"] = dict(self.create_kwargs)
        record["mean"] = list(self.mean)
        record["std"] = list(self.std)
        return record


# The registry. Facts about each model come from the source named in its entry.
_SPECS = (
    BackboneSpec(
        name="morphology",
        family="morphology",
        embedding_rule="features",
        embedding_dim=54,  # len(histodecon.morphology.FEATURE_NAMES), checked when the encoder is built
        input_px=224,
        microns_per_pixel=0.5,
        # Identity normalisation: the features are computed from uint8 RGB.
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        pretrained=False,
        control=False,
        licence="none needed: features computed by histodecon, no weights",
        source="histodecon.morphology",
    ),
    BackboneSpec(
        name="vit_small_random",
        family="timm",
        embedding_rule="cls",
        embedding_dim=384,
        input_px=224,
        microns_per_pixel=0.5,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        pretrained=False,
        control=True,  # any pretrained encoder must beat this random-weight ViT-S/16
        architecture="vit_small_patch16_224",
        create_kwargs={"num_classes": 0},
        licence="no weights (random init from the seed)",
        source="timm 1.0 vision_transformer.py (ViT-S/16: width 384, depth 12)",
    ),
    BackboneSpec(
        name="uni",
        family="timm",
        embedding_rule="cls",
        embedding_dim=1024,
        input_px=224,
        # NOTE: the model card states no µm/px. 0.5 µm/px (20x) is the usual scale of 224 px pathology patches.
        microns_per_pixel=0.5,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        pretrained=True,
        control=False,
        architecture="vit_large_patch16_224",
        hub_id="hf-hub:MahmoodLab/uni",
        # init_values creates the LayerScale parameters (blocks.*.ls1.gamma) of the checkpoint.
        create_kwargs={"init_values": 1e-5, "num_classes": 0, "dynamic_img_size": True},
        licence=(
            "CC-BY-NC-ND 4.0, non-commercial academic research only; gated: request access on "
            "https://huggingface.co/MahmoodLab/uni and log in before downloading"
        ),
        source=(
            "https://huggingface.co/MahmoodLab/uni and github.com/mahmoodlab/UNI "
            "(README.md, uni/get_encoder/get_encoder.py): ViT-L/16, 224 px, ImageNet mean/std, CLS token"
        ),
    ),
)

_REGISTRY: Mapping[str, BackboneSpec] = MappingProxyType({spec.name: spec for spec in _SPECS})


def list_backbones() -> list[str]:
    """Return the registered backbone names, in registry order."""
    return list(_REGISTRY)


def get_backbone(name: str) -> BackboneSpec:
    """Return the registry record of ``name``.

    Raises
    ------
    UnknownBackboneError
        If ``name`` is not registered; the message lists the valid names.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownBackboneError(
            f"unknown backbone {name!r}; valid backbones: {', '.join(_REGISTRY)}. Fix the backbone name in the config."
        ) from None


class Encoder(Protocol):
    """Interface shared by all encoders that :func:`load_encoder` returns."""

    spec: BackboneSpec
    weights_source: str
    feature_names: tuple[str, ...] | None

    def to(self, device: torch.device | str) -> Encoder: ...

    def eval(self) -> Encoder: ...

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
        Output side in pixels. Bilinear interpolation with antialiasing is used when P
        differs from ``size``.

    Returns
    -------
    torch.Tensor
        float32, shape (n, 3, size, size), values in [0, 255] on the device of ``images``.
    """
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != torch.uint8:
        raise ValueError(f"expected uint8 patches of shape (n, P, P, 3), got {images.dtype} with shape {tuple(images.shape)}")
    pixels = images.permute(0, 3, 1, 2).float()
    if pixels.shape[-2:] != (size, size):
        pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return pixels


class TimmEncoder(torch.nn.Module):
    """A timm network with its normalisation and embedding rule.

    ``forward`` takes uint8 RGB patches, shape (n, P, P, 3), and returns embeddings, shape
    (n, spec.embedding_dim). :meth:`forward_embedding` takes already normalised pixels.

    Parameters
    ----------
    spec
        Registry record.
    model
        timm model built from ``spec`` with its weights loaded.
    weights_source
        Human-readable origin of the weights, stored in output metadata.
    """

    feature_names = None

    def __init__(self, spec: BackboneSpec, model: torch.nn.Module, *, weights_source: str) -> None:
        super().__init__()
        self.spec = spec
        self.model = model
        self.weights_source = weights_source
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.model.eval()

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Resize uint8 patches (n, P, P, 3) to ``spec.input_px`` and normalise them, shape (n, 3, S, S)."""
        pixels = resize_patches(images, size=self.spec.input_px)
        return (pixels - self.mean) / self.std

    def forward_embedding(self, pixels: torch.Tensor) -> torch.Tensor:
        """Apply the network and the spec's embedding rule to normalised pixels, shape (n, 3, S, S)."""
        rule = self.spec.embedding_rule
        tokens = self.model.forward_features(pixels)
        if rule == "pooled":
            return self.model.forward_head(tokens, pre_logits=True)
        cls_token = tokens[:, 0]
        if rule == "cls":
            return cls_token
        # cls_mean_patch: timm puts the class token, then register tokens, before the patch tokens.
        patch_tokens = tokens[:, self.model.num_prefix_tokens :]
        return torch.cat([cls_token, patch_tokens.mean(dim=1)], dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_embedding(self.preprocess(images))

    @torch.inference_mode()
    def encode(self, images: torch.Tensor, *, microns_per_pixel: float | None = None) -> torch.Tensor:
        """Embed uint8 patches, shape (n, P, P, 3), into float32, shape (n, embedding_dim), without autograd.

        ``microns_per_pixel`` is accepted for interface compatibility with the morphology
        encoder and ignored, because a network has no notion of physical scale. The caller
        must supply patches at the scale of ``spec.microns_per_pixel``.
        """
        return self(images).float()


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path, device="cpu")
    return torch.load(path, map_location="cpu", weights_only=True)


def _create_timm_model(spec: BackboneSpec, *, pretrained: bool, seed: int) -> torch.nn.Module:
    """Build the network of ``spec``. Random parameters come from ``seed``, not the global RNG."""
    import timm

    name = spec.hub_id if pretrained else spec.architecture
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return timm.create_model(name, pretrained=pretrained, **spec.create_kwargs)


def _model_from_file(spec: BackboneSpec, path: Path, *, seed: int) -> torch.nn.Module:
    if spec.architecture is None:
        raise ValueError(f"backbone {spec.name!r} has no timm architecture, so a weights file cannot be loaded into it")
    model = _create_timm_model(spec, pretrained=False, seed=seed)
    state_dict = _load_state_dict(path)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as err:
        raise IncompatibleWeightsError(
            f"weights file {path} does not match architecture {spec.architecture!r} of backbone {spec.name!r} "
            f"(created with {dict(spec.create_kwargs)}): {err}. Check that {_WEIGHTS_CONFIG_KEY}: {{{spec.name}: ...}} "
            f"in the config file points at the {spec.name} checkpoint."
        ) from err
    return model


def _missing_weights_message(spec: BackboneSpec, weights: Path | None, hub_error: str | None) -> str:
    from huggingface_hub import constants

    configured = f"{weights} (file not found)" if weights is not None else "none set"
    looked_at = [f"configured path ({_WEIGHTS_CONFIG_KEY}.{spec.name}): {configured}"]
    if spec.hub_id is not None:
        offline = " (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else ""
        looked_at.append(f"Hugging Face hub {spec.hub_id} with cache dir {constants.HF_HUB_CACHE}{offline}: {str(hub_error).rstrip('. ')}")
    else:
        looked_at.append("Hugging Face hub: the entry has no hub_id")
    fixes = [f"set `{_WEIGHTS_CONFIG_KEY}: {{{spec.name}: /path/to/pytorch_model.bin}}` in the config file (config/config.yaml by default)"]
    if spec.hub_id is not None:
        repo = spec.hub_id.removeprefix("hf-hub:")
        fixes.append(
            f"request access on https://huggingface.co/{repo}, run `hf auth login` "
            "(or set HF_TOKEN), and run once with network access to fill the cache"
        )
    return (
        f"no weights found for backbone {spec.name!r}. Looked at: "
        + "; ".join(looked_at)
        + ". To fix, "
        + ", or ".join(fixes)
        + "."
    )


def _build_timm_encoder(spec: BackboneSpec, *, weights: Path | None, seed: int) -> TimmEncoder:
    if weights is not None:
        if not weights.is_file():
            raise MissingWeightsError(_missing_weights_message(spec, weights, hub_error="not tried"))
        model = _model_from_file(spec, weights, seed=seed)
        source = f"file {weights}"
    elif spec.pretrained:
        if spec.hub_id is None:
            raise MissingWeightsError(_missing_weights_message(spec, None, hub_error=None))
        try:
            model = _create_timm_model(spec, pretrained=True, seed=seed)
        except OSError as err:
            # huggingface_hub raises OSError subclasses for offline mode, missing cache
            # entries, gated repositories and connection failures.
            raise MissingWeightsError(_missing_weights_message(spec, None, f"{type(err).__name__}: {err}")) from err
        source = f"Hugging Face hub {spec.hub_id}"
    else:
        model = _create_timm_model(spec, pretrained=False, seed=seed)
        source = f"random init (seed {seed})"

    _check_model_matches_spec(spec, model)
    logger.info("backbone %s: weights from %s", spec.name, source)
    return TimmEncoder(spec, model, weights_source=source)


def _check_model_matches_spec(spec: BackboneSpec, model: torch.nn.Module) -> None:
    """Raise ValueError when the built network cannot produce the spec's embedding."""
    if spec.embedding_rule in ("cls", "cls_mean_patch") and getattr(model, "cls_token", None) is None:
        raise ValueError(
            f"backbone {spec.name!r} uses embedding_rule {spec.embedding_rule!r}, but its network has no class token. "
            "Use embedding_rule 'pooled' for it."
        )
    width = model.num_features * _TOKEN_RULE_WIDTH_FACTOR[spec.embedding_rule]
    if width != spec.embedding_dim:
        raise ValueError(
            f"backbone {spec.name!r} declares embedding_dim={spec.embedding_dim}, but its network gives {width} "
            f"with embedding_rule {spec.embedding_rule!r}. Set embedding_dim={width} in its registry entry."
        )


def _build_morphology_encoder(spec: BackboneSpec, *, weights: Path | None, seed: int) -> Encoder:
    from histodecon.morphology import MorphologyEncoder

    if weights is not None:
        raise ValueError(
            f"backbone {spec.name!r} has no weights, but a weights file {weights} was given. "
            f"Remove {spec.name} from {_WEIGHTS_CONFIG_KEY} in the config file."
        )
    logger.info("backbone %s: hand-crafted features, no weights", spec.name)
    return MorphologyEncoder(spec)


_BUILDERS: Mapping[str, Callable[..., Encoder]] = MappingProxyType(
    {"timm": _build_timm_encoder, "morphology": _build_morphology_encoder}
)


def load_encoder(spec: BackboneSpec | str, *, weights: str | Path | None = None, seed: int = 0) -> Encoder:
    """Build the encoder of a registry entry in evaluation mode on the CPU.

    Parameters
    ----------
    spec
        Registry record, or the name of one.
    weights
        Local weights file (``.safetensors``, else a ``torch.save`` state dict loaded with
        ``weights_only=True``). It is loaded strictly and takes precedence over the hub.
    seed
        Seed of the random initialisation of control entries (and of parameters that a
        weights file does not overwrite, of which a strict load leaves none).

    Returns
    -------
    Encoder
        Object with ``encode(images, *, microns_per_pixel)`` mapping a uint8 batch, shape
        (n, P, P, 3), to float32, shape (n, spec.embedding_dim), and the attribute
        ``weights_source`` naming where the weights came from.

    Raises
    ------
    UnknownBackboneError
        If ``spec`` is a name that is not registered.
    MissingWeightsError
        If a pretrained entry has no readable local file and the hub (or its cache) fails.
    IncompatibleWeightsError
        If the weights file does not match the architecture.
    """
    if isinstance(spec, str):
        spec = get_backbone(spec)
    weights_path = Path(weights) if weights is not None else None
    encoder = _BUILDERS[spec.family](spec, weights=weights_path, seed=seed)
    return encoder.eval()
