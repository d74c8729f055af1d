"""Mapping H&E without spatial transcriptomics: the tile grid, final models and their checks,
and `snakemake predict` on a her2st section that the model never saw."""

from __future__ import annotations

import json

import anndata as ad
import geojson
import matplotlib
import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import cut_her2st, snakemake
from histodecon.final_model import ModelMismatchError, check_model, load_model
from histodecon.predict import PredictionInputError, TileDataset, resolve_image_mpp, tile_grid
from histodecon.provenance import file_sha256, read_provenance
from histodecon.slide import open_slide
from histodecon.tissue import fraction_on_mask

matplotlib.use("Agg")

FIELD_OF_VIEW_UM = 112.0


@pytest.fixture(scope="module")
def c4_image(tiny_data):
    return tiny_data["sheet"].set_index("slide").loc["C4", "image"]


@pytest.fixture(scope="module")
def grid(c4_image):
    return tile_grid(open_slide(c4_image), microns_per_pixel=0.69, field_of_view_um=FIELD_OF_VIEW_UM, stride_um=112.0, min_tissue_fraction=0.5)


def test_tiles_lie_inside_the_image(grid, c4_image):
    width, height = open_slide(c4_image).dimensions
    half = grid.tile_px / 2
    assert (grid.tiles["x_px"] - half >= 0).all()
    assert (grid.tiles["x_px"] + half <= width).all()
    assert (grid.tiles["y_px"] + half <= height).all()


def test_tile_centres_on_tissue(grid):
    centres = grid.tiles[["x_px", "y_px"]].to_numpy()
    assert fraction_on_mask(grid.mask, centres, grid.thumbnail_scale) > 0.9


def test_tiles_keep_the_tissue_threshold(grid):
    assert (grid.tiles["tissue_fraction"] >= 0.5).all()


def test_tile_size_is_the_field_of_view(grid):
    assert grid.tile_px == pytest.approx(FIELD_OF_VIEW_UM / 0.69)


def test_half_stride_quadruples_the_grid(c4_image):
    slide = open_slide(c4_image)
    full = tile_grid(slide, microns_per_pixel=0.69, field_of_view_um=112.0, stride_um=112.0, min_tissue_fraction=0.0)
    half = tile_grid(slide, microns_per_pixel=0.69, field_of_view_um=112.0, stride_um=56.0, min_tissue_fraction=0.0)
    assert len(half.tiles) / len(full.tiles) == pytest.approx(4.0, rel=0.25)


def test_tile_dataset_batch_shape(grid, c4_image):
    dataset = TileDataset(c4_image, grid.tiles[["x_px", "y_px"]].to_numpy()[:3], tile_px=grid.tile_px, patch_px=224)
    assert tuple(dataset[[0, 1, 2]].shape) == (3, 224, 224, 3)


def test_image_without_mpp_rejected(c4_image):
    with pytest.raises(PredictionInputError, match="microns_per_pixel column"):
        resolve_image_mpp("C4x", None, open_slide(c4_image), path=c4_image)


def test_sheet_mpp_comes_first(c4_image):
    assert resolve_image_mpp("C4x", 0.5, open_slide(c4_image), path=c4_image) == (0.5, "sample_sheet")


METADATA = {"backbone": "uni", "embedding_dim": 1024, "field_of_view_um": 112.0, "patch_microns_per_pixel": 0.5}


def test_matching_model_accepted():
    check_model(METADATA, backbone="uni", embedding_dim=1024, field_of_view_um=112.0, microns_per_pixel=0.5, source="x.parquet")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"backbone": "conch"}, "backbone 'conch', but the model was trained on 'uni'"),
        ({"embedding_dim": 512}, "512 embedding dimensions, but the model expects 1024"),
        ({"field_of_view_um": 224.0}, "224 µm field of view"),
        ({"microns_per_pixel": 1.0}, "patches at 1 µm/px"),
    ],
)
def test_mismatched_model_refused(change, message):
    arguments = {"backbone": "uni", "embedding_dim": 1024, "field_of_view_um": 112.0, "microns_per_pixel": 0.5, **change}
    with pytest.raises(ModelMismatchError, match=message):
        check_model(METADATA, source="x.parquet", **arguments)


# --- `snakemake predict` on C4, with a model that never saw C4 ------------------------------
# The tiny sections (30 spots, 400 genes) carry too little signal for a model to learn from.
# This run cuts larger blocks instead: 100 spots per section and 1,000 genes. C4 is labelled with
# the others in one cell2location fit but held out of the final model (predict.holdout_slides).


