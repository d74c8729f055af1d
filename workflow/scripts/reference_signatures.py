"""Snakemake entry point of rule reference_signatures."""

from histodecon.provenance import start_job

start_job(snakemake)  # the rule's log file, then the provenance stored with every output

from histodecon.pipeline import reference_signatures  # noqa: E402

reference_signatures(
    reference=snakemake.params.reference,
    labels=snakemake.params.labels,
    signatures_out=snakemake.output.signatures,
    elbo_tsv=snakemake.output.elbo_tsv,
    elbo_png=snakemake.output.elbo_png,
)
