"""Embedding stage: encode every patch of a slide with one backbone and write a parquet table.

Input is a patch file written by :mod:`histodecon.patches` (HDF5, one RGB patch per spot).
Output is one row per spot, in the order of the patch file, with the columns
``barcode``, ``tissue_fraction``, ``padded`` and ``emb_0000`` ... (float32). The
parquet schema metadata stores the backbone record, the weights source, the numeric
precision, the device and the patch geometry, so an embedding file documents itself.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any, Literal, get_args

import h5py
import numpy as np
import pandas as pd
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, SequentialSampler
from tqdm.auto import tqdm

from histodecon.backbones import BackboneSpec, Encoder, get_backbone, load_encoder
from histodecon.io import write_parquet
from histodecon.keys import (
    BARCODE_COL,
    embedding_columns,
    PADDED_COL,
    PATCH_IMAGES,
    TISSUE_FRACTION_COL,
)
from histodecon.patches import PatchFileInfo, read_patch_file_info
from histodecon.provenance import package_versions

logger = logging.getLogger(__name__)

__all__ = [
    "PatchDataset",
    "iter_embeddings",
    "compute_embeddings",
    "resolve_device",
    "resolve_precision",
    "deterministic_kernels",
    "cpu_has_native_bf16",
    "embed_slide",
    "embedding_columns",
]

Precision = Literal["auto", "fp32", "bf16", "fp16"]
DeviceChoice = Literal["auto", "cpu", "cuda"]

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# x86 CPU flags of native bf16 arithmetic. With one of them, bf16 autocast ran ViT-S/16 1.8x
# faster than fp32 on a 2-core AMD EPYC (187 patches: 6.7 s against 12-16 s), and the
# embeddings correlated with the fp32 ones at r = 0.99998. Without them bf16 is emulated.
_NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
# Relative difference between the input µm/px and the backbone's recommended µm/px above
# which a warning is logged.
MICRONS_PER_PIXEL_TOLERANCE = 0.10


class PatchDataset(Dataset):
    """Batches of patches from a patch file, read with one HDF5 call per batch.

    Index it with a list of increasing indices (as a ``BatchSampler`` yields them); it
    returns a uint8 tensor, shape (len(indices), P, P, 3), passed through ``transform``
    when one is given (the encoder's resize and normalisation, so DataLoader workers do
    that work while the model runs). The file is opened on first access in each process,
    so workers never share an HDF5 handle.
    """

    def __init__(self, patch_file: str | Path, transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        self.path = Path(patch_file)
        self.transform = transform
        with h5py.File(self.path, "r") as h5:
            self._length = int(h5[PATCH_IMAGES].shape[0])
        self._file: h5py.File | None = None

    def __len__(self) -> int:
        return self._length

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_file"] = None
        return state

    def __getitem__(self, indices: list[int]) -> torch.Tensor:
        if self._file is None:
            self._file = h5py.File(self.path, "r")
        images = self._file[PATCH_IMAGES]
        first, last = indices[0], indices[-1]
        if last - first + 1 == len(indices):
            batch = images[first : last + 1]
        else:
            batch = images[np.asarray(indices)]
        batch = torch.from_numpy(batch)
        return self.transform(batch) if self.transform is not None else batch

    def close(self) -> None:
        """Close the HDF5 file of this process, if open."""
        if self._file is not None:
            self._file.close()
            self._file = None


def resolve_device(device: DeviceChoice) -> torch.device:
    """Return the torch device for ``auto``, ``cpu`` or ``cuda`` (``auto``: CUDA when available)."""
    if device not in get_args(DeviceChoice):
        raise ValueError(f"invalid device {device!r}; valid: {', '.join(get_args(DeviceChoice))}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but torch.cuda.is_available() is False; set device to 'auto' or 'cpu'")
    return torch.device(device)


def cpu_has_native_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Return whether the CPU advertises native bf16 arithmetic (Linux ``/proc/cpuinfo`` flags)."""
    try:
        flags = Path(cpuinfo).read_text().split()
    except OSError:
        return False
    return any(flag in flags for flag in _NATIVE_BF16_CPU_FLAGS)