@pytest.fixture(scope="module")
def predict_run(workdir, reference_genes, tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    data = cut_her2st(root / "data", reference_genes, n_spots=100, n_genes=1000, cells_per_type=60)
    (root / "config").mkdir()
    data["sheet"].to_csv(root / "config" / "samples.tsv", sep="\t", index=False)
    config = yaml.safe_load((workdir / "config" / "config.yaml").read_text())
    config["reference"]["path"] = str(data["reference"])
    config["labels"].update({"reference_epochs": 60, "mapping_epochs": 300, "min_shared_genes": 500})
    config["backbones"] = ["morphology"]
    config["cv"]["regressors"] = ["ridge"]
    (root / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    # The C4 image has no µm/px in its metadata: use the value ingest derives from its spot grid.
    result = snakemake(root, "--cores", "2", "results/ingest/C4.h5ad")
    assert result.returncode == 0, result.stderr[-4000:]
    mpp = float(ad.read_h5ad(root / "results" / "ingest" / "C4.h5ad", backed="r").uns["histodecon"]["microns_per_pixel"])
    image = data["sheet"].set_index("slide").loc["C4", "image"]
    (root / "config" / "predict.tsv").write_text(f"slide\timage\tmicrons_per_pixel\nC4new\t{image}\t{mpp}\n")
    config["predict"] = {"samples": "config/predict.tsv", "models": ["morphology/ridge"], "holdout_slides": ["C4"], "stride_um": 56.0}
    (root / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(root, "--cores", "2", "predict", "results/labels/C4.parquet")
    assert result.returncode == 0, result.stderr[-4000:]
    return root, data


@pytest.fixture(scope="module")
def predicted(predict_run):
    return pd.read_parquet(predict_run[0] / "results" / "predict" / "morphology" / "ridge" / "C4new.parquet")


def test_predict_writes_every_output(predict_run):
    folder = predict_run[0] / "results" / "predict" / "morphology" / "ridge"
    assert sorted(p.name for p in folder.iterdir()) == ["C4new.geojson", "C4new.h5ad", "C4new.parquet", "C4new_heatmaps"]


def test_predict_heatmap_per_type(predict_run, predicted):
    n_types = len([c for c in predicted.columns if c.startswith("pred:")])
    heatmaps = list((predict_run[0] / "results" / "predict" / "morphology" / "ridge" / "C4new_heatmaps").glob("*.png"))
    assert len(heatmaps) == n_types


def test_predict_manifest_lists_the_image(predict_run):
    root, data = predict_run
    manifest = json.loads((root / "results" / "predict" / "run_manifest.json").read_text())
    image = str(data["sheet"].set_index("slide").loc["C4", "image"])
    assert manifest["inputs"][image]["sha256"] == file_sha256(image)
    assert "results/predict/morphology/ridge/C4new.parquet" in manifest["outputs"]
    assert manifest["input_conflicts"] == []


def test_predicted_h5ad_provenance(predict_run):
    root, data = predict_run
    record = read_provenance(root / "results" / "predict" / "morphology" / "ridge" / "C4new.h5ad")
    assert record["rule"] == "predict_apply"
    assert record["scale"]["C4new"]["microns_per_pixel_source"] == "sample_sheet"
    # The model's training slides reach the prediction through the model metadata.
    assert {"C2", "C3"} <= set(record["scale"])


def test_model_trained_without_the_predicted_section(predict_run):
    _, metadata = load_model(predict_run[0] / "results" / "models" / "morphology" / "ridge.joblib")
    assert metadata["training_slides"] == ["C2", "C3"]  # C4 held out


def test_predicted_values_finite(predicted):
    assert np.isfinite(predicted[[c for c in predicted.columns if c.startswith("pred:")]].to_numpy()).all()


def test_predicted_tiles_follow_the_labels(predicted, predict_run):
    """Tiles centred near a C4 spot correlate positively with its labels for the most abundant types."""
    root, data = predict_run
    spots = pd.read_csv(data["sheet"].set_index("slide").loc["C4", "spots"], sep="\t")
    spots.index = spots["x"].astype(str) + "x" + spots["y"].astype(str)
    labels = pd.read_parquet(root / "results" / "labels" / "C4.parquet").set_index("barcode")
    centres = predicted[["x_px", "y_px"]].to_numpy()
    distance = np.hypot(centres[:, None, 0] - spots["pixel_x"].to_numpy()[None], centres[:, None, 1] - spots["pixel_y"].to_numpy()[None])
    nearest = distance.argmin(axis=0)
    close = distance[nearest, np.arange(len(spots))] < 40  # px, well inside a 162 px tile
    matched_tiles = predicted.iloc[nearest[close]]
    matched_labels = labels.loc[spots.index[close]]
    abundant = matched_labels[[c for c in labels.columns if c.startswith("q05:")]].mean().nlargest(3).index
    correlations = [np.corrcoef(matched_tiles["pred:" + t[4:]], matched_labels[t])[0, 1] for t in abundant]
    assert close.sum() >= 30
    assert np.isfinite(correlations).all()
    assert np.mean(correlations) > 0


def test_predicted_h5ad_plots_with_squidpy(predict_run):
    import squidpy as sq

    adata = ad.read_h5ad(predict_run[0] / "results" / "predict" / "morphology" / "ridge" / "C4new.h5ad")
    sq.pl.spatial_scatter(adata, color=adata.var_names[0], shape="square", library_id="C4new")
    assert len(matplotlib.pyplot.gcf().axes) >= 1
    matplotlib.pyplot.close("all")


def test_predicted_geojson_validates(predict_run, predicted):
    text = (predict_run[0] / "results" / "predict" / "morphology" / "ridge" / "C4new.geojson").read_text()
    collection = geojson.loads(text)
    assert collection.is_valid, collection.errors()
    assert len(json.loads(text)["features"]) == len(predicted)


def test_predict_refuses_other_geometry(predict_run):
    """A model trained on 112 µm patches is not applied to tiles of another field of view."""
    root = predict_run[0]
    config = yaml.safe_load((root / "config" / "config.yaml").read_text())
    config["patches"] = {"field_of_view_um": 56.0, "microns_per_pixel": 0.5}
    (root / "config" / "small_tiles.yaml").write_text(yaml.safe_dump(config))
    allowed = ["predict_tiles", "predict_embed", "predict_apply", "predict"]
    result = snakemake(root, "--cores", "1", "predict", "--configfile", str(root / "config" / "small_tiles.yaml"), "--allowed-rules", *allowed)
    assert result.returncode != 0
    assert "a 56 µm field of view, but the model's patches cover 112 µm" in result.stdout + result.stderr
