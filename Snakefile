# histodecon: learn spot-level cell-type composition from H&E images.
# Stages: ingest -> cell2location labels -> patches -> embeddings -> cross-validation ->
# evaluation and summary -> figures and per-slide results -> run manifest. Run `snakemake --cores 2` from
# the project root, then `snakemake --report report.html` for the HTML report.

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/resources.smk"
include: "workflow/rules/ingest.smk"
include: "workflow/rules/labels.smk"
include: "workflow/rules/patches.smk"
include: "workflow/rules/embed.smk"
include: "workflow/rules/cv.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/predict.smk"
include: "workflow/rules/manifest.smk"


rule all:
    input:
        get_final_outputs(),
    default_target: True
