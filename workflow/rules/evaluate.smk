# Stage 6: metrics per slide and cell type, one summary over all backbones x regressors, and
# the cross-check of our labels against published proportions.


rule evaluate:
    input:
        predictions="results/cv/{backbone}/{regressor}/predictions.parquet",
    output:
        metrics="results/metrics/{backbone}/{regressor}.tsv",
    log:
        "logs/evaluate/{backbone}/{regressor}.log",
    benchmark:
        "benchmarks/evaluate/{backbone}/{regressor}.tsv"
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/evaluate.py"


rule summarize:
    input:
        metrics=expand(
            "results/metrics/{backbone}/{regressor}.tsv",
            backbone=BACKBONES,
            regressor=REGRESSORS,
        ),
        predictions=expand(
            "results/cv/{backbone}/{regressor}/predictions.parquet",
            backbone=BACKBONES,
            regressor=REGRESSORS,
        ),
    output:
        summary="results/metrics/summary.tsv",
        markdown="results/metrics/summary.md",
    params:
        pairs=[(b, r) for b in BACKBONES for r in REGRESSORS],
    log:
        "logs/summarize.log",
    benchmark:
        "benchmarks/summarize.tsv"
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/summarize.py"


rule label_agreement:
    input:
        labels=lambda wc: expand(
            "results/labels/{slide}.parquet", slide=slides_with_published_proportions()
        ),
        published=lambda wc: [
            SAMPLES.loc[s, "published_proportions"]
            for s in slides_with_published_proportions()
        ],
    output:
        agreement="results/metrics/label_agreement.tsv",
    params:
        slides=slides_with_published_proportions(),
        type_map=config["evaluation"]["published_type_map"],
    log:
        "logs/label_agreement.log",
    benchmark:
        "benchmarks/label_agreement.tsv"
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/label_agreement.py"
