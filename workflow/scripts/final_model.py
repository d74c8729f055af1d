"""Snakemake entry point of rule final_model."""

from histodecon.provenance import start_job

start_job(snakemake)  # the rule's log file, then the provenance stored with every output

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
