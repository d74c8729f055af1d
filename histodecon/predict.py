"""Cell-type maps of H&E slides without spatial transcriptomics.

Three steps per image, each a rule of the ``predict`` target:

1. :func:`tile_slide`: tissue detection on a thumbnail (Otsu on saturation with
   morphological clean-up, :mod:`histodecon.tissue`, the same as at ingest) and a grid of
   square tiles. Each tile covers the training field of view, and the grid step is
   ``predict.stride_um``. Tiles with too little tissue are dropped.
2. :func:`embed_tiles`: each tile is cut at the training µm/px and embedded with the
   training encoder (the code path of the ``embed`` rule). Embeddings are written to
   parquet one batch at a time, so memory does not grow with the number of tiles.
3. :func:`apply_model`: the final model of a backbone x regressor
   (:mod:`histodecon.final_model`) predicts the composition of every tile, reading the
   embeddings one row group at a time.

Outputs are described in docs/outputs.md.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import Dataset

from histodecon import keys
from histodecon.io import atomic_path, read_parquet_metadata, schema_metadata, write_parquet
from histodecon.provenance import package_versions
from histodecon.slide import Slide, open_slide
from histodecon.tissue import tissue_mask

logger = logging.getLogger(__name__)

__all__ = [
    "TILE_COL",
    "PredictionInputError",
    "resolve_image_mpp",
    "TileGrid",
    "tile_grid",
    "TileDataset",
    "tile_slide",
    "embed_tiles",
    "apply_model",
    "iter_row_groups",
]

TILE_COL = "tile"  # tile id: "<row>_<col>" on the grid
THUMBNAIL_PX = 2000


class PredictionInputError(ValueError):
    """An image of the prediction sheet that cannot be tiled."""


def resolve_image_mpp(slide_id: str, sheet_value: float | None, slide: Slide, *, path: str | Path) -> tuple[float, str]:
    """Return the µm/px of an image and its source, in the order used at ingest.

    The sample sheet's value comes first, then the image's own metadata (OpenSlide
    ``mpp-x``/``mpp-y`` or TIFF resolution tags). An image without spots has no grid pitch,
    so with neither the slide is rejected.
    """
    if sheet_value is not None and not (isinstance(sheet_value, float) and math.isnan(sheet_value)):
        return float(sheet_value), "sample_sheet"
    from_image = slide.microns_per_pixel
    if from_image is not None:
        return float(from_image), "image_metadata"
    raise PredictionInputError(
        f"slide {slide_id!r}: {path} has no µm/px in its metadata and the prediction sheet gives none. "
        "Add a microns_per_pixel column to the prediction sheet (e.g. 0.25 for a 40x scan, 0.5 for 20x)."
    )


@dataclass(frozen=True)
class TileGrid:
    """Tiles of one slide and the thumbnail they were chosen on.

    Attributes
    ----------
    tiles : DataFrame
        One row per kept tile: ``tile``, ``grid_row``, ``grid_col``, ``x_px``, ``y_px``
        (centre, full-resolution pixels, x = column), ``x_um``, ``y_um`` (the same in µm
        from the image origin) and ``tissue_fraction`` (share of the tile on the mask).
    tile_px : float
        Side of a tile in full-resolution pixels.
    thumbnail : array, shape ``(h, w, 3)``
    thumbnail_scale : float
        Thumbnail pixels per full-resolution pixel.
    mask : array of bool, shape ``(h, w)``
        Tissue mask of the thumbnail.
    """

    tiles: pd.DataFrame
    tile_px: float
    thumbnail: np.ndarray
    thumbnail_scale: float
    mask: np.ndarray


def _box_fractions(mask: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Return the mean of ``mask`` over each box ``(x0, y0, x1, y1)`` in mask pixels (summed-area table)."""
    table = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
    table[1:, 1:] = np.cumsum(np.cumsum(mask, axis=0), axis=1)
    x0 = np.clip(np.floor(boxes[:, 0]).astype(np.int64), 0, mask.shape[1])
    y0 = np.clip(np.floor(boxes[:, 1]).astype(np.int64), 0, mask.shape[0])
    x1 = np.clip(np.ceil(boxes[:, 2]).astype(np.int64), 0, mask.shape[1])
    y1 = np.clip(np.ceil(boxes[:, 3]).astype(np.int64), 0, mask.shape[0])
    area = np.maximum((x1 - x0) * (y1 - y0), 1)
    inside = table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]
    return inside / area


