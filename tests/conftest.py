"""Shared fixtures: tiny real inputs cut from the her2st sections and the single-cell reference.

Nothing is copied into the repository; each session cuts a few spots, genes and an image
region from ``../shared/data`` into a temporary folder.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

Image.MAX_IMAGE_PIXELS = None

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("HISTODECON_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data")).resolve()
HER2ST = SHARED_DATA / "her2st"
REFERENCE = SHARED_DATA / "reference" / "wu2021_CID4465_sc.h5ad"

TINY_SLIDES = ("C2", "C3", "C4")
TINY_SPOTS = 30  # spots per slide, a contiguous block of the array
TINY_GENES = 400  # most expressed genes shared by the slides and the reference
TINY_CELLS_PER_TYPE = 40
IMAGE_MARGIN_PX = 300  # kept around the outermost spot centres


def her2st_paths(slide: str) -> dict[str, Path]:
    image = next((HER2ST / "data" / "ST-imgs" / "C" / slide).glob("*.jpg"))
    return {
        "counts": HER2ST / "data" / "ST-cnts" / f"{slide}.tsv.gz",
        "spots": HER2ST / "data" / "ST-spotfiles" / f"{slide}_selection.tsv",
        "image": image,
        "published_proportions": HER2ST / "res" / "ST-deconv" / "props" / "major" / f"{slide}-proportion.tsv",
    }


def _central_block(spots: pd.DataFrame, n: int) -> pd.DataFrame:
    """Return the ``n`` spots nearest the median array position (a contiguous patch of tissue)."""
    centre = spots[["x", "y"]].median().to_numpy()
    distance = np.hypot(spots["x"] - centre[0], spots["y"] - centre[1])
    return spots.loc[distance.sort_values(kind="stable").index[:n]].sort_index()


@pytest.fixture(scope="session")
def reference_genes() -> pd.Index:
    return ad.read_h5ad(REFERENCE, backed="r").var_names


def cut_her2st(root: Path, reference_genes: pd.Index, *, slides=TINY_SLIDES, n_spots=TINY_SPOTS, n_genes=TINY_GENES, cells_per_type=TINY_CELLS_PER_TYPE) -> dict:
    """Cut her2st sections and the reference down to a block of spots, genes and cells in ``root``.

    Returns a dict with ``root`` (folder), ``sheet`` (sample sheet DataFrame), ``reference``
    (path of the cut reference) and ``genes``.
    """
    root.mkdir(parents=True, exist_ok=True)
    counts = {s: pd.read_csv(her2st_paths(s)["counts"], sep="\t", index_col=0) for s in slides}
    shared = counts[slides[0]].columns
    for table in counts.values():
        shared = shared.intersection(table.columns)
    shared = shared.intersection(reference_genes)
    totals = sum(counts[s][shared].sum(axis=0) for s in slides)
    genes = totals.sort_values(ascending=False, kind="stable").index[:n_genes]

    rows = []
    for slide in slides:
        paths = her2st_paths(slide)
        spots = pd.read_csv(paths["spots"], sep="\t")
        spots = spots[spots["selected"] == 1]
        spots.index = spots["x"].astype(str) + "x" + spots["y"].astype(str)
        spots = _central_block(spots.loc[spots.index.intersection(counts[slide].index)], n_spots)

        x0 = int(spots["pixel_x"].min()) - IMAGE_MARGIN_PX
        y0 = int(spots["pixel_y"].min()) - IMAGE_MARGIN_PX
        x1 = int(spots["pixel_x"].max()) + IMAGE_MARGIN_PX
        y1 = int(spots["pixel_y"].max()) + IMAGE_MARGIN_PX
        with Image.open(paths["image"]) as image:
            image.crop((x0, y0, x1, y1)).save(root / f"{slide}.jpg", quality=95)
        spots = spots.assign(pixel_x=spots["pixel_x"] - x0, pixel_y=spots["pixel_y"] - y0)
        spots.to_csv(root / f"{slide}_selection.tsv", sep="\t", index=False)
        counts[slide].loc[spots.index, genes].to_csv(root / f"{slide}.tsv.gz", sep="\t")
        rows.append(
            {
                "slide": slide,
                "patient": "C",
                "format": "her2st",
                "counts": str(root / f"{slide}.tsv.gz"),
                "spots": str(root / f"{slide}_selection.tsv"),
                "image": str(root / f"{slide}.jpg"),
                "microns_per_pixel": "",
                "published_proportions": str(paths["published_proportions"]),
            }
        )
    sheet = pd.DataFrame(rows)
    sheet.to_csv(root / "samples.tsv", sep="\t", index=False)

    reference = ad.read_h5ad(REFERENCE)
    rng = np.random.default_rng(0)
    keep = []
    for _, index in reference.obs.groupby("celltype_major", observed=True).indices.items():
        keep.extend(rng.choice(index, size=min(cells_per_type, len(index)), replace=False))
    cut_reference = reference[np.sort(keep), genes].copy()
    cut_reference.write_h5ad(root / "reference.h5ad")
    return {"root": root, "sheet": sheet, "reference": root / "reference.h5ad", "genes": list(genes)}


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory, reference_genes) -> dict:
    """Three her2st sections cut to 30 spots and 400 genes, and the reference to 40 cells per type."""
    return cut_her2st(tmp_path_factory.mktemp("tiny"), reference_genes)


BACKBONES = ["morphology", "vit_small_random"]
REGRESSORS = ["mean", "ridge", "mlp"]


def snakemake_command(workdir: Path, *args: str) -> tuple[list[str], dict[str, str]]:
    """Return the command and environment that run the project's Snakefile in ``workdir``."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(PROJECT_ROOT / "Snakefile"), "--directory", str(workdir), *args]
    return command, env


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    """Run the project's Snakefile in ``workdir`` with this interpreter's snakemake."""
    command, env = snakemake_command(workdir, *args)
    return subprocess.run(command, capture_output=True, text=True, env=env, check=False)


