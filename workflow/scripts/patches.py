"""Snakemake entry point of rule patches."""

from histodecon.provenance import start_job

start_job(snakemake)  # the rule's log file, then the provenance stored with every output

from histodecon.pipeline import slide_patches  # noqa: E402

slide_patches(
    slide=snakemake.input.h5ad,
    output=snakemake.output.patches,
    field_of_view_um=snakemake.params.field_of_view_um,
    microns_per_pixel=snakemake.params.microns_per_pixel,
)
