"""Provenance records, atomic writers and the run manifest, on small files written here."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from histodecon import keys
from histodecon.io import atomic_directory, atomic_path, read_parquet_metadata, write_h5ad, write_parquet
from histodecon.manifest import build_manifest, write_manifest
from histodecon.patches import write_patch_file
from histodecon.provenance import (
    activate,
    declared_scale,
    file_sha256,
    job_record,
    path_record,
    read_provenance,
)

CONFIG = {"labels": {"seed": 3}, "embedding": {"seed": 4}, "cv": {"seed": 5}, "samples": "config/samples.tsv"}


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A working directory with one original input file and a ``results`` folder."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "counts.tsv").write_text("gene\tA\n")
    (tmp_path / "results").mkdir()
    yield tmp_path
    activate(None)


def _slide(n: int = 4, *, mpp: float = 0.5, slide: str = "S1") -> ad.AnnData:
    adata = ad.AnnData(np.ones((n, 2), dtype=np.float32))
    adata.uns[keys.SPATIAL_KEY] = {slide: {"scalefactors": {keys.MPP_KEY: mpp}}}
    adata.uns[keys.HISTODECON_UNS_KEY] = {keys.MPP_KEY: mpp, keys.MPP_SOURCE_KEY: "sheet"}
    return adata


def test_path_record_of_a_file(project):
    record = path_record("data/counts.tsv")
    assert record == {"path": "data/counts.tsv", "sha256": file_sha256("data/counts.tsv"), "bytes": 7}


def test_folder_record_tracks_file_changes(project):
    folder = project / "data" / "spaceranger"
    (folder / "spatial").mkdir(parents=True)
    (folder / "spatial" / "positions.csv").write_text("a,1\n")
    before = path_record(folder)
    (folder / "spatial" / "positions.csv").write_text("a,2\n")
    after = path_record(folder)
    assert before["files"] == 1
    assert before["sha256"] != after["sha256"]


def test_job_record_lists_inputs_seeds_and_params(project):
    record = job_record(rule="ingest", inputs={"counts": ["data/counts.tsv"]}, config=CONFIG, params={"row": {"slide": "S1"}})
    assert record["rule"] == "ingest"
    assert record["seeds"] == {"labels": 3, "embedding": 4, "cv": 5}
    assert record["params"] == {"row": {"slide": "S1"}}
    assert record["inputs"][0]["role"] == "counts"
    assert record["sources"] == {"data/counts.tsv": {"sha256": file_sha256("data/counts.tsv"), "bytes": 7}}
    assert record["versions"]["histodecon"]


def test_sources_and_scale_are_carried_through_outputs(project):
    activate(job_record(rule="ingest", inputs={"counts": ["data/counts.tsv"]}, config=CONFIG))
    write_h5ad(_slide(mpp=0.25), "results/ingest/S1.h5ad")
    activate(job_record(rule="patches", inputs={"h5ad": ["results/ingest/S1.h5ad"]}, config=CONFIG))
    write_parquet(pd.DataFrame({"x": [1.0]}), "results/embeddings/S1.parquet")
    downstream = job_record(rule="cross_validate", inputs={"embeddings": ["results/embeddings/S1.parquet"]}, config=CONFIG)
    assert set(downstream["sources"]) == {"data/counts.tsv"}
    assert downstream["scale"] == {"S1": {keys.MPP_KEY: 0.25, keys.MPP_SOURCE_KEY: "sheet"}}
    assert downstream["inputs"][0]["sha256"] == file_sha256("results/embeddings/S1.parquet")


def test_write_parquet_stores_the_active_record(project):
    record = job_record(rule="r", inputs={"counts": ["data/counts.tsv"]}, config=CONFIG)
    activate(record)
    write_parquet(pd.DataFrame({"x": [1]}), "results/t.parquet", metadata={"stage": "t"})
    assert read_parquet_metadata("results/t.parquet")["stage"] == "t"
    assert read_provenance("results/t.parquet") == record


def test_write_h5ad_keeps_uns_unchanged(project):
    record = job_record(rule="r", inputs={"counts": ["data/counts.tsv"]}, config=CONFIG)
    activate(record)
    adata = _slide()
    before = dict(adata.uns[keys.HISTODECON_UNS_KEY])
    write_h5ad(adata, "results/s.h5ad")
    assert read_provenance("results/s.h5ad") == record
    assert adata.uns[keys.HISTODECON_UNS_KEY] == before


def test_patch_file_stores_the_record(project):
    record = job_record(rule="patches", inputs={"counts": ["data/counts.tsv"]}, config=CONFIG)
    activate(record)
    table = pd.DataFrame({c: [0.0] for c in keys.PATCH_TABLE_COLUMNS}).astype({keys.BARCODE_COL: str, keys.PADDED_COL: bool})
    write_patch_file("results/p.h5", np.zeros((1, 4, 4, 3), dtype=np.uint8), table, {"slide": "S1"})
    assert read_provenance("results/p.h5") == record


def test_files_without_a_record_give_none(project):
    write_parquet(pd.DataFrame({"x": [1]}), "results/plain.parquet")
    assert read_provenance("results/plain.parquet") == {}
    assert read_provenance("data/counts.tsv") == {}


def test_declared_scale_of_an_ingested_slide(project):
    write_h5ad(_slide(mpp=0.7, slide="C2"), "results/ingest/C2.h5ad")
    assert declared_scale("results/ingest/C2.h5ad") == {"C2": {keys.MPP_KEY: 0.7, keys.MPP_SOURCE_KEY: "sheet"}}


def test_atomic_path_removes_temporaries_of_killed_jobs(project):
    stale = project / "results" / ".t.tmp-99999.parquet"
    stale.write_text("half a file")
    with atomic_path(project / "results" / "t.parquet") as tmp:
        tmp.write_text("whole")
    assert not stale.exists()
    assert (project / "results" / "t.parquet").read_text() == "whole"


def test_atomic_path_leaves_no_target_on_error(project):
    target = project / "results" / "t.tsv"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("part")
        raise RuntimeError("killed")
    assert not target.exists()
    assert list((project / "results").iterdir()) == []


def test_atomic_directory_appears_whole(project):
    target = project / "results" / "heatmaps"
    with atomic_directory(target) as tmp:
        (tmp / "a.png").write_bytes(b"1")
        assert not target.exists()
    assert sorted(p.name for p in target.iterdir()) == ["a.png"]


def test_atomic_directory_leaves_nothing_on_error(project):
    target = project / "results" / "heatmaps"
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        (tmp / "a.png").write_bytes(b"1")
        raise RuntimeError("killed")
    assert list((project / "results").iterdir()) == []


def _two_outputs(project, *, second_counts: str | None = None):
    activate(job_record(rule="a", inputs={"counts": ["data/counts.tsv"]}, config=CONFIG))
    write_parquet(pd.DataFrame({"x": [1]}), "results/a.parquet")
    if second_counts is not None:
        (project / "data" / "counts.tsv").write_text(second_counts)
    activate(job_record(rule="b", inputs={"counts": ["data/counts.tsv"]}, config=CONFIG))
    write_parquet(pd.DataFrame({"x": [2]}), "results/b.parquet")
    activate(None)
    return ["results/a.parquet", "results/b.parquet"]


def test_manifest_lists_inputs_outputs_and_seeds(project):
    manifest = write_manifest(_two_outputs(project), config=CONFIG, output="results/run_manifest.json")
    assert json.loads((project / "results" / "run_manifest.json").read_text()) == manifest
    assert manifest["inputs"] == {"data/counts.tsv": {"sha256": file_sha256("data/counts.tsv"), "bytes": 7}}
    assert manifest["outputs"]["results/b.parquet"]["sha256"] == file_sha256("results/b.parquet")
    assert manifest["outputs"]["results/a.parquet"]["rule"] == "a"
    assert manifest["seeds"]["cv"]["seed"] == 5
    assert manifest["input_conflicts"] == []


def test_manifest_reports_changed_input(project):
    manifest = build_manifest(_two_outputs(project, second_counts="gene\tB\n"), config=CONFIG)
    (conflict,) = manifest["input_conflicts"]
    assert conflict["key"] == "data/counts.tsv"
    assert [v["outputs"] for v in conflict["values"]] in (
        [["results/a.parquet"], ["results/b.parquet"]],
        [["results/b.parquet"], ["results/a.parquet"]],
    )
    assert manifest["inputs"]["data/counts.tsv"] is None


def test_manifest_reports_outputs_of_other_versions(project):
    record = job_record(rule="a", inputs={}, config=CONFIG)
    record["versions"]["numpy"] = "0.0.1"
    activate(record)
    write_parquet(pd.DataFrame({"x": [1]}), "results/old.parquet")
    activate(None)
    manifest = build_manifest(["results/old.parquet"], config=CONFIG)
    (mismatch,) = manifest["version_mismatches"]
    assert mismatch["versions"]["numpy"] == {"output": "0.0.1", "manifest": np.__version__}

