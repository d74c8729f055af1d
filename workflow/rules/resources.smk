# Memory (MB) and run time (minutes) per job, from the size of its inputs and the attempt
# (histodecon/resources.py), and the GPU request of the GPU-tagged rules. SLURM gets them
# through profiles/slurm; a local run uses only gpu (see profiles/default).

import histodecon.resources as job_resources

GPU_MODEL = config["cluster"]["gpu_model"]
MEM_SCALE = config["cluster"]["mem_mb_scale"]
# Resources of a GPU-tagged job: one GPU, of the configured model when one is set.
GPU = {"gpu": 1, **({"gpu_model": GPU_MODEL} if GPU_MODEL else {})}


def image_mem_mb(wildcards, input, attempt):
    megapixels = job_resources.image_megapixels(input.image)
    return int(MEM_SCALE * job_resources.ingest_mem_mb(megapixels, attempt))


def reference_mem_mb(wildcards, input, attempt):
    shape = job_resources.h5ad_shape(input.reference)
    return int(MEM_SCALE * job_resources.cell2location_mem_mb(*shape, attempt))


def reference_runtime(wildcards, input, attempt):
    n_cells, _ = job_resources.h5ad_shape(input.reference)
    epochs = config["labels"]["reference_epochs"]
    return job_resources.cell2location_runtime_min(
        n_cells, epochs, reference=True, attempt=attempt
    )


def _slides_shape(paths):
    shapes = [job_resources.h5ad_shape(path) for path in paths]
    return sum(n for n, _ in shapes), max(g for _, g in shapes)


def mapping_mem_mb(wildcards, input, attempt):
    mb = job_resources.cell2location_mem_mb(*_slides_shape(input.slides), attempt)
    return int(MEM_SCALE * mb)


def mapping_runtime(wildcards, input, attempt):
    n_spots, _ = _slides_shape(input.slides)
    epochs = config["labels"]["mapping_epochs"]
    return job_resources.cell2location_runtime_min(
        n_spots, epochs, reference=False, attempt=attempt
    )


def model_width(backbone):
    """Return the width of a backbone's network (None for the morphology features)."""
    spec = get_backbone(backbone)
    if spec.family == "morphology":
        return None
    return spec.embedding_dim // (2 if spec.embedding_rule == "cls_mean_patch" else 1)


def embed_mem_mb(wildcards, attempt):
    return int(
        MEM_SCALE * job_resources.embed_mem_mb(model_width(wildcards.backbone), attempt)
    )


def embed_runtime(wildcards, input, attempt):
    n_patches = job_resources.patch_count(input.patches)
    return job_resources.embed_runtime_min(
        model_width(wildcards.backbone), n_patches, attempt
    )


def embed_gpu_model(wildcards):
    """The configured GPU model for network encoders; none for the morphology features."""
    return GPU_MODEL if GPU_MODEL and backbone_gpus(wildcards) else ""
