"""Tests of evaluation metrics, their summary and label agreement, on hand-computed cases."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from histodecon.metrics import evaluate, label_agreement, mean_pearson, pearson_columns, summarize, summary_markdown

SHARED_DATA = Path(os.environ.get("HISTODECON_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def _predictions(rows: dict[str, tuple[list[float], list[float]]], cell_type: str = "T-cells") -> pd.DataFrame:
    """Build a prediction table from slide -> (labels, predictions) of one cell type."""
    parts = []
    for fold, (slide, (labels, preds)) in enumerate(sorted(rows.items())):
        parts.append(
            pd.DataFrame(
                {
                    "slide": slide,
                    "barcode": [f"{i}x1" for i in range(len(labels))],
                    "fold": fold,
                    f"label:{cell_type}": labels,
                    f"pred:{cell_type}": preds,
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def test_pearson_known_pair():
    # dx = (-1.5, -0.5, 0.5, 1.5), dy = (-3, -1, 0, 4): r = 11 / sqrt(5 * 26).
    r = pearson_columns(np.array([1.0, 2.0, 3.0, 4.0]), np.array([2.0, 4.0, 5.0, 9.0]))
    assert r.shape == (1,)
    assert r[0] == pytest.approx(11 / math.sqrt(130))


def test_pearson_constant_column_nan():
    a = np.array([[1.0, 2.0], [1.0, 3.0], [1.0, 5.0]])
    b = np.array([[0.0, 1.0], [1.0, 2.0], [2.0, 3.0]])
    r = pearson_columns(a, b)
    assert np.isnan(r[0])
    assert r[1] == pytest.approx(np.corrcoef(a[:, 1], b[:, 1])[0, 1])


def test_mean_pearson_skips_nan():
    a = np.array([[1.0, 1.0], [1.0, 2.0], [1.0, 3.0]])
    assert mean_pearson(a, a) == pytest.approx(1.0)


def test_evaluate_l1_and_mse():
    table = evaluate(_predictions({"C2": ([1.0, 2.0, 3.0], [2.0, 2.0, 5.0])}))
    row = table.iloc[0]
    assert row["l1"] == pytest.approx(1.0)  # (1 + 0 + 2) / 3
    assert row["mse"] == pytest.approx(5 / 3)  # (1 + 0 + 4) / 3
    assert row["n_spots"] == 3
    assert not row["constant"]


def test_evaluate_pearson_and_spearman():
    table = evaluate(_predictions({"C2": ([1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 5.0, 9.0])}))
    assert table.loc[0, "pearson"] == pytest.approx(11 / math.sqrt(130))
    assert table.loc[0, "spearman"] == pytest.approx(1.0)  # monotone but not linear


def test_evaluate_constant_label_nan():
    table = evaluate(_predictions({"C2": ([2.0, 2.0, 2.0], [1.0, 2.0, 3.0])}))
    assert np.isnan(table.loc[0, "pearson"])
    assert np.isnan(table.loc[0, "spearman"])
    assert table.loc[0, "constant"]
    assert table.loc[0, "l1"] == pytest.approx(2 / 3)


def test_evaluate_constant_prediction_nan():
    table = evaluate(_predictions({"C2": ([1.0, 2.0, 3.0], [0.5, 0.5, 0.5])}))
    assert np.isnan(table.loc[0, "pearson"])
    assert table.loc[0, "constant"]


def test_evaluate_columns_and_order():
    table = evaluate(_predictions({"C3": ([1.0, 2.0], [1.0, 3.0]), "C2": ([1.0, 2.0], [2.0, 1.0])}))
    assert table.columns.tolist() == [
        "slide",
        "fold",
        "cell_type",
        "pearson",
        "spearman",
        "l1",
        "mse",
        "n_spots",
        "constant",
    ]
    assert table["slide"].tolist() == ["C2", "C3"]


def test_evaluate_missing_predictions():
    predictions = _predictions({"C2": ([1.0, 2.0], [1.0, 2.0])}).drop(columns="pred:T-cells")
    with pytest.raises(ValueError, match="T-cells"):
        evaluate(predictions)


@pytest.fixture
def two_slides() -> pd.DataFrame:
    # Both slides are perfectly correlated within, but slide C3 is offset by 10 in the
    # labels only, so the pooled correlation is far below 1.
    return _predictions(
        {
            "C2": ([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]),
            "C3": ([11.0, 12.0, 13.0], [1.0, 2.0, 3.0]),
            "C4": ([4.0, 4.0, 4.0], [1.0, 2.0, 3.0]),
        }
    )


def test_summarize_slide_mean_and_pooled(two_slides):
    summary = summarize({("uni", "ridge"): evaluate(two_slides)}, prediction_tables={("uni", "ridge"): two_slides})
    row = summary.iloc[0]
    expected_pooled = np.corrcoef(two_slides["label:T-cells"], two_slides["pred:T-cells"])[0, 1]
    assert row["pearson_slide_mean"] == pytest.approx(1.0)
    assert row["pearson_pooled"] == pytest.approx(expected_pooled)
    assert row["pearson_pooled"] < 0.5


def test_summarize_counts_excluded(two_slides):
    summary = summarize({("uni", "ridge"): evaluate(two_slides)})
    row = summary.iloc[0]
    assert row["n_slides"] == 3
    assert row["n_excluded"] == 1
    assert np.isnan(row["pearson_pooled"])


def test_summarize_std_over_slides():
    predictions = _predictions({"C2": ([1.0, 2.0, 3.0], [1.0, 2.0, 4.0]), "C3": ([1.0, 2.0, 3.0], [3.0, 2.0, 1.0])})
    metrics = evaluate(predictions)
    summary = summarize({("conch", "mlp"): metrics})
    assert summary.loc[0, "pearson_slide_std"] == pytest.approx(np.std(metrics["pearson"], ddof=1))
    assert summary.loc[0, "mse_slide_mean"] == pytest.approx(metrics["mse"].mean())


def test_summarize_keys_and_order(two_slides):
    metrics = evaluate(two_slides)
    summary = summarize({("uni", "ridge"): metrics, ("conch", "mlp"): metrics})
    assert summary[["backbone", "regressor"]].values.tolist() == [["conch", "mlp"], ["uni", "ridge"]]
    assert "pearson_slide_mean" in summary
    assert "l1_slide_std" in summary


def test_summary_markdown_tables(two_slides):
    summary = summarize({("uni", "ridge"): evaluate(two_slides)}, prediction_tables={("uni", "ridge"): two_slides})
    text = summary_markdown(summary)
    assert "| backbone | regressor | pearson_slide_mean |" in text
    assert "| uni | ridge | T-cells |" in text
    assert "| uni | ridge | 1.000 |" in text


# --- label agreement -----------------------------------------------------------------


@pytest.fixture
def agreement_case(tmp_path) -> tuple[dict, dict, dict]:
    """Return our labels, published tables and a type map where the truth is exact.

    Our two epithelial types sum to the published Epithelial, and our 'Other' type is
    unmapped, so only renormalisation over mapped types makes the proportions equal.
    """
    rng = np.random.default_rng(3)
    ours_by_slide, published_by_slide = {}, {}
    for slide in ("C2", "C3"):
        n = 12
        values = rng.uniform(0.1, 1.0, size=(n, 5))
        ours = pd.DataFrame(values, columns=["Cancer Epithelial", "Normal Epithelial", "T-cells", "CAFs", "Other"])
        ours = ours.div(ours.sum(axis=1), axis=0)
        barcodes = [f"{i}x{slide[-1]}" for i in range(n)]
        labels = pd.DataFrame({"barcode": barcodes + ["99x99"]})
        for column in ours:
            labels[f"proportion:{column}"] = list(ours[column]) + [0.2]
            labels[f"q05:{column}"] = 1.0

        mapped = pd.DataFrame(
            {
                "CAFs": ours["CAFs"],
                "Epithelial": ours["Cancer Epithelial"] + ours["Normal Epithelial"],
                "T-cells": ours["T-cells"],
            }
        )
        published = mapped.div(mapped.sum(axis=1), axis=0)
        published["B-cells"] = 0.0  # published type without a counterpart in the map
        published.index = barcodes
        published = published.drop(index=barcodes[0])  # one of our barcodes is unpublished
        path = tmp_path / f"{slide}-proportion.tsv"
        published.to_csv(path, sep="\t")
        ours_by_slide[slide], published_by_slide[slide] = labels, path
    type_map = {
        "Cancer Epithelial": "Epithelial",
        "Normal Epithelial": "Epithelial",
        "T-cells": "T-cells",
        "CAFs": "CAFs",
    }
    return ours_by_slide, published_by_slide, type_map


def test_agreement_sums_mapped_types(agreement_case):
    ours, published, type_map = agreement_case
    table = label_agreement(ours, published, type_map=type_map)
    assert table["published_type"].tolist() == ["CAFs", "Epithelial", "T-cells"]
    assert table.set_index("published_type").loc["Epithelial", "our_types"] == "Cancer Epithelial,Normal Epithelial"
    np.testing.assert_allclose(table["pearson_pooled"], 1.0)
    np.testing.assert_allclose(table["pearson_slide_mean"], 1.0)


def test_agreement_counts_matched_spots(agreement_case, caplog):
    ours, published, type_map = agreement_case
    caplog.set_level("INFO", logger="histodecon.metrics")
    table = label_agreement(ours, published, type_map=type_map)
    # 12 barcodes per slide, minus one unpublished; 99x99 exists only in our labels.
    assert (table["n_spots"] == 22).all()
    assert (table["n_slides"] == 2).all()
    assert "11 barcodes matched, 2 only in our labels, 0 only in the published table" in caplog.text
    assert "['Other']" in caplog.text


def test_agreement_hand_pearson(tmp_path):
    labels = pd.DataFrame(
        {
            "barcode": ["1x1", "2x1", "3x1", "4x1"],
            "proportion:A": [0.1, 0.2, 0.3, 0.4],
            "proportion:B": [0.9, 0.8, 0.7, 0.6],
        }
    )
    published = pd.DataFrame({"X": [0.2, 0.4, 0.5, 0.9], "Y": [0.8, 0.6, 0.5, 0.1]}, index=labels["barcode"])
    path = tmp_path / "S1.tsv"
    published.to_csv(path, sep="\t")
    table = label_agreement({"S1": labels}, {"S1": path}, type_map={"A": "X", "B": "Y"})
    # A - mean = 0.1 * (-1.5, -0.5, 0.5, 1.5) and X - mean = 0.1 * (-3, -1, 0, 4): r = 11 / sqrt(130).
    assert table.loc[0, "pearson_pooled"] == pytest.approx(11 / math.sqrt(130))
    assert table.loc[1, "pearson_pooled"] == pytest.approx(11 / math.sqrt(130))


def test_agreement_unknown_type(agreement_case):
    ours, published, type_map = agreement_case
    with pytest.raises(ValueError, match="Plasmablasts"):
        label_agreement(ours, published, type_map={**type_map, "Plasmablasts": "Plasma Cells"})


def test_agreement_no_matching_barcodes(tmp_path):
    labels = pd.DataFrame({"barcode": ["1x1", "2x1"], "proportion:A": [0.5, 0.4], "proportion:B": [0.5, 0.6]})
    path = tmp_path / "S1.tsv"
    pd.DataFrame({"A": [1.0, 0.0]}, index=["AAAC-1", "AAAG-1"]).to_csv(path, sep="\t")
    with pytest.raises(ValueError, match="barcode format"):
        label_agreement({"S1": labels}, {"S1": path}, type_map={"A": "A", "B": "A"})


def test_agreement_real_published_table():
    path = SHARED_DATA / "her2st" / "res" / "ST-deconv" / "props" / "major" / "C2-proportion.tsv"
    if not path.exists():
        pytest.skip(f"published her2st proportions not found: {path}")
    published = pd.read_csv(path, sep="\t", index_col=0)
    # Our labels equal the published ones here, so every mapped type must agree exactly.
    labels = pd.DataFrame({"barcode": published.index.astype(str)})
    for column in published:
        labels[f"proportion:{column}"] = published[column].to_numpy()
    table = label_agreement({"C2": labels}, {"C2": path}, type_map={c: c for c in published.columns})
    assert len(table) == 8
    assert (table["n_spots"] == len(published)).all()
    np.testing.assert_allclose(table["pearson_pooled"], 1.0)
