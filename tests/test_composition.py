"""Jensen–Shannon divergence, the squidpy neighbour graph, bivariate Moran's I and the
colocalisation score, each against values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from histodecon.composition import bivariate_moran, colocalisation_score, composition, jensen_shannon, spatial_weights

CHAIN = np.array([[0.0, 0.0], [100.0, 0.0], [200.0, 0.0], [300.0, 0.0]])  # 4 spots in a row, pitch 100 px


@pytest.fixture(scope="module")
def chain_weights():
    return spatial_weights(CHAIN, pitch_px=100.0)


def test_composition_clips_negatives_and_normalises():
    shares = composition(np.array([[2.0, -1.0, 2.0]]))
    np.testing.assert_allclose(shares, [[0.5, 0.0, 0.5]])


def test_composition_of_empty_spot_is_nan():
    assert np.isnan(composition(np.array([[0.0, 0.0]]))).all()


def test_jensen_shannon_identical_mix_is_zero():
    assert jensen_shannon(np.array([[1.0, 3.0]]), np.array([[2.0, 6.0]]))[0] == pytest.approx(0.0, abs=1e-12)


def test_jensen_shannon_disjoint_mix_is_one_bit():
    assert jensen_shannon(np.array([[1.0, 0.0]]), np.array([[0.0, 5.0]]))[0] == pytest.approx(1.0)


def test_jensen_shannon_half_overlap_by_hand():
    # M = (0.75, 0.25): H(M) = 0.8113 bits, H(p) = 0, H(q) = 1; JSD = H(M) - (H(p) + H(q)) / 2.
    expected = -(0.75 * np.log2(0.75) + 0.25 * np.log2(0.25)) - 0.5
    assert jensen_shannon(np.array([[1.0, 0.0]]), np.array([[0.5, 0.5]]))[0] == pytest.approx(expected)


def test_jensen_shannon_spot_without_prediction_is_nan():
    divergence = jensen_shannon(np.array([[1.0, 1.0], [1.0, 0.0]]), np.array([[0.0, -2.0], [1.0, 0.0]]))
    assert np.isnan(divergence[0])
    assert divergence[1] == pytest.approx(0.0, abs=1e-12)


def test_chain_neighbours_are_row_standardised(chain_weights):
    expected = [[0, 1, 0, 0], [0.5, 0, 0.5, 0], [0, 0.5, 0, 0.5], [0, 0, 1, 0]]
    np.testing.assert_allclose(chain_weights.toarray(), expected)


def test_square_grid_leaves_out_diagonals():
    grid = np.array([[x, y] for y in range(3) for x in range(3)], dtype=float) * 290.0
    degree = np.diff(spatial_weights(grid, pitch_px=290.0).indptr)
    assert degree.tolist() == [2, 3, 2, 3, 4, 3, 2, 3, 2]


def test_hexagonal_grid_centre_has_six_neighbours():
    angles = np.arange(6) * np.pi / 3
    hexagon = np.vstack([[0.0, 0.0], np.stack([np.cos(angles), np.sin(angles)], axis=1) * 100.0])
    degree = np.diff(spatial_weights(hexagon, pitch_px=100.0).indptr)
    assert degree[0] == 6


def test_moran_of_a_gradient_by_hand(chain_weights):
    # x = 1..4: z = (-1.342, -0.447, 0.447, 1.342), W z = (-0.447, -0.447, 0.447, 0.447),
    # z . W z = 0.6 + 0.2 + 0.2 + 0.6 = 1.6, divided by n = 4.
    moran = bivariate_moran(np.array([[1.0], [2.0], [3.0], [4.0]]), chain_weights)
    assert moran[0, 0] == pytest.approx(0.4)


def test_bivariate_moran_of_opposite_gradients_is_negative(chain_weights):
    values = np.array([[1.0, 4.0], [2.0, 3.0], [3.0, 2.0], [4.0, 1.0]])
    assert bivariate_moran(values, chain_weights)[0, 1] == pytest.approx(-0.4)


def test_bivariate_moran_constant_column_is_nan(chain_weights):
    values = np.array([[1.0, 0.3], [2.0, 0.3], [3.0, 0.3], [4.0, 0.3]])
    moran = bivariate_moran(values, chain_weights)
    assert np.isnan(moran[1]).all()
    assert np.isfinite(moran[0, 0])


@pytest.fixture(scope="module")
def grid_labels():
    rng = np.random.default_rng(0)
    grid = np.array([[x, y] for y in range(6) for x in range(6)], dtype=float) * 100.0
    labels = np.stack([grid[:, 0], grid[:, 1], grid[:, 0] + grid[:, 1], rng.random(36)], axis=1)
    return spatial_weights(grid, pitch_px=100.0), labels


def test_colocalisation_unchanged_by_affine_prediction(grid_labels):
    weights, labels = grid_labels
    result = colocalisation_score(labels, 2.0 * labels + 1.0, weights)
    assert result.score == pytest.approx(1.0)


def test_colocalisation_mean_abs_difference_zero_for_same_maps(grid_labels):
    weights, labels = grid_labels
    assert colocalisation_score(labels, labels, weights).mean_abs_difference == pytest.approx(0.0, abs=1e-12)


def test_colocalisation_counts_type_pairs(grid_labels):
    weights, labels = grid_labels
    assert colocalisation_score(labels, labels, weights).n_pairs == 6


def test_colocalisation_of_constant_prediction_is_undefined(grid_labels):
    weights, labels = grid_labels
    result = colocalisation_score(labels, np.full_like(labels, 0.1 + 0.2), weights)
    assert np.isnan(result.score)
    assert result.n_pairs == 0


def test_colocalisation_drops_for_shuffled_prediction(grid_labels):
    weights, labels = grid_labels
    shuffled = labels[np.random.default_rng(1).permutation(len(labels))]
    assert colocalisation_score(labels, shuffled, weights).score < 0.9
