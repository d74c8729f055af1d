"""Snakemake entry point of rule cross_validate."""

from histodecon.logs import configure_logging

configure_logging(snakemake.log[0])

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
