"""Snakemake entry point of rule ingest."""

from histodecon.logs import configure_logging

configure_logging(snakemake.log[0])

from histodecon.pipeline import ingest_slide  # noqa: E402

ingest_slide(snakemake.params.row, snakemake.output.h5ad, **snakemake.params.options)
