"""Snakemake entry point of rule slide_results."""

from histodecon.provenance import start_job

start_job(snakemake)  # the rule's log file, then the provenance stored with every output

from histodecon.pipeline import slide_results  # noqa: E402

slide_results(
    slide=snakemake.wildcards.slide,
    ingested=snakemake.input.ingested,
    labels=snakemake.input.labels,
    target=snakemake.params.target,
    pairs=snakemake.params.pairs,
    predictions=snakemake.input.predictions,
    benchmark=snakemake.input.benchmark,
    map_predictions=snakemake.params.map_predictions,
    h5ad_out=snakemake.output.h5ad,
    geojson_out=snakemake.output.geojson,
    map_out=snakemake.output.map,
)
