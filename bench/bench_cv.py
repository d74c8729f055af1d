"""Time cross-validation of the regressors on random data of demo size.

Builds 5 slides of 180 spots with 1024-d embeddings (the size of the her2st demo with a
UNI-sized encoder) and 9 cell types, runs leave-one-slide-out cross-validation and
prints the wall time per regressor. It writes no files.

Usage: python bench/bench_cv.py [--regressors mlp ridge mean] [--num-threads N]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import pandas as pd

from histodecon.cv import CVData, cross_validate, make_folds

N_SLIDES = 5
SPOTS_PER_SLIDE = 180
N_DIMS = 1024
N_TYPES = 9


def build_data(seed: int = 0) -> CVData:
    """Return random embeddings and targets that depend linearly on them."""
    rng = np.random.default_rng(seed)
    n_spots = N_SLIDES * SPOTS_PER_SLIDE
    X = rng.normal(size=(n_spots, N_DIMS)).astype(np.float32)
    weights = rng.normal(scale=N_DIMS**-0.5, size=(N_DIMS, N_TYPES))
    Y = np.clip(X @ weights + 2.0 + rng.normal(scale=0.5, size=(n_spots, N_TYPES)), 0.0, None)
    slides = np.repeat([f"slide{i}" for i in range(N_SLIDES)], SPOTS_PER_SLIDE)
    barcodes = np.array([f"{i}x{j}" for _ in range(N_SLIDES) for i, j in np.ndindex(12, 15)])
    return CVData(slides=slides, barcodes=barcodes, X=X, Y=Y, cell_types=tuple(f"type{k}" for k in range(N_TYPES)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regressors", nargs="+", default=["mlp", "ridge", "mean"])
    parser.add_argument("--num-threads", type=int, default=1, help="CPU threads of the ridge and MLP regressors")
    args = parser.parse_args()

    data = build_data()
    folds = make_folds(pd.DataFrame({"slide": sorted(set(data.slides)), "patient": "P1"}))
    print(
        f"{len(data.slides)} spots, {N_DIMS} dims, {N_TYPES} types, {N_SLIDES} folds, "
        f"{args.num_threads} threads, {os.cpu_count()} CPUs"
    )
    for name in args.regressors:
        start = time.perf_counter()
        params = None if name == "mean" else {"num_threads": args.num_threads}
        _, info = cross_validate(data, folds, regressor=name, params=params, seed=0)
        seconds = time.perf_counter() - start
        extra = f", epochs run per fold {info['epochs_run'].tolist()}" if "epochs_run" in info else ""
        print(f"{name}: {seconds:.1f} s for {len(info)} folds{extra}")


if __name__ == "__main__":
    main()
