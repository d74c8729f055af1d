"""Tests of the regressors: registry, clipping, ridge search, MLP loss and training."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

from histodecon.regressors import (
    REGRESSORS,
    MLPRegressor,
    build_mlp,
    deterministic_torch,
    make_regressor,
    mlp_loss,
)

# Small MLP settings so that one fit takes well under a second.
FAST_MLP = {"hidden_widths": (32, 32, 16, 16, 8, 8), "max_epochs": 40, "patience": 5, "batch_size": 32}


@pytest.fixture
def linear_data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return X (160, 16), Y (160, 3) linear in X plus noise, and 4 groups of 40 spots."""
    rng = np.random.default_rng(7)
    X = rng.normal(size=(160, 16))
    weights = rng.normal(size=(16, 3))
    Y = np.clip(X @ weights * 0.5 + 4.0 + rng.normal(scale=0.3, size=(160, 3)), 0.0, None)
    groups = np.repeat(["g0", "g1", "g2", "g3"], 40)
    return X, Y, groups


def _state_arrays(model: MLPRegressor) -> dict[str, np.ndarray]:
    return {name: tensor.numpy().copy() for name, tensor in model.model_.state_dict().items()}


def test_registry_lists_three_regressors():
    assert sorted(REGRESSORS) == ["mean", "mlp", "ridge"]


def test_make_regressor_unknown_name():
    with pytest.raises(ValueError, match="valid names are") as error:
        make_regressor("lasso")
    assert "lasso" in str(error.value)


def test_make_regressor_unknown_parameter():
    with pytest.raises(ValueError, match="valid parameters are") as error:
        make_regressor("mlp", {"widths": (8,)})
    assert "widths" in str(error.value)


def test_mean_takes_no_parameters():
    with pytest.raises(ValueError, match="takes no parameters"):
        make_regressor("mean", {"alpha": 1.0})


def test_mlp_rejects_invalid_dropout():
    with pytest.raises(ValueError, match="dropout"):
        make_regressor("mlp", {"dropout": 1.5})


def test_mean_predicts_training_mean(linear_data):
    X, Y, groups = linear_data
    model = make_regressor("mean").fit(X, Y, groups=groups)
    predicted = model.predict(X[:5])
    assert predicted.shape == (5, 3)
    np.testing.assert_allclose(predicted, np.tile(Y.mean(axis=0), (5, 1)))


def test_predict_before_fit_raises():
    with pytest.raises(RuntimeError, match="not fitted"):
        make_regressor("ridge").predict(np.zeros((2, 3)))


def test_predict_wrong_width_raises(linear_data):
    X, Y, groups = linear_data
    model = make_regressor("mean").fit(X, Y, groups=groups)
    with pytest.raises(ValueError, match="shape"):
        model.predict(X[:, :4])


