"""Whole-slide prediction: tiles per second and peak memory against the number of tiles.

For each grid step, in a fresh process so that peak memory is its own, this runs what the
``predict_tiles``, ``predict_embed`` and ``predict_apply`` rules run on one image. That is
tissue detection and the tile grid, embedding streamed to parquet, and the final model
applied one row group at a time. It prints one JSON line per step and a Markdown table.

Memory is bounded when the peak stays flat as the tile count grows. A plain JPEG is decoded
whole when it is opened, so its decoded size sets a floor. Scanner files and TIFF pyramids
are read window by window through OpenSlide.

Usage (after ``make demo`` and ``snakemake predict``, which write the final model)::

    .venv/bin/python bench/predict_stream.py \\
        --image ../shared/data/her2st/data/ST-imgs/C/C6/5714_HE_BT_E2.jpg --mpp 0.688 \\
        --model results/models/morphology/ridge.joblib --strides 112 56 28
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_one(image: str, mpp: float, model: str, stride: float, backbone: str, batch_size: int) -> dict:
    from histodecon.predict import apply_model, embed_tiles, tile_slide

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        start = time.perf_counter()
        grid = tile_slide(
            slide_id="bench", image=image, sheet_mpp=mpp, field_of_view_um=112.0, patch_microns_per_pixel=0.5,
            stride_um=stride, min_tissue_fraction=0.5, output=folder / "tiles.parquet", thumbnail_out=folder / "thumb.npz",
        )  # fmt: skip
        tiled = time.perf_counter()
        n_tiles = embed_tiles(
            tiles=folder / "tiles.parquet", backbone=backbone, output=folder / "embeddings.parquet", batch_size=batch_size,
            precision="fp32", device="cpu", num_workers=0,
        )  # fmt: skip
        embedded = time.perf_counter()
        apply_model(embeddings=folder / "embeddings.parquet", tiles=folder / "tiles.parquet", model=model, output=folder / "pred.parquet")
        applied = time.perf_counter()
    return {
        "stride_um": stride,
        "tiles": n_tiles,
        "grid_s": round(tiled - start, 1),
        "embed_s": round(embedded - tiled, 1),
        "apply_s": round(applied - embedded, 1),
        "tiles_per_s": round(n_tiles / (embedded - tiled), 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "tile_px": round(grid.tile_px, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", required=True)
    parser.add_argument("--mpp", type=float, required=True, help="µm/px of the image")
    parser.add_argument("--model", required=True, help="final model (results/models/<backbone>/<regressor>.joblib)")
    parser.add_argument("--backbone", default="morphology")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--strides", type=float, nargs="+", default=[112.0, 56.0, 28.0])
    parser.add_argument("--one", type=float, help=argparse.SUPPRESS)  # internal: run one step in this process
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(run_one(args.image, args.mpp, args.model, args.one, args.backbone, args.batch_size)))
        return
    rows = []
    for stride in args.strides:
        command = [sys.executable, __file__, "--image", args.image, "--mpp", str(args.mpp), "--model", args.model,
                   "--backbone", args.backbone, "--batch-size", str(args.batch_size), "--one", str(stride)]  # fmt: skip
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        print(output, flush=True)
        rows.append(json.loads(output))
    columns = list(rows[0])
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in columns) + " |")


if __name__ == "__main__":
    main()
