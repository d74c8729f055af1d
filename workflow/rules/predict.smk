# Stage 8 (target `predict`): cell-type maps of H&E images without spatial transcriptomics.
# A final model per backbone x regressor is trained on every labelled slide; each image of
# the prediction sheet is tiled on its tissue, embedded (GPU-tagged) and mapped.


rule final_model:
    input:
        embeddings=expand(
            "results/embeddings/{{backbone}}/{slide}.parquet", slide=MODEL_SLIDES
        ),
        labels=expand("results/labels/{slide}.parquet", slide=MODEL_SLIDES),
    output:
        model="results/models/{backbone}/{regressor}.joblib",
        metadata="results/models/{backbone}/{regressor}.json",
    params:
        slides=MODEL_SLIDES,
        target=config["labels"]["target"],
        cv=config["cv"],
    log:
        "logs/final_model/{backbone}/{regressor}.log",
    benchmark:
        "benchmarks/final_model/{backbone}/{regressor}.tsv"
    threads: config["threads"]["cross_validate"]
    resources:
        mem_mb=lambda wc, attempt: 4000 * attempt,
        runtime=lambda wc, attempt: 60 * attempt,
    conda:
        "../../envs/torch.yaml"
    script:
        "../scripts/final_model.py"


rule predict_tiles:
    input:
        image=lambda wc: PREDICT_SHEET.loc[wc.image, "image"],
    output:
        tiles="results/predict/tiles/{image}.parquet",
        thumbnail="results/predict/tiles/{image}.npz",
    params:
        row=lambda wc: prediction_row(wc.image),
        patches=config["patches"],
        predict=config["predict"],
    log:
        "logs/predict_tiles/{image}.log",
    benchmark:
        "benchmarks/predict_tiles/{image}.tsv"
    resources:
        mem_mb=image_mem_mb,
        runtime=lambda wc, attempt: 30 * attempt,
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/predict_tiles.py"


rule predict_embed:
    input:
        tiles="results/predict/tiles/{image}.parquet",
        image=lambda wc: PREDICT_SHEET.loc[wc.image, "image"],
        weights=backbone_weights,
    output:
        embeddings="results/predict/embeddings/{backbone}/{image}.parquet",
    wildcard_constraints:
        backbone=wildcard_choices(list_backbones()),
    params:
        backbone=lambda wc: wc.backbone,
        weights=lambda wc: config["backbone_weights"].get(wc.backbone),
        embedding=config["embedding"],
    log:
        "logs/predict_embed/{backbone}/{image}.log",
    benchmark:
        "benchmarks/predict_embed/{backbone}/{image}.tsv"
    threads: config["threads"]["embed"]
    resources:
        mem_mb=lambda wc, attempt: 6000 * attempt,
        runtime=lambda wc, attempt: 240 * attempt,
        gpu=backbone_gpus,
        gpu_model=embed_gpu_model,
    conda:
        "../../envs/torch.yaml"
    script:
        "../scripts/predict_embed.py"


rule predict_apply:
    input:
        tiles="results/predict/tiles/{image}.parquet",
        thumbnail="results/predict/tiles/{image}.npz",
        embeddings="results/predict/embeddings/{backbone}/{image}.parquet",
        model="results/models/{backbone}/{regressor}.joblib",
        # Not read by the script: listed so that the model's provenance (training slides,
        # their sources and µm/px) is carried into the predictions' own.
        model_metadata="results/models/{backbone}/{regressor}.json",
    output:
        predictions="results/predict/{backbone}/{regressor}/{image}.parquet",
        h5ad="results/predict/{backbone}/{regressor}/{image}.h5ad",
        geojson="results/predict/{backbone}/{regressor}/{image}.geojson",
        heatmaps=directory("results/predict/{backbone}/{regressor}/{image}_heatmaps"),
    log:
        "logs/predict_apply/{backbone}/{regressor}/{image}.log",
    benchmark:
        "benchmarks/predict_apply/{backbone}/{regressor}/{image}.tsv"
    resources:
        mem_mb=lambda wc, attempt: 4000 * attempt,
        runtime=lambda wc, attempt: 60 * attempt,
    conda:
        "../../envs/torch.yaml"
    script:
        "../scripts/predict_apply.py"


rule predict:
    input:
        prediction_outputs,
        "results/predict/run_manifest.json",
    default_target: False
