"""Snakemake entry point of rule final_model."""

from histodecon.logs import configure_logging

configure_logging(snakemake.log[0])

from histodecon.pipeline import final_model  # noqa: E402

final_model(
    backbone=snakemake.wildcards.backbone,
    regressor=snakemake.wildcards.regressor,
    slides=snakemake.params.slides,
    embeddings=snakemake.input.embeddings,
    labels=snakemake.input.labels,
    target=snakemake.params.target,
    cv=snakemake.params.cv,
    model_out=snakemake.output.model,
    metadata_out=snakemake.output.metadata,
)
