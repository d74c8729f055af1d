"""Per-slide agreement of predicted and labelled composition: divergence and colocalisation.

Two views that the per-type Pearson of :mod:`histodecon.metrics` misses:

- :func:`jensen_shannon`: how far each spot's predicted mix of cell types is from its
  labelled mix, whatever the absolute abundance.
- :func:`colocalisation_score`: whether the prediction keeps which cell types sit next to
  which. For every pair of types we compute the bivariate Moran's I on the spot neighbour
  graph (Wartenberg 1985), once on the labels and once on the predictions. The score is
  the Pearson correlation of those pair values.

NOTE: arXiv 2507.07013 describes its colocalisation score only in words, as the agreement
of bivariate Moran's maps between cell-type pairs. The formula above is our reading of it.

The neighbour graph comes from squidpy (:func:`spatial_weights`), so it is the same graph a
user gets from ``squidpy.gr.spatial_neighbors`` on the per-slide ``.h5ad``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.spatial.distance import jensenshannon

logger = logging.getLogger(__name__)

__all__ = [
    "NEIGHBOUR_RADIUS",
    "composition",
    "jensen_shannon",
    "spatial_weights",
    "bivariate_moran",
    "Colocalisation",
    "colocalisation_score",
]

# Neighbours are spots within this many grid pitches. That is the 4 nearest on the legacy-ST
# square grid, where diagonals lie at 1.41 pitches, and the 6 nearest on the Visium
# hexagonal grid, where the next ring lies at 1.73. The margin absorbs the jitter of
# hand-aligned her2st positions.
NEIGHBOUR_RADIUS = 1.25


def composition(values: np.ndarray) -> np.ndarray:
    """Return each row of non-negative abundances as proportions, shape ``(n_spots, n_types)``.

    Negative values (a regressor may predict them) count as zero. A row whose sum is zero
    has no composition and becomes NaN.
    """
    clipped = np.clip(np.asarray(values, dtype=np.float64), 0.0, None)
    totals = clipped.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(totals > 0, clipped / totals, np.nan)


def jensen_shannon(labels: np.ndarray, preds: np.ndarray) -> np.ndarray:
    """Return the Jensen–Shannon divergence of each spot's composition, in bits, shape ``(n_spots,)``.

    Both inputs are turned into proportions with :func:`composition`. The divergence lies in
    [0, 1]: 0 for the same mix, 1 for mixes with no type in common. Spots where either side
    sums to zero are NaN. scipy returns the Jensen–Shannon *distance*, the square root of
    the divergence, so it is squared here.
    """
    p, q = composition(labels), composition(preds)
    valid = np.isfinite(p).all(axis=1) & np.isfinite(q).all(axis=1)
    divergence = np.full(p.shape[0], np.nan)
    if valid.any():
        divergence[valid] = jensenshannon(p[valid], q[valid], base=2, axis=1) ** 2
    return divergence


def spatial_weights(spatial_px: np.ndarray, *, pitch_px: float, radius: float = NEIGHBOUR_RADIUS) -> sparse.csr_matrix:
    """Return the row-standardised spot neighbour matrix, shape ``(n_spots, n_spots)``.

    Parameters
    ----------
    spatial_px : array, shape ``(n_spots, 2)``
        Spot centres in full-resolution pixels (x = column, y = row), as in ``obsm["spatial"]``.
    pitch_px : float
        Centre-to-centre distance of neighbouring grid spots, in the same pixels.
    radius : float
        Neighbours are the spots within ``radius * pitch_px``.

    The graph is ``squidpy.gr.spatial_neighbors(coord_type="generic", radius=...)``. Each
    row sums to 1; a spot without neighbours keeps an all-zero row.
    """
    import anndata as ad
    import squidpy as sq

    holder = ad.AnnData(obs={"i": np.arange(len(spatial_px))}, obsm={"spatial": np.asarray(spatial_px, dtype=np.float64)})
    sq.gr.spatial_neighbors(holder, coord_type="generic", radius=radius * pitch_px, delaunay=False)
    connectivity = sparse.csr_matrix(holder.obsp["spatial_connectivities"], dtype=np.float64)
    connectivity.setdiag(0)
    connectivity.eliminate_zeros()
    degree = np.asarray(connectivity.sum(axis=1)).ravel()
    scale = np.divide(1.0, degree, out=np.zeros_like(degree), where=degree > 0)
    return sparse.csr_matrix(sparse.diags(scale) @ connectivity)


def bivariate_moran(values: np.ndarray, weights: sparse.spmatrix) -> np.ndarray:
    """Return the bivariate Moran's I of every pair of columns, shape ``(n_types, n_types)``.

    With ``z`` each column standardised (population standard deviation) and ``W`` the
    row-standardised neighbour matrix, ``I[a, b] = z_a · (W z_b) / n``: how much type ``a``
    in a spot goes with type ``b`` around it. Row standardisation makes ``W`` asymmetric,
    so the matrix is symmetrised, ``(I + I.T) / 2``. The diagonal is the univariate Moran's
    I of each type. A constant column has no spatial pattern; its row and column are NaN.
    """
    values = np.asarray(values, dtype=np.float64)
    n = values.shape[0]
    std = values.std(axis=0)
    # ptp, not std: the std of a constant column can come out as 1e-16 from rounding.
    constant = np.ptp(values, axis=0) == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (values - values.mean(axis=0)) / std
    z[:, constant] = 0.0
    moran = z.T @ (weights @ z) / n
    moran = (moran + moran.T) / 2
    moran[constant, :] = np.nan
    moran[:, constant] = np.nan
    return moran


@dataclass(frozen=True)
class Colocalisation:
    """Agreement of label and prediction colocalisation on one slide.

    Attributes
    ----------
    score : float
        Pearson correlation over type pairs of the label and prediction bivariate Moran's I
        (NaN with fewer than 3 pairs defined on both sides, or a constant side).
    mean_abs_difference : float
        Mean over those pairs of the absolute difference of the two Moran's I values.
    n_pairs : int
        Type pairs ``a < b`` with a defined value on both sides.
    label_moran, pred_moran : array, shape ``(n_types, n_types)``
        The two matrices of :func:`bivariate_moran`.
    """

    score: float
    mean_abs_difference: float
    n_pairs: int
    label_moran: np.ndarray
    pred_moran: np.ndarray


def colocalisation_score(labels: np.ndarray, preds: np.ndarray, weights: sparse.spmatrix) -> Colocalisation:
    """Compare which cell types sit together in the labels and in the predictions of one slide.

    Parameters
    ----------
    labels, preds : array, shape ``(n_spots, n_types)``
        Label and held-out prediction per spot and type, columns in the same order.
    weights : sparse matrix, shape ``(n_spots, n_spots)``
        Row-standardised neighbour matrix of :func:`spatial_weights`.
    """
    label_moran = bivariate_moran(labels, weights)
    pred_moran = bivariate_moran(preds, weights)
    upper = np.triu_indices(label_moran.shape[0], k=1)
    a, b = label_moran[upper], pred_moran[upper]
    both = np.isfinite(a) & np.isfinite(b)
    a, b = a[both], b[both]
    score = float("nan")
    if len(a) >= 3 and np.ptp(a) > 0 and np.ptp(b) > 0:
        score = float(np.corrcoef(a, b)[0, 1])
    difference = float(np.abs(a - b).mean()) if len(a) else float("nan")
    return Colocalisation(score, difference, int(both.sum()), label_moran, pred_moran)
