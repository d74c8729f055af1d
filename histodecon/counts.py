"""Checks that count matrices contain raw UMI counts before a count model is fitted.

cell2location models counts with a negative binomial; normalised or log-transformed input
fails deep inside pyro with an ``IntegerGreaterThan`` constraint error that does not say
which file is wrong. This check runs first and says so plainly.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import scipy.sparse as sp

logger = logging.getLogger(__name__)

__all__ = ["RawCountsError", "check_raw_counts"]


class RawCountsError(ValueError):
    """A matrix that should hold raw non-negative integer counts does not."""


def check_raw_counts(matrix, *, what: str, path: str | Path | None = None, hint: str = "") -> None:
    """Raise :class:`RawCountsError` unless ``matrix`` contains only finite non-negative integers.

    Parameters
    ----------
    matrix
        Dense array or scipy sparse matrix, ``(n_observations, n_genes)``.
    what
        Description used in the message, e.g. ``"counts of slide C2"``.
    path
        File the matrix came from, named in the message.
    hint
        Sentence appended to the message, e.g. the setting that selects another matrix.
    """
    try:
        _check_values(matrix, what=what, where=f" ({path})" if path is not None else "")
    except RawCountsError as error:
        raise RawCountsError(f"{error} {hint}".rstrip()) from None


def _check_values(matrix, *, what: str, where: str) -> None:
    values = matrix.data if sp.issparse(matrix) else np.asarray(matrix).ravel()
    if values.size == 0:
        return
    if not np.all(np.isfinite(values)):
        raise RawCountsError(f"{what}{where} contain NaN or infinite values; provide the raw UMI count matrix.")
    minimum = float(values.min())
    if minimum < 0:
        raise RawCountsError(
            f"{what}{where} contain negative values (minimum {minimum:g}), so they are not raw counts: they look "
            "scaled or centred. Provide the raw UMI counts (e.g. adata.raw.X or layers['counts'] before normalisation)."
        )
    fractional = values != np.round(values)
    if fractional.any():
        example = float(values[fractional][0])
        raise RawCountsError(
            f"{what}{where} contain non-integer values (e.g. {example:g}; {int(fractional.sum())} of {values.size} "
            "non-zero entries), so they look normalised or log-transformed. cell2location needs raw UMI counts: "
            "use the matrix before normalize_total/log1p (often adata.raw.X or layers['counts'])."
        )
    logger.debug("%s%s: raw integer counts, maximum %g", what, where, float(values.max()))