def test_fit_rejects_nan_targets(linear_data):
    X, Y, groups = linear_data
    Y = Y.copy()
    Y[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        make_regressor("ridge").fit(X, Y, groups=groups)


def test_ridge_predictions_clipped_at_zero(linear_data):
    X, _, groups = linear_data
    # Targets centred on 0, so the unclipped linear predictions are often negative.
    Y = X[:, :2] - X[:, :2].mean(axis=0)
    model = make_regressor("ridge", {"alphas": (1.0,)}).fit(X, Y, groups=groups)
    raw = model.pipeline_.predict(X)
    predicted = model.predict(X)
    assert (raw < 0).any()
    assert predicted.min() == 0.0
    np.testing.assert_array_equal(predicted, np.clip(raw, 0.0, None))


def test_ridge_alpha_from_grid(linear_data):
    X, Y, groups = linear_data
    alphas = (0.01, 1.0, 1e6)
    model = make_regressor("ridge", {"alphas": alphas}).fit(X, Y, groups=groups)
    assert model.hyperparameters_["alpha"] in alphas
    # Y is nearly noise-free and linear in X, so the strongest shrinkage cannot win.
    assert model.hyperparameters_["alpha"] < 1e6
    assert model.hyperparameters_["alpha_score"] > 0.5


def test_ridge_one_group_falls_back(linear_data, caplog):
    X, Y, _ = linear_data
    groups = np.repeat("only", len(X))
    with caplog.at_level(logging.WARNING, logger="histodecon.regressors"):
        model = make_regressor("ridge", {"alphas": (0.1, 1.0, 10.0)}).fit(X, Y, groups=groups)
    assert model.hyperparameters_["alpha"] == 1.0
    assert "one training group" in caplog.text


def test_ridge_rejects_negative_alpha():
    with pytest.raises(ValueError, match="positive"):
        make_regressor("ridge", {"alphas": (-1.0, 1.0)})


def test_build_mlp_seven_linear_layers():
    network = build_mlp(20, 4, hidden_widths=(12, 10, 8, 8, 6, 6), dropout=0.0)
    linear = [m for m in network if isinstance(m, nn.Linear)]
    assert len(linear) == 7
    assert sum(isinstance(m, nn.SiLU) for m in network) == 6
    assert linear[0].in_features == 20
    assert linear[-1].out_features == 4


def test_mlp_loss_perfect_prediction():
    target = torch.tensor([[1.0, 0.0], [2.0, 1.0], [4.0, 3.0]])
    loss = mlp_loss(target.clone(), target, l1_weight=0.5, pearson_weight=2.0)
    assert float(loss) == pytest.approx(0.0, abs=1e-6)


def test_mlp_loss_hand_computed():
    target = torch.tensor([[1.0], [-1.0]])
    pred = -target
    # error = (-2, 2): MSE 4, MAE 2, Pearson -1, so 4 + 0.5 * 2 + 2 * (1 - (-1)) = 9.
    loss = mlp_loss(pred, target, l1_weight=0.5, pearson_weight=2.0)
    assert float(loss) == pytest.approx(9.0, abs=1e-5)


def test_deterministic_torch_restores_flag():
    before = torch.are_deterministic_algorithms_enabled()
    with deterministic_torch(0):
        assert torch.are_deterministic_algorithms_enabled()
    assert torch.are_deterministic_algorithms_enabled() == before


def test_mlp_same_seed_identical(linear_data):
    X, Y, groups = linear_data
    first = make_regressor("mlp", FAST_MLP, seed=3).fit(X, Y, groups=groups)
    second = make_regressor("mlp", FAST_MLP, seed=3).fit(X, Y, groups=groups)
    first_state, second_state = _state_arrays(first), _state_arrays(second)
    assert first_state.keys() == second_state.keys()
    for name in first_state:
        np.testing.assert_array_equal(first_state[name], second_state[name], err_msg=name)
    np.testing.assert_array_equal(first.predict(X), second.predict(X))
    assert first.hyperparameters_ == second.hyperparameters_


def test_mlp_other_seed_differs(linear_data):
    X, Y, groups = linear_data
    first = make_regressor("mlp", FAST_MLP, seed=3).fit(X, Y, groups=groups)
    second = make_regressor("mlp", FAST_MLP, seed=4).fit(X, Y, groups=groups)
    assert not np.array_equal(first.predict(X), second.predict(X))


def test_mlp_validation_is_training_group(linear_data):
    X, Y, groups = linear_data
    model = make_regressor("mlp", {**FAST_MLP, "n_validation_groups": 2}, seed=1).fit(X, Y, groups=groups)
    val_groups = model.hyperparameters_["val_groups"].split(",")
    assert len(val_groups) == 2
    assert set(val_groups) <= set(groups)


def test_mlp_restores_best_epoch(linear_data):
    X, Y, groups = linear_data
    params = {**FAST_MLP, "max_epochs": 30, "patience": 30}
    model = make_regressor("mlp", params, seed=2).fit(X, Y, groups=groups)
    hyper = model.hyperparameters_
    assert 1 <= hyper["best_epoch"] <= hyper["epochs_run"] == 30

    # The restored weights must reproduce the recorded validation loss of the best epoch.
    val = np.isin(groups, hyper["val_groups"].split(","))
    x_val = torch.from_numpy(((X[val] - model.x_mean_) / model.x_scale_).astype(np.float32))
    y_val = torch.from_numpy(((Y[val] - model.y_mean_) / model.y_scale_).astype(np.float32))
    with torch.no_grad():
        loss = mlp_loss(model.model_(x_val), y_val, l1_weight=0.1, pearson_weight=1.0)
    assert float(loss) == pytest.approx(hyper["val_loss"], rel=1e-5)


def test_mlp_scalers_from_fitting_spots(linear_data):
    X, Y, groups = linear_data
    model = make_regressor("mlp", FAST_MLP, seed=0).fit(X, Y, groups=groups)
    fitting = ~np.isin(groups, model.hyperparameters_["val_groups"].split(","))
    np.testing.assert_allclose(model.x_mean_, X[fitting].mean(axis=0))
    np.testing.assert_allclose(model.y_scale_, Y[fitting].std(axis=0))


def test_mlp_one_group_spot_split(linear_data, caplog):
    X, Y, _ = linear_data
    groups = np.repeat("only", len(X))
    with caplog.at_level(logging.WARNING, logger="histodecon.regressors"):
        model = make_regressor("mlp", FAST_MLP, seed=0).fit(X, Y, groups=groups)
    assert model.hyperparameters_["val_groups"] == ""
    assert "random 20%" in caplog.text
    assert np.isfinite(model.hyperparameters_["val_loss"])
