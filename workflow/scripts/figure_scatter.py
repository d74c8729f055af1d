"""Snakemake entry point of rule figure_scatter."""

from histodecon.logs import configure_logging

configure_logging(snakemake.log[0])

from histodecon.pipeline import scatter_figure  # noqa: E402

scatter_figure(
    predictions=snakemake.input.predictions,
    backbone=snakemake.wildcards.backbone,
    regressor=snakemake.wildcards.regressor,
    target=snakemake.params.target,
    output=snakemake.output.figure,
)
