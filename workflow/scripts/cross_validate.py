"""Snakemake entry point of rule cross_validate."""

from histodecon.provenance import start_job

start_job(snakemake)  # the rule's log file, then the provenance stored with every output

from histodecon.pipeline import cross_validation  # noqa: E402

cross_validation(
    slides=snakemake.params.slides,
    patients=snakemake.params.patients,
    embeddings=snakemake.input.embeddings,
    labels=snakemake.input.labels,
    regressor=snakemake.wildcards.regressor,
    target=snakemake.params.target,
    cv=snakemake.params.cv,
    predictions_out=snakemake.output.predictions,
    folds_out=snakemake.output.folds,
)
