"""cell2location labels: reference checks, signatures and mapping, with real short fits."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

from histodecon import keys
from histodecon.counts import RawCountsError
from histodecon.ingest import read_slide
from histodecon.labels import (
    ReferenceDataError,
    SharedGenesError,
    abundance_table,
    fit_signatures,
    load_reference,
    map_cell_types,
)

EPOCHS = 20


@pytest.fixture(scope="module")
def reference(tiny_data):
    return load_reference(tiny_data["reference"], label_key="celltype_major")


@pytest.fixture(scope="module")
def signatures(reference):
    return fit_signatures(reference, label_key="celltype_major", epochs=EPOCHS, posterior_samples=20, gene_filter={"cell_count_cutoff": 1, "cell_percentage_cutoff2": 0.01})


@pytest.fixture(scope="module")
def slides(tiny_data):
    return [read_slide(row) for row in tiny_data["sheet"].to_dict("records")[:2]]


@pytest.fixture(scope="module")
def mapped(slides, signatures):
    return map_cell_types(
        slides, signatures.table, n_cells_per_location=30, detection_alpha=20, epochs=EPOCHS, posterior_samples=20,
        min_shared_genes=50,
    )


def test_reference_missing_label_column(tiny_data):
    with pytest.raises(ReferenceDataError, match="no label column .cell_type.; its obs columns"):
        load_reference(tiny_data["reference"], label_key="cell_type")


def test_reference_rare_type_rejected(tiny_data):
    with pytest.raises(ReferenceDataError, match="Normal Epithelial"):
        load_reference(tiny_data["reference"], label_key="celltype_major", min_cells_per_type=20)


def test_reference_rare_type_excluded(tiny_data):
    adata = load_reference(
        tiny_data["reference"], label_key="celltype_major", min_cells_per_type=20, exclude_types=["Normal Epithelial"]
    )
    assert "Normal Epithelial" not in set(adata.obs["celltype_major"])


def test_reference_normalised_counts_rejected(tiny_data, tmp_path):
    adata = ad.read_h5ad(tiny_data["reference"])
    adata.X = np.log1p(adata.X.toarray() if hasattr(adata.X, "toarray") else adata.X)
    path = tmp_path / "log.h5ad"
    adata.write_h5ad(path)
    with pytest.raises(RawCountsError, match="log.h5ad"):
        load_reference(path, label_key="celltype_major")


def test_signatures_cover_all_types(signatures, reference):
    types = sorted(set(reference.obs["celltype_major"]))
    assert list(signatures.table.columns) == types
    assert (signatures.table.to_numpy() >= 0).all()
    assert len(signatures.elbo) == EPOCHS


def test_mapping_tables_per_slide(mapped, slides):
    tables, elbo, _ = mapped
    assert sorted(tables) == ["C2", "C3"]
    assert list(tables["C2"][keys.BARCODE_COL]) == list(slides[0].obs_names)
    assert len(elbo) == EPOCHS


def test_mapping_abundances_consistent(mapped):
    table = mapped[0]["C2"]
    q05 = table[keys.prefixed_columns(table.columns, keys.Q05_PREFIX)].to_numpy()
    mean = table[keys.prefixed_columns(table.columns, keys.MEAN_PREFIX)].to_numpy()
    proportion = table[keys.prefixed_columns(table.columns, keys.PROPORTION_PREFIX)].to_numpy()
    assert np.isfinite(q05).all()
    assert (q05 >= 0).all()
    assert (q05 <= mean + 1e-6).all()
    np.testing.assert_allclose(proportion.sum(axis=1), 1.0, rtol=1e-5)


def test_mapping_rejects_few_shared_genes(slides, signatures):
    renamed = signatures.table.rename(index=lambda g: f"ENSG_{g}")
    with pytest.raises(SharedGenesError, match="only 0 genes"):
        map_cell_types(slides, renamed, n_cells_per_location=30, detection_alpha=20, epochs=1, min_shared_genes=10)


def test_mapping_rejects_normalised_slide(slides, signatures):
    broken = slides[0].copy()
    broken.X = broken.X * 0.5
    with pytest.raises(RawCountsError, match="slide C2"):
        map_cell_types([broken], signatures.table, n_cells_per_location=30, detection_alpha=20, epochs=1)


def test_abundance_table_sorts_types():
    table = abundance_table(barcodes=["a"], q05=np.array([[1.0, 3.0]]), mean=np.array([[2.0, 4.0]]), cell_types=["T", "B"])
    assert list(table.columns) == ["barcode", "q05:B", "q05:T", "mean:B", "mean:T", "proportion:B", "proportion:T"]
    assert table["proportion:B"].iloc[0] == pytest.approx(0.75)
