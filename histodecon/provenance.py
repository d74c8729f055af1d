"""Provenance stored beside every output: package versions and the parameters used."""

from __future__ import annotations

import hashlib
from importlib import metadata
from pathlib import Path

__all__ = ["package_versions", "file_sha256"]

TRACKED_PACKAGES = (
    "histodecon", "torch", "timm", "cell2location", "scvi-tools", "pyro-ppl",
    "anndata", "scanpy", "scikit-learn", "scikit-image", "numpy", "pandas",
)


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
