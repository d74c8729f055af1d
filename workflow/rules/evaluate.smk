# Stage 6: metrics per slide and cell type and per slide (composition, colocalisation), one
# summary over all backbones x regressors with fold bootstrap intervals and paired tests
# against the controls, and the cross-check of our labels against published proportions.


rule evaluate:
    input:
        predictions="results/cv/{backbone}/{regressor}/predictions.parquet",
        ingested=expand("results/ingest/{slide}.h5ad", slide=SLIDES),
    output:
        metrics="results/metrics/{backbone}/{regressor}.tsv",
        slides="results/metrics/{backbone}/{regressor}.slides.tsv",
    params:
        slides=SLIDES,
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
        slide_metrics=expand(
            "results/metrics/{backbone}/{regressor}.slides.tsv",
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
        benchmark="results/metrics/benchmark.tsv",
        types="results/metrics/benchmark_types.tsv",
        tests="results/metrics/control_tests.tsv",
    params:
        pairs=PAIRS,
        control_backbones=control_backbones(),
        seed=config["cv"]["seed"],
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
        spots="results/metrics/label_agreement_spots.parquet",
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
