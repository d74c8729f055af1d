# Stage 4: embeddings per slide x backbone (GPU-tagged except for the morphology features),
# and the concatenated embeddings of combined backbones. Each rule accepts only its own
# backbone names, so no embedding file can be built by both.


rule embed:
    input:
        patches="results/patches/{slide}.h5",
        weights=backbone_weights,
    output:
        embeddings="results/embeddings/{backbone}/{slide}.parquet",
    wildcard_constraints:
        backbone=wildcard_choices(list_backbones()),
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
        mem_mb=embed_mem_mb,
        runtime=embed_runtime,
        gpu=backbone_gpus,
        gpu_model=embed_gpu_model,
    conda:
        "../../envs/torch.yaml"
    script:
        "../scripts/embed.py"


rule combine_embeddings:
    input:
        components=combined_components,
    output:
        embeddings="results/embeddings/{backbone}/{slide}.parquet",
    wildcard_constraints:
        backbone=wildcard_choices(COMBINED_BACKBONES),
    params:
        backbone=lambda wc: wc.backbone,
        components=lambda wc: COMBINED_BACKBONES[wc.backbone],
    log:
        "logs/combine_embeddings/{backbone}/{slide}.log",
    benchmark:
        "benchmarks/combine_embeddings/{backbone}/{slide}.tsv"
    threads: 1
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/combine_embeddings.py"