@pytest.fixture(scope="session")
def workdir(tiny_data, tmp_path_factory) -> Path:
    """A project folder for the tiny workflow: three sections, two encoders, three regressors."""
    root = tmp_path_factory.mktemp("workflow")
    (root / "config").mkdir()
    tiny_data["sheet"].to_csv(root / "config" / "samples.tsv", sep="\t", index=False)
    config = {
        "samples": "config/samples.tsv",
        "reference": {"path": str(tiny_data["reference"]), "label_key": "celltype_major"},
        "labels": {
            "reference_epochs": 30,
            "reference_batch_size": 64,
            "mapping_epochs": 100,
            "posterior_samples": 30,
            "min_shared_genes": 100,
            "accelerator": "cpu",
        },
        "backbones": BACKBONES,
        "embedding": {"batch_size": 16, "num_workers": 0},
        "cv": {"regressors": REGRESSORS, "mlp": {"max_epochs": 40, "patience": 5}},
        "evaluation": {
            "published_type_map": {
                "B-cells": "B-cells",
                "CAFs": "CAFs",
                "Cancer Epithelial": "Epithelial",
                "Normal Epithelial": "Epithelial",
                "T-cells": "T-cells",
            }
        },
    }
    (root / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    return root


@pytest.fixture(scope="session")
def completed_run(workdir) -> subprocess.CompletedProcess:
    """The tiny workflow run to its end once per session; tests read its outputs."""
    result = snakemake(workdir, "--cores", "2")
    if result.returncode != 0:
        logs = "\n".join(f"== {p}\n{p.read_text()[-3000:]}" for p in sorted((workdir / "logs").rglob("*.log")))
        pytest.fail(f"snakemake failed:\n{result.stderr[-5000:]}\n{logs}")
    return result
