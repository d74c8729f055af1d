"""The run manifest: the provenance of a whole run in one JSON file.

``results/run_manifest.json`` gathers the records that :mod:`histodecon.provenance` stores
in each output. It contains the package versions, the full config and the seeds. It lists
every original input file with its SHA-256, the µm/px of every slide with its source, and
every output with its SHA-256 and the rule that wrote it. It also lists what a resumed or partly rebuilt run can
get wrong. An input file may have different checksums in different outputs, because it
changed during the run. A slide may have different µm/px in different outputs. Outputs may
have been written with other package versions than the manifest's.
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from histodecon.io import atomic_path
from histodecon.provenance import SEED_SECTIONS, package_versions, path_record, read_provenance, run_seeds, to_json

logger = logging.getLogger(__name__)

__all__ = ["build_manifest", "write_manifest"]

MANIFEST_FORMAT = "histodecon-run-manifest/1"


def _merge(entries: Mapping[str, Mapping[str, list[str]]]) -> tuple[dict, list[dict]]:
    """Merge ``{key: {value_json: [output, ...]}}`` into one value per key and a list of conflicts."""
    merged, conflicts = {}, []
    for key, values in sorted(entries.items()):
        if len(values) == 1:
            merged[key] = json.loads(next(iter(values)))
            continue
        merged[key] = None
        conflicts.append({"key": key, "values": [{"value": json.loads(v), "outputs": sorted(o)} for v, o in sorted(values.items())]})
    return merged, conflicts


def build_manifest(outputs: Sequence[str | os.PathLike], *, config: Mapping) -> dict[str, Any]:
    """Gather the provenance of ``outputs`` into one record.

    Parameters
    ----------
    outputs
        Output files and folders of the run. Parquet, h5ad, patch and model metadata files
        contribute their provenance records; every output is listed with its checksum.
    config
        The run's config, stored whole.

    Returns
    -------
    dict
        ``format``, ``versions``, ``config``, ``seeds``, ``inputs`` (original input path to
        ``{"sha256", "bytes"}``), ``slides`` (slide to µm/px and source), ``outputs``
        (path to ``{"sha256", "bytes", "rule"}``), and the lists ``input_conflicts``,
        ``scale_conflicts`` and ``version_mismatches`` (empty in a consistent run).
    """
    versions = package_versions()
    sources: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    scales: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    listed, mismatches = {}, []
    for output in sorted(str(o) for o in outputs):
        record = read_provenance(output)
        entry = path_record(output)
        entry.pop("path")
        listed[output] = {**entry, "rule": record.get("rule")}
        for path, info in record.get("sources", {}).items():
            sources[path][json.dumps(info, sort_keys=True)].append(output)
        for slide, info in record.get("scale", {}).items():
            scales[slide][json.dumps(info, sort_keys=True)].append(output)
        recorded = record.get("versions", {})
        differing = {name: {"output": recorded[name], "manifest": versions.get(name)} for name in recorded if recorded[name] != versions.get(name)}
        if differing:
            mismatches.append({"output": output, "versions": differing})
    inputs, input_conflicts = _merge(sources)
    slides, scale_conflicts = _merge(scales)
    for conflict in input_conflicts:
        logger.warning("input %s has different checksums in different outputs, so it changed during the run. Rerun with --forceall", conflict["key"])
    for conflict in scale_conflicts:
        logger.warning("slide %s has different µm/px in different outputs. Rerun with --forceall", conflict["key"])
    for mismatch in mismatches:
        logger.warning("%s was written with other package versions: %s", mismatch["output"], mismatch["versions"])
    seeds = run_seeds(config)
    return to_json(
        {
            "format": MANIFEST_FORMAT,
            "versions": versions,
            "config": dict(config),
            "seeds": {section: {"seed": seed, "seeds": SEED_SECTIONS[section]} for section, seed in seeds.items()},
            "inputs": inputs,
            "slides": slides,
            "outputs": listed,
            "input_conflicts": input_conflicts,
            "scale_conflicts": scale_conflicts,
            "version_mismatches": mismatches,
        }
    )


def write_manifest(outputs: Sequence[str | os.PathLike], *, config: Mapping, output: str | Path) -> dict[str, Any]:
    """Build the run manifest of ``outputs`` and write it as JSON to ``output``, atomically."""
    manifest = build_manifest(outputs, config=config)
    with atomic_path(output) as tmp:
        Path(tmp).write_text(json.dumps(manifest, indent=1, sort_keys=True, allow_nan=False) + "\n", encoding="utf-8")
    logger.info(
        "run manifest: %d outputs, %d input files, %d slides; %d input conflicts, %d scale conflicts, %d version mismatches",
        len(manifest["outputs"]),
        len(manifest["inputs"]),
        len(manifest["slides"]),
        len(manifest["input_conflicts"]),
        len(manifest["scale_conflicts"]),
        len(manifest["version_mismatches"]),
    )
    return manifest
