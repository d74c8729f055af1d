"""Snakemake entry point of rule predict_apply."""

from histodecon.provenance import start_job

start_job(snakemake)  # the rule's log file, then the provenance stored with every output

from histodecon.pipeline import predict_apply  # noqa: E402

predict_apply(
    slide=snakemake.wildcards.image,
    tiles=snakemake.input.tiles,
    thumbnail=snakemake.input.thumbnail,
    embeddings=snakemake.input.embeddings,
    model=snakemake.input.model,
    predictions_out=snakemake.output.predictions,
    h5ad_out=snakemake.output.h5ad,
    geojson_out=snakemake.output.geojson,
    heatmaps_out=snakemake.output.heatmaps,
)
