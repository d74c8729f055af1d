"""Every report figure: its panels, its file, and that it leaves its inputs alone."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from histodecon.benchmark import benchmark_table, type_intervals
from histodecon.figures import (
    SpatialMapData,
    plot_benchmark,
    plot_label_agreement,
    plot_scatter,
    plot_signatures,
    plot_spatial_maps,
    save_figure,
)

TYPES = ["B-cells", "CAFs", "T-cells"]
SLIDES = ["C2", "C3", "C4"]


@pytest.fixture(scope="module")
def predictions() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for fold, slide in enumerate(SLIDES):
        for spot in range(20):
            labels = rng.gamma(2.0, 1.0, len(TYPES))
            row = {"slide": slide, "barcode": f"{spot}x1", "fold": fold}
            row.update({f"label:{t}": v for t, v in zip(TYPES, labels, strict=True)})
            row.update({f"pred:{t}": v + rng.normal(0, 0.5) for t, v in zip(TYPES, labels, strict=True)})
            rows.append(row)
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def benchmark_inputs(predictions):
    from histodecon.metrics import evaluate

    metrics = {("uni", "ridge"): evaluate(predictions), ("vit_small_random", "ridge"): evaluate(predictions)}
    slides = {pair: pd.DataFrame({"slide": SLIDES, "fold": [0, 1, 2], "jsd_mean": 0.1, "colocalisation": 0.5}) for pair in metrics}
    benchmark = benchmark_table(metrics, slides, {}, control_backbones=["vit_small_random"], seed=0)
    return benchmark, type_intervals(metrics, seed=0), metrics


def test_benchmark_has_overall_and_one_panel_per_type(benchmark_inputs):
    figure = plot_benchmark(*benchmark_inputs)
    assert len(figure.axes) == 1 + len(TYPES)


def test_benchmark_marks_controls_in_labels(benchmark_inputs):
    figure = plot_benchmark(*benchmark_inputs)
    labels = [t.get_text() for t in figure.axes[0].get_yticklabels()]
    assert labels == ["uni / ridge", "vit_small_random / ridge (control)"]


def test_benchmark_leaves_tables_unchanged(benchmark_inputs):
    benchmark, types, metrics = benchmark_inputs
    before = (benchmark.copy(), types.copy())
    plot_benchmark(benchmark, types, metrics)
    pd.testing.assert_frame_equal(benchmark, before[0])
    pd.testing.assert_frame_equal(types, before[1])


def test_scatter_one_panel_per_type(predictions):
    assert len(plot_scatter(predictions, title="uni / ridge").axes) == len(TYPES)


def test_scatter_titles_give_pooled_r(predictions):
    titles = [ax.get_title() for ax in plot_scatter(predictions, title="t").axes]
    assert all("pooled r = " in title for title in titles)


@pytest.fixture(scope="module")
def map_inputs(predictions):
    on_slide = predictions[predictions["slide"] == "C2"].reset_index(drop=True)
    grid = np.array([[x, y] for y in range(4) for x in range(5)], dtype=float) * 200.0 + 300.0
    image = np.full((120, 140, 3), 230, dtype=np.uint8)
    data = SpatialMapData(image=image, scale=0.1, spatial_px=grid, spot_diameter_px=100.0)
    labels = on_slide[[f"label:{t}" for t in TYPES]].set_axis(TYPES, axis=1)
    preds = on_slide[[f"pred:{t}" for t in TYPES]].set_axis(TYPES, axis=1)
    preds.iloc[0] = np.nan  # a spot left out of cross-validation
    return data, labels, preds


def test_spatial_maps_panels_per_type(map_inputs):
    figure = plot_spatial_maps(*map_inputs, title="C2", unit="cells per spot")
    assert len(figure.axes) == 3 * len(TYPES)


def test_spatial_maps_share_the_colour_scale(map_inputs):
    figure = plot_spatial_maps(*map_inputs, title="C2", unit="cells per spot")
    label_limits = figure.axes[0].collections[0].get_clim()
    pred_limits = figure.axes[1].collections[0].get_clim()
    assert label_limits == pred_limits


def test_signatures_heatmap_rows(predictions):
    rng = np.random.default_rng(0)
    signatures = pd.DataFrame(rng.gamma(1.0, 1.0, (50, len(TYPES))), index=[f"g{i}" for i in range(50)], columns=TYPES)
    figure = plot_signatures(signatures, genes_per_type=4)
    assert len(figure.axes[0].get_yticklabels()) == 4 * len(TYPES)


def test_label_agreement_one_panel_per_published_type():
    rng = np.random.default_rng(0)
    ours = rng.dirichlet([1, 1], 30)
    spots = pd.DataFrame(
        {"slide": ["C2"] * 30, "barcode": [f"{i}x1" for i in range(30)], "ours:T": ours[:, 0], "ours:E": ours[:, 1],
         "published:T": ours[:, 0] * 0.9, "published:E": 1 - ours[:, 0] * 0.9}
    )  # fmt: skip
    agreement = pd.DataFrame(
        {"published_type": ["E", "T"], "our_types": ["E", "T"], "pearson_pooled": [0.9, 0.9], "pearson_slide_mean": [0.9, 0.9]}
    )
    assert len(plot_label_agreement(spots, agreement).axes) == 2


def test_saved_figure_is_a_png(tmp_path, predictions):
    path = tmp_path / "scatter.png"
    save_figure(plot_scatter(predictions, title="t"), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tile_heatmap_panels():
    from histodecon.figures import plot_tile_heatmap

    centres = np.array([[100.0, 100.0], [300.0, 100.0], [100.0, 300.0]])
    figure = plot_tile_heatmap(
        np.full((50, 50, 3), 200, dtype=np.uint8), scale=0.1, centres_px=centres, tile_px=200.0,
        values=np.array([1.0, 2.0, np.nan]), title="t", unit="cells",
    )  # fmt: skip
    assert len(figure.axes) == 3
