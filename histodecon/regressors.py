"""Regressors from spot embeddings to cell-type abundances, behind one interface.

Every regressor is built by :func:`make_regressor` from the :data:`REGRESSORS` registry,
fitted with ``fit(X, Y, groups=...)`` on the training spots of one fold and applied with
``predict(X)``. ``X`` has shape ``(n_spots, n_dims)`` (embedding dimensions), ``Y`` and the
predictions have shape ``(n_spots, n_types)`` in the unit of the target (cells per spot
for cell2location abundances, fractions for proportions). ``groups`` contains the slide or
patient of each training spot, so that hyperparameter search and early stopping hold out
whole training groups and never split one slide between fitting and validation.

Abundances and proportions cannot be negative, so every ``predict`` clips its output at 0.
Proportions are not renormalised to sum to 1 after clipping.
"""

from __future__ import annotations

import abc
import contextlib
import copy
import dataclasses
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from sklearn.linear_model import Ridge
from sklearn.metrics import make_scorer
from sklearn.model_selection import GridSearchCV, LeaveOneGroupOut
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits
from torch import nn

from histodecon.metrics import mean_pearson

logger = logging.getLogger(__name__)

__all__ = [
    "RegressorName",
    "Regressor",
    "MeanRegressor",
    "RidgeParams",
    "RidgeRegressor",
    "MLPParams",
    "MLPRegressor",
    "REGRESSORS",
    "make_regressor",
]

RegressorName = Literal["mean", "ridge", "mlp"]

# Added to the norms in the batch Pearson loss so that a column that is constant within a
# batch gives r = 0 instead of a division by zero.
_PEARSON_EPS = 1e-8


