"""Snakemake entry point of rules run_manifest and predict_manifest."""

from histodecon.logs import configure_logging

configure_logging(snakemake.log[0])

from histodecon.manifest import write_manifest  # noqa: E402

write_manifest(list(snakemake.input), config=snakemake.config, output=snakemake.output.manifest)
