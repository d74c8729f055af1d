"""Snakemake entry point of rule label_agreement."""

from histodecon.provenance import start_job

start_job(snakemake)  # the rule's log file, then the provenance stored with every output

from histodecon.pipeline import published_label_agreement  # noqa: E402

published_label_agreement(
    slides=snakemake.params.slides,
    labels=snakemake.input.labels,
    published=snakemake.input.published,
    type_map=snakemake.params.type_map,
    output=snakemake.output.agreement,
    spots_out=snakemake.output.spots,
)
