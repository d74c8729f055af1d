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
from histodecon.io import atomic_path, write_h5ad, write_parquet, write_tsv
from histodecon.labels import fit_signatures, load_reference, map_cell_types, plot_elbo
from histodecon.patches import extract_patches, write_patch_file
from histodecon.provenance import package_versions

logger = logging.getLogger(__name__)

# Colour-bar units of the spatial maps, per regression target (labels.target).
_TARGET_UNITS = {"q05": "cells per spot (q05)", "mean": "cells per spot (mean)", "proportion": "proportion of cells"}

__all__ = [
    "ingest_slide",
    "reference_signatures",
    "cell_type_labels",
    "slide_patches",
    "cross_validation",
    "evaluation",
    "summary",
    "published_label_agreement",
    "benchmark_figure",
    "scatter_figure",
    "signature_figure",
    "label_agreement_figure",
    "choose_map_pair",
    "slide_results",
    "final_model",
    "predict_tiles",
    "predict_embed",
    "predict_apply",
]


def ingest_slide(row: Mapping, output: str | Path, *, in_tissue_only: bool = True, min_spots_on_tissue: float = 0.5) -> None:
    """Read one sample sheet row and write its AnnData (``.h5ad``); nothing is written on error."""
    adata = read_slide(row, in_tissue_only=in_tissue_only, min_spots_on_tissue=min_spots_on_tissue)
    adata.uns[keys.HISTODECON_UNS_KEY]["versions"] = package_versions()
    write_h5ad(adata, output)


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
    metadata = {"reference": dict(reference), "labels": dict(labels), "versions": package_versions()}
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
    tables, elbo, _ = map_cell_types(
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
    metadata = {"labels": dict(labels), "slides": sorted(tables), "versions": package_versions()}
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


def _slide_positions(path: str | Path):
    """Read the spot centres and grid pitch of an ingested slide (counts stay on disk)."""
    from histodecon.metrics import SlidePositions

    adata = ad.read_h5ad(path, backed="r")
    try:
        info = adata.uns[keys.HISTODECON_UNS_KEY]
        pitch_px = float(info["spot_pitch_um"]) / float(info[keys.MPP_KEY])
        spatial = pd.DataFrame(adata.obsm[keys.SPATIAL_KEY][:, :2], index=adata.obs_names.astype(str), columns=["x", "y"])
    finally:
        adata.file.close()
    return SlidePositions(spatial_px=spatial, pitch_px=pitch_px)


def evaluation(*, predictions: str | Path, slides: Sequence[str], ingested: Sequence[str | Path], output: str | Path, slides_out: str | Path) -> None:
    """Compute per-slide-and-type metrics and per-slide composition metrics of one prediction table."""
    from histodecon.metrics import evaluate, evaluate_slides

    table = pd.read_parquet(predictions)
    positions = {slide: _slide_positions(path) for slide, path in zip(slides, ingested, strict=True)}
    write_tsv(evaluate(table), output, index=False)
    write_tsv(evaluate_slides(table, positions), slides_out, index=False, float_format="%.6g")


def summary(
    *,
    pairs: Sequence[tuple[str, str]],
    metrics: Sequence[str | Path],
    slide_metrics: Sequence[str | Path],
    predictions: Sequence[str | Path],
    control_backbones: Sequence[str],
    seed: int,
    summary_out: str | Path,
    markdown_out: str | Path,
    benchmark_out: str | Path,
    types_out: str | Path,
    tests_out: str | Path,
) -> None:
    """Aggregate all backbone x regressor metric tables: summary, benchmark, intervals and tests."""
    from histodecon.benchmark import benchmark_table, control_tests, type_intervals
    from histodecon.metrics import summarize, summary_markdown

    pairs = [tuple(pair) for pair in pairs]
    metric_tables = {pair: pd.read_csv(path, sep="\t") for pair, path in zip(pairs, metrics, strict=True)}
    slide_tables = {pair: pd.read_csv(path, sep="\t") for pair, path in zip(pairs, slide_metrics, strict=True)}
    prediction_tables = {pair: pd.read_parquet(path) for pair, path in zip(pairs, predictions, strict=True)}
    table = summarize(metric_tables, prediction_tables=prediction_tables)
    benchmark = benchmark_table(metric_tables, slide_tables, prediction_tables, control_backbones=control_backbones, seed=seed)
    types = type_intervals(metric_tables, seed=seed)
    tests = control_tests(metric_tables, control_backbones=control_backbones, seed=seed)
    write_tsv(table, summary_out, index=False, float_format="%.6g")
    write_tsv(benchmark, benchmark_out, index=False, float_format="%.6g")
    write_tsv(types, types_out, index=False, float_format="%.6g")
    write_tsv(tests, tests_out, index=False, float_format="%.6g")
    with atomic_path(markdown_out) as tmp:
        Path(tmp).write_text(summary_markdown(table, benchmark=benchmark, tests=tests))


def published_label_agreement(
    *,
    slides: Sequence[str],
    labels: Sequence[str | Path],
    published: Sequence[str | Path],
    type_map: Mapping,
    output: str | Path,
    spots_out: str | Path,
) -> None:
    """Compare our cell2location proportions with published per-spot proportions."""
    from histodecon.metrics import label_agreement, label_agreement_spots

    tables = {slide: pd.read_parquet(path) for slide, path in zip(slides, labels, strict=True)}
    published_paths = dict(zip(slides, published, strict=True))
    agreement = label_agreement(tables, published_paths, type_map=type_map)
    spots = label_agreement_spots(tables, published_paths, type_map=type_map)
    write_tsv(agreement, output, index=False, float_format="%.6g")
    write_parquet(spots, spots_out, metadata={"type_map": dict(type_map), "slides": list(slides), "versions": package_versions()})


def _pair_tables(pairs: Sequence[Sequence[str]], paths: Sequence[str | Path], reader) -> dict[tuple[str, str], pd.DataFrame]:
    return {tuple(pair): reader(path) for pair, path in zip(pairs, paths, strict=True)}


def benchmark_figure(
    *, pairs: Sequence[Sequence[str]], metrics: Sequence[str | Path], benchmark: str | Path, types: str | Path, output: str | Path
) -> None:
    """Draw the backbone benchmark (per-fold Pearson, mean and interval per backbone x regressor)."""
    from histodecon.figures import plot_benchmark, save_figure

    metric_tables = _pair_tables(pairs, metrics, lambda p: pd.read_csv(p, sep="\t"))
    figure = plot_benchmark(pd.read_csv(benchmark, sep="\t"), pd.read_csv(types, sep="\t"), metric_tables)
    save_figure(figure, output)


def scatter_figure(*, predictions: str | Path, backbone: str, regressor: str, target: str, output: str | Path) -> None:
    """Draw held-out prediction against label per cell type for one backbone x regressor."""
    from histodecon.figures import plot_scatter, save_figure

    title = f"{backbone} / {regressor}: held-out prediction against cell2location label ({target})"
    save_figure(plot_scatter(pd.read_parquet(predictions), title=title), output)


def signature_figure(*, signatures: str | Path, output: str | Path) -> None:
    """Draw the reference signature heatmap."""
    from histodecon.figures import plot_signatures, save_figure

    save_figure(plot_signatures(pd.read_parquet(signatures).set_index("gene")), output)


def label_agreement_figure(*, spots: str | Path, agreement: str | Path, output: str | Path) -> None:
    """Draw our proportions against the published ones, per published type."""
    from histodecon.figures import plot_label_agreement, save_figure

    save_figure(plot_label_agreement(pd.read_parquet(spots), pd.read_csv(agreement, sep="\t")), output)


def choose_map_pair(benchmark: pd.DataFrame, setting: str) -> tuple[str, str]:
    """Return the backbone x regressor whose predictions the maps and GeoJSON show.

    ``best`` takes the first non-control row of the benchmark, which is sorted by mean
    Pearson. When every pair is a control, it takes the first row. ``<backbone>/<regressor>``
    names one pair.
    """
    available = list(zip(benchmark["backbone"], benchmark["regressor"], strict=True))
    if setting == "best":
        models = benchmark[~benchmark["control"].astype(bool) & benchmark["pearson_fold_mean"].notna()]
        row = models.iloc[0] if len(models) else benchmark.iloc[0]
        return str(row["backbone"]), str(row["regressor"])
    backbone, _, regressor = setting.partition("/")
    if (backbone, regressor) not in available:
        raise ValueError(
            f"report.map_predictions is {setting!r}, which is not among the cross-validated pairs "
            f"{['/'.join(p) for p in available]}; set it to one of them or to 'best'"
        )
    return backbone, regressor


def slide_results(
    *,
    slide: str,
    ingested: str | Path,
    labels: str | Path,
    target: str,
    pairs: Sequence[Sequence[str]],
    predictions: Sequence[str | Path],
    benchmark: str | Path,
    map_predictions: str,
    h5ad_out: str | Path,
    geojson_out: str | Path,
    map_out: str | Path,
) -> None:
    """Write one slide's AnnData (labels and all held-out predictions), GeoJSON and spatial map."""
    from histodecon.export import LABEL_OBSM_KEY, prediction_key, slide_anndata, spot_geojson, write_geojson
    from histodecon.figures import SpatialMapData, plot_spatial_maps, save_figure

    # Only this slide's rows: with many slides, reading whole tables per slide grows quadratically.
    prediction_tables = _pair_tables(pairs, predictions, lambda p: pd.read_parquet(p, filters=[(keys.SLIDE_COL, "==", slide)]))
    prefix = keys.TARGET_PREFIXES[target]
    result = slide_anndata(
        ad.read_h5ad(ingested), slide=slide, labels=pd.read_parquet(labels), target_prefix=prefix, predictions=prediction_tables
    )
    backbone, regressor = choose_map_pair(pd.read_csv(benchmark, sep="\t"), map_predictions)
    key = prediction_key(backbone, regressor)
    result.uns[keys.HISTODECON_UNS_KEY]["map_predictions"] = key
    (library,) = result.uns["spatial"].values()
    data = SpatialMapData(
        image=library["images"][keys.HIRES_IMAGE_KEY],
        scale=float(library["scalefactors"][keys.HIRES_SCALE_KEY]),
        spatial_px=result.obsm[keys.SPATIAL_KEY][:, :2],
        spot_diameter_px=float(library["scalefactors"][keys.SPOT_DIAMETER_KEY]),
    )
    title = f"{slide}: cell2location label ({target}) and held-out prediction of {backbone} / {regressor}"
    figure = plot_spatial_maps(data, result.obsm[LABEL_OBSM_KEY], result.obsm[key], title=title, unit=_TARGET_UNITS[target])
    write_h5ad(result, h5ad_out)
    write_geojson(spot_geojson(result, prediction=key), geojson_out)
    save_figure(figure, map_out)



def final_model(
    *,
    backbone: str,
    regressor: str,
    slides: Sequence[str],
    embeddings: Sequence[str | Path],
    labels: Sequence[str | Path],
    target: str,
    cv: Mapping,
    model_out: str | Path,
    metadata_out: str | Path,
) -> None:
    """Train the final model of one backbone x regressor on every labelled slide and save it."""
    import json

    from histodecon.final_model import save_model, train_final_model

    model, metadata = train_final_model(
        backbone=backbone,
        regressor=regressor,
        embeddings=dict(zip(slides, embeddings, strict=True)),
        labels=dict(zip(slides, labels, strict=True)),
        target=target,
        params=cv.get(regressor, {}),
        min_tissue_fraction=cv["min_tissue_fraction"],
        seed=cv["seed"],
    )
    save_model(model, metadata, model_out)
    with atomic_path(metadata_out) as tmp:
        Path(tmp).write_text(json.dumps(metadata, indent=2, sort_keys=True, default=str) + "\n")


def predict_tiles(*, slide: str, row: Mapping, patches: Mapping, predict: Mapping, tiles_out: str | Path, thumbnail_out: str | Path) -> None:
    """Detect tissue on one image of the prediction sheet and write its tile grid."""
    from histodecon.predict import tile_slide

    tile_slide(
        slide_id=slide,
        image=row["image"],
        sheet_mpp=row.get("microns_per_pixel"),
        field_of_view_um=patches["field_of_view_um"],
        patch_microns_per_pixel=patches["microns_per_pixel"],
        stride_um=predict["stride_um"] or patches["field_of_view_um"],
        min_tissue_fraction=predict["min_tissue_fraction"],
        output=tiles_out,
        thumbnail_out=thumbnail_out,
    )


def predict_embed(*, tiles: str | Path, backbone: str, weights: str | Path | None, embedding: Mapping, output: str | Path) -> None:
    """Embed the tiles of one image with one backbone, streaming to parquet."""
    from histodecon.predict import embed_tiles

    embed_tiles(
        tiles=tiles,
        backbone=backbone,
        output=output,
        weights=weights,
        batch_size=embedding["batch_size"],
        precision=embedding["precision"],
        device=embedding["device"],
        num_workers=embedding["num_workers"],
        seed=embedding["seed"],
        trust_remote_code=embedding.get("trust_remote_code", ()),
    )


def predict_apply(
    *,
    slide: str,
    tiles: str | Path,
    thumbnail: str | Path,
    embeddings: str | Path,
    model: str | Path,
    predictions_out: str | Path,
    h5ad_out: str | Path,
    geojson_out: str | Path,
    heatmaps_out: str | Path,
) -> None:
    """Apply a final model to one image's tile embeddings and write every output format."""
    import numpy as np

    from histodecon.io import read_parquet_metadata
    from histodecon.predict import apply_model
    from histodecon.predict_outputs import tiles_anndata, write_heatmaps, write_tile_geojson

    table = apply_model(embeddings=embeddings, tiles=tiles, model=model, output=predictions_out)
    info = read_parquet_metadata(predictions_out)
    tile_px = float(info["tiles"]["tile_px"])
    with np.load(thumbnail) as stored:
        image, scale = stored["thumbnail"], float(stored["scale"])
    adata = tiles_anndata(table, slide=slide, thumbnail=image, thumbnail_scale=scale, tile_px=tile_px, info=info)
    write_h5ad(adata, h5ad_out)
    write_tile_geojson(table, tile_px=tile_px, path=geojson_out)
    unit = _TARGET_UNITS[info["model_metadata"]["target"]]
    write_heatmaps(table, thumbnail=image, thumbnail_scale=scale, tile_px=tile_px, slide=slide, unit=unit, folder=heatmaps_out)
