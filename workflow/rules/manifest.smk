# Last stage of the `all` and `predict` targets: the run manifest. It lists every output
# with its checksum and gathers the provenance stored in the parquet, h5ad and patch files:
# package versions, config, seeds, original input files with checksums, and µm/px per
# slide with its source.


rule run_manifest:
    input:
        get_run_outputs(),
    output:
        manifest="results/run_manifest.json",
    log:
        "logs/run_manifest.log",
    benchmark:
        "benchmarks/run_manifest.tsv"
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/run_manifest.py"


rule predict_manifest:
    input:
        prediction_manifest_inputs,
    output:
        manifest="results/predict/run_manifest.json",
    log:
        "logs/predict_manifest.log",
    benchmark:
        "benchmarks/predict_manifest.tsv"
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/run_manifest.py"
