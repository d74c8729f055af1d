"""Atomic file writing and parquet tables with histodecon metadata.

Every output goes to a temporary file beside its target and is renamed into place only
when complete, so a killed job never leaves a finished-looking file behind.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from histodecon.keys import PARQUET_METADATA_KEY

logger = logging.getLogger(__name__)

__all__ = ["atomic_path", "schema_metadata", "write_parquet", "read_parquet_metadata", "write_tsv"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` on success.

    The temporary file keeps the target's suffix, so writers that dispatch on the suffix
    (matplotlib, anndata) still work. On any exception the temporary file is removed and
    ``path`` is left untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.stem}.tmp-{os.getpid()}{target.suffix}")
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in parquet metadata: {value!r}")


def schema_metadata(metadata: dict) -> dict[bytes, bytes]:
    """Return ``metadata`` as the parquet schema entry that :func:`read_parquet_metadata` reads."""
    return {PARQUET_METADATA_KEY: json.dumps(metadata, default=_json_default, sort_keys=True).encode()}


def write_parquet(df: pd.DataFrame, path: str | os.PathLike, *, metadata: dict | None = None) -> None:
    """Write ``df`` atomically as parquet, with ``metadata`` stored as JSON in the schema."""
    table = pa.Table.from_pandas(df, preserve_index=False)
    if metadata is not None:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **schema_metadata(metadata)})
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
