"""Time `snakemake --dry-run` on a synthetic study: many slides x several backbones.

Writes a sample sheet of N slides, 4 per patient, that all point at the her2st C2 files:
the dry run only checks that inputs exist. Then writes a config with the given backbones
and times the dry run in a fresh process.

Usage::

    .venv/bin/python bench/dag_scale.py --slides 1000 --backbones morphology vit_small_random uni conch virchow2
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[1]
HER2ST = PROJECT_ROOT.parent / "shared" / "data" / "her2st"


def write_study(folder: Path, n_slides: int, backbones: list[str]) -> None:
    (folder / "config").mkdir(parents=True)
    sheet = pd.DataFrame(
        {
            "slide": [f"S{i:05d}" for i in range(n_slides)],
            "patient": [f"P{i // 4:05d}" for i in range(n_slides)],
            "format": "her2st",
            "counts": str(HER2ST / "data" / "ST-cnts" / "C2.tsv.gz"),
            "spots": str(HER2ST / "data" / "ST-spotfiles" / "C2_selection.tsv"),
            "image": str(next((HER2ST / "data" / "ST-imgs" / "C" / "C2").glob("*.jpg"))),
        }
    )
    sheet.to_csv(folder / "config" / "samples.tsv", sep="\t", index=False)
    config = yaml.safe_load((PROJECT_ROOT / "config" / "config.yaml").read_text())
    config.update({"samples": "config/samples.tsv", "backbones": backbones})
    config["predict"]["samples"] = None  # the demo's prediction sheet is not in this folder
    config["reference"]["path"] = str(PROJECT_ROOT.parent / "shared" / "data" / "reference" / "wu2021_CID4465_sc.h5ad")
    (folder / "config" / "config.yaml").write_text(yaml.safe_dump(config))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slides", type=int, default=1000)
    parser.add_argument("--backbones", nargs="+", default=["morphology", "vit_small_random", "uni", "conch", "virchow2"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        write_study(Path(folder), args.slides, args.backbones)
        command = [sys.executable, "-m", "snakemake", "--snakefile", str(PROJECT_ROOT / "Snakefile"), "--directory", folder, "--dry-run", "--quiet", "rules"]
        for repeat in range(args.repeats):
            start = time.perf_counter()
            result = subprocess.run(command, capture_output=True, text=True, check=False)
            seconds = time.perf_counter() - start
            if result.returncode != 0:
                sys.exit(result.stderr[-3000:])
            total = next(line.split()[-1] for line in result.stdout.splitlines() if line.startswith("total"))
            print(f"run {repeat + 1}: {args.slides} slides x {len(args.backbones)} backbones, {total} jobs, {seconds:.1f} s", flush=True)


if __name__ == "__main__":
    main()
