"""Fit cell2location for long runs on the her2st sections and record the ELBO curves.

The workflow's default epochs (config/config.yaml, ``labels``) are chosen from these curves:
for each candidate epoch count the script reports how far the smoothed training ELBO still is
from its value at the end of the long run.

Usage (from the project root; 15 to 30 minutes on 2 CPU cores)::

    .venv/bin/python bench/cell2location_epochs.py --out /tmp/cell2location_epochs
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd

from histodecon.ingest import read_slide
from histodecon.labels import fit_signatures, load_reference, map_cell_types, plot_elbo
from histodecon.logs import configure_logging

logger = logging.getLogger("cell2location_epochs")

SMOOTHING_EPOCHS = 50  # rolling median window, the ELBO of a full-batch fit still jitters


def distance_to_end(elbo: pd.Series, checkpoints: list[int]) -> pd.DataFrame:
    """Return the relative gap of the smoothed ELBO at each checkpoint to its final value."""
    smooth = elbo.rolling(SMOOTHING_EPOCHS, min_periods=1).median()
    final = smooth.iloc[-1]
    rows = [
        {"epoch": e, "neg_elbo": smooth.loc[e], "gap_to_final_percent": 100 * (smooth.loc[e] - final) / abs(final)}
        for e in checkpoints
        if e in smooth.index
    ]
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", default="config/samples.tsv", help="sample sheet of the her2st sections")
    parser.add_argument("--reference", default="../shared/data/reference/wu2021_CID4465_sc.h5ad")
    parser.add_argument("--label-key", default="celltype_major")
    parser.add_argument("--reference-epochs", type=int, default=600)
    parser.add_argument("--reference-batch-size", type=int, default=256, help="cells per minibatch (cell2location default 2500)")
    parser.add_argument("--mapping-epochs", type=int, default=3000)
    parser.add_argument("--n-cells-per-location", type=float, default=30)
    parser.add_argument("--out", type=Path, required=True, help="folder for TSV curves, figures and the tables")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    configure_logging(args.out / "log.txt")

    reference = load_reference(args.reference, label_key=args.label_key)
    signatures = fit_signatures(
        reference, label_key=args.label_key, epochs=args.reference_epochs, batch_size=args.reference_batch_size
    )
    signatures.elbo.to_csv(args.out / "reference_elbo.tsv", sep="\t")
    plot_elbo(signatures.elbo, args.out / "reference_elbo.png", title="RegressionModel")
    ref_gaps = distance_to_end(signatures.elbo, [100, 150, 200, 250, 300, 400, 500, 750, 1000])
    ref_gaps.to_csv(args.out / "reference_gaps.tsv", sep="\t", index=False)
    logger.info("reference ELBO gap to epoch %d:\n%s", args.reference_epochs, ref_gaps.to_string(index=False))

    sheet = pd.read_csv(args.samples, sep="\t", comment="#")
    slides = [read_slide(row) for row in sheet.to_dict("records")]
    tables, elbo, seconds = map_cell_types(
        slides, signatures.table, n_cells_per_location=args.n_cells_per_location, detection_alpha=20,
        epochs=args.mapping_epochs,
    )
    elbo.to_csv(args.out / "mapping_elbo.tsv", sep="\t")
    plot_elbo(elbo, args.out / "mapping_elbo.png", title="Cell2location")
    gaps = distance_to_end(elbo, [300, 500, 1000, 1500, 2000, 2500, 3000, 4000])
    gaps.to_csv(args.out / "mapping_gaps.tsv", sep="\t", index=False)
    logger.info("mapping ELBO gap to epoch %d (%.0f s):\n%s", args.mapping_epochs, seconds, gaps.to_string(index=False))
    for slide_id, table in tables.items():
        table.to_csv(args.out / f"labels_{slide_id}.tsv", sep="\t", index=False)


if __name__ == "__main__":
    main()
