"""What the tiny workflow leaves for people: figures, the HTML report, per-slide AnnData that
scanpy and squidpy plot, GeoJSON that validates, and the benchmark tables."""

from __future__ import annotations

import json

import anndata as ad
import geojson
import matplotlib
import numpy as np
import pandas as pd
import pytest

from conftest import BACKBONES, REGRESSORS, TINY_SLIDES, snakemake
from histodecon.export import prediction_key, spot_polygons

matplotlib.use("Agg")

pytestmark = pytest.mark.slow

FIGURES = [
    "figures/benchmark.png",
    "figures/signatures.png",
    "figures/label_agreement.png",
    "labels/reference_elbo.png",
    "labels/mapping_elbo.png",
    *(f"figures/scatter/{b}/{r}.png" for b in BACKBONES for r in REGRESSORS),
    *(f"figures/maps/{s}.png" for s in TINY_SLIDES),
]


@pytest.mark.parametrize("figure", FIGURES)
def test_figure_is_a_png(completed_run, workdir, figure):
    assert (workdir / "results" / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_benchmark_table_one_row_per_pair(completed_run, workdir):
    benchmark = pd.read_csv(workdir / "results" / "metrics" / "benchmark.tsv", sep="\t")
    assert len(benchmark) == len(BACKBONES) * len(REGRESSORS)


def test_benchmark_intervals_hold_the_mean(completed_run, workdir):
    benchmark = pd.read_csv(workdir / "results" / "metrics" / "benchmark.tsv", sep="\t").dropna(subset=["pearson_ci_low"])
    assert ((benchmark["pearson_ci_low"] <= benchmark["pearson_fold_mean"]) & (benchmark["pearson_fold_mean"] <= benchmark["pearson_ci_high"])).all()


def test_control_tests_compare_with_random_weights(completed_run, workdir):
    tests = pd.read_csv(workdir / "results" / "metrics" / "control_tests.tsv", sep="\t")
    pearson = tests[tests["metric"] == "pearson"]
    assert set(zip(pearson["backbone"], pearson["control_backbone"])) == {("morphology", "vit_small_random")}


def test_slide_metrics_have_composition_scores(completed_run, workdir):
    slides = pd.read_csv(workdir / "results" / "metrics" / "morphology" / "ridge.slides.tsv", sep="\t")
    assert slides["jsd_mean"].between(0, 1).all()
    assert slides["colocalisation"].between(-1, 1).all()


@pytest.fixture(scope="module")
def slide_h5ad(completed_run, workdir) -> ad.AnnData:
    return ad.read_h5ad(workdir / "results" / "slides" / "C2.h5ad")


def test_h5ad_holds_labels_and_every_prediction(slide_h5ad):
    expected = {"label", "spatial", *(prediction_key(b, r) for b in BACKBONES for r in REGRESSORS)}
    assert set(slide_h5ad.obsm) == expected


def test_h5ad_predictions_share_the_label_types(slide_h5ad):
    assert list(slide_h5ad.obsm[prediction_key("morphology", "ridge")].columns) == list(slide_h5ad.obsm["label"].columns)


def test_h5ad_labels_match_the_label_table(slide_h5ad, workdir):
    labels = pd.read_parquet(workdir / "results" / "labels" / "C2.parquet").set_index("barcode")
    np.testing.assert_allclose(slide_h5ad.obsm["label"]["CAFs"].to_numpy(), labels.loc[slide_h5ad.obs_names, "q05:CAFs"].to_numpy())


def test_h5ad_plots_with_squidpy(slide_h5ad):
    import squidpy as sq

    adata = slide_h5ad.copy()
    adata.obs[adata.obsm["label"].columns] = adata.obsm["label"]
    sq.pl.spatial_scatter(adata, color="CAFs", library_id="C2")
    assert len(matplotlib.pyplot.gcf().axes) >= 1
    matplotlib.pyplot.close("all")


def test_h5ad_plots_with_scanpy(slide_h5ad):
    import scanpy as sc

    adata = slide_h5ad.copy()
    key = prediction_key("morphology", "ridge")
    adata.obs[adata.obsm[key].columns] = adata.obsm[key]
    axes = sc.pl.spatial(adata, color="CAFs", library_id="C2", show=False)
    assert len(axes) == 1
    matplotlib.pyplot.close("all")


@pytest.fixture(scope="module")
def slide_geojson(completed_run, workdir) -> dict:
    return json.loads((workdir / "results" / "slides" / "C2.geojson").read_text())


def test_geojson_validates(slide_geojson):
    collection = geojson.loads(json.dumps(slide_geojson))
    assert collection.is_valid, collection.errors()


def test_geojson_one_feature_per_predicted_spot(slide_geojson, workdir):
    predictions = pd.read_parquet(workdir / "results" / "cv" / "morphology" / "ridge" / "predictions.parquet")
    assert len(slide_geojson["features"]) == (predictions["slide"] == "C2").sum()


def test_geojson_rings_counter_clockwise(slide_geojson):
    ring = np.asarray(slide_geojson["features"][0]["geometry"]["coordinates"][0])
    signed_area = 0.5 * np.sum(ring[:-1, 0] * ring[1:, 1] - ring[1:, 0] * ring[:-1, 1])
    assert signed_area > 0


def test_geojson_carries_qupath_measurements(slide_geojson):
    properties = slide_geojson["features"][0]["properties"]
    assert properties["objectType"] == "detection"
    assert "pred CAFs" in properties["measurements"]


def test_geojson_proportions_sum_to_one(slide_geojson):
    measurements = slide_geojson["features"][0]["properties"]["measurements"]
    assert sum(v for k, v in measurements.items() if k.startswith("pred proportion ")) == pytest.approx(1.0)


def test_spot_polygon_centred_with_spot_radius():
    ring = spot_polygons(np.array([[100.0, 50.0]]), 20.0)[0]
    np.testing.assert_allclose(np.hypot(ring[:, 0] - 100.0, ring[:, 1] - 50.0), 10.0)


def test_report_renders_every_figure(completed_run, workdir):
    result = snakemake(workdir, "--report", "report.html")
    assert result.returncode == 0, result.stderr[-3000:]
    html = (workdir / "report.html").read_text()
    missing = [f for f in FIGURES if f.split("/")[-1] not in html]
    assert not missing
