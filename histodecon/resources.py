"""Memory and run time that a job requests from the scheduler, from the size of its inputs.

Each estimate is a fixed part plus a part that grows with the input (pixels, spots x
genes, cells x genes, patches), fitted to the peaks measured in the her2st demo
(docs/benchmarks.md), and is multiplied by the attempt number, so a job that SLURM killed
for lack of memory or time is resubmitted with twice, then three times as much
(``retries`` in profiles/slurm). Readers only open file headers, so the estimates cost
milliseconds per job when the scheduler asks for them.
"""

from __future__ import annotations

import errno
import logging
from pathlib import Path

import h5py

logger = logging.getLogger(__name__)

__all__ = [
    "image_megapixels",
    "h5ad_shape",
    "patch_count",
    "ingest_mem_mb",
    "cell2location_mem_mb",
    "cell2location_runtime_min",
    "embed_mem_mb",
    "embed_runtime_min",
]

# Parameters in millions of a ViT by its width (timm: S, B, L, H, g); widths between use the
# next larger. The truncated ResNet50 (1024 wide, 9 M parameters up to layer3) is counted as a
# ViT-L, which over-asks.
VIT_PARAMS_M = {384: 22, 768: 86, 1024: 304, 1280: 632, 1536: 1135}
# Measured on 2 CPU cores (docs/benchmarks.md): ViT-L/16 fp32 at 1.25 patches/s, cell2location
# mapping at 0.4 s per epoch for 910 spots, the reference regression at 0.9 s per epoch for
# 1,564 cells in batches of 256.
CPU_SECONDS_PER_PATCH_PER_M_PARAMS = 0.8 / 304
MAPPING_SECONDS_PER_EPOCH_PER_SPOT = 0.4 / 910
REFERENCE_SECONDS_PER_EPOCH_PER_CELL = 0.9 / 1564


def _require(path: str | Path) -> Path:
    """Raise FileNotFoundError naming ``path`` when it does not exist yet.

    Snakemake reads that error, for an input file, as "not created yet" and evaluates the
    resource again when the job is scheduled.
    """
    if not Path(path).exists():
        raise FileNotFoundError(errno.ENOENT, "input not created yet", str(path))
    return Path(path)


def image_megapixels(path: str | Path) -> float:
    """Return the full-resolution size of an image in megapixels, from its header only.

    Plain images (JPEG, PNG, TIFF) are decoded whole by ingest and patches; scanner files are
    read by region through OpenSlide, so they count as 0.
    """
    from PIL import Image

    path = _require(path)
    Image.MAX_IMAGE_PIXELS = None
    try:
        with Image.open(path) as image:
            return image.width * image.height / 1e6
    except (OSError, ValueError):
        return 0.0


def h5ad_shape(path: str | Path) -> tuple[int, int]:
    """Return (n_obs, n_vars) of an ``.h5ad`` file without reading its matrix."""
    with h5py.File(_require(path), "r") as h5:
        matrix = h5["X"]
        shape = matrix.attrs["shape"] if isinstance(matrix, h5py.Group) else matrix.shape
        return int(shape[0]), int(shape[1])


def patch_count(path: str | Path) -> int:
    """Return the number of patches in a patch file."""
    with h5py.File(_require(path), "r") as h5:
        return int(h5["images"].shape[0])


def ingest_mem_mb(megapixels: float, attempt: int) -> int:
    """ingest and patches: 1,000 MB plus 6 bytes per pixel of a plain image.

    Measured: 1,519 MB for a 92-megapixel her2st JPEG (the RGB array is 3 bytes per pixel;
    the thumbnail and the tissue mask add about as much again).
    """
    return int((1000 + 6 * megapixels) * attempt)


def cell2location_mem_mb(n_obs: int, n_vars: int, attempt: int) -> int:
    """Reference regression or mapping: 1,500 MB plus ten dense float32 copies of the data.

    Measured: 1,934 MB for the mapping of 910 spots x 15,700 genes (asked: 2,071 MB) and
    1,397 MB for the regression of 1,564 cells x 29,733 genes (asked: 3,360 MB).
    """
    dense_mb = n_obs * n_vars * 4 / 1e6
    return int((1500 + 10 * dense_mb) * attempt)


def cell2location_runtime_min(n_obs: int, epochs: int, *, reference: bool, attempt: int) -> int:
    """Minutes for a fit of ``epochs`` on ``n_obs`` cells or spots at the measured CPU speed, plus 10."""
    per_epoch = (REFERENCE_SECONDS_PER_EPOCH_PER_CELL if reference else MAPPING_SECONDS_PER_EPOCH_PER_SPOT) * n_obs
    return int((10 + 1.5 * epochs * per_epoch / 60) * attempt)


def _params_m(model_width: int) -> int:
    return next((params for width, params in sorted(VIT_PARAMS_M.items()) if model_width <= width), max(VIT_PARAMS_M.values()))


def embed_mem_mb(model_width: int | None, attempt: int) -> int:
    """2,000 MB plus 8 bytes per parameter (fp32 weights and a bf16 copy); None is the morphology features.

    Measured peaks: ViT-S/16 1,746 MB, ViT-L/16 3,109 MB (asked: 2,176 and 4,432 MB).
    """
    params = 0 if model_width is None else _params_m(model_width)
    return int((2000 + 8 * params) * attempt)


def embed_runtime_min(model_width: int | None, n_patches: int, attempt: int) -> int:
    """Minutes at the measured CPU speed (an upper bound on a GPU), plus 10; morphology at 10 ms per patch."""
    seconds = 0.01 if model_width is None else CPU_SECONDS_PER_PATCH_PER_M_PARAMS * _params_m(model_width)
    return int((10 + 1.5 * n_patches * seconds / 60) * attempt)
