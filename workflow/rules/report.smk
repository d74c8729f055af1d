# Stage 7: what people look at. Figures for the Snakemake report (`snakemake --report
# report.html`), each with a caption in workflow/report/, and per-slide results in open
# formats: an .h5ad for scanpy/squidpy and a GeoJSON for QuPath.


rule figure_benchmark:
    input:
        metrics=expand(
            "results/metrics/{backbone}/{regressor}.tsv",
            backbone=BACKBONES,
            regressor=REGRESSORS,
        ),
        benchmark="results/metrics/benchmark.tsv",
        types="results/metrics/benchmark_types.tsv",
    output:
        figure=report(
            "results/figures/benchmark.png",
            caption="../report/benchmark.rst",
            category="1. Benchmark",
        ),
    params:
        pairs=PAIRS,
    log:
        "logs/figures/benchmark.log",
    benchmark:
        "benchmarks/figures/benchmark.tsv"
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/figure_benchmark.py"


rule figure_scatter:
    input:
        predictions="results/cv/{backbone}/{regressor}/predictions.parquet",
    output:
        figure=report(
            "results/figures/scatter/{backbone}/{regressor}.png",
            caption="../report/scatter.rst",
            category="2. Predicted against label",
            subcategory="{backbone}",
            labels={"backbone": "{backbone}", "regressor": "{regressor}"},
        ),
    params:
        target=config["labels"]["target"],
    log:
        "logs/figures/scatter/{backbone}/{regressor}.log",
    benchmark:
        "benchmarks/figures/scatter/{backbone}/{regressor}.tsv"
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/figure_scatter.py"


rule slide_results:
    input:
        ingested="results/ingest/{slide}.h5ad",
        labels="results/labels/{slide}.parquet",
        predictions=expand(
            "results/cv/{backbone}/{regressor}/predictions.parquet",
            backbone=BACKBONES,
            regressor=REGRESSORS,
        ),
        benchmark="results/metrics/benchmark.tsv",
    output:
        h5ad="results/slides/{slide}.h5ad",
        geojson="results/slides/{slide}.geojson",
        map=report(
            "results/figures/maps/{slide}.png",
            caption="../report/maps.rst",
            category="3. Spatial maps",
            labels={"slide": "{slide}"},
        ),
    params:
        target=config["labels"]["target"],
        pairs=PAIRS,
        map_predictions=config["report"]["map_predictions"],
    log:
        "logs/slide_results/{slide}.log",
    benchmark:
        "benchmarks/slide_results/{slide}.tsv"
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/slide_results.py"


rule figure_signatures:
    input:
        signatures="results/labels/signatures.parquet",
    output:
        figure=report(
            "results/figures/signatures.png",
            caption="../report/signatures.rst",
            category="4. cell2location labels",
        ),
    log:
        "logs/figures/signatures.log",
    benchmark:
        "benchmarks/figures/signatures.tsv"
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/figure_signatures.py"


rule figure_label_agreement:
    input:
        spots="results/metrics/label_agreement_spots.parquet",
        agreement="results/metrics/label_agreement.tsv",
    output:
        figure=report(
            "results/figures/label_agreement.png",
            caption="../report/label_agreement.rst",
            category="4. cell2location labels",
        ),
    log:
        "logs/figures/label_agreement.log",
    benchmark:
        "benchmarks/figures/label_agreement.tsv"
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/figure_label_agreement.py"
