"""Provenance stored in every parquet, h5ad and patch file the workflow writes.

Each workflow job builds one provenance record when it starts (:func:`start_job`). The
record contains the package versions, the rule with its wildcards and params (the config
values it runs with), the run's seeds and the SHA-256 of every input file. Two summaries
are carried forward from the inputs' own records:

``sources``
    The original input files behind the output (counts, spot tables, images, the
    reference), with their SHA-256, gathered through every upstream output.
``scale``
    The µm/px and its source of every slide behind the output, as ingest resolved it.

The writers of :mod:`histodecon.io` and :mod:`histodecon.patches` store the active record
with every file: parquet schema metadata (``provenance``), h5ad ``uns["histodecon"]
["provenance"]`` (a JSON string, since AnnData cannot store lists of records) and the
``provenance`` attribute of patch files. :mod:`histodecon.manifest` gathers them into
``results/run_manifest.json``. Records contain no clock times, so a rerun with the same
inputs writes the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from histodecon import keys

logger = logging.getLogger(__name__)

__all__ = [
    "package_versions",
    "file_sha256",
    "path_record",
    "run_seeds",
    "job_record",
    "activate",
    "active_record",
    "start_job",
    "read_provenance",
    "declared_scale",
    "to_json",
]

TRACKED_PACKAGES = (
    "histodecon", "torch", "timm", "cell2location", "scvi-tools", "pyro-ppl", "lightning",
    "anndata", "scanpy", "squidpy", "scikit-learn", "scikit-image", "numpy", "pandas",
    "pyarrow", "h5py", "openslide-python", "tifffile", "pillow", "snakemake",
)
# Files under this folder of the working directory are outputs of the workflow; every
# other input is an original source.
RESULTS_DIR = "results"
# Config sections that hold a seed, and what each seeds.
SEED_SECTIONS = {
    "labels": "pyro, torch and numpy in both cell2location fits",
    "embedding": "random-weight encoders and DataLoader workers",
    "cv": "regressor training, validation splits and bootstrap intervals",
}

_active: dict | None = None


def package_versions() -> dict[str, str]:
    """Return the installed versions of the packages that shape histodecon's results."""
    versions = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def file_sha256(path: str | Path, *, chunk_bytes: int = 1 << 20) -> str:
    """Return the SHA-256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def path_record(path: str | os.PathLike) -> dict[str, Any]:
    """Return ``{"path", "sha256", "bytes"}`` of a file.

    A folder (a Space Ranger output, a folder of heatmaps) gets one digest over the sorted
    relative names and digests of all its files, and ``files``, their number.
    """
    path = Path(path)
    if not path.is_dir():
        return {"path": str(path), "sha256": file_sha256(path), "bytes": path.stat().st_size}
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        digest.update(f"{file.relative_to(path).as_posix()}\0{file_sha256(file)}\n".encode())
    return {"path": str(path), "sha256": digest.hexdigest(), "bytes": sum(f.stat().st_size for f in files), "files": len(files)}


def run_seeds(config: Mapping) -> dict[str, int]:
    """Return the seeds of a run's config by section (``labels``, ``embedding``, ``cv``)."""
    return {section: config[section]["seed"] for section in SEED_SECTIONS if "seed" in config.get(section, {})}


def is_workflow_output(path: str | os.PathLike) -> bool:
    """Return whether ``path`` is an output of the workflow (relative, under ``results/``)."""
    parts = Path(path).parts
    return not Path(path).is_absolute() and len(parts) > 1 and parts[0] == RESULTS_DIR


def to_json(value: Any) -> Any:
    """Return ``value`` with numpy scalars and arrays, paths and other objects made JSON-safe."""
    return json.loads(json.dumps(value, default=_json_default, sort_keys=True))


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, Iterable) and not isinstance(value, (str, bytes)):
        return list(value)
    return str(value)


