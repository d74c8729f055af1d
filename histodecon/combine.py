"""Combined backbones: per-slide embeddings that concatenate those of several registered backbones.

A combined backbone (config key ``combined_backbones``) is cross-validated and evaluated
like any other backbone. Its embedding file has the layout that :mod:`histodecon.embed`
writes: ``barcode``, ``tissue_fraction``, ``padded``, then ``emb_0000`` ... numbered
across the concatenation, with the components in their configured order. The parquet
metadata lists each component with its width, its columns and its own metadata.

No feature is rescaled here. Each regressor z-scores its inputs with statistics of the
training spots of every fold: ridge through sklearn's ``StandardScaler``, the MLP in
``MLPRegressor._fit``, and the mean baseline does not read them. So components whose
values differ in scale (hand-crafted morphology features against ViT tokens) enter the
models on one scale, without statistics of the held-out slides.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from histodecon.io import read_parquet_metadata, write_parquet
from histodecon.keys import BARCODE_COL, EMBEDDING_PREFIX, PADDED_COL, TISSUE_FRACTION_COL, embedding_columns, prefixed_columns
from histodecon.provenance import package_versions

logger = logging.getLogger(__name__)

__all__ = ["COMBINED_NAME_PATTERN", "CombinedBackboneError", "check_combined_backbones", "combine_embeddings"]

# Names of combined backbones, as in the schema: registry characters plus "+", so a name
# such as "conch+uni" can spell out its components. The wildcard constraints of the
# workflow accept the same characters.
COMBINED_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_+]+$")
# Per-spot columns copied from the first component, in this order, before the embedding.
SPOT_COLUMNS = (BARCODE_COL, TISSUE_FRACTION_COL, PADDED_COL)
# Metadata key of the patch geometry that histodecon.embed writes.
GEOMETRY_KEY = "patch_geometry"


class CombinedBackboneError(ValueError):
    """A combined backbone whose definition or component embeddings cannot be concatenated."""


def check_combined_backbones(
    combined: Mapping[str, Sequence[str]],
    *,
    registered: Collection[str],
    configured: Collection[str] = (),
) -> None:
    """Check the ``combined_backbones`` config mapping before any job runs.

    Parameters
    ----------
    combined
        Combined backbone name -> component backbone names, in concatenation order.
    registered
        Registered backbone names (:func:`histodecon.backbones.list_backbones`).
    configured
        The ``backbones`` list of the config.

    Raises
    ------
    CombinedBackboneError
        For an invalid name, a name that is a registered or listed backbone, fewer than 2
        distinct components, a repeated component or a component that is not registered.
        The message names the entry and the fix.
    """
    valid = ", ".join(registered)
    for name, components in combined.items():
        where = f"combined_backbones: {name}: {list(components)}"
        if not COMBINED_NAME_PATTERN.match(name):
            raise CombinedBackboneError(
                f"{where}: invalid name {name!r}; use letters, digits, '_' and '+' only, e.g. {'+'.join(components)!r}"
            )
        if name in registered:
            raise CombinedBackboneError(
                f"{where}: the name {name!r} is a registered backbone, so its embeddings would clash; "
                f"rename the combination, e.g. to {'+'.join(components)!r}"
            )
        if name in configured:
            raise CombinedBackboneError(
                f"{where}: {name!r} is also listed in backbones; remove it from backbones, "
                "because every combined backbone is benchmarked without being listed there"
            )
        repeated = sorted({c for c in components if list(components).count(c) > 1})
        if repeated:
            raise CombinedBackboneError(f"{where}: {repeated} listed more than once; list each backbone once")
        if len(components) < 2:
            raise CombinedBackboneError(
                f"{where}: a combination needs at least 2 distinct backbones, got {len(components)}; "
                f"add backbones from: {valid}, or remove the entry"
            )
        for component in components:
            if component in combined:
                raise CombinedBackboneError(
                    f"{where}: component {component!r} is itself a combined backbone; list its components instead"
                )
            if component not in registered:
                raise CombinedBackboneError(
                    f"{where}: unknown backbone {component!r}; valid backbones: {valid}. Fix the component name."
                )


@dataclass(frozen=True)
class _Component:
    """One component's embedding table, its ``emb_`` columns and its parquet metadata."""

    name: str
    path: Path
    table: pd.DataFrame
    columns: list[str]
    metadata: dict[str, Any]


def _read_component(name: str, path: str | os.PathLike) -> _Component:
    path = Path(path)
    table = pd.read_parquet(path)
    missing = [column for column in SPOT_COLUMNS if column not in table.columns]
    columns = prefixed_columns(table.columns, EMBEDDING_PREFIX)
    if missing or not columns:
        raise CombinedBackboneError(
            f"embedding file {path} of backbone {name!r} lacks the columns {missing or [EMBEDDING_PREFIX + '*']}; "
            "it was not written by histodecon.embed. Delete it and rerun the workflow."
        )
    metadata = read_parquet_metadata(path)
    if GEOMETRY_KEY not in metadata:
        raise CombinedBackboneError(
            f"embedding file {path} of backbone {name!r} has no {GEOMETRY_KEY!r} in its metadata; "
            "it was not written by histodecon.embed. Delete it and rerun the workflow."
        )
    stored_name = metadata.get("backbone")
    if stored_name is not None and stored_name != name:
        raise CombinedBackboneError(
            f"embedding file {path} contains backbone {stored_name!r}, but it was passed as component {name!r}; "
            "pass each component's own file"
        )
    return _Component(name=name, path=path, table=table, columns=columns, metadata=metadata)


