# Sample sheet loading, wildcard constraints and input functions shared by all rule files.

import re

from histodecon.registry import get_backbone, list_backbones
from histodecon.combine import check_combined_backbones
from histodecon.samples import read_prediction_sheet, read_sample_sheet

SAMPLES = read_sample_sheet(config["samples"])
validate(SAMPLES, "../schemas/samples.schema.yaml")
SLIDES = SAMPLES.index.tolist()
COMBINED_BACKBONES = config["combined_backbones"]
# Backbones that are cross-validated and evaluated: the listed encoders, then the combined
# ones. The components of a combination are embedded whether or not they are listed.
BACKBONES = config["backbones"] + list(COMBINED_BACKBONES)
REGRESSORS = config["cv"]["regressors"]
PAIRS = [(b, r) for b in BACKBONES for r in REGRESSORS]


def split_pair(text):
    """Return ``(backbone, regressor)`` from ``"<backbone>/<regressor>"``."""
    backbone, _, regressor = text.partition("/")
    return backbone, regressor


check_combined_backbones(
    COMBINED_BACKBONES, registered=list_backbones(), configured=config["backbones"]
)
for _backbone in config["backbones"]:
    get_backbone(_backbone)  # an unknown name stops here, with the list of valid names

_map_predictions = config["report"]["map_predictions"]
if _map_predictions != "best" and split_pair(_map_predictions) not in PAIRS:
    raise ValueError(
        f"report.map_predictions is {_map_predictions!r}, which is not a cross-validated pair; "
        f"use 'best' or one of {['/'.join(p) for p in PAIRS]}"
    )

# Images to map with the `predict` target, and the backbone x regressor models to map them with.
PREDICT_SHEET = (
    read_prediction_sheet(config["predict"]["samples"], training_slides=SLIDES)
    if config["predict"]["samples"]
    else None
)
PREDICT_MODELS = [split_pair(m) for m in config["predict"]["models"]]
# Slides the final models are trained on: every labelled slide but the held-out ones.
_holdout = config["predict"]["holdout_slides"]
MODEL_SLIDES = [s for s in SLIDES if s not in _holdout]
if set(_holdout) - set(SLIDES) or not MODEL_SLIDES:
    raise ValueError(
        f"predict.holdout_slides is {_holdout}; it may name only slides of {config['samples']} "
        f"({SLIDES}) and must leave at least one to train the final models on"
    )
_unknown_models = [
    m for m in PREDICT_MODELS if m not in PAIRS or m[0] in COMBINED_BACKBONES
]
if _unknown_models:
    raise ValueError(
        f"predict.models names {['/'.join(m) for m in _unknown_models]}, which are not cross-validated "
        f"pairs of a registered encoder; choose from {['/'.join(p) for p in PAIRS if p[0] not in COMBINED_BACKBONES]}"
    )

# Fail at DAG build, not after hours of fitting, when the folds cannot be formed.
_group_column = "patient" if config["cv"]["group_by"] == "patient" else "slide"
_n_groups = SAMPLES[_group_column].nunique()
if _n_groups < 2:
    raise ValueError(
        f"cv.group_by={config['cv']['group_by']!r} needs at least 2 groups to leave one out, but "
        f"{config['samples']} has {_n_groups}; add slides or patients, or set cv.group_by to slide."
    )


wildcard_constraints:
    slide="[A-Za-z0-9][A-Za-z0-9._-]*",
    image="[A-Za-z0-9][A-Za-z0-9._-]*",
    backbone="[A-Za-z0-9_+]+",
    regressor="[a-z]+",


def wildcard_choices(names):
    """Return a regex that matches exactly one of ``names``, or nothing when there are none."""
    return "|".join(re.escape(name) for name in names) or "(?!)"


def sample_row(slide):
    """Return the sample sheet row of ``slide`` as a plain dict (JSON-safe for params)."""
    row = SAMPLES.loc[slide].to_dict()
    return {k: (None if isinstance(v, float) and v != v else v) for k, v in row.items()}


def ingest_inputs(wildcards):
    """Return the input files of a slide's row (files or Space Ranger folders), by role."""
    row = SAMPLES.loc[wildcards.slide]
    return {role: row[role] for role in ("counts", "spots", "image") if row[role]}


def slides_with_published_proportions():
    return [s for s in SLIDES if SAMPLES.loc[s, "published_proportions"]]


