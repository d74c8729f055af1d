"""Snakemake entry point of rule summarize."""

from histodecon.logs import configure_logging

configure_logging(snakemake.log[0])

from histodecon.pipeline import summary  # noqa: E402

summary(
    pairs=snakemake.params.pairs,
    metrics=snakemake.input.metrics,
    slide_metrics=snakemake.input.slide_metrics,
    predictions=snakemake.input.predictions,
    control_backbones=snakemake.params.control_backbones,
    seed=snakemake.params.seed,
    summary_out=snakemake.output.summary,
    markdown_out=snakemake.output.markdown,
    benchmark_out=snakemake.output.benchmark,
    types_out=snakemake.output.types,
    tests_out=snakemake.output.tests,
)
