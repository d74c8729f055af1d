"""Leave-one-slide-out or leave-one-patient-out cross-validation of the regressors.

Each fold holds out the slides of one group (a slide or a patient) and fits a fresh
regressor on the spots of all other slides. Scalers, hyperparameter search and early
stopping all run inside the regressor's ``fit`` on those training spots only, so no
statistic of the held-out slides reaches the model.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from histodecon.keys import (
    BARCODE_COL,
    EMBEDDING_PREFIX,
    FOLD_COL,
    LABEL_PREFIX,
    PADDED_COL,
    PATIENT_COL,
    PRED_PREFIX,
    SLIDE_COL,
    TARGET_PREFIXES,
    TISSUE_FRACTION_COL,
    prefixed_columns,
    strip_prefix,
)
from histodecon.regressors import Regressor, RegressorName, make_regressor

logger = logging.getLogger(__name__)

__all__ = ["GROUP_COL", "CVData", "FoldResult", "make_folds", "load_cv_data", "fit_fold", "cross_validate"]

GROUP_COL = "group"  # folds table: the slide or patient that defines the fold
# "auto" grouping uses patients only from this many on: with fewer, leave-one-patient-out
# leaves one or two folds and no inner validation group.
MIN_PATIENTS_FOR_PATIENT_FOLDS = 3


@dataclasses.dataclass(frozen=True)
class CVData:
    """Spots of all slides with embeddings and targets, sorted by slide then barcode.

    Attributes
    ----------
    slides, barcodes : array of str, shape (n_spots,)
    X : array of float32, shape (n_spots, n_dims)
        Embeddings.
    Y : array of float64, shape (n_spots, n_types)
        Targets in the target's unit (cells per spot, or fractions for proportions).
    cell_types : tuple of str, length n_types
    target : str
        Which label was loaded: ``"q05"``, ``"mean"`` or ``"proportion"``.
    """

    slides: np.ndarray
    barcodes: np.ndarray
    X: np.ndarray
    Y: np.ndarray
    cell_types: tuple[str, ...]
    target: str = "q05"

    def __post_init__(self) -> None:
        n = len(self.slides)
        if not (len(self.barcodes) == self.X.shape[0] == self.Y.shape[0] == n):
            raise ValueError(
                f"slides, barcodes, X and Y must have one row per spot, got {n}, {len(self.barcodes)}, "
                f"{self.X.shape[0]} and {self.Y.shape[0]}"
            )
        if self.Y.shape[1] != len(self.cell_types):
            raise ValueError(f"Y has {self.Y.shape[1]} columns but {len(self.cell_types)} cell types are named")


@dataclasses.dataclass
class FoldResult:
    """Fitted model, held-out predictions and bookkeeping of one fold."""

    model: Regressor
    predictions: pd.DataFrame
    info: dict[str, Any]


def make_folds(slides_df: pd.DataFrame, *, group_by: Literal["auto", "slide", "patient"] = "auto") -> pd.DataFrame:
    """Assign each slide to a cross-validation fold.

    Parameters
    ----------
    slides_df : DataFrame
        Sample sheet with a ``slide`` column and, for patient folds, a ``patient`` column.
    group_by : {"auto", "slide", "patient"}
        ``"slide"`` leaves one slide out per fold, ``"patient"`` all slides of one
        patient. ``"auto"`` uses patients when the sheet has at least 3 of them, else
        slides (the her2st demo has 5 slides of a single patient).

    Returns
    -------
    DataFrame
        ``slide``, ``patient`` (NaN without that column), ``group`` and ``fold``
        (0-based, in sorted order of the groups), sorted by slide.
    """
    valid = ("auto", "slide", "patient")
    if group_by not in valid:
        raise ValueError(f"invalid group_by {group_by!r}; valid options are {valid}")
    if SLIDE_COL not in slides_df:
        raise ValueError(f"sample sheet has no {SLIDE_COL!r} column; columns are {list(slides_df.columns)}")
    slides = slides_df[SLIDE_COL].astype(str)
    duplicated = sorted(slides[slides.duplicated()].unique())
    if duplicated:
        raise ValueError(f"sample sheet lists slides more than once: {duplicated}; give each slide one row")

    has_patients = PATIENT_COL in slides_df and slides_df[PATIENT_COL].notna().all()
    n_patients = slides_df[PATIENT_COL].nunique() if has_patients else 0
    if group_by == "patient" and not has_patients:
        raise ValueError(f"group_by='patient' needs a {PATIENT_COL!r} value for every slide; fill it or use 'slide'")
    if group_by == "auto":
        group_by = "patient" if n_patients >= MIN_PATIENTS_FOR_PATIENT_FOLDS else "slide"
        logger.info(
            "folds: %d slides of %d patients, so leave-one-%s-out (patients are used from %d on)",
            len(slides),
            n_patients,
            group_by,
            MIN_PATIENTS_FOR_PATIENT_FOLDS,
        )

    folds = pd.DataFrame(
        {
            SLIDE_COL: slides.to_numpy(),
            PATIENT_COL: slides_df[PATIENT_COL].astype(str).to_numpy() if has_patients else np.nan,
        }
    )
    folds[GROUP_COL] = folds[PATIENT_COL] if group_by == "patient" else folds[SLIDE_COL]
    groups = sorted(folds[GROUP_COL].unique())
    if len(groups) < 2:
        raise ValueError(
            f"cross-validation needs at least 2 {group_by}s, got {groups}; add slides or use group_by='slide'"
        )
    folds[FOLD_COL] = folds[GROUP_COL].map({group: i for i, group in enumerate(groups)}).astype(int)
    logger.info("folds: %d folds, leave-one-%s-out", len(groups), group_by)
    return folds.sort_values(SLIDE_COL, kind="stable").reset_index(drop=True)


def _load_slide(
    slide: str,
    embedding_path: os.PathLike,
    label_path: os.PathLike,
    prefix: str,
    min_tissue_fraction: float,
    drop_padded: bool,
) -> tuple[pd.DataFrame, list[str], list[str]]:
    """Return the spots of one slide that have an embedding, a label and enough tissue."""
    embeddings = pd.read_parquet(embedding_path)
    labels = pd.read_parquet(label_path)
    for name, table, path in (("embedding", embeddings, embedding_path), ("label", labels, label_path)):
        if BARCODE_COL not in table:
            raise ValueError(f"slide {slide!r}: {name} file {path} has no {BARCODE_COL!r} column")
    emb_cols = prefixed_columns(embeddings.columns, EMBEDDING_PREFIX)
    types = sorted(strip_prefix(labels.columns, prefix))
    if not emb_cols:
        raise ValueError(f"slide {slide!r}: {embedding_path} has no {EMBEDDING_PREFIX}* columns")
    if not types:
        raise ValueError(f"slide {slide!r}: {label_path} has no {prefix}* columns; check the target setting")

    embeddings = embeddings.astype({BARCODE_COL: str})
    labels = labels.astype({BARCODE_COL: str})
    joined = embeddings.merge(labels[[BARCODE_COL] + [prefix + t for t in types]], on=BARCODE_COL, how="inner")
    n_no_label = len(embeddings) - len(joined)
    n_no_embedding = len(labels) - len(joined)
    if joined.empty:
        raise ValueError(
            f"slide {slide!r}: no barcode of {embedding_path} ({len(embeddings)} spots) occurs in "
            f"{label_path} ({len(labels)} spots); check that both come from the same slide"
        )
    keep = np.ones(len(joined), dtype=bool)
    if TISSUE_FRACTION_COL in joined:
        keep &= joined[TISSUE_FRACTION_COL].to_numpy() >= min_tissue_fraction
    n_low_tissue = int((~keep).sum())
    n_padded = int(joined[PADDED_COL].sum()) if PADDED_COL in joined else 0
    if drop_padded and PADDED_COL in joined:
        keep &= ~joined[PADDED_COL].to_numpy(dtype=bool)
    joined = joined[keep]
    logger.info(
        "slide %s: %d spots kept; dropped %d without label, %d without embedding, %d with tissue fraction "
        "< %g; %d padded patches %s",
        slide,
        len(joined),
        n_no_label,
        n_no_embedding,
        n_low_tissue,
        min_tissue_fraction,
        n_padded,
        "dropped" if drop_padded else "kept",
    )
    if joined.empty:
        raise ValueError(
            f"slide {slide!r}: every spot has tissue fraction < {min_tissue_fraction} in {embedding_path}; "
            f"lower min_tissue_fraction or check the patches"
        )
    joined = joined.sort_values(BARCODE_COL, kind="stable")
    joined.insert(0, SLIDE_COL, slide)
    return joined, emb_cols, types


def load_cv_data(
    embedding_paths: Mapping[str, str | os.PathLike],
    label_paths: Mapping[str, str | os.PathLike],
    *,
    target: Literal["q05", "mean", "proportion"],
    min_tissue_fraction: float,
    drop_padded: bool = False,
) -> CVData:
    """Join embeddings and labels of every slide on the barcode.

    Parameters
    ----------
    embedding_paths, label_paths : mapping
        Slide to parquet file; both must name the same slides.
    target : {"q05", "mean", "proportion"}
        Label columns used as targets (``q05:<type>`` and so on).
    min_tissue_fraction : float
        Spots whose patch has a smaller tissue fraction (0 to 1) are dropped.
    drop_padded : bool
        Also drop spots whose patch was padded at the image border.

    Returns
    -------
    CVData
        Spots sorted by slide and barcode, cell types sorted by name.
    """
    if target not in TARGET_PREFIXES:
        raise ValueError(f"invalid target {target!r}; valid targets are {sorted(TARGET_PREFIXES)}")
    if not 0.0 <= min_tissue_fraction <= 1.0:
        raise ValueError(f"min_tissue_fraction must be between 0 and 1, got {min_tissue_fraction!r}")
    if set(embedding_paths) != set(label_paths):
        raise ValueError(
            f"embedding and label files must cover the same slides; only embeddings: "
            f"{sorted(set(embedding_paths) - set(label_paths))}, only labels: "
            f"{sorted(set(label_paths) - set(embedding_paths))}"
        )
    if not embedding_paths:
        raise ValueError("no slides given; embedding_paths and label_paths are empty")

    prefix = TARGET_PREFIXES[target]
    tables, reference = [], None
    for slide in sorted(embedding_paths):
        joined, emb_cols, types = _load_slide(
            slide, embedding_paths[slide], label_paths[slide], prefix, min_tissue_fraction, drop_padded
        )
        if reference is None:
            reference = (slide, emb_cols, types)
        elif (emb_cols, types) != reference[1:]:
            raise ValueError(
                f"slide {slide!r} has {len(emb_cols)} embedding dimensions and types {types}, but slide "
                f"{reference[0]!r} has {len(reference[1])} and {reference[2]}; rerun its embeddings or labels"
            )
        tables.append(joined)

    _, emb_cols, types = reference
    spots = pd.concat(tables, ignore_index=True)
    X = spots[emb_cols].to_numpy(dtype=np.float32)
    Y = spots[[prefix + t for t in types]].to_numpy(dtype=np.float64)
    if not (np.isfinite(X).all() and np.isfinite(Y).all()):
        bad = sorted(spots.loc[~(np.isfinite(X).all(1) & np.isfinite(Y).all(1)), SLIDE_COL].unique())
        raise ValueError(f"embeddings or labels of slides {bad} contain NaN or infinite values; rerun those stages")
    logger.info(
        "loaded %d spots of %d slides, %d dimensions, %d cell types (%s)",
        len(spots),
        len(tables),
        X.shape[1],
        len(types),
        target,
    )
    return CVData(
        slides=spots[SLIDE_COL].to_numpy(dtype=str),
        barcodes=spots[BARCODE_COL].to_numpy(dtype=str),
        X=X,
        Y=Y,
        cell_types=tuple(types),
        target=target,
    )


def _check_folds(data: CVData, folds: pd.DataFrame) -> None:
    in_data, in_folds = set(np.unique(data.slides)), set(folds[SLIDE_COL])
    if in_data != in_folds:
        raise ValueError(
            f"folds and data must cover the same slides; only in data: {sorted(in_data - in_folds)}, "
            f"only in folds: {sorted(in_folds - in_data)}"
        )


def _fold_seed(seed: int, fold: int) -> int:
    """Derive an independent seed per fold, so that folds do not share random streams."""
    return int(np.random.SeedSequence([seed, fold]).generate_state(1)[0] >> 1)


def fit_fold(
    data: CVData,
    folds: pd.DataFrame,
    fold: int,
    *,
    regressor: RegressorName,
    params: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> FoldResult:
    """Fit a regressor on the training slides of ``fold`` and predict its held-out slides.

    Returns
    -------
    FoldResult
        The fitted model, the held-out predictions (columns as in :func:`cross_validate`)
        and the fold's row of the folds table.
    """
    _check_folds(data, folds)
    slide_fold = dict(zip(folds[SLIDE_COL], folds[FOLD_COL]))
    slide_group = dict(zip(folds[SLIDE_COL], folds[GROUP_COL]))
    spot_fold = np.array([slide_fold[s] for s in data.slides])
    if fold not in set(slide_fold.values()):
        raise ValueError(f"fold {fold} does not exist; folds are {sorted(set(slide_fold.values()))}")
    test = spot_fold == fold
    train = ~test
    groups = np.array([slide_group[s] for s in data.slides[train]])
    fold_seed = _fold_seed(seed, fold)

    model = make_regressor(regressor, params, seed=fold_seed)
    start = time.perf_counter()
    model.fit(data.X[train], data.Y[train], groups=groups)
    # Fit times go to the log only, so the fold table contains nothing that changes between reruns.
    logger.info("fold %d: %s fitted on %d spots in %.2f s", fold, regressor, int(train.sum()), time.perf_counter() - start)
    predicted = model.predict(data.X[test])

    predictions = pd.DataFrame({SLIDE_COL: data.slides[test], BARCODE_COL: data.barcodes[test], FOLD_COL: fold})
    label_frame = pd.DataFrame(data.Y[test], columns=[LABEL_PREFIX + t for t in data.cell_types])
    pred_frame = pd.DataFrame(predicted, columns=[PRED_PREFIX + t for t in data.cell_types])
    predictions = pd.concat([predictions, label_frame, pred_frame], axis=1)

    held_out = sorted(np.unique(data.slides[test]).tolist())
    info = {
        FOLD_COL: fold,
        "held_out_slides": ",".join(held_out),
        "held_out_group": str(slide_group[held_out[0]]),
        "n_train": int(train.sum()),
        "n_test": int(test.sum()),
        "n_train_slides": len(np.unique(data.slides[train])),
        "seed": fold_seed,
        **model.hyperparameters_,
    }
    return FoldResult(model=model, predictions=predictions, info=info)


def cross_validate(
    data: CVData,
    folds: pd.DataFrame,
    *,
    regressor: RegressorName,
    params: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run every fold of ``folds`` and collect the held-out predictions.

    Parameters
    ----------
    data : CVData
        Output of :func:`load_cv_data`.
    folds : DataFrame
        Output of :func:`make_folds`, covering the same slides as ``data``.
    regressor : {"mean", "ridge", "mlp"}
        Registry key of :func:`histodecon.regressors.make_regressor`.
    params : mapping, optional
        Regressor parameters; ``None`` uses its defaults.
    seed : int
        Base seed; fold ``k`` uses a seed derived from ``(seed, k)``.

    Returns
    -------
    predictions : DataFrame
        One row per spot, sorted by slide and barcode: ``slide``, ``barcode``, ``fold``,
        ``label:<type>`` and ``pred:<type>`` (target units, clipped at 0).
    folds_info : DataFrame
        One row per fold: ``fold``, ``held_out_slides`` (comma-separated),
        ``held_out_group``, ``n_train``, ``n_test``, ``n_train_slides``, ``seed``,
        and the regressor's chosen hyperparameters. Ridge adds ``alpha``
        and ``alpha_score``, the MLP ``best_epoch``, ``val_loss``, ``epochs_run`` and
        ``val_groups``.
    """
    _check_folds(data, folds)
    fold_ids = sorted(folds[FOLD_COL].unique().tolist())
    logger.info("cross-validating %s on %d spots, %d folds", regressor, len(data.slides), len(fold_ids))
    start = time.perf_counter()
    results = [
        fit_fold(data, folds, fold, regressor=regressor, params=params, seed=seed)
        for fold in tqdm(fold_ids, desc=f"{regressor} folds", unit="fold")
    ]
    predictions = pd.concat([r.predictions for r in results], ignore_index=True)
    predictions = predictions.sort_values([SLIDE_COL, BARCODE_COL], kind="stable").reset_index(drop=True)
    folds_info = pd.DataFrame([r.info for r in results])
    logger.info("cross-validated %s in %.1f s", regressor, time.perf_counter() - start)
    return predictions, folds_info