def backbone_weights(wildcards):
    """Return the configured local weight file of a backbone as an input, or nothing."""
    path = config["backbone_weights"].get(wildcards.backbone)
    return [path] if path else []


def combined_components(wildcards):
    """Return a slide's embedding files of a combined backbone's components, in their order."""
    return expand(
        "results/embeddings/{backbone}/{slide}.parquet",
        backbone=COMBINED_BACKBONES[wildcards.backbone],
        slide=wildcards.slide,
    )


def prediction_row(image):
    """Return the prediction sheet row of ``image`` as a plain dict (NaN becomes None)."""
    row = PREDICT_SHEET.loc[image].to_dict()
    return {k: (None if isinstance(v, float) and v != v else v) for k, v in row.items()}


def prediction_outputs(wildcards):
    """Return every output of the `predict` target; stop with the fix when it is not set up."""
    if PREDICT_SHEET is None or not PREDICT_MODELS:
        raise ValueError(
            "the predict target needs predict.samples (a sheet with slide, image and optional "
            "microns_per_pixel columns) and predict.models (e.g. [morphology/ridge]) in the config"
        )
    outputs = []
    for backbone, regressor in PREDICT_MODELS:
        for kind in ("parquet", "h5ad", "geojson"):
            outputs += expand(
                "results/predict/{backbone}/{regressor}/{image}.{kind}",
                backbone=backbone,
                regressor=regressor,
                image=PREDICT_SHEET.index,
                kind=kind,
            )
        outputs += expand(
            "results/predict/{backbone}/{regressor}/{image}_heatmaps",
            backbone=backbone,
            regressor=regressor,
            image=PREDICT_SHEET.index,
        )
    return outputs


def control_backbones():
    """Return the configured backbones that are negative controls (random weights)."""
    return [
        b for b in BACKBONES if b not in COMBINED_BACKBONES and get_backbone(b).control
    ]


def backbone_gpus(wildcards):
    return 0 if get_backbone(wildcards.backbone).family == "morphology" else 1


def embedded_backbones():
    """Return every backbone that is embedded: the listed ones and combination components."""
    components = [c for names in COMBINED_BACKBONES.values() for c in names]
    return list(
        dict.fromkeys(config["backbones"] + components + list(COMBINED_BACKBONES))
    )


def get_run_outputs():
    """Return the outputs of a full run that the run manifest lists (all but itself)."""
    outputs = [
        "results/metrics/summary.tsv",
        "results/metrics/summary.md",
        "results/metrics/benchmark.tsv",
        "results/labels/signatures.parquet",
        "results/labels/reference_elbo.png",
        "results/figures/benchmark.png",
        "results/figures/signatures.png",
    ]
    outputs += expand("results/ingest/{slide}.h5ad", slide=SLIDES)
    outputs += expand("results/patches/{slide}.h5", slide=SLIDES)
    outputs += expand("results/labels/{slide}.parquet", slide=SLIDES)
    outputs += expand(
        "results/embeddings/{backbone}/{slide}.parquet",
        backbone=embedded_backbones(),
        slide=SLIDES,
    )
    outputs += [f"results/cv/{b}/{r}/predictions.parquet" for b, r in PAIRS]
    outputs += [f"results/figures/scatter/{b}/{r}.png" for b, r in PAIRS]
    outputs += expand(
        "results/slides/{slide}.{kind}", slide=SLIDES, kind=["h5ad", "geojson"]
    )
    outputs += expand("results/figures/maps/{slide}.png", slide=SLIDES)
    if slides_with_published_proportions():
        outputs += [
            "results/metrics/label_agreement.tsv",
            "results/metrics/label_agreement_spots.parquet",
            "results/figures/label_agreement.png",
        ]
    return outputs


def get_final_outputs():
    return get_run_outputs() + ["results/run_manifest.json"]


def prediction_manifest_inputs(wildcards):
    """Return the outputs of the `predict` target and the tiles, embeddings and models behind them."""
    outputs = prediction_outputs(wildcards)
    outputs += expand(
        "results/predict/tiles/{image}.parquet", image=PREDICT_SHEET.index
    )
    for backbone, regressor in PREDICT_MODELS:
        outputs += expand(
            "results/predict/embeddings/{backbone}/{image}.parquet",
            backbone=backbone,
            image=PREDICT_SHEET.index,
        )
        outputs += [
            f"results/models/{backbone}/{regressor}.{kind}"
            for kind in ("joblib", "json")
        ]
    return list(dict.fromkeys(outputs))
