# Stage 1: read each section (counts, spot centres, H&E image) into one AnnData at its
# physical scale; bad input stops here with a message that names the file and the fix.


rule ingest:
    input:
        unpack(ingest_inputs),
    output:
        h5ad="results/ingest/{slide}.h5ad",
    params:
        row=lambda wc: sample_row(wc.slide),
        options=config["ingest"],
    log:
        "logs/ingest/{slide}.log",
    benchmark:
        "benchmarks/ingest/{slide}.tsv"
    threads: config["threads"]["ingest"]
    resources:
        mem_mb=image_mem_mb,
        runtime=lambda wc, attempt: 20 * attempt,
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/ingest.py"
