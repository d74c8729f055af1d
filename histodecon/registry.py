"""Registry of patch encoders ("backbones"): one frozen record per encoder.

A record names where the weights come from, how the network is built, the input size and
resize rule, the normalisation, the rule that reads the embedding from the network's
output, the embedding width, the recommended µm/px and the licence. Each entry cites the
model card or reference code its facts were checked against; facts that no source states
are marked ``NOTE``. :mod:`histodecon.backbones` builds an encoder from any record.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, Literal, get_args

__all__ = [
    "BackboneFamily",
    "BackboneSpec",
    "EmbeddingRule",
    "UnknownBackboneError",
    "get_backbone",
    "list_backbones",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

BackboneFamily = Literal["timm", "conch", "transformers", "morphology"]
EmbeddingRule = Literal["cls", "cls_mean_patch", "pooled", "avgpool_map", "attentional_pool", "features"]
"""Rule that reads the embedding from a backbone's output.

- ``cls``: the class token after the final norm, width = model width.
- ``cls_mean_patch``: the class token concatenated with the mean of the patch tokens; the
  class and register tokens are left out of the mean. Width = 2 x model width.
- ``pooled``: timm's own pooling head without classifier (``forward_head(pre_logits=True)``).
- ``avgpool_map``: global average of the last feature map of a convolutional network.
- ``attentional_pool``: CONCH's attentional pooler over all tokens, then its layer norm.
- ``features``: hand-crafted features of the ``morphology`` family.
"""

# Normalisation constants, each from the source named.
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision / timm ImageNet statistics
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # CONCH conch/open_clip_custom/constants.py
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HOPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)  # bioptimus/H-optimus-0 config.json
HOPTIMUS_STD = (0.211883, 0.230117, 0.177517)
HIBOU_MEAN = (0.7068, 0.5755, 0.722)  # HistAI/hibou example.ipynb
HIBOU_STD = (0.195, 0.2316, 0.1816)
HALF = (0.5, 0.5, 0.5)  # kaiko-ai/towards_large_pathology_fms README.md

# Layer classes in create_kwargs are written as import paths so records stay JSON-serialisable.
SWIGLU = {"mlp_layer": "timm.layers.SwiGLUPacked", "act_layer": "torch.nn.SiLU"}
# H-optimus-0 and -1 card call: timm.create_model(hub_id, init_values=1e-5, dynamic_img_size=False).
HOPTIMUS_ARGS = {"img_size": 224, "init_values": 1e-5, "dynamic_img_size": False, "num_classes": 0}


class UnknownBackboneError(ValueError):
    """A backbone name that is not in the registry."""


@dataclass(frozen=True)
class BackboneSpec:
    """Registry record of one patch encoder.

    Attributes
    ----------
    name
        Registry key, used in config files and output metadata.
    family
        ``timm`` (built with :func:`timm.create_model`), ``conch`` (a timm ViT trunk with
        CONCH's attentional pooler), ``transformers`` (Hugging Face ``AutoModel``) or
        ``morphology`` (hand-crafted features of :mod:`histodecon.morphology`).
    embedding_rule
        How the embedding is read from the output, see :data:`EmbeddingRule`.
    embedding_dim
        Width of the embedding (number of ``emb_`` columns).
    input_px
        Side of the square network input in pixels.
    microns_per_pixel
        Recommended pixel size of the input in µm/px (the scale the encoder was trained at).
    mean, std
        Per-channel RGB normalisation applied to pixel values in [0, 1].
    pretrained
        Whether the encoder needs trained weights (from a file or the hub).
    control
        Whether the entry is a negative control (random weights) that every pretrained
        encoder is expected to beat.
    resize_px
        When set, patches are resized to this side and centre-cropped to ``input_px`` (the
        model card's transform); otherwise they are resized to ``input_px``.
    architecture
        timm architecture of the network (``timm`` and ``conch``), used for a local weights
        file and for random initialisation. For ``transformers`` entries, the config class
        that names the architecture family (e.g. ``Dinov2WithRegistersConfig``).
    hub_id
        Hugging Face repository (``owner/name``) of the pretrained weights, or None.
    hub_filename
        Weights file in ``hub_id`` for families that download one file (``conch``).
    create_kwargs
        Keyword arguments for :func:`timm.create_model`; layer classes as import paths.
    model_kwargs
        Keyword arguments for ``AutoModel.from_pretrained`` (``transformers``).
    pooler
        ``conch``: ``d_model``, ``n_head`` and ``n_queries`` of the attentional pooler.
    num_register_tokens
        ``transformers``: register tokens after the class token (timm models report theirs).
    ignore_weight_prefixes
        State-dict key prefixes of a weights file that the truncated network does not use.
    trust_remote_code
        Whether loading from the hub runs code from the model repository; it runs only for
        entries listed in ``embedding.trust_remote_code`` of the config.
    licence
        Licence and access terms of the weights.
    source
        Where the facts of this entry were checked (model card, reference code).
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
    resize_px: int | None = None
    architecture: str | None = None
    hub_id: str | None = None
    hub_filename: str | None = None
    create_kwargs: Mapping[str, Any] = field(default_factory=dict)
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    pooler: Mapping[str, int] = field(default_factory=dict)
    num_register_tokens: int = 0
    ignore_weight_prefixes: tuple[str, ...] = ()
    trust_remote_code: bool = False
    licence: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        for name in ("create_kwargs", "model_kwargs", "pooler"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        object.__setattr__(self, "ignore_weight_prefixes", tuple(self.ignore_weight_prefixes))
        self._validate()

    def _validate(self) -> None:
        prefix = f"backbone {self.name!r}:"
        if self.family not in get_args(BackboneFamily):
            raise ValueError(f"{prefix} invalid family {self.family!r}; valid: {get_args(BackboneFamily)}")
        if self.embedding_rule not in get_args(EmbeddingRule):
            raise ValueError(f"{prefix} invalid embedding_rule {self.embedding_rule!r}; valid: {get_args(EmbeddingRule)}")
        if (self.family == "morphology") != (self.embedding_rule == "features"):
            raise ValueError(f"{prefix} embedding_rule 'features' is for the morphology family only, got {self.embedding_rule!r}")
        if (self.family == "conch") != (self.embedding_rule == "attentional_pool"):
            raise ValueError(f"{prefix} embedding_rule 'attentional_pool' is for the conch family only")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"{prefix} mean and std need 3 values with std > 0, got mean={self.mean} std={self.std}")
        if self.embedding_dim <= 0 or self.input_px <= 0 or self.microns_per_pixel <= 0:
            raise ValueError(
                f"{prefix} embedding_dim, input_px and microns_per_pixel must be positive, got "
                f"{self.embedding_dim}, {self.input_px}, {self.microns_per_pixel}"
            )
        if self.resize_px is not None and self.resize_px < self.input_px:
            raise ValueError(f"{prefix} resize_px {self.resize_px} must be at least input_px {self.input_px}")
        if self.family != "morphology" and self.architecture is None:
            raise ValueError(f"{prefix} a {self.family} backbone needs an architecture")
        if self.pretrained and self.control:
            raise ValueError(f"{prefix} a control has random weights, so it cannot be pretrained")
        if self.pretrained and self.hub_id is None:
            raise ValueError(f"{prefix} a pretrained backbone needs a hub_id")
        if self.hub_id is not None and (self.hub_id.count("/") != 1 or ":" in self.hub_id):
            raise ValueError(f"{prefix} hub_id must be a Hugging Face repository 'owner/name', got {self.hub_id!r}")
        if self.family == "conch" and (self.hub_filename is None or set(self.pooler) != {"d_model", "n_head", "n_queries"}):
            raise ValueError(f"{prefix} a conch backbone needs hub_filename and pooler d_model, n_head, n_queries")

    def to_metadata(self) -> dict[str, Any]:
        """Return the fields as a JSON-serialisable dict, for output metadata."""
        record = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in ("create_kwargs", "model_kwargs", "pooler"):
            record[name] = dict(record[name])
        for name in ("mean", "std", "ignore_weight_prefixes"):
            record[name] = list(record[name])
        return record


_NON_COMMERCIAL_GATED = "CC-BY-NC-ND 4.0, non-commercial academic research only; gated: request access on https://huggingface.co/{repo} and log in"

# The registry. Facts about each model come from the source named in its entry.
_SPECS = (
    BackboneSpec(
        name="morphology",
        family="morphology",
        embedding_rule="features",
        embedding_dim=54,  # len(histodecon.morphology.FEATURE_NAMES), checked when the encoder is built
        input_px=224,
        microns_per_pixel=0.5,
        mean=(0.0, 0.0, 0.0),  # identity: the features are computed from uint8 RGB
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
        name="resnet50_trunc",
        family="timm",
        embedding_rule="avgpool_map",
        embedding_dim=1024,
        input_px=224,
        microns_per_pixel=0.5,  # HEST-Benchmark: 224 px patches at 20x
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        pretrained=True,
        control=False,
        architecture="resnet50",
        hub_id="timm/resnet50.tv_in1k",
        # Feature index 3 is layer3 (index 0 is the stem): 1024 channels at stride 16.
        create_kwargs={"features_only": True, "out_indices": (3,)},
        ignore_weight_prefixes=("layer4.", "fc."),
        licence="BSD-3-Clause (torchvision ImageNet weights), not gated",
        source="mahmoodlab/HEST pretrained_configs/resnet50_trunc.json and inference_models.py; mahmoodlab/CLAM models/timm_wrapper.py",
    ),
    BackboneSpec(
        name="uni",
        family="timm",
        embedding_rule="cls",
        embedding_dim=1024,
        input_px=224,
        microns_per_pixel=0.5,  # pretrained on 256 and 512 px tiles at 20x, about 0.5 µm/px
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        pretrained=True,
        control=False,
        architecture="vit_large_patch16_224",
        hub_id="MahmoodLab/uni",
        # init_values creates the LayerScale parameters (blocks.*.ls1.gamma) of the checkpoint.
        create_kwargs={"init_values": 1e-5, "num_classes": 0, "dynamic_img_size": True},
        licence=_NON_COMMERCIAL_GATED.format(repo="MahmoodLab/uni"),
        source="huggingface.co/MahmoodLab/uni; github.com/mahmoodlab/UNI README_old.md, uni/get_encoder/get_encoder.py",
    ),
    BackboneSpec(
        name="uni2_h",
        family="timm",
        embedding_rule="cls",
        embedding_dim=1536,
        input_px=224,
        microns_per_pixel=0.5,  # NOTE: not stated for UNI2; TRIDENT runs it at 20x
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        pretrained=True,
        control=False,
        architecture="vit_giant_patch14_224",
        hub_id="MahmoodLab/UNI2-h",
        create_kwargs={
            "img_size": 224, "patch_size": 14, "depth": 24, "num_heads": 24, "init_values": 1e-5,
            "embed_dim": 1536, "mlp_ratio": 2.66667 * 2, "num_classes": 0, "no_embed_class": True,
            "reg_tokens": 8, "dynamic_img_size": True, **SWIGLU,
        },
        licence=_NON_COMMERCIAL_GATED.format(repo="MahmoodLab/UNI2-h"),
        source="github.com/mahmoodlab/UNI README.md (UNI2-h timm_kwargs), huggingface.co/MahmoodLab/UNI2-h",
    ),
    BackboneSpec(
        name="conch",
        family="conch",
        embedding_rule="attentional_pool",
        embedding_dim=512,
        input_px=448,
        microns_per_pixel=0.5,  # NOTE: the card states none; TRIDENT feeds 512 px tiles at 20x
        mean=OPENAI_CLIP_MEAN,
        std=OPENAI_CLIP_STD,
        pretrained=True,
        control=False,
        architecture="vit_base_patch16_224",
        hub_id="MahmoodLab/conch",
        hub_filename="pytorch_model.bin",
        create_kwargs={"img_size": 448, "num_classes": 0, "dynamic_img_size": True},
        # encode_image(proj_contrast=False, normalize=False): pooled token before the projection.
        pooler={"d_model": 512, "n_head": 8, "n_queries": 1},
        licence=_NON_COMMERCIAL_GATED.format(repo="MahmoodLab/conch"),
        source=(
            "github.com/mahmoodlab/CONCH conch/open_clip_custom/coca_model.py, vision_tower.py, "
            "model_configs/conch_ViT-B-16.json, transform.py (448 px, OpenAI CLIP mean/std)"
        ),
    ),
    BackboneSpec(
        name="virchow",
        family="timm",
        embedding_rule="cls_mean_patch",
        embedding_dim=2560,
        input_px=224,
        microns_per_pixel=0.5,  # NOTE: not on the card; TRIDENT runs it at 20x
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        pretrained=True,
        control=False,
        architecture="vit_huge_patch14_224",
        hub_id="paige-ai/Virchow",
        create_kwargs={
            "img_size": 224, "init_values": 1e-5, "num_classes": 0, "mlp_ratio": 5.3375,
            "global_pool": "", "dynamic_img_size": True, **SWIGLU,
        },
        licence="Apache-2.0 with additional terms; gated: request access on https://huggingface.co/paige-ai/Virchow",
        source="huggingface.co/paige-ai/Virchow (card: CLS concatenated with mean patch token); TRIDENT VirchowInferenceEncoder",
    ),
    BackboneSpec(
        name="virchow2",
        family="timm",
        embedding_rule="cls_mean_patch",  # patch tokens start after 1 class and 4 register tokens
        embedding_dim=2560,
        input_px=224,
        microns_per_pixel=0.5,  # trained on 5x to 40x tiles (arXiv 2408.00738)
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        pretrained=True,
        control=False,
        architecture="vit_huge_patch14_224",
        hub_id="paige-ai/Virchow2",
        create_kwargs={
            "img_size": 224, "init_values": 1e-5, "num_classes": 0, "reg_tokens": 4, "mlp_ratio": 5.3375,
            "global_pool": "", "dynamic_img_size": True, **SWIGLU,
        },
        licence=_NON_COMMERCIAL_GATED.format(repo="paige-ai/Virchow2"),
        source="huggingface.co/paige-ai/Virchow2 (card: tokens[:, 5:] are the patch tokens); TRIDENT Virchow2InferenceEncoder",
    ),
    BackboneSpec(
        name="gigapath",
        family="timm",
        embedding_rule="cls",
        embedding_dim=1536,
        input_px=224,
        microns_per_pixel=0.5,  # prov-gigapath demo/2_tiling_demo.py: slides at 0.5 µm/px
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        pretrained=True,
        control=False,
        resize_px=256,  # card transform: resize 256 (bicubic), centre crop 224
        architecture="vit_giant_patch14_dinov2",
        hub_id="prov-gigapath/prov-gigapath",
        # The hub config's model_args; patch 16 although the timm name says 14 (needs timm >= 1.0.3).
        create_kwargs={
            "img_size": 224, "in_chans": 3, "patch_size": 16, "embed_dim": 1536, "depth": 40, "num_heads": 24,
            "init_values": 1e-5, "mlp_ratio": 5.33334, "num_classes": 0,
        },
        licence=(
            "gated: request access on https://huggingface.co/prov-gigapath/prov-gigapath; the hub lists Apache-2.0, "
            "the GitHub licence allows non-commercial research only"
        ),
        source="github.com/prov-gigapath/prov-gigapath README.md, issues 7 and 129; hub config.json as used by TRIDENT",
    ),
    BackboneSpec(
        name="h_optimus_0",
        family="timm",
        embedding_rule="cls",
        embedding_dim=1536,
        input_px=224,
        microns_per_pixel=0.5,  # card: 224 x 224 tiles at 0.5 µm/px
        mean=HOPTIMUS_MEAN,
        std=HOPTIMUS_STD,
        pretrained=True,
        control=False,
        architecture="vit_giant_patch14_reg4_dinov2",
        hub_id="bioptimus/H-optimus-0",
        create_kwargs=HOPTIMUS_ARGS,
        licence="Apache-2.0 (card metadata); NOTE: gating not confirmed",
        source="huggingface.co/bioptimus/H-optimus-0 config.json and card; github.com/bioptimus/releases models/h-optimus/v0",
    ),
    BackboneSpec(
        name="h_optimus_1",
        family="timm",
        embedding_rule="cls",
        embedding_dim=1536,
        input_px=224,
        microns_per_pixel=0.5,  # NOTE: card not read; reference code uses 0.5 µm/px
        mean=HOPTIMUS_MEAN,
        std=HOPTIMUS_STD,
        pretrained=True,
        control=False,
        architecture="vit_giant_patch14_reg4_dinov2",
        hub_id="bioptimus/H-optimus-1",
        create_kwargs=HOPTIMUS_ARGS,
        licence="gated (manual review): https://huggingface.co/bioptimus/H-optimus-1; CC-BY-NC-ND 4.0 per TRIDENT",
        source="TRIDENT HOptimus1InferenceEncoder; huggingface.co/bioptimus/H-optimus-1 discussions",
    ),
    BackboneSpec(
        name="h0_mini",
        family="timm",
        embedding_rule="cls_mean_patch",  # the card's concatenation; patch tokens after 1 class + 4 registers
        embedding_dim=1536,
        input_px=224,
        microns_per_pixel=0.5,  # NOTE: distilled from H-optimus-0 (0.5 µm/px); not stated on the card
        mean=HOPTIMUS_MEAN,  # NOTE: from plismbench (by H0-mini's authors), not read on the hub
        std=HOPTIMUS_STD,
        pretrained=True,
        control=False,
        architecture="vit_base_patch14_reg4_dinov2",
        hub_id="bioptimus/H0-mini",
        create_kwargs={
            "img_size": 224, "init_values": 1e-5, "num_classes": 0, "dynamic_img_size": False, "mlp_ratio": 4, **SWIGLU,
        },
        licence="gated: request access on https://huggingface.co/bioptimus/H0-mini; CC-BY-NC-ND 4.0 per TRIDENT",
        source="huggingface.co/bioptimus/H0-mini card snippet; owkin/plism-benchmark plismbench/models/bioptimus.py",
    ),
    BackboneSpec(
        name="phikon",
        family="transformers",
        embedding_rule="cls",  # last_hidden_state[:, 0]
        embedding_dim=768,
        input_px=224,
        microns_per_pixel=0.5,  # owkin/HistoSSLscaling README.md: 224 px tiles at 20x
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        pretrained=True,
        control=False,
        architecture="ViTConfig",
        hub_id="owkin/phikon",
        model_kwargs={"add_pooling_layer": False},  # the checkpoint has no pooler
        licence="Owkin non-commercial licence (owkin/HistoSSLscaling LICENSE.txt); not gated",
        source="huggingface.co/owkin/phikon config.json; TRIDENT and HEST phikon loaders",
    ),
    BackboneSpec(
        name="phikon_v2",
        family="transformers",
        embedding_rule="cls",
        embedding_dim=1024,
        input_px=224,
        microns_per_pixel=0.5,  # NOTE: 20x in the Phikon-v2 report; not read on the card
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        pretrained=True,
        control=False,
        architecture="Dinov2Config",
        hub_id="owkin/phikon-v2",
        licence="Owkin non-commercial licence (LICENSE.pdf in the hub repository); not gated",
        source="huggingface.co/owkin/phikon-v2 card (DINOv2 ViT-L/16); TRIDENT phikon_v2 loader",
    ),
    BackboneSpec(
        name="hibou_b",
        family="transformers",
        embedding_rule="cls",  # pooler_output of the card is the normed class token
        embedding_dim=768,
        input_px=224,
        microns_per_pixel=0.5,  # NOTE: not stated; TRIDENT uses 20x
        mean=HIBOU_MEAN,
        std=HIBOU_STD,
        pretrained=True,
        control=False,
        resize_px=224,  # card transform: resize 224 (bicubic), centre crop 224
        architecture="Dinov2WithRegistersConfig",
        hub_id="histai/hibou-b",
        num_register_tokens=4,
        trust_remote_code=True,  # the hub repository ships its own DINOv2-with-registers code
        licence="Apache-2.0; NOTE: gating not confirmed for hibou-b",
        source="github.com/HistAI/hibou README.md, example.ipynb, hibou/models/__init__.py",
    ),
    BackboneSpec(
        name="hibou_l",
        family="transformers",
        embedding_rule="cls",
        embedding_dim=1024,
        input_px=224,
        microns_per_pixel=0.5,  # NOTE: not stated; TRIDENT uses 20x
        mean=HIBOU_MEAN,
        std=HIBOU_STD,
        pretrained=True,
        control=False,
        resize_px=224,
        architecture="Dinov2WithRegistersConfig",
        hub_id="histai/hibou-L",
        num_register_tokens=4,
        trust_remote_code=True,
        licence="Apache-2.0; gated: request access on https://huggingface.co/histai/hibou-L",
        source="github.com/HistAI/hibou README.md, example.ipynb; huggingface.co/histai/hibou-L",
    ),
    BackboneSpec(
        name="kaiko_vitb8",
        family="timm",
        embedding_rule="cls",
        embedding_dim=768,
        input_px=224,
        microns_per_pixel=0.5,  # NOTE: trained on TCGA at several magnifications; TRIDENT uses 20x
        mean=HALF,
        std=HALF,
        pretrained=True,
        control=False,
        architecture="vit_base_patch8_224",
        hub_id="1aurent/vit_base_patch8_224.kaiko_ai_towards_large_pathology_fms",
        create_kwargs={"dynamic_img_size": True, "num_classes": 0},
        licence="Kaiko non-commercial public licence v1; not gated",
        source="github.com/kaiko-ai/towards_large_pathology_fms README.md, hubconf.py; TRIDENT KaikoInferenceEncoder",
    ),
    BackboneSpec(
        name="kaiko_vitl14",
        family="timm",
        embedding_rule="cls",
        embedding_dim=1024,
        input_px=224,
        microns_per_pixel=0.5,  # NOTE: as kaiko_vitb8
        mean=HALF,
        std=HALF,
        pretrained=True,
        control=False,
        architecture="vit_large_patch14_reg4_dinov2",
        hub_id="1aurent/vit_large_patch14_reg4_dinov2.kaiko_ai_towards_large_pathology_fms",
        # Position embeddings are stored for 518 px and interpolated to the 224 px input.
        create_kwargs={"img_size": 518, "dynamic_img_size": True, "num_classes": 0},
        licence="Kaiko non-commercial public licence v1; not gated",
        source="github.com/kaiko-ai/towards_large_pathology_fms hubconf.py; TRIDENT KaikoInferenceEncoder",
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
