"""Snakemake entry point of rule figure_benchmark."""

from histodecon.logs import configure_logging

configure_logging(snakemake.log[0])

from histodecon.pipeline import benchmark_figure  # noqa: E402

benchmark_figure(
    pairs=snakemake.params.pairs,
    metrics=snakemake.input.metrics,
    benchmark=snakemake.input.benchmark,
    types=snakemake.input.types,
    output=snakemake.output.figure,
)
