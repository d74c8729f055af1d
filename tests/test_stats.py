"""Fold bootstrap intervals, paired tests and the benchmark tables built from them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from histodecon.benchmark import benchmark_table, control_tests, is_control, type_intervals
from histodecon.stats import bootstrap_interval, fold_means, paired_tests


def test_bootstrap_interval_of_equal_values_is_a_point():
    assert bootstrap_interval([0.4, 0.4, 0.4], seed=0) == pytest.approx((0.4, 0.4))


def test_bootstrap_interval_holds_the_mean():
    values = [0.1, 0.5, 0.3, 0.7, 0.2]
    low, high = bootstrap_interval(values, seed=0)
    assert low < np.mean(values) < high


def test_bootstrap_interval_within_the_range():
    low, high = bootstrap_interval([0.1, 0.5, 0.3, 0.7, 0.2], seed=0)
    assert low >= 0.1
    assert high <= 0.7


def test_bootstrap_interval_is_reproducible():
    assert bootstrap_interval([0.1, 0.9, 0.4], seed=3) == bootstrap_interval([0.1, 0.9, 0.4], seed=3)


def test_bootstrap_interval_needs_two_values():
    assert np.isnan(bootstrap_interval([0.5, np.nan], seed=0)).all()


def test_fold_means_average_slides_and_types():
    table = pd.DataFrame({"fold": [0, 0, 0, 1], "slide": ["a", "a", "b", "c"], "pearson": [0.2, 0.4, np.nan, 0.9]})
    assert fold_means(table, "pearson")["pearson"].tolist() == pytest.approx([0.3, 0.9])


def _folds(values):
    return pd.Series(values, index=pd.Index(range(len(values)), name="fold"))


def test_paired_test_exact_wilcoxon_p_value():
    per_fold = {("uni", "ridge"): _folds([0.6, 0.5, 0.7, 0.65, 0.55, 0.6]), ("rand", "ridge"): _folds([0.5, 0.4, 0.6, 0.55, 0.45, 0.5])}
    table = paired_tests(per_fold, controls={("uni", "ridge"): [("rand", "ridge")]}, metric="pearson", higher_is_better=True, seed=0)
    # All 6 folds favour the model: exact two-sided p = 2 / 2**6.
    assert table.loc[0, "p_value"] == pytest.approx(2 / 2**6)


def test_paired_test_difference_and_wins():
    per_fold = {("uni", "ridge"): _folds([0.6, 0.5, 0.7]), ("rand", "ridge"): _folds([0.5, 0.6, 0.6])}
    row = paired_tests(per_fold, controls={("uni", "ridge"): [("rand", "ridge")]}, metric="pearson", higher_is_better=True, seed=0).iloc[0]
    assert (row["difference"], row["n_better"]) == (pytest.approx(0.1 / 3), 2)


def test_paired_test_lower_is_better_flips_the_sign():
    per_fold = {("uni", "ridge"): _folds([0.8, 0.9]), ("uni", "mean"): _folds([1.0, 1.2])}
    row = paired_tests(per_fold, controls={("uni", "ridge"): [("uni", "mean")]}, metric="l1", higher_is_better=False, seed=0).iloc[0]
    assert row["difference"] == pytest.approx(0.25)


def test_paired_test_without_difference_has_no_p_value():
    per_fold = {("a", "ridge"): _folds([0.5, 0.5]), ("b", "ridge"): _folds([0.5, 0.5])}
    row = paired_tests(per_fold, controls={("a", "ridge"): [("b", "ridge")]}, metric="pearson", higher_is_better=True, seed=0).iloc[0]
    assert np.isnan(row["p_value"])


def _metrics(pearson_by_fold: list[float], l1: float) -> pd.DataFrame:
    rows = []
    for fold, r in enumerate(pearson_by_fold):
        for cell_type in ("A", "B"):
            rows.append({"slide": f"S{fold}", "fold": fold, "cell_type": cell_type, "pearson": r, "l1": l1})
    return pd.DataFrame(rows)


@pytest.fixture()
def three_pairs():
    metrics = {
        ("uni", "ridge"): _metrics([0.6, 0.7, 0.65], 0.5),
        ("vit_small_random", "ridge"): _metrics([0.4, 0.5, 0.45], 0.7),
        ("uni", "mean"): _metrics([np.nan, np.nan, np.nan], 1.0),
    }
    slides = {
        pair: pd.DataFrame({"slide": ["S0", "S1", "S2"], "fold": [0, 1, 2], "jsd_mean": 0.1, "colocalisation": 0.5})
        for pair in metrics
    }
    return metrics, slides


def test_benchmark_sorted_best_first(three_pairs):
    metrics, slides = three_pairs
    table = benchmark_table(metrics, slides, {}, control_backbones=["vit_small_random"], seed=0)
    assert list(zip(table["backbone"], table["regressor"])) == [("uni", "ridge"), ("vit_small_random", "ridge"), ("uni", "mean")]


def test_benchmark_marks_controls(three_pairs):
    metrics, slides = three_pairs
    table = benchmark_table(metrics, slides, {}, control_backbones=["vit_small_random"], seed=0)
    assert table["control"].tolist() == [False, True, True]


def test_benchmark_fold_mean(three_pairs):
    metrics, slides = three_pairs
    table = benchmark_table(metrics, slides, {}, control_backbones=["vit_small_random"], seed=0)
    assert table.loc[0, "pearson_fold_mean"] == pytest.approx(0.65)


def test_type_intervals_one_row_per_type(three_pairs):
    metrics, _ = three_pairs
    assert len(type_intervals(metrics, seed=0)) == 3 * 2


def test_control_tests_pairs(three_pairs):
    metrics, _ = three_pairs
    tests = control_tests(metrics, control_backbones=["vit_small_random"], seed=0)
    compared = set(zip(tests["backbone"], tests["control_backbone"], tests["control_regressor"], tests["metric"]))
    assert compared == {
        ("uni", "vit_small_random", "ridge", "pearson"),
        ("uni", "uni", "mean", "l1"),
    }


def test_mean_regressor_is_a_control():
    assert is_control(("uni", "mean"), control_backbones=[])
