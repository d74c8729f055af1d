"""Snakemake entry point of rule summarize."""

from histodecon.logs import configure_logging

configure_logging(snakemake.log[0])

from histodecon.pipeline import summary  # noqa: E402

summary(
    pairs=snakemake.params.pairs,
    metrics=snakemake.input.metrics,
    predictions=snakemake.input.predictions,
    summary_out=snakemake.output.summary,
    markdown_out=snakemake.output.markdown,
)
