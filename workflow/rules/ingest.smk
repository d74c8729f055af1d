# Stage 1: read each section (counts, spot centres, H&E image) into one AnnData.


rule ingest:
    input:
        counts=lambda wc: SAMPLES.loc[wc.slide, "counts"],
        spots=lambda wc: SAMPLES.loc[wc.slide, "spots"],
        image=lambda wc: SAMPLES.loc[wc.slide, "image"],
    output:
        h5ad="results/ingest/{slide}.h5ad",
    params:
        row=lambda wc: sample_row(wc.slide),
    log:
        "logs/ingest/{slide}.log",
    benchmark:
        "benchmarks/ingest/{slide}.tsv"
    threads: config["threads"]["ingest"]
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/ingest.py"
