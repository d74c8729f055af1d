# Stage 3: one patch per spot at a fixed field of view in µm, one image read per slide.


rule patches:
    input:
        h5ad="results/ingest/{slide}.h5ad",
        image=lambda wc: SAMPLES.loc[wc.slide, "image"],
    output:
        patches="results/patches/{slide}.h5",
    params:
        field_of_view_um=config["patches"]["field_of_view_um"],
        microns_per_pixel=config["patches"]["microns_per_pixel"],
    log:
        "logs/patches/{slide}.log",
    benchmark:
        "benchmarks/patches/{slide}.tsv"
    threads: config["threads"]["patches"]
    resources:
        mem_mb=image_mem_mb,
        runtime=lambda wc, attempt: 20 * attempt,
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/patches.py"
