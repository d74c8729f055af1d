"""Snakemake entry point of rule ingest."""

from histodecon.provenance import start_job

start_job(snakemake)  # the rule's log file, then the provenance stored with every output

from histodecon.pipeline import ingest_slide  # noqa: E402

ingest_slide(snakemake.params.row, snakemake.output.h5ad, **snakemake.params.options)
