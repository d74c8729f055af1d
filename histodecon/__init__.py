"""histodecon: cell-type composition of tissue learned from H&E images.

The package contains all logic of the Snakemake workflow: ingest of spatial transcriptomics
sections, cell2location labels, patch extraction at a fixed physical scale, embeddings from
pathology encoders, cross-validated regressors and their evaluation.
"""

__version__ = "0.1.0"
