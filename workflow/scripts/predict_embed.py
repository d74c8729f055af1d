"""Snakemake entry point of rule predict_embed."""

from histodecon.provenance import start_job

start_job(snakemake)  # the rule's log file, then the provenance stored with every output

from histodecon.pipeline import predict_embed  # noqa: E402

predict_embed(
    tiles=snakemake.input.tiles,
    backbone=snakemake.params.backbone,
    weights=snakemake.params.weights,
    embedding=snakemake.params.embedding,
    output=snakemake.output.embeddings,
)
