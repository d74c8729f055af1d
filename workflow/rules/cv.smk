# Stage 5: cross-validation per backbone x regressor; each fold leaves out one slide (or one
# patient) that no scaler, model choice or early stopping ever sees.


rule cross_validate:
    input:
        embeddings=expand(
            "results/embeddings/{{backbone}}/{slide}.parquet", slide=SLIDES
        ),
        labels=expand("results/labels/{slide}.parquet", slide=SLIDES),
    output:
        predictions="results/cv/{backbone}/{regressor}/predictions.parquet",
        folds="results/cv/{backbone}/{regressor}/folds.tsv",
    params:
        slides=SLIDES,
        patients=SAMPLES["patient"].tolist(),
        target=config["labels"]["target"],
        cv=config["cv"],
    log:
        "logs/cross_validate/{backbone}/{regressor}.log",
    benchmark:
        "benchmarks/cross_validate/{backbone}/{regressor}.tsv"
    threads: config["threads"]["cross_validate"]
    resources:
        mem_mb=lambda wc, attempt: 4000 * attempt,
        runtime=lambda wc, attempt: 60 * attempt,
    conda:
        "../../envs/torch.yaml"
    script:
        "../scripts/cross_validate.py"
