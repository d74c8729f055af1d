"""Snakemake entry point of rule embed."""

from histodecon.provenance import start_job

start_job(snakemake)  # the rule's log file, then the provenance stored with every output

import torch  # noqa: E402

from histodecon.embed import embed_slide  # noqa: E402

torch.set_num_threads(snakemake.threads)
options = snakemake.params.embedding
embed_slide(
    snakemake.input.patches,
    snakemake.output.embeddings,
    backbone=snakemake.params.backbone,
    weights=snakemake.params.weights,
    batch_size=options["batch_size"],
    precision=options["precision"],
    device=options["device"],
    num_workers=options["num_workers"],
    seed=options["seed"],
    trust_remote_code=options["trust_remote_code"],
)
