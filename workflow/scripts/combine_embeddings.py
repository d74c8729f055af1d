"""Snakemake entry point of rule combine_embeddings."""

from histodecon.provenance import start_job

start_job(snakemake)  # the rule's log file, then the provenance stored with every output

from histodecon.combine import combine_embeddings  # noqa: E402

combine_embeddings(
    dict(zip(snakemake.params.components, snakemake.input.components, strict=True)),
    snakemake.output.embeddings,
    name=snakemake.params.backbone,
)
