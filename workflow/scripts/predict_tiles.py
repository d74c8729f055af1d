"""Snakemake entry point of rule predict_tiles."""

from histodecon.provenance import start_job

start_job(snakemake)  # the rule's log file, then the provenance stored with every output

from histodecon.pipeline import predict_tiles  # noqa: E402

predict_tiles(
    slide=snakemake.wildcards.image,
    row=snakemake.params.row,
    patches=snakemake.params.patches,
    predict=snakemake.params.predict,
    tiles_out=snakemake.output.tiles,
    thumbnail_out=snakemake.output.thumbnail,
)
