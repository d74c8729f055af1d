"""Snakemake entry point of rule figure_signatures."""

from histodecon.logs import configure_logging

configure_logging(snakemake.log[0])

from histodecon.pipeline import signature_figure  # noqa: E402

signature_figure(signatures=snakemake.input.signatures, output=snakemake.output.figure)