def resolve_precision(precision: Precision, device: torch.device, spec: BackboneSpec) -> str:
    """Return the precision to run ``spec`` in on ``device``.

    ``auto`` is bf16 on CUDA and on CPUs with native bf16, fp32 elsewhere.
    """
    if precision not in get_args(Precision):
        raise ValueError(f"invalid precision {precision!r}; valid: {', '.join(get_args(Precision))}")
    if spec.family == "morphology":
        if precision not in ("auto", "fp32"):
            logger.warning("precision %s ignored: backbone %s computes its features on the CPU without autocast", precision, spec.name)
        return "fp32"
    if precision == "auto":
        if device.type == "cuda" or cpu_has_native_bf16():
            return "bf16"
        return "fp32"
    return precision


def _check_scale(spec: BackboneSpec, info: PatchFileInfo) -> float:
    """Return the µm/px of the patches after resizing to the backbone input; warn on a mismatch."""
    input_mpp = info.microns_per_pixel * info.patch_px / (spec.resize_px or spec.input_px)
    relative = abs(input_mpp / spec.microns_per_pixel - 1.0)
    if relative > MICRONS_PER_PIXEL_TOLERANCE:
        logger.warning(
            "slide %s: backbone %s receives patches at %.3f µm/px (%d px at %.3f µm/px resized to %d px), "
            "%.0f%% off its recommended %.3f µm/px; embeddings may be degraded. "
            "Set the patch µm/px in the config to the backbone's value to fix this.",
            info.slide,
            spec.name,
            input_mpp,
            info.patch_px,
            info.microns_per_pixel,
            spec.resize_px or spec.input_px,
            100 * relative,
            spec.microns_per_pixel,
        )
    return input_mpp


def resolve_num_workers(num_workers: int | Literal["auto"], device: torch.device) -> int:
    """Return the DataLoader workers to use: ``auto`` is 0 on the CPU and up to 4 with CUDA.

    On the CPU the model already uses every core, so a worker competes with it. On 2 cores,
    ViT-S/16 ran end to end at 104 % of its model-only speed with no worker, and at 91 % and
    87 % with 1 and 2 workers (docs/benchmarks.md). Preparing a batch costs a few percent of
    a forward pass there. With CUDA the CPU is free while the GPU computes, so workers
    prepare the next batches in parallel.
    """
    if num_workers == "auto":
        return min(4, max((os.cpu_count() or 1) - 1, 0)) if device.type == "cuda" else 0
    if not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be 'auto' or an integer of 0 or more, got {num_workers!r}")
    return num_workers


def _seed_worker(worker_id: int) -> None:
    """Keep each DataLoader worker on one thread, so workers and the model share the cores,
    and seed numpy from the worker's torch seed (set from the loader's seeded generator)."""
    torch.set_num_threads(1)
    np.random.seed(torch.initial_seed() % 2**32)


