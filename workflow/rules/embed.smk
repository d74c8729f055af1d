# Stage 4: embeddings per slide x backbone (GPU-tagged except for the morphology features).


rule embed:
    input:
        patches="results/patches/{slide}.h5",
        weights=backbone_weights,
    output:
        embeddings="results/embeddings/{backbone}/{slide}.parquet",
    params:
        backbone=lambda wc: wc.backbone,
        weights=lambda wc: config["backbone_weights"].get(wc.backbone),
        embedding=config["embedding"],
    log:
        "logs/embed/{backbone}/{slide}.log",
    benchmark:
        "benchmarks/embed/{backbone}/{slide}.tsv"
    threads: config["threads"]["embed"]
    resources:
        gpu=backbone_gpus,
    conda:
        "../../envs/torch.yaml"
    script:
        "../scripts/embed.py"
