"""The real workflow through Snakemake on tiny real inputs: three sections, 30 spots each."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from conftest import BACKBONES, PROJECT_ROOT, REGRESSORS, snakemake
from histodecon.ingest import spot_pitch_px
from layouts import read_her2st_region, write_space_ranger, write_spatial_h5ad, write_tiff_pyramid

pytestmark = pytest.mark.slow



def job_counts(dry_run_output: str) -> dict[str, int]:
    """Parse the 'Job stats' table of a dry run into rule -> job count."""
    counts = {}
    table = dry_run_output.split("Job stats:", 1)[1]
    for line in table.splitlines():
        match = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if match:
            counts[match.group(1)] = int(match.group(2))
    return counts


def test_dry_run_fan_out(workdir):
    result = snakemake(workdir, "--dry-run", "--forceall")
    assert result.returncode == 0, result.stderr
    counts = job_counts(result.stdout)
    assert counts["reference_signatures"] == 1
    assert counts["map_cell_types"] == 1
    assert counts["ingest"] == 3
    assert counts["patches"] == 3
    assert counts["embed"] == 3 * len(BACKBONES)
    assert counts["cross_validate"] == len(BACKBONES) * len(REGRESSORS)
    assert counts["summarize"] == 1
    assert counts["slide_results"] == 3
    assert counts["figure_scatter"] == len(BACKBONES) * len(REGRESSORS)


def test_summary_has_every_combination(completed_run, workdir):
    summary = pd.read_csv(workdir / "results" / "metrics" / "summary.tsv", sep="\t")
    labels = pd.read_parquet(workdir / "results" / "labels" / "C2.parquet")
    n_types = len([c for c in labels.columns if c.startswith("q05:")])
    combos = summary.groupby(["backbone", "regressor"]).size()
    assert len(combos) == len(BACKBONES) * len(REGRESSORS)
    assert (combos == n_types).all()


def test_summary_values_finite(completed_run, workdir):
    summary = pd.read_csv(workdir / "results" / "metrics" / "summary.tsv", sep="\t")
    assert np.isfinite(summary["l1_slide_mean"]).all()
    assert np.isfinite(summary["mse_slide_mean"]).all()


def test_every_rule_logged_and_benchmarked(completed_run, workdir):
    logs = list((workdir / "logs").rglob("*.log"))
    benchmarks = list((workdir / "benchmarks").rglob("*.tsv"))
    assert len(logs) == len(benchmarks)
    assert len(logs) >= 3 + 1 + 1 + 3 + 6 + 6 + 6 + 1


def test_label_agreement_written(completed_run, workdir):
    agreement = pd.read_csv(workdir / "results" / "metrics" / "label_agreement.tsv", sep="\t")
    assert set(agreement["published_type"]) == {"B-cells", "CAFs", "Epithelial", "T-cells"}


def test_mapping_elbo_figure_written(completed_run, workdir):
    assert (workdir / "results" / "labels" / "mapping_elbo.png").stat().st_size > 0


@pytest.fixture(scope="module")
def per_slide_workdir(workdir, tmp_path_factory) -> Path:
    """A copy of the tiny workflow's config with one cell2location fit per slide."""
    root = tmp_path_factory.mktemp("per_slide")
    (root / "config").mkdir()
    (root / "config" / "samples.tsv").write_text((workdir / "config" / "samples.tsv").read_text())
    config = yaml.safe_load((workdir / "config" / "config.yaml").read_text())
    config["labels"]["mode"] = "per_slide"
    (root / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    return root


def test_per_slide_mode_fans_out(per_slide_workdir):
    result = snakemake(per_slide_workdir, "--dry-run")
    assert result.returncode == 0, result.stderr
    counts = job_counts(result.stdout)
    assert counts["map_cell_types_per_slide"] == 3
    assert "map_cell_types" not in counts


def test_per_slide_mode_writes_labels(per_slide_workdir):
    result = snakemake(per_slide_workdir, "--cores", "2", "results/labels/C2.parquet")
    assert result.returncode == 0, result.stderr[-3000:]
    labels = pd.read_parquet(per_slide_workdir / "results" / "labels" / "C2.parquet")
    assert len(labels) == 30
    assert (per_slide_workdir / "results" / "labels" / "mapping_elbo" / "C2.png").exists()


@pytest.fixture(scope="module")
def combined_workdir(workdir, tmp_path_factory) -> Path:
    """The tiny workflow with one listed encoder and two combinations that share it."""
    root = tmp_path_factory.mktemp("combined")
    (root / "config").mkdir()
    (root / "config" / "samples.tsv").write_text((workdir / "config" / "samples.tsv").read_text())
    config = yaml.safe_load((workdir / "config" / "config.yaml").read_text())
    config["backbones"] = ["morphology"]
    config["combined_backbones"] = {
        "morphology+vit_small_random": ["morphology", "vit_small_random"],
        "vit_small_random+morphology": ["vit_small_random", "morphology"],
    }
    (root / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    return root


def test_combined_backbones_fan_out(combined_workdir):
    result = snakemake(combined_workdir, "--dry-run")
    assert result.returncode == 0, result.stderr
    counts = job_counts(result.stdout)
    # vit_small_random is embedded although only the combinations list it, once per slide.
    assert counts["embed"] == 3 * 2
    assert counts["combine_embeddings"] == 3 * 2
    assert counts["cross_validate"] == 3 * len(REGRESSORS)
    assert counts["evaluate"] == 3 * len(REGRESSORS)
    assert "results/cv/vit_small_random+morphology/ridge/predictions.parquet" in result.stdout
    assert "results/embeddings/morphology+vit_small_random/C2.parquet" in result.stdout


@pytest.mark.parametrize(
    ("combination", "message"),
    [
        ("{'m+x': ['morphology', 'not_an_encoder']}", "unknown backbone 'not_an_encoder'"),
        ("{'m': ['morphology']}", "['morphology'] is too short"),
        ("{'uni': ['morphology', 'vit_small_random']}", "'uni' is a registered backbone"),
    ],
)
def test_bad_combination_rejected_early(workdir, combination, message):
    result = snakemake(workdir, "--dry-run", "--config", f"combined_backbones={combination}")
    assert result.returncode != 0
    assert message in result.stderr + result.stdout
    assert "Job stats" not in result.stdout


def test_single_patient_folds_rejected_early(workdir):
    result = snakemake(workdir, "--dry-run", "--config", "cv={'group_by': 'patient'}")
    assert result.returncode != 0
    assert "needs at least 2 groups" in result.stderr + result.stdout


@pytest.fixture(scope="module")
def layouts_run(workdir, tiny_data, tmp_path_factory) -> Path:
    """The C2 region as her2st files, a Space Ranger folder and an AnnData + TIFF pyramid, run to patches."""
    root = tmp_path_factory.mktemp("layouts_workflow")
    (root / "config").mkdir()
    row = tiny_data["sheet"].iloc[0].to_dict()
    counts, spots = read_her2st_region(row)
    # The her2st row's own µm/px (from its grid pitch), written into the Space Ranger and
    # AnnData scale factors and the TIFF tags, so all three rows cut the same boxes.
    mpp = 200.0 / spot_pitch_px(spots[["pixel_x", "pixel_y"]].to_numpy(dtype=float))
    counts_path, spatial = write_space_ranger(
        root / "C2sr" / "outs", counts, spots, variant="tissue_positions_list.csv", spot_diameter_px=100.0 / mpp
    )
    write_spatial_h5ad(root / "C2ad.h5ad", counts, spots, library_id="C2ad", spot_diameter_px=100.0 / mpp)
    write_tiff_pyramid(root / "C2ad.tif", np.asarray(Image.open(row["image"]).convert("RGB")), microns_per_pixel=mpp)
    sheet = pd.DataFrame(
        [
            {**row, "slide": "C2", "platform": "", "counts_key": ""},
            {**row, "slide": "C2sr", "format": "visium", "counts": str(counts_path), "spots": str(spatial), "platform": "legacy_st", "counts_key": ""},
            {**row, "slide": "C2ad", "format": "h5ad", "counts": str(root / "C2ad.h5ad"), "spots": "", "image": str(root / "C2ad.tif"), "platform": "legacy_st", "counts_key": "layers/counts"},
        ]
    )
    sheet.to_csv(root / "config" / "samples.tsv", sep="\t", index=False)
    (root / "config" / "config.yaml").write_text((workdir / "config" / "config.yaml").read_text())
    result = snakemake(root, "--cores", "2", *(f"results/patches/{s}.h5" for s in sheet["slide"]))
    assert result.returncode == 0, result.stderr[-3000:]
    return root


@pytest.mark.parametrize("slide", ["C2sr", "C2ad"])
def test_layouts_through_workflow_give_same_patches(layouts_run, slide):
    with h5py.File(layouts_run / "results" / "patches" / "C2.h5") as expected, h5py.File(layouts_run / "results" / "patches" / f"{slide}.h5") as other:
        order = pd.Index(other["barcode"].asstr()[()]).get_indexer(expected["barcode"].asstr()[()])
        assert (order >= 0).all()
        np.testing.assert_array_equal(other["images"][()][order], expected["images"][()])


@pytest.mark.parametrize(("slide", "source"), [("C2", "spot_grid_pitch"), ("C2sr", "spot_diameter"), ("C2ad", "image_metadata")])
def test_layouts_through_workflow_record_mpp_source(layouts_run, slide, source):
    with h5py.File(layouts_run / "results" / "patches" / f"{slide}.h5") as patches:
        assert patches.attrs["source_microns_per_pixel_source"] == source


def test_workflow_lint_clean():
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--lint", "--snakefile", str(PROJECT_ROOT / "Snakefile")],
        capture_output=True, text=True, cwd=PROJECT_ROOT, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_snakefmt_clean():
    snakefmt = Path(sys.executable).parent / "snakefmt"
    result = subprocess.run([str(snakefmt), "--check", str(PROJECT_ROOT)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def dry_run_jobs(result: subprocess.CompletedProcess) -> dict[str, list[str]]:
    """Map rule name -> the 'resources:' lines of its jobs in a dry run's output."""
    jobs: dict[str, list[str]] = {}
    rule = None
    for line in result.stdout.splitlines():
        match = re.match(r"^\s*(?:local)?rule (\w+):", line)
        if match:
            rule = match.group(1)
        elif rule and line.strip().startswith("resources:"):
            jobs.setdefault(rule, []).append(line.strip())
    return jobs


@pytest.fixture(scope="module")
def slurm_dry_run(workdir) -> subprocess.CompletedProcess:
    result = snakemake(workdir, "--dry-run", "--forceall", "--workflow-profile", str(PROJECT_ROOT / "profiles" / "slurm"))
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.parametrize("rule", ["reference_signatures", "map_cell_types"])
def test_slurm_cell2location_rules_ask_for_gpu(slurm_dry_run, rule):
    (line,) = dry_run_jobs(slurm_dry_run)[rule]
    assert "gpu=1" in line
    # A number, or <TBD> when the inputs it is computed from do not exist yet.
    assert re.search(r"mem_mb=(\d+|<TBD>)", line)
    assert re.search(r"runtime=(\d+|<TBD>)", line)


@pytest.mark.parametrize("rule", ["ingest", "patches", "cross_validate", "evaluate"])
def test_slurm_cpu_rules_ask_for_no_gpu(slurm_dry_run, rule):
    for line in dry_run_jobs(slurm_dry_run)[rule]:
        assert "gpu=" not in line


def test_slurm_morphology_embedding_asks_for_no_gpu(slurm_dry_run):
    lines = dry_run_jobs(slurm_dry_run)["embed"]
    assert sum("gpu=1" in line for line in lines) == 3  # vit_small_random on 3 slides
    assert sum("gpu=0" in line for line in lines) == 3  # morphology on 3 slides


def test_slurm_groups_slide_preparation(slurm_dry_run):
    assert slurm_dry_run.stdout.count("Group job slide_prep") == 1  # 3 slides x (ingest, patches) in one job


def test_gpu_model_from_config(workdir):
    result = snakemake(workdir, "results/labels/signatures.parquet", "--dry-run", "--forceall", "--config", "cluster={'gpu_model': 'a100'}")
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = dry_run_jobs(result)["reference_signatures"]
    assert "gpu_model=a100" in line
