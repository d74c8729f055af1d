"""Tests of folds, data loading and cross-validation, including leakage of held-out slides."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from histodecon.cv import GROUP_COL, CVData, cross_validate, fit_fold, load_cv_data, make_folds
from histodecon.metrics import evaluate

SHARED_DATA = Path(os.environ.get("HISTODECON_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
PUBLISHED_PROPORTIONS = SHARED_DATA / "her2st" / "res" / "ST-deconv" / "props" / "major"
HER2ST_SLIDES = ("C2", "C3", "C4", "C5", "C6")

# Small MLP settings so that one fold takes well under a second.
FAST_MLP = {"hidden_widths": (32, 32, 16, 16, 8, 8), "max_epochs": 60, "patience": 10, "batch_size": 32}
FAST_RIDGE = {"alphas": (0.1, 1.0, 10.0, 100.0)}


def _synthetic_data(n_slides: int = 5, spots_per_slide: int = 40, seed: int = 0) -> CVData:
    """Return slides whose targets are linear in the embeddings plus noise (truth known)."""
    rng = np.random.default_rng(seed)
    n = n_slides * spots_per_slide
    X = rng.normal(size=(n, 24)).astype(np.float32)
    weights = rng.normal(size=(24, 3)) * 0.4
    Y = np.clip(X @ weights + 3.0 + rng.normal(scale=0.3, size=(n, 3)), 0.0, None)
    slides = np.repeat([f"s{i}" for i in range(n_slides)], spots_per_slide)
    barcodes = np.array([f"{j}x{i}" for i in range(n_slides) for j in range(spots_per_slide)])
    return CVData(slides=slides, barcodes=barcodes, X=X, Y=Y, cell_types=("B-cells", "CAFs", "T-cells"))


@pytest.fixture
def data() -> CVData:
    return _synthetic_data()


@pytest.fixture
def folds() -> pd.DataFrame:
    return make_folds(pd.DataFrame({"slide": [f"s{i}" for i in range(5)], "patient": "P1"}))


def _with_held_out(data: CVData, slide: str, *, X=None, Y=None) -> CVData:
    """Return a copy of ``data`` with new embeddings or labels on one slide."""
    held_out = data.slides == slide
    new_X, new_Y = data.X.copy(), data.Y.copy()
    if X is not None:
        new_X[held_out] = X
    if Y is not None:
        new_Y[held_out] = Y
    return dataclasses.replace(data, X=new_X, Y=new_Y)


def _ridge_state(model) -> dict[str, np.ndarray]:
    scaler, ridge = model.pipeline_.named_steps["scaler"], model.pipeline_.named_steps["ridge"]
    return {
        "mean": scaler.mean_,
        "scale": scaler.scale_,
        "coef": ridge.coef_,
        "intercept": ridge.intercept_,
        "alpha": np.array(model.hyperparameters_["alpha"]),
    }


def _mlp_state(model) -> dict[str, np.ndarray]:
    state = {name: tensor.numpy().copy() for name, tensor in model.model_.state_dict().items()}
    state.update(x_mean=model.x_mean_, x_scale=model.x_scale_, y_mean=model.y_mean_, y_scale=model.y_scale_)
    return state


STATE_OF = {"ridge": _ridge_state, "mlp": _mlp_state}
PARAMS_OF = {"ridge": FAST_RIDGE, "mlp": FAST_MLP}


def _assert_same_state(first: dict, second: dict) -> None:
    assert first.keys() == second.keys()
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)


# --- folds ---------------------------------------------------------------------------


def test_folds_auto_one_patient_by_slide():
    sheet = pd.DataFrame({"slide": ["C4", "C2", "C3"], "patient": "P1"})
    folds = make_folds(sheet)
    assert folds["slide"].tolist() == ["C2", "C3", "C4"]
    assert folds["fold"].tolist() == [0, 1, 2]
    assert folds[GROUP_COL].tolist() == ["C2", "C3", "C4"]


def test_folds_auto_three_patients_by_patient():
    sheet = pd.DataFrame({"slide": ["a1", "a2", "b1", "c1", "c2"], "patient": ["A", "A", "B", "C", "C"]})
    folds = make_folds(sheet)
    assert folds["fold"].tolist() == [0, 0, 1, 2, 2]
    assert folds[GROUP_COL].tolist() == ["A", "A", "B", "C", "C"]


def test_folds_two_patients_auto_by_slide():
    sheet = pd.DataFrame({"slide": ["a1", "a2", "b1"], "patient": ["A", "A", "B"]})
    assert make_folds(sheet)["fold"].nunique() == 3
    assert make_folds(sheet, group_by="patient")["fold"].nunique() == 2


def test_folds_explicit_slide_overrides_patients():
    sheet = pd.DataFrame({"slide": ["a1", "a2", "b1", "c1"], "patient": ["A", "A", "B", "C"]})
    assert make_folds(sheet, group_by="slide")["fold"].tolist() == [0, 1, 2, 3]


def test_folds_patient_without_column():
    with pytest.raises(ValueError, match="'patient'"):
        make_folds(pd.DataFrame({"slide": ["a", "b"]}), group_by="patient")


def test_folds_invalid_group_by():
    with pytest.raises(ValueError, match="valid options"):
        make_folds(pd.DataFrame({"slide": ["a", "b"]}), group_by="sample")


def test_folds_duplicate_slide():
    with pytest.raises(ValueError, match="more than once"):
        make_folds(pd.DataFrame({"slide": ["a", "a", "b"]}))


def test_folds_single_slide():
    with pytest.raises(ValueError, match="at least 2"):
        make_folds(pd.DataFrame({"slide": ["a"]}))


# --- loading -------------------------------------------------------------------------


def _write_slide(folder: Path, slide: str, barcodes_emb, barcodes_lab, tissue) -> tuple[Path, Path]:
    rng = np.random.default_rng(len(slide))
    embeddings = pd.DataFrame({"barcode": barcodes_emb, "tissue_fraction": tissue, "padded": False})
    for d in range(4):
        embeddings[f"emb_{d:04d}"] = rng.normal(size=len(barcodes_emb)).astype(np.float32)
    labels = pd.DataFrame({"barcode": barcodes_lab})
    for cell_type in ("T-cells", "B-cells"):
        for prefix in ("q05:", "mean:", "proportion:"):
            labels[prefix + cell_type] = rng.uniform(size=len(barcodes_lab))
    emb_path, lab_path = folder / f"{slide}_emb.parquet", folder / f"{slide}_lab.parquet"
    embeddings.to_parquet(emb_path)
    labels.to_parquet(lab_path)
    return emb_path, lab_path


def test_load_joins_and_drops(tmp_path, caplog):
    emb, lab = _write_slide(
        tmp_path, "A", ["3x1", "1x1", "2x1", "4x1"], ["1x1", "2x1", "3x1", "9x9"], [0.2, 0.9, 1.0, 1.0]
    )
    caplog.set_level("INFO", logger="histodecon.cv")
    data = load_cv_data({"A": emb}, {"A": lab}, target="proportion", min_tissue_fraction=0.5)
    # Spot 4x1 has no label and 9x9 no embedding. Spot 3x1 has tissue fraction 0.2 < 0.5.
    assert data.barcodes.tolist() == ["1x1", "2x1"]
    assert data.cell_types == ("B-cells", "T-cells")
    assert data.X.shape == (2, 4)
    assert data.X.dtype == np.float32
    assert "dropped 1 without label, 1 without embedding, 1 with tissue fraction" in caplog.text


def test_load_selects_target_columns(tmp_path):
    emb, lab = _write_slide(tmp_path, "A", ["1x1", "2x1"], ["1x1", "2x1"], 1.0)
    data = load_cv_data({"A": emb}, {"A": lab}, target="mean", min_tissue_fraction=0.0)
    labels = pd.read_parquet(lab).sort_values("barcode")
    np.testing.assert_array_equal(data.Y, labels[["mean:B-cells", "mean:T-cells"]].to_numpy())


def test_load_empty_join_names_slide(tmp_path):
    emb, lab = _write_slide(tmp_path, "C7", ["1x1"], ["2x2"], 1.0)
    with pytest.raises(ValueError, match="C7") as error:
        load_cv_data({"C7": emb}, {"C7": lab}, target="q05", min_tissue_fraction=0.0)
    assert str(emb) in str(error.value)


def test_load_mismatched_slides(tmp_path):
    emb, lab = _write_slide(tmp_path, "A", ["1x1"], ["1x1"], 1.0)
    with pytest.raises(ValueError, match="only labels"):
        load_cv_data({"A": emb}, {"A": lab, "B": lab}, target="q05", min_tissue_fraction=0.0)


def test_load_invalid_target(tmp_path):
    emb, lab = _write_slide(tmp_path, "A", ["1x1"], ["1x1"], 1.0)
    with pytest.raises(ValueError, match="valid targets"):
        load_cv_data({"A": emb}, {"A": lab}, target="median", min_tissue_fraction=0.0)


# --- cross-validation ----------------------------------------------------------------


def test_cv_prediction_columns(data, folds):
    predictions, info = cross_validate(data, folds, regressor="mean")
    assert predictions.columns.tolist() == [
        "slide",
        "barcode",
        "fold",
        "label:B-cells",
        "label:CAFs",
        "label:T-cells",
        "pred:B-cells",
        "pred:CAFs",
        "pred:T-cells",
    ]
    assert len(predictions) == len(data.slides)
    assert predictions[["slide", "barcode"]].equals(
        predictions[["slide", "barcode"]].sort_values(["slide", "barcode"]).reset_index(drop=True)
    )
    assert info["held_out_slides"].tolist() == ["s0", "s1", "s2", "s3", "s4"]
    assert (info["n_train"] + info["n_test"] == len(data.slides)).all()


def test_cv_labels_match_data(data, folds):
    predictions, _ = cross_validate(data, folds, regressor="mean")
    order = np.lexsort((data.barcodes, data.slides))
    np.testing.assert_array_equal(
        predictions[["label:B-cells", "label:CAFs", "label:T-cells"]].to_numpy(), data.Y[order]
    )


@pytest.mark.parametrize("regressor", ["ridge", "mlp"])
def test_cv_beats_mean_baseline(data, folds, regressor):
    baseline = evaluate(cross_validate(data, folds, regressor="mean")[0])
    model = evaluate(cross_validate(data, folds, regressor=regressor, params=PARAMS_OF[regressor])[0])
    # Targets are linear in the embeddings, with noise sd 0.3 against a signal sd of about 2,
    # so a working regressor correlates clearly with them. The baseline cannot correlate.
    assert model["pearson"].mean() > 0.5
    assert model["mse"].mean() < baseline["mse"].mean()
    assert model["l1"].mean() < baseline["l1"].mean()


def test_cv_folds_info_hyperparameters(data, folds):
    _, ridge_info = cross_validate(data, folds, regressor="ridge", params=FAST_RIDGE)
    _, mlp_info = cross_validate(data, folds, regressor="mlp", params=FAST_MLP)
    assert ridge_info["alpha"].isin(FAST_RIDGE["alphas"]).all()
    assert (mlp_info["best_epoch"] >= 1).all()
    assert np.isfinite(mlp_info["val_loss"]).all()


def test_cv_mlp_deterministic(data, folds):
    first, first_info = cross_validate(data, folds, regressor="mlp", params=FAST_MLP, seed=5)
    second, second_info = cross_validate(data, folds, regressor="mlp", params=FAST_MLP, seed=5)
    pd.testing.assert_frame_equal(first, second, check_exact=True)
    pd.testing.assert_frame_equal(first_info, second_info, check_exact=True)


def test_cv_patient_folds():
    data = _synthetic_data(n_slides=6, spots_per_slide=20)
    sheet = pd.DataFrame({"slide": [f"s{i}" for i in range(6)], "patient": ["A", "A", "B", "B", "C", "C"]})
    folds = make_folds(sheet)
    predictions, info = cross_validate(data, folds, regressor="mlp", params=FAST_MLP)
    assert info["held_out_slides"].tolist() == ["s0,s1", "s2,s3", "s4,s5"]
    assert info["held_out_group"].tolist() == ["A", "B", "C"]
    for held_out, val_groups in zip(info["held_out_group"], info["val_groups"]):
        assert val_groups in {"A", "B", "C"} - {held_out}
    assert predictions.groupby("slide")["fold"].first().tolist() == [0, 0, 1, 1, 2, 2]


# --- leakage -------------------------------------------------------------------------


@pytest.mark.parametrize("regressor", ["ridge", "mlp"])
def test_leakage_held_out_labels(data, folds, regressor):
    reference = fit_fold(data, folds, 2, regressor=regressor, params=PARAMS_OF[regressor])
    rng = np.random.default_rng(99)
    changed = _with_held_out(data, "s2", Y=rng.uniform(0, 50, size=(40, 3)))
    result = fit_fold(changed, folds, 2, regressor=regressor, params=PARAMS_OF[regressor])
    _assert_same_state(STATE_OF[regressor](reference.model), STATE_OF[regressor](result.model))
    pred_columns = [c for c in reference.predictions if c.startswith("pred:")]
    np.testing.assert_array_equal(reference.predictions[pred_columns], result.predictions[pred_columns])


@pytest.mark.parametrize("regressor", ["ridge", "mlp"])
def test_leakage_held_out_embeddings(data, folds, regressor):
    reference = fit_fold(data, folds, 2, regressor=regressor, params=PARAMS_OF[regressor])
    new_X = np.random.default_rng(98).normal(loc=5.0, size=(40, 24)).astype(np.float32)
    result = fit_fold(_with_held_out(data, "s2", X=new_X), folds, 2, regressor=regressor, params=PARAMS_OF[regressor])
    _assert_same_state(STATE_OF[regressor](reference.model), STATE_OF[regressor](result.model))
    # The held-out predictions change only through the new inputs of the unchanged model.
    pred_columns = [c for c in result.predictions if c.startswith("pred:")]
    np.testing.assert_array_equal(result.predictions[pred_columns].to_numpy(), reference.model.predict(new_X))


@pytest.mark.parametrize("regressor", ["ridge", "mlp"])
def test_leakage_nan_held_out_unused(data, folds, regressor):
    # Fitting rejects NaN, so a fit that succeeds never read the held-out labels.
    poisoned = _with_held_out(data, "s0", Y=np.nan)
    result = fit_fold(poisoned, folds, 0, regressor=regressor, params=PARAMS_OF[regressor])
    pred_columns = [c for c in result.predictions if c.startswith("pred:")]
    assert np.isfinite(result.predictions[pred_columns].to_numpy()).all()


def test_early_stopping_excludes_held_out(data, folds):
    _, info = cross_validate(data, folds, regressor="mlp", params={**FAST_MLP, "n_validation_groups": 2})
    for held_out, val_groups in zip(info["held_out_group"], info["val_groups"]):
        groups = val_groups.split(",")
        assert len(groups) == 2
        assert held_out not in groups
        assert set(groups) <= set(folds["group"])


# --- real labels ---------------------------------------------------------------------


@pytest.fixture
def published_targets() -> CVData:
    """Return the published her2st stereoscope proportions as targets, with embeddings built from them.

    The embeddings are a fixed random projection of the proportions plus noise, so a
    regressor can recover the targets. The test adds the real distribution of the targets
    to the synthetic cases: skewed types, types near zero and differences between slides.
    """
    paths = {slide: PUBLISHED_PROPORTIONS / f"{slide}-proportion.tsv" for slide in HER2ST_SLIDES}
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing:
        pytest.skip(f"published her2st proportions not found: {missing}")
    tables = {slide: pd.read_csv(path, sep="\t", index_col=0) for slide, path in paths.items()}
    rng = np.random.default_rng(0)
    projection = rng.normal(size=(8, 32))
    slides, barcodes, X, Y = [], [], [], []
    for slide, table in sorted(tables.items()):
        table = table.sort_index()
        proportions = table.to_numpy(dtype=np.float64)
        slides += [slide] * len(table)
        barcodes += table.index.astype(str).tolist()
        X.append(proportions @ projection + rng.normal(scale=0.05, size=(len(table), 32)))
        Y.append(proportions)
    return CVData(
        slides=np.array(slides),
        barcodes=np.array(barcodes),
        X=np.vstack(X).astype(np.float32),
        Y=np.vstack(Y),
        cell_types=tuple(tables["C2"].columns),
        target="proportion",
    )


def test_real_targets_ridge_beats_mean(published_targets):
    folds = make_folds(pd.DataFrame({"slide": list(HER2ST_SLIDES), "patient": "P1"}))
    assert folds["fold"].nunique() == 5
    baseline = evaluate(cross_validate(published_targets, folds, regressor="mean")[0])
    ridge = evaluate(cross_validate(published_targets, folds, regressor="ridge", params=FAST_RIDGE)[0])
    assert ridge["pearson"].mean() > 0.5
    assert ridge["mse"].mean() < baseline["mse"].mean()
    assert set(ridge["slide"]) == set(HER2ST_SLIDES)
