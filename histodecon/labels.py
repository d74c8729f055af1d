"""Per-spot cell-type abundance labels with cell2location.

Two steps, as the cell2location authors recommend (Kleshchevnikov et al., Nat Biotech 2022):

1. :func:`fit_signatures`: ``RegressionModel`` on the raw counts of a single-cell reference
   with a label column gives one expression signature per cell type (genes x types, mean
   counts per cell, scaled by the average detection efficiency).
2. :func:`map_cell_types`: ``Cell2location`` on the raw spot counts of the genes shared with
   the signatures gives the posterior abundance ``w_sf`` of every type in every spot, in
   cells per spot. We export its 5 % quantile (``q05``, the authors' conservative estimate)
   and mean, and the proportions ``q05 / sum(q05)`` per spot.

All slides are fitted jointly with the slide as batch key (the authors' recommended mode), or
one at a time when the caller passes a single slide.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from histodecon import keys
from histodecon.counts import check_raw_counts

logger = logging.getLogger(__name__)

__all__ = [
    "ReferenceDataError",
    "SharedGenesError",
    "load_reference",
    "fit_signatures",
    "map_cell_types",
    "abundance_table",
    "resolve_accelerator",
    "plot_elbo",
]

# cell2location tutorial values for filter_genes: keep genes seen in at least 5 cells that are
# either in 3 % of cells or have a mean non-zero count above 1.12.
DEFAULT_GENE_FILTER = {"cell_count_cutoff": 5, "cell_percentage_cutoff2": 0.03, "nonz_mean_cutoff": 1.12}


class ReferenceDataError(ValueError):
    """A single-cell reference that cannot give cell-type signatures."""


class SharedGenesError(ValueError):
    """Too few genes shared between the reference signatures and the slides."""


@dataclass(frozen=True)
class FitResult:
    """Output of a cell2location fit: a table and its ELBO history (one value per epoch)."""

    table: pd.DataFrame
    elbo: pd.Series
    seconds: float


def resolve_accelerator(accelerator: str) -> str:
    """Map ``auto`` to ``gpu`` when CUDA is available and ``cpu`` otherwise."""
    if accelerator != "auto":
        return accelerator
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"


def _seed_everything(seed: int, accelerator: str) -> None:
    """Seed every generator a fit draws from; on a GPU, also ask for deterministic kernels.

    On the CPU a seeded fit is repeatable bit for bit (measured: docs/benchmarks.md). On a
    GPU, cuBLAS needs a fixed workspace and cuDNN its deterministic algorithms. Operations
    without a deterministic CUDA kernel only raise a warning (``warn_only``), so GPU fits
    may still differ in the last digits between runs.
    NOTE: the size of that variation on a GPU has not been measured.
    """
    import os

    import pyro
    import scvi
    import torch

    scvi.settings.seed = seed  # seeds python, numpy, torch and lightning
    pyro.set_rng_seed(seed)
    if accelerator == "gpu":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=True)


def load_reference(
    path: str | Path,
    *,
    label_key: str,
    counts_layer: str | None = None,
    min_cells_per_type: int = 10,
    exclude_types: Sequence[str] = (),
) -> ad.AnnData:
    """Read a single-cell reference and check its counts and labels.

    Parameters
    ----------
    path
        ``.h5ad`` with raw counts in ``X`` or in ``layers[counts_layer]``.
    label_key
        ``obs`` column with the cell type of every cell.
    min_cells_per_type
        Minimum number of cells per type; a signature from fewer cells is noise.
    exclude_types
        Types removed before the check (e.g. a rare type the user accepts losing).

    Returns
    -------
    AnnData with raw counts in ``X`` and the label column as a categorical.
    """
    path = Path(path)
    adata = ad.read_h5ad(path)
    if label_key not in adata.obs.columns:
        raise ReferenceDataError(
            f"reference {path} has no label column {label_key!r}; its obs columns are {list(adata.obs.columns)}. "
            "Set reference.label_key in the config file to one of them."
        )
    if counts_layer is not None:
        if counts_layer not in adata.layers:
            raise ReferenceDataError(
                f"reference {path} has no layer {counts_layer!r}; layers: {list(adata.layers)}. "
                "Fix reference.counts_layer (null reads X)."
            )
        adata.X = adata.layers[counts_layer]
    if exclude_types:
        keep = ~adata.obs[label_key].astype(str).isin(list(exclude_types))
        logger.info("reference: excluding %d cells of types %s", int((~keep).sum()), list(exclude_types))
        adata = adata[keep].copy()
    adata.obs[label_key] = adata.obs[label_key].astype(str).astype("category")
    check_raw_counts(adata.X, what="reference counts", path=path)

    sizes = adata.obs[label_key].value_counts()
    small = sizes[sizes < min_cells_per_type]
    if len(small):
        raise ReferenceDataError(
            f"reference {path}: cell types with fewer than {min_cells_per_type} cells in {label_key!r}: "
            f"{small.to_dict()}. Add them to reference.exclude_types or lower reference.min_cells_per_type."
        )
    logger.info("reference %s: %d cells, %d genes, %d types in %r", path, adata.n_obs, adata.n_vars, len(sizes), label_key)
    return adata


def fit_signatures(
    reference: ad.AnnData,
    *,
    label_key: str,
    batch_key: str | None = None,
    epochs: int,
    batch_size: int = 256,
    seed: int = 0,
    accelerator: str = "auto",
    posterior_samples: int = 1000,
    gene_filter: Mapping[str, float] | None = None,
) -> FitResult:
    """Fit cell2location's ``RegressionModel`` and return signatures, genes x types.

    The table's index is the gene, its columns the cell types (sorted), its values the
    expected counts per cell of each type (posterior mean).

    ``batch_size`` is the minibatch of cells. cell2location's default of 2500 makes one
    optimisation step per epoch on a reference of fewer cells: on a 1,564-cell reference its
    ELBO still falls after 600 epochs, while 150 epochs of 256-cell batches reach a lower one.
    """
    from cell2location.models import RegressionModel
    from cell2location.utils.filtering import filter_genes

    accelerator = resolve_accelerator(accelerator)
    _seed_everything(seed, accelerator)
    genes = filter_genes(reference, **{**DEFAULT_GENE_FILTER, **(gene_filter or {})})
    adata = reference[:, genes].copy()
    logger.info("reference: %d of %d genes pass the cell2location gene filter", adata.n_vars, reference.n_vars)

    RegressionModel.setup_anndata(adata=adata, labels_key=label_key, batch_key=batch_key)
    model = RegressionModel(adata)
    start = time.perf_counter()
    model.train(max_epochs=epochs, batch_size=batch_size, accelerator=accelerator)
    seconds = time.perf_counter() - start
    logger.info("reference regression: %d epochs (batch size %d) on %s in %.0f s", epochs, batch_size, accelerator, seconds)

    adata = model.export_posterior(
        adata, sample_kwargs={"num_samples": posterior_samples, "batch_size": 2500, "accelerator": accelerator}
    )
    factor_names = list(adata.uns["mod"]["factor_names"])
    means = adata.varm["means_per_cluster_mu_fg"]
    signatures = pd.DataFrame(
        means[[f"means_per_cluster_mu_fg_{name}" for name in factor_names]].to_numpy(),
        index=pd.Index(adata.var_names.astype(str), name="gene"),
        columns=factor_names,
    )
    signatures = signatures[sorted(factor_names)]
    return FitResult(table=signatures, elbo=_elbo_history(model), seconds=seconds)


def _elbo_history(model) -> pd.Series:
    history = model.history["elbo_train"]
    series = history.iloc[:, 0] if isinstance(history, pd.DataFrame) else pd.Series(history)
    series.index = np.arange(1, len(series) + 1)
    series.index.name = "epoch"
    return series.rename("elbo_train").astype(float)


def shared_genes(signatures: pd.DataFrame, slides: Sequence[ad.AnnData], *, min_shared_genes: int) -> list[str]:
    """Return the genes present in the signatures and in every slide, in signature order."""
    common = set(signatures.index)
    for adata in slides:
        common &= set(adata.var_names)
    genes = [g for g in signatures.index if g in common]
    if len(genes) < min_shared_genes:
        examples_ref = list(signatures.index[:5])
        examples_slide = list(slides[0].var_names[:5])
        raise SharedGenesError(
            f"only {len(genes)} genes are shared between the reference signatures ({len(signatures)} genes, e.g. "
            f"{examples_ref}) and the slides (e.g. {examples_slide}); at least {min_shared_genes} are required. "
            "Check that both use the same gene identifiers (symbols vs Ensembl ids) and species, or lower "
            "labels.min_shared_genes."
        )
    logger.info("mapping on %d genes shared by the signatures and %d slide(s)", len(genes), len(slides))
    return genes


def map_cell_types(
    slides: Sequence[ad.AnnData],
    signatures: pd.DataFrame,
    *,
    n_cells_per_location: float,
    detection_alpha: float,
    epochs: int,
    seed: int = 0,
    accelerator: str = "auto",
    posterior_samples: int = 1000,
    min_shared_genes: int = 1000,
) -> tuple[dict[str, pd.DataFrame], pd.Series, float]:
    """Fit ``Cell2location`` on one or more slides and return per-slide abundance tables.

    Several slides are fitted jointly with ``obs["slide"]`` as batch key.

    Returns
    -------
    tables
        Slide id -> table with ``barcode`` and, per cell type, ``q05:``, ``mean:`` and
        ``proportion:`` columns, ``(n_spots, 1 + 3 * n_types)``.
    elbo
        Training ELBO per epoch.
    seconds
        Wall time of the training.
    """
    from cell2location.models import Cell2location

    accelerator = resolve_accelerator(accelerator)
    _seed_everything(seed, accelerator)
    for adata in slides:
        slide_id = str(adata.obs[keys.SLIDE_COL].iloc[0])
        check_raw_counts(adata.X, what=f"counts of slide {slide_id}")
    genes = shared_genes(signatures, slides, min_shared_genes=min_shared_genes)
    parts = []
    for adata in slides:
        part = ad.AnnData(X=adata[:, genes].X.copy(), obs=adata.obs[[keys.SLIDE_COL]].copy())
        part.var_names = genes
        part.obs[keys.BARCODE_COL] = adata.obs_names.astype(str)
        part.obs_names = part.obs[keys.SLIDE_COL].astype(str) + ":" + part.obs[keys.BARCODE_COL]
        parts.append(part)
    joint = ad.concat(parts, merge="same") if len(parts) > 1 else parts[0]
    joint.obs[keys.SLIDE_COL] = joint.obs[keys.SLIDE_COL].astype(str).astype("category")

    Cell2location.setup_anndata(adata=joint, batch_key=keys.SLIDE_COL)
    model = Cell2location(
        joint,
        cell_state_df=signatures.loc[genes],
        N_cells_per_location=n_cells_per_location,
        detection_alpha=detection_alpha,
    )
    start = time.perf_counter()
    model.train(max_epochs=epochs, batch_size=None, train_size=1, accelerator=accelerator)
    seconds = time.perf_counter() - start
    logger.info(
        "cell2location mapping: %d spots x %d genes x %d types, %d epochs on %s in %.0f s",
        joint.n_obs, joint.n_vars, signatures.shape[1], epochs, accelerator, seconds,
    )
    joint = model.export_posterior(
        joint,
        sample_kwargs={"num_samples": posterior_samples, "batch_size": joint.n_obs, "accelerator": accelerator},
    )
    factor_names = list(joint.uns["mod"]["factor_names"])
    tables = {}
    for slide_id, obs in joint.obs.groupby(keys.SLIDE_COL, observed=True):
        q05 = joint.obsm["q05_cell_abundance_w_sf"].loc[obs.index]
        mean = joint.obsm["means_cell_abundance_w_sf"].loc[obs.index]
        tables[str(slide_id)] = abundance_table(
            barcodes=obs[keys.BARCODE_COL].to_numpy(),
            q05=q05.to_numpy(),
            mean=mean.to_numpy(),
            cell_types=factor_names,
        )
    return tables, _elbo_history(model), seconds


def abundance_table(*, barcodes, q05: np.ndarray, mean: np.ndarray, cell_types: Sequence[str]) -> pd.DataFrame:
    """Build the label table: barcode, then q05, mean and proportion columns per sorted type.

    ``q05`` and ``mean`` are ``(n_spots, n_types)`` in cells per spot, columns in the order
    of ``cell_types``.
    """
    order = np.argsort(cell_types, kind="stable")
    names = [cell_types[i] for i in order]
    q05, mean = np.asarray(q05)[:, order], np.asarray(mean)[:, order]
    totals = q05.sum(axis=1, keepdims=True)
    proportion = np.divide(q05, totals, out=np.full_like(q05, 1.0 / len(names)), where=totals > 0)
    table = pd.DataFrame({keys.BARCODE_COL: np.asarray(barcodes, dtype=str)})
    for prefix, values in ((keys.Q05_PREFIX, q05), (keys.MEAN_PREFIX, mean), (keys.PROPORTION_PREFIX, proportion)):
        table = pd.concat([table, pd.DataFrame(values, columns=[prefix + n for n in names])], axis=1)
    return table


def plot_elbo(elbo: pd.Series, path: str | Path, *, title: str) -> None:
    """Save the ELBO curve (negative ELBO per epoch, log scale) with a zoom on the last half.

    A rolling median is drawn over the raw values, because minibatch ELBOs jitter.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from histodecon.io import atomic_path

    window = max(len(elbo) // 20, 5)
    smooth = elbo.rolling(window, min_periods=1, center=True).median()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    half = len(elbo) // 2
    panels = ((axes[0], slice(None), f"{title}: all epochs"), (axes[1], slice(half, None), "second half"))
    for ax, rows, panel_title in panels:
        ax.plot(elbo.index[rows], elbo.to_numpy()[rows], lw=0.8, alpha=0.5, label="per epoch")
        ax.plot(smooth.index[rows], smooth.to_numpy()[rows], lw=1.5, label=f"rolling median ({window} epochs)")
        ax.set_title(panel_title)
        ax.set_xlabel("epoch")
        ax.set_ylabel("negative ELBO (training)")
    axes[0].set_yscale("log")
    axes[0].legend(fontsize="small")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
