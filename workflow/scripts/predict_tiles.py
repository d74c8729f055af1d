"""Snakemake entry point of rule predict_tiles."""

from histodecon.logs import configure_logging

configure_logging(snakemake.log[0])

from histodecon.pipeline import predict_tiles  # noqa: E402

predict_tiles(
    slide=snakemake.wildcards.image,
    row=snakemake.params.row,
    patches=snakemake.params.patches,
    predict=snakemake.params.predict,
    tiles_out=snakemake.output.tiles,
    thumbnail_out=snakemake.output.thumbnail,
)
