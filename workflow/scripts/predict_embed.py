"""Snakemake entry point of rule predict_embed."""

from histodecon.logs import configure_logging

configure_logging(snakemake.log[0])

from histodecon.pipeline import predict_embed  # noqa: E402

predict_embed(
    tiles=snakemake.input.tiles,
    backbone=snakemake.params.backbone,
    weights=snakemake.params.weights,
    embedding=snakemake.params.embedding,
    output=snakemake.output.embeddings,
)
