"""Snakemake entry point of rule evaluate."""

from histodecon.logs import configure_logging

configure_logging(snakemake.log[0])

from histodecon.pipeline import evaluation  # noqa: E402

evaluation(
    predictions=snakemake.input.predictions,
    slides=snakemake.params.slides,
    ingested=snakemake.input.ingested,
    output=snakemake.output.metrics,
    slides_out=snakemake.output.slides,
)
