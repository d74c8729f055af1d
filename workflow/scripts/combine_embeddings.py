"""Snakemake entry point of rule combine_embeddings."""

from histodecon.logs import configure_logging

configure_logging(snakemake.log[0])

from histodecon.combine import combine_embeddings  # noqa: E402

combine_embeddings(
    dict(zip(snakemake.params.components, snakemake.input.components, strict=True)),
    snakemake.output.embeddings,
    name=snakemake.params.backbone,
)
