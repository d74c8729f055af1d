"""Snakemake entry point of rule reference_signatures."""

from histodecon.logs import configure_logging

configure_logging(snakemake.log[0])

from histodecon.pipeline import reference_signatures  # noqa: E402

reference_signatures(
    reference=snakemake.params.reference,
    labels=snakemake.params.labels,
    signatures_out=snakemake.output.signatures,
    elbo_tsv=snakemake.output.elbo_tsv,
    elbo_png=snakemake.output.elbo_png,
)
