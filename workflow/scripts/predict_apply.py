"""Snakemake entry point of rule predict_apply."""

from histodecon.logs import configure_logging

configure_logging(snakemake.log[0])

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
