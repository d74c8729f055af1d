"""Final models: one regressor per backbone, trained on every labelled slide, saved with what
applying it to new H&E needs.

Cross-validation measures how well a backbone x regressor pair generalises. The model that
maps new slides is then fitted once more on all labelled spots, with the same embeddings,
tissue filter and regressor settings. The MLP stops early on whole held-out training
slides, as it does inside each fold. The saved file contains the fitted regressor (its own
standardisation inside) and a metadata record. The record gives the backbone, the embedding
width, the patch geometry (field of view in µm, µm/px, pixels), the target and its cell
types, the training slides and the package versions. :func:`check_model` refuses to apply a
model to embeddings of another backbone or patch geometry.

The file is a joblib pickle, the format scikit-learn documents for its estimators. Like any
pickle, it runs code when loaded, so load only models you trained yourself.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import joblib

from histodecon.io import atomic_path, read_parquet_metadata
from histodecon.keys import PROVENANCE_KEY
from histodecon.provenance import active_record, package_versions
from histodecon.regressors import Regressor

logger = logging.getLogger(__name__)

__all__ = ["MODEL_FORMAT", "ModelMismatchError", "train_final_model", "save_model", "load_model", "check_model"]

MODEL_FORMAT = "histodecon-final-model/1"
# Relative difference in µm/px tolerated between the model's patches and new patches.
MPP_TOLERANCE = 0.01


class ModelMismatchError(ValueError):
    """A saved model applied to embeddings it was not trained for."""


def train_final_model(
    *,
    backbone: str,
    regressor: str,
    embeddings: Mapping[str, str | os.PathLike],
    labels: Mapping[str, str | os.PathLike],
    target: str,
    params: Mapping[str, Any],
    min_tissue_fraction: float,
    seed: int,
) -> tuple[Regressor, dict]:
    """Fit ``regressor`` on the embeddings and labels of every slide.

    Parameters
    ----------
    backbone, regressor : str
        Names of the encoder and of the regressor (``mean``, ``ridge``, ``mlp``).
    embeddings, labels : mapping
        Slide to its embedding and label parquet files, as for cross-validation.
    target : str
        ``q05``, ``mean`` or ``proportion``.
    params : mapping
        Regressor settings (config ``cv.<regressor>``).
    min_tissue_fraction : float
        Spots with less tissue in their patch are left out, as in cross-validation.
    seed : int
        Seed of the regressor (MLP initialisation, validation split).

    Returns
    -------
    model, metadata
        The fitted regressor and the record saved beside it.
    """
    from histodecon.cv import load_cv_data
    from histodecon.regressors import make_regressor

    data = load_cv_data(embeddings, labels, target=target, min_tissue_fraction=min_tissue_fraction)
    model = make_regressor(regressor, dict(params), seed=seed).fit(data.X, data.Y, groups=data.slides)
    first = read_parquet_metadata(next(iter(embeddings.values())))
    geometry = first.get("patch_geometry", {})
    metadata = {
        "format": MODEL_FORMAT,
        "backbone": backbone,
        "regressor": regressor,
        "embedding_dim": int(data.X.shape[1]),
        "field_of_view_um": float(geometry["field_of_view_um"]),
        "patch_microns_per_pixel": float(geometry["patch_microns_per_pixel"]),
        "patch_px": int(geometry["patch_px"]),
        "target": target,
        "cell_types": list(data.cell_types),
        "training_slides": sorted(set(data.slides.tolist())),
        "n_training_spots": int(len(data.slides)),
        "min_tissue_fraction": min_tissue_fraction,
        "params": dict(params),
        "hyperparameters": dict(model.hyperparameters_),
        "seed": seed,
        "backbone_spec": first.get("backbone_spec"),
        "weights_source": first.get("weights_source"),
        "versions": package_versions(),
    }
    if active_record() is not None:
        metadata[PROVENANCE_KEY] = active_record()
    logger.info(
        "final %s / %s model: %d spots of %d slides, %d dimensions -> %d cell types",
        backbone,
        regressor,
        len(data.slides),
        len(metadata["training_slides"]),
        data.X.shape[1],
        len(data.cell_types),
    )
    return model, metadata


def save_model(model: Regressor, metadata: Mapping, path: str | Path) -> None:
    """Write the model and its metadata to ``path`` (joblib), atomically."""
    with atomic_path(path) as tmp:
        joblib.dump({"format": MODEL_FORMAT, "model": model, "metadata": dict(metadata)}, tmp)


def load_model(path: str | Path) -> tuple[Regressor, dict]:
    """Read a model written by :func:`save_model`; return the regressor and its metadata."""
    content = joblib.load(path)
    if not isinstance(content, dict) or content.get("format") != MODEL_FORMAT:
        raise ModelMismatchError(
            f"{path} is not a histodecon final model (format {MODEL_FORMAT}); rebuild it with "
            "`snakemake results/models/<backbone>/<regressor>.joblib`"
        )
    return content["model"], content["metadata"]


def check_model(metadata: Mapping, *, backbone: str, embedding_dim: int, field_of_view_um: float, microns_per_pixel: float, source: str) -> None:
    """Raise :class:`ModelMismatchError` unless the model fits embeddings with these properties.

    Parameters
    ----------
    metadata : mapping
        Metadata of the model (:func:`load_model`).
    backbone, embedding_dim : str, int
        Encoder and width of the new embeddings.
    field_of_view_um, microns_per_pixel : float
        Patch geometry of the new embeddings.
    source : str
        The file the new embeddings come from, named in the message.
    """
    problems = []
    if metadata["backbone"] != backbone:
        problems.append(f"backbone {backbone!r}, but the model was trained on {metadata['backbone']!r}")
    if metadata["embedding_dim"] != embedding_dim:
        problems.append(f"{embedding_dim} embedding dimensions, but the model expects {metadata['embedding_dim']}")
    if not math.isclose(metadata["field_of_view_um"], field_of_view_um, rel_tol=MPP_TOLERANCE):
        problems.append(f"a {field_of_view_um:g} µm field of view, but the model's patches cover {metadata['field_of_view_um']:g} µm")
    if not math.isclose(metadata["patch_microns_per_pixel"], microns_per_pixel, rel_tol=MPP_TOLERANCE):
        problems.append(
            f"patches at {microns_per_pixel:g} µm/px, but the model's patches are at {metadata['patch_microns_per_pixel']:g} µm/px"
        )
    if problems:
        raise ModelMismatchError(
            f"{source} has " + "; ".join(problems) + ". Set `patches` and the model's backbone in the config to the "
            "values the model was trained with, or retrain the model with the new ones."
        )