def job_record(
    *, rule: str, inputs: Mapping[str, Iterable[str | os.PathLike]], config: Mapping, params: Mapping | None = None, wildcards: Mapping | None = None
) -> dict[str, Any]:
    """Build the provenance record of one job.

    Parameters
    ----------
    rule
        Name of the rule (or stage) that writes the outputs.
    inputs
        Input files by role. Files under ``results/`` are workflow outputs: their own
        records give this record's ``sources`` and ``scale``. Every other file is a source.
    config
        The run's config; its seeds are recorded (:func:`run_seeds`).
    params, wildcards
        The job's resolved params (config values) and wildcards, stored as given.

    Returns
    -------
    dict
        ``versions``, ``rule``, ``wildcards``, ``params``, ``seeds``, ``inputs`` (a list of
        :func:`path_record` with ``role``), ``sources`` (path to ``{"sha256", "bytes"}``)
        and ``scale`` (slide to ``{"microns_per_pixel", "microns_per_pixel_source"}``).
    """
    records, sources, scale = [], {}, {}
    for role, paths in inputs.items():
        for path in paths:
            record = {"role": role, **path_record(path)}
            records.append(record)
            if is_workflow_output(path):
                upstream = read_provenance(path)
                sources.update(upstream.get("sources", {}))
                scale.update(upstream.get("scale", {}))
                scale.update(declared_scale(path))
            else:
                sources[record["path"]] = {k: record[k] for k in ("sha256", "bytes", "files") if k in record}
    return to_json(
        {
            "versions": package_versions(),
            "rule": rule,
            "wildcards": dict(wildcards or {}),
            "params": dict(params or {}),
            "seeds": run_seeds(config),
            "inputs": records,
            "sources": dict(sorted(sources.items())),
            "scale": dict(sorted(scale.items())),
        }
    )


def activate(record: Mapping | None) -> None:
    """Make ``record`` the provenance that writers store with every output (``None`` clears it)."""
    global _active
    _active = None if record is None else dict(record)


def active_record() -> dict | None:
    """Return the provenance record that writers store now, or ``None``."""
    return _active


def start_job(job: Any) -> dict:
    """Set up a workflow script: the rule's log file first, then the job's provenance.

    ``job`` is the ``snakemake`` object of a script. Its named inputs keep their names as
    roles; unnamed ones get the role ``input``.
    """
    from histodecon.logs import configure_logging

    configure_logging(job.log[0] if job.log else None)
    named = dict(job.input.items())
    covered = {str(p) for value in named.values() for p in _as_list(value)}
    inputs = {role: [str(p) for p in _as_list(value)] for role, value in named.items()}
    unnamed = [str(p) for p in job.input if str(p) not in covered]
    if unnamed:
        inputs["input"] = unnamed
    record = job_record(rule=job.rule, inputs=inputs, config=job.config, params=dict(job.params.items()), wildcards=dict(job.wildcards.items()))
    activate(record)
    logger.info("rule %s: %d input files, %d original sources", job.rule, len(record["inputs"]), len(record["sources"]))
    return record


def _as_list(value: Any) -> list:
    return [value] if isinstance(value, (str, os.PathLike)) else list(value)


def read_provenance(path: str | os.PathLike) -> dict:
    """Return the provenance record stored in a parquet, h5ad, patch (HDF5) or model metadata (JSON) file.

    Files of other kinds, and files written without an active record, give ``{}``.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        content = json.loads(path.read_text(encoding="utf-8"))
        return content.get(keys.PROVENANCE_KEY, {}) if isinstance(content, dict) else {}
    if suffix == ".parquet":
        from histodecon.io import read_parquet_metadata

        return read_parquet_metadata(path).get(keys.PROVENANCE_KEY, {})
    if suffix in (".h5ad", ".h5"):
        import h5py

        with h5py.File(path, "r") as h5:
            if suffix == ".h5":
                raw = h5.attrs.get(keys.PROVENANCE_KEY)
            else:
                node = h5.get(f"uns/{keys.HISTODECON_UNS_KEY}/{keys.PROVENANCE_KEY}")
                raw = node[()] if node is not None else None
        if raw is None:
            return {}
        return json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
    return {}


def declared_scale(path: str | os.PathLike) -> dict[str, dict]:
    """Return the µm/px that a file resolved itself: ingested slides and tile tables.

    An ingested slide (h5ad) stores it in ``uns["histodecon"]``, a tile table (parquet) in
    its metadata next to ``slide``. Other files give ``{}``.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        from histodecon.io import read_parquet_metadata

        info = read_parquet_metadata(path)
        slide = info.get("slide")
    elif suffix == ".h5ad":
        import anndata as ad
        import h5py

        with h5py.File(path, "r") as h5:
            node = h5.get(f"uns/{keys.HISTODECON_UNS_KEY}")
            spatial = h5.get(f"uns/{keys.SPATIAL_KEY}")
            if node is None or keys.MPP_KEY not in node or spatial is None or len(spatial) != 1:
                return {}
            info = {key: ad.io.read_elem(node[key]) for key in (keys.MPP_KEY, keys.MPP_SOURCE_KEY) if key in node}
            slide = next(iter(spatial.keys()))
    else:
        return {}
    if slide is None or keys.MPP_KEY not in info or keys.MPP_SOURCE_KEY not in info:
        return {}
    return {str(slide): {keys.MPP_KEY: float(info[keys.MPP_KEY]), keys.MPP_SOURCE_KEY: str(info[keys.MPP_SOURCE_KEY])}}