def _standardise_stats(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return column means and standard deviations, with scale 1 for a constant column."""
    mean = values.mean(axis=0)
    scale = values.std(axis=0)
    scale[scale == 0] = 1.0
    return mean, scale


def _check_fit_inputs(X: np.ndarray, Y: np.ndarray, groups: np.ndarray) -> None:
    if X.ndim != 2 or Y.ndim != 2:
        raise ValueError(f"X and Y must be 2-D, got shapes {X.shape} and {Y.shape}")
    if not (X.shape[0] == Y.shape[0] == groups.shape[0]):
        raise ValueError(
            f"X, Y and groups must have one row per spot, got {X.shape[0]}, {Y.shape[0]} and {groups.shape[0]} rows"
        )
    if X.shape[0] < 2:
        raise ValueError(f"at least 2 training spots are needed, got {X.shape[0]}")
    if not (np.isfinite(X).all() and np.isfinite(Y).all()):
        raise ValueError("X and Y must not contain NaN or infinite values; drop or impute those spots first")


class Regressor(abc.ABC):
    """Multi-output regressor from embeddings to cell-type targets.

    Attributes
    ----------
    params_ : dataclass or None
        Resolved parameters (defaults filled in).
    hyperparameters_ : dict
        Values chosen during ``fit`` on the training data (for example the ridge alpha or
        the MLP's best epoch), recorded per fold by :func:`histodecon.cv.cross_validate`.
    n_features_in_ : int
        Embedding width seen in ``fit``.
    """

    name: ClassVar[str]
    Params: ClassVar[type | None] = None

    def __init__(self, params: Any = None, *, seed: int = 0) -> None:
        self.params_ = params
        self.seed = seed
        self.hyperparameters_: dict[str, Any] = {}
        self.n_features_in_: int | None = None

    def fit(self, X: np.ndarray, Y: np.ndarray, *, groups: Sequence) -> Regressor:
        """Fit on training spots.

        Parameters
        ----------
        X : array, shape (n_spots, n_dims)
            Embeddings of the training spots.
        Y : array, shape (n_spots, n_types)
            Targets of the training spots.
        groups : sequence, shape (n_spots,)
            Slide or patient of each training spot, used for inner validation splits.
        """
        X = np.asarray(X, dtype=np.float64)
        Y = np.asarray(Y, dtype=np.float64)
        groups = np.asarray(groups)
        _check_fit_inputs(X, Y, groups)
        self.n_features_in_ = X.shape[1]
        self._fit(X, Y, groups)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predict targets, shape ``(n_spots, n_types)``, clipped at 0."""
        if self.n_features_in_ is None:
            raise RuntimeError(f"the {self.name} regressor is not fitted; call fit() before predict()")
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(f"X must have shape (n_spots, {self.n_features_in_}) as in fit(), got {X.shape}")
        return np.clip(self._predict(X), 0.0, None)

    @abc.abstractmethod
    def _fit(self, X: np.ndarray, Y: np.ndarray, groups: np.ndarray) -> None: ...

    @abc.abstractmethod
    def _predict(self, X: np.ndarray) -> np.ndarray: ...


class MeanRegressor(Regressor):
    """Baseline that predicts the training mean of each cell type for every spot.

    Its predictions are constant on a slide, so their per-slide Pearson correlation is
    undefined (NaN). Compare against it on L1 and MSE; the chance level of Pearson is 0.
    """

    name = "mean"

    def _fit(self, X: np.ndarray, Y: np.ndarray, groups: np.ndarray) -> None:
        self.mean_ = Y.mean(axis=0)

    def _predict(self, X: np.ndarray) -> np.ndarray:
        return np.tile(self.mean_, (X.shape[0], 1))


@dataclasses.dataclass(frozen=True)
class RidgeParams:
    """Parameters of :class:`RidgeRegressor`.

    Attributes
    ----------
    alphas : tuple of float
        L2 penalties searched. Features are standardised, so ``X.T @ X`` has diagonal
        entries equal to the number of training spots (hundreds to tens of thousands).
        The default grid 0.1 to 1e6 spans from almost no shrinkage to shrinkage that
        dominates that scale.
    num_threads : int
        BLAS threads during fit and predict (restored afterwards). On 2 cores shared with
        other jobs, ``bench/bench_cv.py`` took 4.5 s with 1 thread and 100 s with the
        default BLAS thread count.
    """

    alphas: tuple[float, ...] = tuple(float(10.0**k) for k in range(-1, 7))
    num_threads: int = 1

    def __post_init__(self) -> None:
        alphas = tuple(float(a) for a in self.alphas)
        if not alphas or min(alphas) <= 0:
            raise ValueError(f"ridge alphas must be a non-empty list of positive numbers, got {self.alphas!r}")
        if int(self.num_threads) < 1:
            raise ValueError(f"ridge num_threads must be an integer >= 1, got {self.num_threads!r}")
        object.__setattr__(self, "alphas", alphas)


def _pearson_score(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    score = mean_pearson(y_true, y_pred)
    # A validation slide on which every type or prediction is constant has no defined
    # correlation. It scores at chance level (0) instead of NaN, so the search can rank alphas.
    return 0.0 if np.isnan(score) else score


class RidgeRegressor(Regressor):
    """StandardScaler followed by multi-output ridge regression, one alpha for all types.

    Alpha is chosen by ``GridSearchCV`` with ``LeaveOneGroupOut`` over the training groups,
    scored by the mean over types of the per-type Pearson correlation on the left-out
    group (types constant on that group are skipped). The pipeline is then refitted on all
    training spots. With a single training group no split is possible: the middle alpha
    of the grid is used and a warning is logged.

    Attributes
    ----------
    pipeline_ : sklearn.pipeline.Pipeline
        Fitted scaler and ridge model.
    hyperparameters_ : dict
        ``alpha`` chosen and ``alpha_score``, its mean inner Pearson (NaN without search).
    """

    name = "ridge"
    Params = RidgeParams

    def _new_pipeline(self, alpha: float) -> Pipeline:
        return Pipeline([("scaler", StandardScaler()), ("ridge", Ridge(alpha=alpha))])

    def _fit(self, X: np.ndarray, Y: np.ndarray, groups: np.ndarray) -> None:
        with threadpool_limits(limits=self.params_.num_threads):
            self._search(X, Y, groups)

    def _search(self, X: np.ndarray, Y: np.ndarray, groups: np.ndarray) -> None:
        alphas = self.params_.alphas
        n_groups = len(np.unique(groups))
        if n_groups < 2:
            alpha = sorted(alphas)[len(alphas) // 2]
            logger.warning("ridge: only one training group, so alpha cannot be cross-validated; using alpha=%g", alpha)
            self.pipeline_ = self._new_pipeline(alpha).fit(X, Y)
            self.hyperparameters_ = {"alpha": alpha, "alpha_score": float("nan")}
            return

        search = GridSearchCV(
            self._new_pipeline(alphas[0]),
            param_grid={"ridge__alpha": list(alphas)},
            scoring=make_scorer(_pearson_score),
            cv=LeaveOneGroupOut(),
            refit=True,
            n_jobs=1,
        )
        search.fit(X, Y, groups=groups)
        self.pipeline_ = search.best_estimator_
        alpha = float(search.best_params_["ridge__alpha"])
        self.hyperparameters_ = {"alpha": alpha, "alpha_score": float(search.best_score_)}
        if alpha in (min(alphas), max(alphas)):
            logger.warning("ridge: chosen alpha=%g is at the edge of the grid %s; consider widening it", alpha, alphas)
        logger.debug("ridge: alpha=%g over %d training groups, inner Pearson %.3f", alpha, n_groups, search.best_score_)

    def _predict(self, X: np.ndarray) -> np.ndarray:
        with threadpool_limits(limits=self.params_.num_threads):
            return self.pipeline_.predict(X)


@dataclasses.dataclass(frozen=True)
class MLPParams:
    """Parameters of :class:`MLPRegressor`.

    arXiv 2507.07013 specifies 7 fully connected layers with SiLU and the loss
    MSE + λ1·L1 + λ2·(negative Pearson), but not widths, λs, learning rate or epochs.
    The defaults below are our choices. ``l1_weight`` is λ1 and ``pearson_weight`` λ2.

    Attributes
    ----------
    hidden_widths : tuple of int
        Widths of the hidden layers; 6 widths give 7 linear layers. The default
        (256, 256, 128, 128, 64, 64) narrows a 512 to 1536-d embedding step by step to a
        few dozen types. It has about 0.4 M weights for a 1024-d input, which suits
        training sets of a few hundred to a few thousand spots. The first layer has most of the
        weights, so a 512-wide one would double the work per epoch.
    dropout : float
        Dropout after each hidden activation. 0.1 is a mild guard for a few hundred
        training spots per slide.
    l1_weight : float
        Weight of the mean absolute error (on standardised targets). 0.1 keeps it a
        robustness term next to the MSE, which it would otherwise duplicate.
    pearson_weight : float
        Weight of ``1 - mean per-type Pearson`` over the batch. 1.0 gives the evaluation
        metric the same weight as the MSE, whose scale is about 1 on standardised targets.
    lr : float
        AdamW learning rate; 1e-3 is the usual Adam step for small MLPs.
    weight_decay : float
        AdamW decoupled weight decay; 1e-2 is the PyTorch default.
    batch_size : int
        Spots per step. 128 keeps the batch Pearson stable for rare types.
    max_epochs : int
        Upper bound on training passes; early stopping usually ends sooner.
    patience : int
        Epochs without a lower validation loss before training stops.
    n_validation_groups : int
        Whole training groups (slides or patients) held out for early stopping.
    num_threads : int
        CPU threads of torch during fit and predict (restored afterwards). 1 makes the
        weights independent of the machine's core count, and the layers are too small to
        gain much from more. On 2 cores shared with other jobs, ``bench/bench_cv.py``
        took 20 s with 1 thread and 229 s with 2, because the threads wait on each other.
    """

    hidden_widths: tuple[int, ...] = (256, 256, 128, 128, 64, 64)
    dropout: float = 0.1
    l1_weight: float = 0.1
    pearson_weight: float = 1.0
    lr: float = 1e-3
    weight_decay: float = 1e-2
    batch_size: int = 128
    max_epochs: int = 200
    patience: int = 20
    n_validation_groups: int = 1
    num_threads: int = 1

    def __post_init__(self) -> None:
        widths = tuple(int(w) for w in self.hidden_widths)
        object.__setattr__(self, "hidden_widths", widths)
        if not widths or min(widths) < 1:
            raise ValueError(f"mlp hidden_widths must be positive integers, got {self.hidden_widths!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"mlp dropout must be in [0, 1), got {self.dropout!r}")
        for name in ("l1_weight", "pearson_weight", "weight_decay"):
            if getattr(self, name) < 0:
                raise ValueError(f"mlp {name} must be >= 0, got {getattr(self, name)!r}")
        if self.lr <= 0:
            raise ValueError(f"mlp lr must be > 0, got {self.lr!r}")
        for name in ("batch_size", "max_epochs", "patience", "n_validation_groups", "num_threads"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"mlp {name} must be an integer >= 1, got {getattr(self, name)!r}")


def build_mlp(n_inputs: int, n_outputs: int, *, hidden_widths: Sequence[int], dropout: float) -> nn.Sequential:
    """Build the fully connected network: Linear and SiLU per hidden width, then a Linear output."""
    layers: list[nn.Module] = []
    width_in = n_inputs
    for width in hidden_widths:
        layers.append(nn.Linear(width_in, width))
        layers.append(nn.SiLU())
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width_in = width
    layers.append(nn.Linear(width_in, n_outputs))
    return nn.Sequential(*layers)


def mlp_loss(pred: torch.Tensor, target: torch.Tensor, *, l1_weight: float, pearson_weight: float) -> torch.Tensor:
    """Return MSE + λ1·MAE + λ2·(1 − mean per-type Pearson) over a batch ``(n_spots, n_types)``."""
    error = pred - target
    mse = error.pow(2).mean()
    mae = error.abs().mean()
    pred_centred = pred - pred.mean(dim=0)
    target_centred = target - target.mean(dim=0)
    norms = pred_centred.norm(dim=0) * target_centred.norm(dim=0)
    pearson = (pred_centred * target_centred).sum(dim=0) / (norms + _PEARSON_EPS)
    return mse + l1_weight * mae + pearson_weight * (1.0 - pearson.mean())


@contextlib.contextmanager
def torch_threads(num_threads: int) -> Iterator[None]:
    """Set the number of torch CPU threads and restore the previous number on exit."""
    previous = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def deterministic_torch(seed: int, *, num_threads: int = 1) -> Iterator[None]:
    """Seed torch, enable deterministic algorithms and fix the thread count, restoring all on exit.

    The global random state outside the block is left as it was.
    """
    previous = torch.are_deterministic_algorithms_enabled()
    with torch.random.fork_rng(devices=[]), torch_threads(num_threads):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(previous)


def _split_validation(groups: np.ndarray, n_validation_groups: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """Return a validation mask over training spots and the names of the groups it holds."""
    unique = sorted(np.unique(groups).tolist(), key=str)
    rng = np.random.default_rng(seed)
    if len(unique) >= 2:
        n_val = min(n_validation_groups, len(unique) - 1)
        chosen = sorted(rng.choice(np.array(unique, dtype=object), size=n_val, replace=False).tolist(), key=str)
        return np.isin(groups, chosen), [str(g) for g in chosen]
    # NOTE: with one training group the validation spots come from the same slide as the
    # fitting spots and are spatially correlated with them, so early stopping may stop
    # late. The held-out slide is still never used.
    logger.warning("mlp: only one training group; early stopping uses a random 20%% of its spots")
    mask = np.zeros(len(groups), dtype=bool)
    mask[rng.permutation(len(groups))[: max(1, len(groups) // 5)]] = True
    return mask, []


def _shuffled_batches(n_spots: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    batches = list(torch.randperm(n_spots, generator=generator).split(batch_size))
    # A batch of one spot has no Pearson correlation, so it joins the previous batch.
    if len(batches) > 1 and len(batches[-1]) < 2:
        batches[-2] = torch.cat([batches[-2], batches.pop()])
    return batches


def _train_early_stopping(
    model: nn.Module,
    fit_set: tuple[torch.Tensor, torch.Tensor],
    val_set: tuple[torch.Tensor, torch.Tensor],
    params: MLPParams,
    seed: int,
) -> tuple[int, float, int]:
    """Train ``model`` in place and restore the weights of the epoch with the lowest validation loss.

    Returns the best epoch (1-based), its validation loss and the number of epochs run.
    """
    loss_args = {"l1_weight": params.l1_weight, "pearson_weight": params.pearson_weight}
    optimizer = torch.optim.AdamW(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    shuffle = torch.Generator().manual_seed(seed)
    best_loss, best_epoch, best_state = float("inf"), 0, copy.deepcopy(model.state_dict())
    epoch = 0
    for epoch in range(1, params.max_epochs + 1):
        model.train()
        for batch in _shuffled_batches(len(fit_set[0]), params.batch_size, shuffle):
            optimizer.zero_grad()
            loss = mlp_loss(model(fit_set[0][batch]), fit_set[1][batch], **loss_args)
            loss.backward()
            optimizer.step()

        model.eval()
        with torch.no_grad():
            val_loss = float(mlp_loss(model(val_set[0]), val_set[1], **loss_args))
        if val_loss < best_loss:
            best_loss, best_epoch = val_loss, epoch
            best_state = copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= params.patience:
            break
    model.load_state_dict(best_state)
    model.eval()
    return best_epoch, best_loss, epoch


class MLPRegressor(Regressor):
    """Fully connected SiLU network (arXiv 2507.07013) trained with early stopping.

    Inputs are z-scored and targets standardised with statistics of the fitting spots
    (training groups minus the validation groups); predictions are mapped back to target
    units. Early stopping monitors the loss on ``n_validation_groups`` whole training
    groups drawn with ``seed``, and the weights of the best epoch are restored. Training
    runs on the CPU with deterministic algorithms, so a fixed seed gives identical weights.

    Attributes
    ----------
    model_ : torch.nn.Sequential
        Network with the best epoch's weights.
    x_mean_, x_scale_ : array, shape (n_dims,)
        Input standardisation.
    y_mean_, y_scale_ : array, shape (n_types,)
        Target standardisation (a constant type gets scale 1).
    hyperparameters_ : dict
        ``best_epoch`` (1-based), ``val_loss`` at that epoch, ``epochs_run`` and
        ``val_groups`` (comma-separated group names, empty for a spot split).
    """

    name = "mlp"
    Params = MLPParams

    def _fit(self, X: np.ndarray, Y: np.ndarray, groups: np.ndarray) -> None:
        p = self.params_
        val_mask, val_groups = _split_validation(groups, p.n_validation_groups, self.seed)
        X_fit, Y_fit = X[~val_mask], Y[~val_mask]
        self.x_mean_, self.x_scale_ = _standardise_stats(X_fit)
        self.y_mean_, self.y_scale_ = _standardise_stats(Y_fit)

        def to_tensor(values: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(((values - mean) / scale).astype(np.float32))

        x_fit = to_tensor(X_fit, self.x_mean_, self.x_scale_)
        y_fit = to_tensor(Y_fit, self.y_mean_, self.y_scale_)
        x_val = to_tensor(X[val_mask], self.x_mean_, self.x_scale_)
        y_val = to_tensor(Y[val_mask], self.y_mean_, self.y_scale_)

        with deterministic_torch(self.seed, num_threads=p.num_threads):
            model = build_mlp(X.shape[1], Y.shape[1], hidden_widths=p.hidden_widths, dropout=p.dropout)
            best_epoch, best_loss, epoch = _train_early_stopping(model, (x_fit, y_fit), (x_val, y_val), p, self.seed)

        self.model_ = model
        self.hyperparameters_ = {
            "best_epoch": best_epoch,
            "val_loss": best_loss,
            "epochs_run": epoch,
            "val_groups": ",".join(val_groups),
        }
        logger.debug("mlp: best epoch %d of %d, validation loss %.4f", best_epoch, epoch, best_loss)

    def _predict(self, X: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(((X - self.x_mean_) / self.x_scale_).astype(np.float32))
        with torch.no_grad(), torch_threads(self.params_.num_threads):
            y = self.model_(x).numpy().astype(np.float64)
        return y * self.y_scale_ + self.y_mean_


REGRESSORS: dict[str, type[Regressor]] = {
    MeanRegressor.name: MeanRegressor,
    RidgeRegressor.name: RidgeRegressor,
    MLPRegressor.name: MLPRegressor,
}


def make_regressor(name: RegressorName, params: Mapping[str, Any] | None = None, *, seed: int = 0) -> Regressor:
    """Build an unfitted regressor from the registry.

    Parameters
    ----------
    name : {"mean", "ridge", "mlp"}
        Registry key.
    params : mapping, optional
        Overrides of the regressor's parameter dataclass (:class:`RidgeParams`,
        :class:`MLPParams`); ``None`` uses the defaults. The mean baseline takes none.
    seed : int
        Seed of the validation split, weight initialisation and shuffling.
    """
    if name not in REGRESSORS:
        raise ValueError(f"unknown regressor {name!r}; valid names are {sorted(REGRESSORS)}")
    cls = REGRESSORS[name]
    params = dict(params or {})
    if cls.Params is None:
        if params:
            raise ValueError(
                f"regressor {name!r} takes no parameters, got {sorted(params)}; remove them from the config"
            )
        return cls(None, seed=seed)
    valid = [field.name for field in dataclasses.fields(cls.Params)]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ValueError(f"unknown parameters {unknown} for regressor {name!r}; valid parameters are {valid}")
    return cls(cls.Params(**params), seed=seed)