def deterministic_kernels(device: torch.device) -> None:
    """Ask for deterministic kernels on ``device``.

    On the CPU the forward pass of a given batch is already repeatable for a fixed thread
    count. With CUDA, cuDNN autotuning may pick different convolution algorithms per run,
    so autotuning is switched off and cuDNN is set to deterministic algorithms.
    """
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def iter_embeddings(
    dataset: Dataset,
    encoder: Encoder,
    *,
    microns_per_pixel: float,
    batch_size: int = 32,
    precision: str = "fp32",
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    seed: int = 0,
    desc: str = "embed",
) -> Iterator[np.ndarray]:
    """Encode a dataset of uint8 patches batch by batch, in order.

    Parameters
    ----------
    dataset
        Indexed with a list of increasing indices, it returns a uint8 tensor of patches,
        shape (batch, P, P, 3), already passed through ``encoder.preprocess`` for network
        encoders (:class:`PatchDataset` for patch files, ``TileDataset`` for whole slides).
    encoder
        Encoder from :func:`histodecon.backbones.load_encoder`, already on ``device``.
    microns_per_pixel
        µm/px of the patches (the morphology features measure sizes in µm).
    batch_size, precision, device, num_workers
        As for :func:`compute_embeddings`.
    seed
        Seed of the loader's generator, from which each worker's torch and numpy seeds derive.
    desc
        Label of the progress bar.

    Yields
    ------
    numpy.ndarray
        float32, shape (batch, encoder.spec.embedding_dim). Only one batch is held at a
        time, so memory does not grow with the number of patches.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be 0 or more, got {num_workers}")
    device = torch.device(device)
    if len(dataset) == 0:
        return
    is_network = encoder.spec.family != "morphology"
    sampler = BatchSampler(SequentialSampler(range(len(dataset))), batch_size=batch_size, drop_last=False)
    loader = DataLoader(
        dataset,
        sampler=sampler,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        worker_init_fn=_seed_worker,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=False,
    )
    autocast_dtype = _AUTOCAST_DTYPES.get(precision)
    progress = tqdm(loader, total=len(sampler), desc=desc, unit="batch")
    with torch.inference_mode(), torch.autocast(
        device_type=device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None
    ):
        try:
            for batch in progress:
                batch = batch.to(device, non_blocking=True)
                if is_network:
                    embeddings = encoder.forward_embedding(batch)
                else:
                    embeddings = encoder.encode(batch, microns_per_pixel=microns_per_pixel)
                yield embeddings.float().cpu().numpy()
        finally:
            close = getattr(dataset, "close", None)
            if close is not None:
                close()


def compute_embeddings(
    info: PatchFileInfo,
    encoder: Encoder,
    *,
    batch_size: int = 32,
    precision: str = "fp32",
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    seed: int = 0,
) -> np.ndarray:
    """Encode all patches of a patch file.

    Parameters
    ----------
    info
        The patch file, from :func:`read_patch_file_info`.
    encoder
        Encoder from :func:`histodecon.backbones.load_encoder`, already on ``device``.
    batch_size
        Patches per forward pass.
    precision
        Resolved precision: ``"fp32"``, or ``"bf16"``/``"fp16"`` for autocast.
    device
        Device the encoder is on; batches are moved there.
    num_workers
        DataLoader worker processes that read the HDF5 file and, for network encoders,
        resize and normalise each batch (0 does both in the main process).
    seed
        Seed of the DataLoader workers.

    Returns
    -------
    numpy.ndarray
        float32, shape (n_spots, encoder.spec.embedding_dim), rows in patch file order.
    """
    width = encoder.spec.embedding_dim
    # The morphology features need uint8 pixels and the patch µm/px; networks take batches
    # that the workers have already resized and normalised.
    is_network = encoder.spec.family != "morphology"
    dataset = PatchDataset(info.path, transform=encoder.preprocess if is_network else None)
    batches = iter_embeddings(
        dataset,
        encoder,
        microns_per_pixel=info.microns_per_pixel,
        batch_size=batch_size,
        precision=precision,
        device=device,
        num_workers=num_workers,
        seed=seed,
        desc=f"embed {info.slide}",
    )
    output = np.empty((info.n_spots, width), dtype=np.float32)
    row = 0
    for embeddings in batches:
        output[row : row + len(embeddings)] = embeddings
        row += len(embeddings)
    return output


def embed_slide(
    patch_file: str | Path,
    output_path: str | Path,
    *,
    backbone: str,
    weights: str | Path | None = None,
    batch_size: int = 32,
    precision: Precision = "auto",
    device: DeviceChoice = "auto",
    num_workers: int | Literal["auto"] = "auto",
    seed: int = 0,
    trust_remote_code: Collection[str] = (),
) -> pd.DataFrame:
    """Embed every patch of one slide and write the table as parquet.

    Parameters
    ----------
    patch_file
        HDF5 patch file of the slide (``results/patches/{slide}.h5``).
    output_path
        Parquet file to write, atomically.
    backbone
        Registry name, see :func:`histodecon.backbones.list_backbones`.
    weights
        Local weights file for pretrained backbones; None uses the Hugging Face hub or cache.
    batch_size
        Patches per forward pass.
    precision
        ``"auto"`` is bf16 autocast on CUDA and on CPUs with native bf16 (see
        :func:`cpu_has_native_bf16`), fp32 otherwise. ``"bf16"``/``"fp16"`` enable
        autocast with that dtype. The stored embeddings are float32 in every case.
    device
        ``"auto"`` uses CUDA when available, else the CPU.
    num_workers
        DataLoader worker processes that read the patch file and prepare batches; ``"auto"``
        is explained at :func:`resolve_num_workers`.
    seed
        Seed of random-weight backbones (controls).
    trust_remote_code
        Backbones whose hub repository code may run (config ``embedding.trust_remote_code``).

    Returns
    -------
    pandas.DataFrame
        One row per spot in patch file order, columns ``barcode``, ``tissue_fraction``,
        ``padded``, then ``emb_0000`` ... float32, shape (n_spots, 3 + embedding_dim).
    """
    start = time.perf_counter()
    spec = get_backbone(backbone)
    info = read_patch_file_info(patch_file)
    resolved_device = resolve_device(device)
    deterministic_kernels(resolved_device)
    resolved_precision = resolve_precision(precision, resolved_device, spec)
    input_mpp = _check_scale(spec, info)
    logger.info(
        "embedding slide %s: %d patches of %d px at %.3f µm/px with backbone %s on %s (%s, batch size %d)",
        info.slide,
        info.n_spots,
        info.patch_px,
        info.microns_per_pixel,
        spec.name,
        resolved_device,
        resolved_precision,
        batch_size,
    )

    encoder = load_encoder(spec, weights=weights, seed=seed, trust_remote_code=trust_remote_code).to(resolved_device)
    encode_start = time.perf_counter()
    embeddings = compute_embeddings(
        info,
        encoder,
        batch_size=batch_size,
        precision=resolved_precision,
        device=resolved_device,
        num_workers=resolve_num_workers(num_workers, resolved_device),
        seed=seed,
    )
    encode_seconds = time.perf_counter() - encode_start

    table = pd.concat(
        [
            info.spots[[BARCODE_COL, TISSUE_FRACTION_COL, PADDED_COL]].reset_index(drop=True),
            pd.DataFrame(embeddings, columns=embedding_columns(spec.embedding_dim)),
        ],
        axis=1,
    )
    metadata = {
        "stage": "embed",
        "slide": info.slide,
        "patch_file": str(info.path),
        "n_spots": info.n_spots,
        "backbone": spec.name,
        "backbone_spec": spec.to_metadata(),
        "embedding_dim": spec.embedding_dim,
        "feature_names": list(encoder.feature_names) if encoder.feature_names is not None else None,
        "weights_source": encoder.weights_source,
        "seed": seed,
        "precision": resolved_precision,
        "device": str(resolved_device),
        "batch_size": batch_size,
        "input_px": spec.input_px,
        "resize_px": spec.resize_px,
        "input_microns_per_pixel": input_mpp,
        "patch_geometry": info.geometry,
        "versions": package_versions(),
    }
    write_parquet(table, output_path, metadata=metadata)

    rate = info.n_spots / encode_seconds if encode_seconds > 0 else float("nan")
    logger.info(
        "embedded slide %s: %d patches x %d dimensions in %.1f s (%.1f patches/s, %.1f s total); wrote %s",
        info.slide,
        info.n_spots,
        spec.embedding_dim,
        encode_seconds,
        rate,
        time.perf_counter() - start,
        output_path,
    )
    return table
