"""Atomic file writing, and parquet and h5ad files with histodecon metadata and provenance.

Every output goes to a temporary file (or folder) beside its target and is renamed into
place only when complete, so a killed job never leaves a finished-looking file behind. A
rename within one folder is atomic on POSIX file systems.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anndata as ad
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from histodecon.keys import HISTODECON_UNS_KEY, PARQUET_METADATA_KEY, PROVENANCE_KEY
from histodecon.provenance import active_record

logger = logging.getLogger(__name__)

__all__ = [
    "atomic_path",
    "atomic_directory",
    "schema_metadata",
    "write_parquet",
    "read_parquet_metadata",
    "write_tsv",
    "write_h5ad",
]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` on success.

    The temporary file keeps the target's suffix, so writers that dispatch on the suffix
    (matplotlib, anndata) still work. On any exception the temporary file is removed and
    ``path`` is left untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(target)
    tmp = target.with_name(f"{_temporary_prefix(target)}{os.getpid()}{target.suffix}")
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; rename it to ``path`` when the block ends.

    ``path`` must not exist or be an empty folder. On any exception the temporary folder and
    its files are removed and ``path`` is left untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(target)
    tmp = target.with_name(f"{_temporary_prefix(target)}{os.getpid()}")
    tmp.mkdir()
    try:
        yield tmp
        if target.is_dir() and not any(target.iterdir()):
            target.rmdir()
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _temporary_prefix(target: Path) -> str:
    return f".{target.stem}.tmp-"


def _remove_stale_temporaries(target: Path) -> None:
    """Remove temporary files a killed job left beside ``target``.

    Snakemake runs one job per output, so a temporary file of this target that exists
    before the write starts belongs to a job that died (SIGKILL skips ``finally``).
    """
    prefix = _temporary_prefix(target)
    for stale in target.parent.glob(f"{glob.escape(prefix)}*"):
        logger.warning("removing %s, left by a killed job", stale)
        if stale.is_dir():
            shutil.rmtree(stale)
        else:
            stale.unlink(missing_ok=True)


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in parquet metadata: {value!r}")


def schema_metadata(metadata: dict) -> dict[bytes, bytes]:
    """Return ``metadata`` as the parquet schema entry that :func:`read_parquet_metadata` reads.

    The active provenance record (:func:`histodecon.provenance.active_record`), when there
    is one, is added under ``provenance``.
    """
    record = active_record()
    if record is not None:
        metadata = {**metadata, PROVENANCE_KEY: record}
    return {PARQUET_METADATA_KEY: json.dumps(metadata, default=_json_default, sort_keys=True).encode()}


def write_parquet(df: pd.DataFrame, path: str | os.PathLike, *, metadata: dict | None = None) -> None:
    """Write ``df`` atomically as parquet, with ``metadata`` and provenance stored as JSON in the schema."""
    table = pa.Table.from_pandas(df, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **schema_metadata(metadata or {})})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    logger.debug("wrote %s (%d rows, %d columns)", path, len(df), df.shape[1])


def read_parquet_metadata(path: str | os.PathLike) -> dict:
    """Return the histodecon metadata of a parquet file (empty when there is none)."""
    raw = (pq.read_schema(path).metadata or {}).get(PARQUET_METADATA_KEY)
    return json.loads(raw) if raw else {}


def write_tsv(df: pd.DataFrame, path: str | os.PathLike, **kwargs: Any) -> None:
    """Write ``df`` atomically as a tab-separated table."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, sep="\t", **kwargs)


def write_h5ad(adata: ad.AnnData, path: str | os.PathLike) -> None:
    """Write ``adata`` atomically, with the active provenance record in ``uns["histodecon"]``.

    The record is stored as a JSON string under ``provenance``, and ``adata.uns`` is
    restored after the write.
    """
    record = active_record()
    previous = adata.uns.get(HISTODECON_UNS_KEY)
    if record is not None:
        # Set for the write only (no copy: an ingested slide contains all counts and an image).
        adata.uns[HISTODECON_UNS_KEY] = {**(previous or {}), PROVENANCE_KEY: json.dumps(record, default=_json_default, sort_keys=True)}
    try:
        with atomic_path(path) as tmp:
            adata.write_h5ad(tmp)
    finally:
        if previous is None:
            adata.uns.pop(HISTODECON_UNS_KEY, None)
        else:
            adata.uns[HISTODECON_UNS_KEY] = previous
