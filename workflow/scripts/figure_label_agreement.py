"""Snakemake entry point of rule figure_label_agreement."""

from histodecon.logs import configure_logging

configure_logging(snakemake.log[0])

from histodecon.pipeline import label_agreement_figure  # noqa: E402

label_agreement_figure(spots=snakemake.input.spots, agreement=snakemake.input.agreement, output=snakemake.output.figure)