def _check_same_spots(first: _Component, other: _Component) -> None:
    """Raise unless both tables contain the same spots in the same order, cut from the same patches."""
    fix = "Embed both backbones from the current patch file: delete the two files and rerun the workflow."
    pair = f"{other.path} ({other.name}) and {first.path} ({first.name})"
    expected = first.table[BARCODE_COL].astype(str).to_numpy()
    found = other.table[BARCODE_COL].astype(str).to_numpy()
    if len(found) != len(expected):
        raise CombinedBackboneError(f"{pair} contain {len(found)} and {len(expected)} spots. {fix}")
    differing = np.flatnonzero(found != expected)
    if differing.size:
        row = int(differing[0])
        raise CombinedBackboneError(
            f"{pair} list different barcodes in {differing.size} of {len(expected)} rows, first at row {row}: "
            f"{found[row]!r} against {expected[row]!r}. {fix}"
        )
    for column in (TISSUE_FRACTION_COL, PADDED_COL):
        if not np.array_equal(other.table[column].to_numpy(), first.table[column].to_numpy()):
            raise CombinedBackboneError(f"{pair} have the same barcodes but different {column!r} values. {fix}")


def _check_same_geometry(first: _Component, other: _Component) -> None:
    """Raise unless both files were embedded from patches of the same slide and geometry."""
    expected, found = first.metadata[GEOMETRY_KEY], other.metadata[GEOMETRY_KEY]
    differing = {
        key: (found.get(key), expected.get(key))
        for key in sorted(set(expected) | set(found))
        if found.get(key) != expected.get(key)
    }
    first_slide, other_slide = first.metadata.get("slide"), other.metadata.get("slide")
    if first_slide != other_slide:
        differing["slide"] = (other_slide, first_slide)
    if differing:
        details = "; ".join(f"{key}: {values[0]!r} against {values[1]!r}" for key, values in differing.items())
        raise CombinedBackboneError(
            f"{other.path} ({other.name}) and {first.path} ({first.name}) were embedded from different patches "
            f"({details}). Embed both from the current patch file: delete the two files and rerun the workflow."
        )



def combine_embeddings(
    components: Mapping[str, str | os.PathLike],
    output_path: str | os.PathLike,
    *,
    name: str,
) -> pd.DataFrame:
    """Concatenate the embeddings of one slide from several backbones and write them as parquet.

    Parameters
    ----------
    components
        Component backbone name -> its embedding file of the slide
        (``results/embeddings/{backbone}/{slide}.parquet``), in concatenation order.
    output_path
        Parquet file to write, atomically; nothing is written on error.
    name
        Name of the combined backbone, stored in the metadata.

    Returns
    -------
    pandas.DataFrame
        One row per spot in the components' order, columns ``barcode``, ``tissue_fraction``,
        ``padded``, then ``emb_0000`` ... with the dimensions of each component in turn,
        shape (n_spots, 3 + sum of the component widths). Values are copied unchanged.

    Raises
    ------
    CombinedBackboneError
        With fewer than 2 components, or when the files differ in barcodes, their order,
        tissue fraction, padded flags, slide or patch geometry.
    """
    if len(components) < 2:
        raise CombinedBackboneError(f"combined backbone {name!r} needs at least 2 components, got {list(components)}")
    start = time.perf_counter()
    parts = [_read_component(component, path) for component, path in components.items()]
    first = parts[0]
    for other in parts[1:]:
        _check_same_spots(first, other)
        _check_same_geometry(first, other)

    blocks = [first.table[list(SPOT_COLUMNS)].reset_index(drop=True)]
    records = []
    offset = 0
    for part in parts:
        renamed = embedding_columns(len(part.columns), start=offset)
        block = part.table[part.columns].reset_index(drop=True)
        block.columns = renamed
        blocks.append(block)
        records.append(
            {
                "backbone": part.name,
                "path": str(part.path),
                "embedding_dim": len(part.columns),
                "first_column": renamed[0],
                "last_column": renamed[-1],
                "metadata": part.metadata,
            }
        )
        offset += len(part.columns)
    table = pd.concat(blocks, axis=1)

    metadata = {
        "stage": "combine_embeddings",
        "backbone": name,
        "slide": first.metadata.get("slide"),
        "n_spots": len(table),
        "embedding_dim": offset,
        "components": records,
        GEOMETRY_KEY: first.metadata[GEOMETRY_KEY],
        "versions": package_versions(),
    }
    write_parquet(table, output_path, metadata=metadata)
    logger.info(
        "combined backbone %s, slide %s: %d spots x %d dimensions (%s) in %.1f s; wrote %s",
        name,
        metadata["slide"],
        len(table),
        offset,
        " + ".join(f"{part.name} {len(part.columns)}" for part in parts),
        time.perf_counter() - start,
        output_path,
    )
    return table
