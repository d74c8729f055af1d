"""Snakemake entry point of rules map_cell_types and map_cell_types_per_slide."""

from histodecon.provenance import start_job

start_job(snakemake)  # the rule's log file, then the provenance stored with every output

from histodecon.pipeline import cell_type_labels  # noqa: E402

cell_type_labels(
    slides=snakemake.input.slides,
    signatures=snakemake.input.signatures,
    labels=snakemake.params.labels,
    outputs=dict(zip(snakemake.params.slides, snakemake.output.labels, strict=True)),
    elbo_tsv=snakemake.output.elbo_tsv,
    elbo_png=snakemake.output.elbo_png,
)
