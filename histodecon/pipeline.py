"""Stage entry points called by the workflow's scripts: read inputs, run one step, write outputs.

Each function takes plain paths and parameters (no Snakemake objects), so the stages can be
run and tested without Snakemake. Outputs are written atomically.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import anndata as ad
import pandas as pd

from histodecon import keys
from histodecon.ingest import read_slide
from histodecon.io import atomic_path, write_parquet, write_tsv
from histodecon.labels import fit_signatures, load_reference, map_cell_types, plot_elbo
from histodecon.patches import extract_patches, write_patch_file
from histodecon.provenance import package_versions

logger = logging.getLogger(__name__)

__all__ = [
    "ingest_slide",
    "reference_signatures",
    "cell_type_labels",
    "slide_patches",
    "cross_validation",
    "evaluation",
    "summary",
    "published_label_agreement",
]


def ingest_slide(row: Mapping, output: str | Path, *, in_tissue_only: bool = True, min_spots_on_tissue: float = 0.5) -> None:
    """Read one sample sheet row and write its AnnData (``.h5ad``); nothing is written on error."""
    adata = read_slide(row, in_tissue_only=in_tissue_only, min_spots_on_tissue=min_spots_on_tissue)
    adata.uns[keys.HISTODECON_UNS_KEY]["versions"] = package_versions()
    with atomic_path(output) as tmp:
        adata.write_h5ad(tmp)


def reference_signatures(
    *, reference: Mapping, labels: Mapping, signatures_out: str | Path, elbo_tsv: str | Path, elbo_png: str | Path
) -> None:
    """Fit the reference regression and write signatures (parquet) and the ELBO curve."""
    adata = load_reference(
        reference["path"],
        label_key=reference["label_key"],
        counts_layer=reference.get("counts_layer"),
        min_cells_per_type=reference["min_cells_per_type"],
        exclude_types=reference.get("exclude_types", ()),
    )
    result = fit_signatures(
        adata,
        label_key=reference["label_key"],
        batch_key=reference.get("batch_key"),
        epochs=labels["reference_epochs"],
        batch_size=labels["reference_batch_size"],
        seed=labels["seed"],
        accelerator=labels["accelerator"],
        posterior_samples=labels["posterior_samples"],
    )
    table = result.table.reset_index()
    metadata = {"reference": dict(reference), "labels": dict(labels), "fit_seconds": result.seconds, "versions": package_versions()}
    write_parquet(table, signatures_out, metadata=metadata)
    write_tsv(result.elbo.to_frame(), elbo_tsv)
    plot_elbo(result.elbo, elbo_png, title="cell2location RegressionModel")


def cell_type_labels(
    *,
    slides: Sequence[str | Path],
    signatures: str | Path,
    labels: Mapping,
    outputs: Mapping[str, str | Path],
    elbo_tsv: str | Path,
    elbo_png: str | Path,
) -> None:
    """Map cell types on the given slides with cell2location and write one label table per slide.

    ``outputs`` maps slide id to the parquet path of its labels; all slides are fitted jointly.
    """
    adatas = [ad.read_h5ad(path) for path in slides]
    signature_table = pd.read_parquet(signatures).set_index("gene")
    tables, elbo, seconds = map_cell_types(
        adatas,
        signature_table,
        n_cells_per_location=labels["n_cells_per_location"],
        detection_alpha=labels["detection_alpha"],
        epochs=labels["mapping_epochs"],
        seed=labels["seed"],
        accelerator=labels["accelerator"],
        posterior_samples=labels["posterior_samples"],
        min_shared_genes=labels["min_shared_genes"],
    )
    missing = set(outputs) - set(tables)
    if missing:
        raise RuntimeError(f"cell2location returned no spots for slides {sorted(missing)}")
    metadata = {"labels": dict(labels), "slides": sorted(tables), "fit_seconds": seconds, "versions": package_versions()}
    for slide_id, path in outputs.items():
        write_parquet(tables[slide_id], path, metadata={**metadata, "slide": slide_id})
    write_tsv(elbo.to_frame(), elbo_tsv)
    plot_elbo(elbo, elbo_png, title=f"cell2location mapping ({len(tables)} slides)")


def slide_patches(*, slide: str | Path, output: str | Path, field_of_view_um: float, microns_per_pixel: float) -> None:
    """Cut the patches of one ingested slide and write the patch file (HDF5)."""
    adata = ad.read_h5ad(slide)
    images, table, attrs = extract_patches(adata, field_of_view_um=field_of_view_um, microns_per_pixel=microns_per_pixel)
    write_patch_file(output, images, table, attrs)


def cross_validation(
    *,
    slides: Sequence[str],
    patients: Sequence[str],
    embeddings: Sequence[str | Path],
    labels: Sequence[str | Path],
    regressor: str,
    target: str,
    cv: Mapping,
    predictions_out: str | Path,
    folds_out: str | Path,
) -> None:
    """Cross-validate one regressor on one backbone's embeddings and write the predictions."""
    from histodecon.cv import cross_validate, load_cv_data, make_folds

    data = load_cv_data(
        dict(zip(slides, embeddings, strict=True)),
        dict(zip(slides, labels, strict=True)),
        target=target,
        min_tissue_fraction=cv["min_tissue_fraction"],
    )
    folds = make_folds(pd.DataFrame({keys.SLIDE_COL: slides, keys.PATIENT_COL: patients}), group_by=cv["group_by"])
    params = {**cv.get(regressor, {})}
    predictions, folds_info = cross_validate(data, folds, regressor=regressor, params=params, seed=cv["seed"])
    metadata = {
        "regressor": regressor,
        "params": params,
        "target": target,
        "cv": dict(cv),
        "folds": folds.to_dict("records"),
        "versions": package_versions(),
    }
    write_parquet(predictions, predictions_out, metadata=metadata)
    write_tsv(folds_info, folds_out, index=False)


def evaluation(*, predictions: str | Path, output: str | Path) -> None:
    """Compute per-slide, per-cell-type metrics of one prediction table."""
    from histodecon.metrics import evaluate

    write_tsv(evaluate(pd.read_parquet(predictions)), output, index=False)


def summary(
    *,
    pairs: Sequence[tuple[str, str]],
    metrics: Sequence[str | Path],
    predictions: Sequence[str | Path],
    summary_out: str | Path,
    markdown_out: str | Path,
) -> None:
    """Aggregate all backbone x regressor metric tables into one summary (TSV and markdown)."""
    from histodecon.metrics import summarize, summary_markdown

    pairs = [tuple(pair) for pair in pairs]
    metric_tables = {pair: pd.read_csv(path, sep="\t") for pair, path in zip(pairs, metrics, strict=True)}
    prediction_tables = {pair: pd.read_parquet(path) for pair, path in zip(pairs, predictions, strict=True)}
    table = summarize(metric_tables, prediction_tables=prediction_tables)
    write_tsv(table, summary_out, index=False, float_format="%.6g")
    with atomic_path(markdown_out) as tmp:
        Path(tmp).write_text(summary_markdown(table))


def published_label_agreement(
    *, slides: Sequence[str], labels: Sequence[str | Path], published: Sequence[str | Path], type_map: Mapping, output: str | Path
) -> None:
    """Compare our cell2location proportions with published per-spot proportions."""
    from histodecon.metrics import label_agreement

    tables = {slide: pd.read_parquet(path) for slide, path in zip(slides, labels, strict=True)}
    agreement = label_agreement(tables, dict(zip(slides, published, strict=True)), type_map=type_map)
    write_tsv(agreement, output, index=False, float_format="%.6g")
