"""Embedding throughput: model-only forward pass against the embedding stage end to end.

For each backbone x precision, in a fresh process (so peak memory is its own):

- model-only: ``forward_embedding`` on batches that were read, resized and normalised
  beforehand, under the same autocast as the stage (patches/s);
- end-to-end: :func:`histodecon.embed.compute_embeddings` on a real patch file, the code
  the ``embed`` rule runs: HDF5 reads, resizing and normalisation in DataLoader workers,
  the forward pass and the copy into the output array (patches/s).

ViT-S/16 is the ``vit_small_random`` control; ViT-L/16 is UNI's architecture with random
weights (the same computation as UNI without needing its gated weights).

Usage (after ``make demo``, which writes the patch files)::

    .venv/bin/python bench/embedding_throughput.py --patches results/patches/C2.h5

On a GPU machine add ``--device cuda`` (bf16 and fp16 then use CUDA autocast).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import torch

from histodecon.backbones import load_encoder
from histodecon.embed import _AUTOCAST_DTYPES, compute_embeddings, resolve_num_workers
from histodecon.keys import PATCH_IMAGES
from histodecon.patches import read_patch_file_info, write_patch_file
from histodecon.registry import get_backbone

BACKBONES = {"vit_s16": "vit_small_random", "vit_l16": "uni"}


def spec_for(label: str):
    return dataclasses.replace(get_backbone(BACKBONES[label]), pretrained=False, control=True, name=label)


def subset_patch_file(patch_file: Path, n: int, folder: Path) -> Path:
    """Copy the first ``n`` patches of a patch file, so slow models run on fewer patches."""
    info = read_patch_file_info(patch_file)
    with h5py.File(patch_file, "r") as h5:
        images = h5[PATCH_IMAGES][:n]
        attrs = dict(h5.attrs)
    path = folder / f"subset_{n}.h5"
    write_patch_file(path, images, info.spots.iloc[:n].reset_index(drop=True), attrs)
    return path


def run_one(label: str, precision: str, patch_file: Path, *, batch_size: int, num_workers: str, device: str, threads: int) -> dict:
    torch.set_num_threads(threads)
    device = torch.device(device)
    workers = resolve_num_workers(num_workers if num_workers == "auto" else int(num_workers), device)
    info = read_patch_file_info(patch_file)
    encoder = load_encoder(spec_for(label), seed=0).to(device)
    autocast = _AUTOCAST_DTYPES.get(precision)
    with h5py.File(patch_file, "r") as h5:
        first = torch.from_numpy(h5[PATCH_IMAGES][:batch_size])
    batch = encoder.preprocess(first).to(device)
    n_batches = -(-info.n_spots // batch_size)

    def forward() -> None:
        with torch.inference_mode(), torch.autocast(device_type=device.type, dtype=autocast, enabled=autocast is not None):
            encoder.forward_embedding(batch).float().cpu()

    def model_only_rate() -> float:
        start = time.perf_counter()
        for _ in range(n_batches):
            forward()
        return n_batches * len(batch) / (time.perf_counter() - start)

    forward()  # warm-up
    # Model-only runs before and after the end-to-end run; their mean cancels slow drifts
    # of a shared machine's speed.
    before = model_only_rate()
    start = time.perf_counter()
    compute_embeddings(info, encoder, batch_size=batch_size, precision=precision, device=device, num_workers=workers)
    end_to_end = info.n_spots / (time.perf_counter() - start)
    model_only = (before + model_only_rate()) / 2
    peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss + resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
    return {
        "backbone": label,
        "precision": precision,
        "workers": workers,
        "patches": info.n_spots,
        "model_only_patches_per_s": round(model_only, 2),
        "end_to_end_patches_per_s": round(end_to_end, 2),
        "ratio": round(end_to_end / model_only, 3),
        "peak_rss_mb": round(peak_mb),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patches", type=Path, default=Path("results/patches/C2.h5"))
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=list(BACKBONES))
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", default="auto", help="DataLoader workers: an integer or auto (the stage's default)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--vit-l-patches", type=int, default=64, help="patches for ViT-L (the slow model)")
    parser.add_argument("--one", nargs=3, metavar=("BACKBONE", "PRECISION", "PATCH_FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    options = {"batch_size": args.batch_size, "num_workers": args.num_workers, "device": args.device, "threads": args.threads}
    if args.one:
        print(json.dumps(run_one(args.one[0], args.one[1], Path(args.one[2]), **options)))
        return

    if not args.patches.is_file():
        sys.exit(f"patch file {args.patches} not found; run `make demo` or `snakemake --cores 2 {args.patches}` first")
    with tempfile.TemporaryDirectory() as folder:
        subset = subset_patch_file(args.patches, args.vit_l_patches, Path(folder))
        rows = []
        for label in args.backbones:
            for precision in args.precisions:
                patch_file = subset if label == "vit_l16" else args.patches
                command = [
                    sys.executable, __file__, "--one", label, precision, str(patch_file), "--batch-size", str(args.batch_size),
                    "--num-workers", args.num_workers, "--threads", str(args.threads), "--device", args.device,
                ]
                result = subprocess.run(command, capture_output=True, text=True, check=True)
                rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
                print(json.dumps(rows[-1]), flush=True)

    columns = list(rows[0])
    print("\n| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in columns) + " |")


if __name__ == "__main__":
    main()
