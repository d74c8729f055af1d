# Stage 2: cell2location labels. Reference signatures once, then the spatial mapping of all
# slides in one joint fit (mode joint) or of each slide alone (mode per_slide). All three
# rules are GPU-tagged; both mapping rules write the same per-slide label tables.


rule reference_signatures:
    input:
        reference=config["reference"]["path"],
    output:
        signatures="results/labels/signatures.parquet",
        elbo_tsv="results/labels/reference_elbo.tsv",
        elbo_png=report(
            "results/labels/reference_elbo.png",
            caption="../report/reference_elbo.rst",
            category="4. cell2location labels",
        ),
    params:
        reference=config["reference"],
        labels=config["labels"],
    log:
        "logs/reference_signatures.log",
    benchmark:
        "benchmarks/reference_signatures.tsv"
    threads: config["threads"]["reference_signatures"]
    resources:
        **GPU,
        mem_mb=reference_mem_mb,
        runtime=reference_runtime,
    conda:
        "../../envs/labels.yaml"
    script:
        "../scripts/reference_signatures.py"


if config["labels"]["mode"] == "joint":

    rule map_cell_types:
        input:
            slides=expand("results/ingest/{slide}.h5ad", slide=SLIDES),
            signatures="results/labels/signatures.parquet",
        output:
            labels=expand("results/labels/{slide}.parquet", slide=SLIDES),
            elbo_tsv="results/labels/mapping_elbo.tsv",
            elbo_png=report(
                "results/labels/mapping_elbo.png",
                caption="../report/mapping_elbo.rst",
                category="4. cell2location labels",
            ),
        params:
            slides=SLIDES,
            labels=config["labels"],
        log:
            "logs/map_cell_types.log",
        benchmark:
            "benchmarks/map_cell_types.tsv"
        threads: config["threads"]["map_cell_types"]
        resources:
            **GPU,
            mem_mb=mapping_mem_mb,
            runtime=mapping_runtime,
        conda:
            "../../envs/labels.yaml"
        script:
            "../scripts/map_cell_types.py"

else:

    rule map_cell_types_per_slide:
        input:
            slides=["results/ingest/{slide}.h5ad"],
            signatures="results/labels/signatures.parquet",
        output:
            labels=["results/labels/{slide}.parquet"],
            elbo_tsv="results/labels/mapping_elbo/{slide}.tsv",
            elbo_png=report(
                "results/labels/mapping_elbo/{slide}.png",
                caption="../report/mapping_elbo.rst",
                category="4. cell2location labels",
                labels={"slide": "{slide}"},
            ),
        params:
            slides=lambda wc: [wc.slide],
            labels=config["labels"],
        log:
            "logs/map_cell_types/{slide}.log",
        benchmark:
            "benchmarks/map_cell_types/{slide}.tsv"
        threads: config["threads"]["map_cell_types"]
        resources:
            **GPU,
            mem_mb=mapping_mem_mb,
            runtime=mapping_runtime,
        conda:
            "../../envs/labels.yaml"
        script:
            "../scripts/map_cell_types.py"