def tile_grid(
    slide: Slide,
    *,
    microns_per_pixel: float,
    field_of_view_um: float,
    stride_um: float,
    min_tissue_fraction: float,
    thumbnail_px: int = THUMBNAIL_PX,
) -> TileGrid:
    """Lay a grid of tiles over the tissue of a slide.

    Tiles lie wholly inside the image. Their centres step by ``stride_um`` from half a tile
    off the top-left corner, and a tile is kept when at least ``min_tissue_fraction`` of it
    lies on the tissue mask of the thumbnail.
    """
    if stride_um <= 0:
        raise ValueError(f"predict.stride_um must be positive, got {stride_um}")
    thumbnail, scale = slide.thumbnail(thumbnail_px)
    mask = tissue_mask(thumbnail)
    width, height = slide.dimensions
    tile_px = field_of_view_um / microns_per_pixel
    step_px = stride_um / microns_per_pixel
    xs = tile_px / 2 + step_px * np.arange(max(int((width - tile_px) // step_px) + 1, 0))
    ys = tile_px / 2 + step_px * np.arange(max(int((height - tile_px) // step_px) + 1, 0))
    grid_row, grid_col = np.meshgrid(np.arange(len(ys)), np.arange(len(xs)), indexing="ij")
    grid_row, grid_col = grid_row.ravel(), grid_col.ravel()
    x, y = xs[grid_col], ys[grid_row]
    half = tile_px / 2
    boxes = np.stack([x - half, y - half, x + half, y + half], axis=1) * scale
    fraction = _box_fractions(mask, boxes) if len(x) else np.empty(0)
    keep = fraction >= min_tissue_fraction
    tiles = pd.DataFrame(
        {
            TILE_COL: [f"{r}_{c}" for r, c in zip(grid_row[keep], grid_col[keep], strict=True)],
            "grid_row": grid_row[keep],
            "grid_col": grid_col[keep],
            keys.X_PX_COL: x[keep],
            keys.Y_PX_COL: y[keep],
            "x_um": x[keep] * microns_per_pixel,
            "y_um": y[keep] * microns_per_pixel,
            keys.TISSUE_FRACTION_COL: fraction[keep].astype(np.float32),
        }
    )
    logger.info(
        "tile grid: %d x %d tiles of %.1f px (%.0f µm, step %.0f µm); %d with at least %.0f %% tissue",
        len(ys),
        len(xs),
        tile_px,
        field_of_view_um,
        stride_um,
        len(tiles),
        100 * min_tissue_fraction,
    )
    return TileGrid(tiles=tiles, tile_px=tile_px, thumbnail=thumbnail, thumbnail_scale=scale, mask=mask)


class TileDataset(Dataset):
    """Batches of tiles cut from a slide image on demand.

    Index it with a list of increasing indices, as a ``BatchSampler`` yields them. It
    returns a uint8 tensor, shape (len(indices), P, P, 3), passed through ``transform``
    when one is given. The image is opened on first access in each process, so
    DataLoader workers never share a reader.
    """

    def __init__(
        self,
        image: str | Path,
        centres_px: np.ndarray,
        *,
        tile_px: float,
        patch_px: int,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.image = Path(image)
        self.centres = np.asarray(centres_px, dtype=np.float64)
        self.tile_px, self.patch_px, self.transform = tile_px, patch_px, transform
        self._slide: Slide | None = None

    def __len__(self) -> int:
        return len(self.centres)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_slide"] = None
        return state

    def __getitem__(self, indices: list[int]) -> torch.Tensor:
        if self._slide is None:
            self._slide = open_slide(self.image)
        half = self.tile_px / 2
        batch = np.empty((len(indices), self.patch_px, self.patch_px, 3), dtype=np.uint8)
        for out, index in enumerate(indices):
            x, y = self.centres[index]
            batch[out], _ = self._slide.read_box((x - half, y - half, x + half, y + half), self.patch_px)
        tensor = torch.from_numpy(batch)
        return self.transform(tensor) if self.transform is not None else tensor

    def close(self) -> None:
        """Drop this process's image reader."""
        self._slide = None


def tile_slide(
    *,
    slide_id: str,
    image: str | Path,
    sheet_mpp: float | None,
    field_of_view_um: float,
    patch_microns_per_pixel: float,
    stride_um: float,
    min_tissue_fraction: float,
    output: str | Path,
    thumbnail_out: str | Path,
) -> TileGrid:
    """Detect tissue, lay the tile grid and write it (parquet) with the thumbnail (``.npz``).

    The parquet metadata records µm/px and its source, the tile size in pixels, the
    geometry of the patches that will be cut, and the thumbnail scale.
    """
    from histodecon.patches import patch_size_px

    slide = open_slide(image)
    mpp, source = resolve_image_mpp(slide_id, sheet_mpp, slide, path=image)
    patch_px = patch_size_px(field_of_view_um=field_of_view_um, microns_per_pixel=patch_microns_per_pixel)
    grid = tile_grid(
        slide, microns_per_pixel=mpp, field_of_view_um=field_of_view_um, stride_um=stride_um, min_tissue_fraction=min_tissue_fraction
    )
    if grid.tiles.empty:
        raise PredictionInputError(
            f"slide {slide_id!r}: no tile of {field_of_view_um:g} µm in {image} has {100 * min_tissue_fraction:.0f} % tissue "
            f"(tissue covers {100 * grid.mask.mean():.1f} % of the thumbnail). Check the image, or lower predict.min_tissue_fraction."
        )
    width, height = slide.dimensions
    metadata = {
        "slide": slide_id,
        "image": str(image),
        "image_width_px": width,
        "image_height_px": height,
        keys.MPP_KEY: mpp,
        keys.MPP_SOURCE_KEY: source,
        "tile_px": grid.tile_px,
        "stride_um": stride_um,
        "min_tissue_fraction": min_tissue_fraction,
        "patch_geometry": {
            "patch_px": patch_px,
            "field_of_view_um": field_of_view_um,
            "patch_microns_per_pixel": patch_microns_per_pixel,
            "source_microns_per_pixel": mpp,
            "source_microns_per_pixel_source": source,
        },
        "thumbnail_scale": grid.thumbnail_scale,
        "versions": package_versions(),
    }
    write_parquet(grid.tiles, output, metadata=metadata)
    with atomic_path(thumbnail_out) as tmp:
        np.savez_compressed(tmp, thumbnail=grid.thumbnail, mask=grid.mask, scale=grid.thumbnail_scale)
    return grid


def embed_tiles(
    *,
    tiles: str | Path,
    backbone: str,
    output: str | Path,
    weights: str | Path | None = None,
    batch_size: int = 32,
    precision: str = "auto",
    device: str = "auto",
    num_workers: int | str = "auto",
    seed: int = 0,
    trust_remote_code: Collection[str] = (),
) -> int:
    """Embed every tile of a tile table and write the embeddings as parquet, batch by batch.

    Returns the number of tiles embedded. The file has the columns ``tile``, ``x_px``,
    ``y_px`` and ``emb_0000`` ... (float32), and the metadata of the ``embed`` rule.
    """
    from histodecon.backbones import get_backbone, load_encoder
    from histodecon.embed import deterministic_kernels, iter_embeddings, resolve_device, resolve_num_workers, resolve_precision
    from histodecon.keys import embedding_columns

    start = time.perf_counter()
    table = pd.read_parquet(tiles)
    info = read_parquet_metadata(tiles)
    geometry = info["patch_geometry"]
    spec = get_backbone(backbone)
    resolved_device = resolve_device(device)
    deterministic_kernels(resolved_device)
    resolved_precision = resolve_precision(precision, resolved_device, spec)
    encoder = load_encoder(spec, weights=weights, seed=seed, trust_remote_code=trust_remote_code).to(resolved_device)
    is_network = spec.family != "morphology"
    dataset = TileDataset(
        info["image"],
        table[[keys.X_PX_COL, keys.Y_PX_COL]].to_numpy(),
        tile_px=info["tile_px"],
        patch_px=geometry["patch_px"],
        transform=encoder.preprocess if is_network else None,
    )
    columns = embedding_columns(spec.embedding_dim)
    metadata = {
        "stage": "predict_embed",
        "slide": info["slide"],
        "tiles": str(tiles),
        "n_tiles": len(table),
        "backbone": spec.name,
        "backbone_spec": spec.to_metadata(),
        "embedding_dim": spec.embedding_dim,
        "weights_source": encoder.weights_source,
        "seed": seed,
        "precision": resolved_precision,
        "device": str(resolved_device),
        "batch_size": batch_size,
        "patch_geometry": geometry,
        "versions": package_versions(),
    }
    schema = pa.schema(
        [(TILE_COL, pa.string()), (keys.X_PX_COL, pa.float64()), (keys.Y_PX_COL, pa.float64())]
        + [(name, pa.float32()) for name in columns],
        metadata=schema_metadata(metadata),
    )
    batches = iter_embeddings(
        dataset,
        encoder,
        microns_per_pixel=geometry["patch_microns_per_pixel"],
        batch_size=batch_size,
        precision=resolved_precision,
        device=resolved_device,
        num_workers=resolve_num_workers(num_workers, resolved_device),
        seed=seed,
        desc=f"embed tiles {info['slide']}",
    )
    row = 0
    encode_start = time.perf_counter()
    with atomic_path(output) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for embeddings in batches:
            part = table.iloc[row : row + len(embeddings)]
            arrays = [pa.array(part[TILE_COL].to_numpy()), pa.array(part[keys.X_PX_COL].to_numpy()), pa.array(part[keys.Y_PX_COL].to_numpy())]
            arrays += [pa.array(embeddings[:, i]) for i in range(embeddings.shape[1])]
            # One row group per batch: apply_model reads the file back one group at a time.
            writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
            row += len(embeddings)
    seconds = time.perf_counter() - encode_start
    logger.info(
        "embedded %d tiles of slide %s with %s in %.1f s (%.1f tiles/s, %.1f s total); wrote %s",
        row,
        info["slide"],
        spec.name,
        seconds,
        row / seconds if seconds > 0 else float("nan"),
        time.perf_counter() - start,
        output,
    )
    return row


def iter_row_groups(path: str | Path, columns: list[str] | None = None) -> Iterator[pd.DataFrame]:
    """Yield a parquet file one row group at a time, as DataFrames."""
    parquet = pq.ParquetFile(path)
    for index in range(parquet.num_row_groups):
        yield parquet.read_row_group(index, columns=columns).to_pandas()


def apply_model(*, embeddings: str | Path, tiles: str | Path, model: str | Path, output: str | Path) -> pd.DataFrame:
    """Predict the composition of every tile with a final model and write it as parquet.

    The model is checked against the embeddings' backbone, width and patch geometry
    first (:func:`histodecon.final_model.check_model`).

    Returns
    -------
    DataFrame
        One row per tile: the columns of the tile table, then ``pred:<type>`` (target
        units) and ``proportion:<type>`` (the prediction as a share of its sum over types,
        negatives counted as 0).
    """
    from histodecon.composition import composition
    from histodecon.final_model import check_model, load_model
    from histodecon.keys import EMBEDDING_PREFIX

    regressor, model_info = load_model(model)
    embedding_info = read_parquet_metadata(embeddings)
    geometry = embedding_info["patch_geometry"]
    check_model(
        model_info,
        backbone=embedding_info["backbone"],
        embedding_dim=int(embedding_info["embedding_dim"]),
        field_of_view_um=float(geometry["field_of_view_um"]),
        microns_per_pixel=float(geometry["patch_microns_per_pixel"]),
        source=str(embeddings),
    )
    types = model_info["cell_types"]
    parts = []
    for part in iter_row_groups(embeddings):
        features = part[[c for c in part.columns if c.startswith(EMBEDDING_PREFIX)]].to_numpy(dtype=np.float32)
        predicted = regressor.predict(features)
        frame = pd.DataFrame(predicted, columns=[keys.PRED_PREFIX + t for t in types])
        shares = pd.DataFrame(composition(predicted), columns=[keys.PROPORTION_PREFIX + t for t in types])
        parts.append(pd.concat([part[[TILE_COL]].reset_index(drop=True), frame, shares], axis=1))
    predictions = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=[TILE_COL])
    table = pd.read_parquet(tiles).merge(predictions, on=TILE_COL, how="inner", validate="one_to_one")
    tile_info = read_parquet_metadata(tiles)
    metadata = {
        "stage": "predict_apply",
        "model": str(model),
        "model_metadata": model_info,
        "embeddings": str(embeddings),
        "tiles": tile_info,
        "versions": package_versions(),
    }
    write_parquet(table, output, metadata=metadata)
    logger.info("predicted %d cell types on %d tiles of slide %s", len(types), len(table), tile_info["slide"])
    return table
