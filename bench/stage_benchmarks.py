"""Summarise the Snakemake benchmark files of a run: wall time and peak memory per rule.

Usage (from the folder the workflow ran in)::

    .venv/bin/python bench/stage_benchmarks.py benchmarks > stage_table.md

Each rule's ``benchmark:`` file contains one row per job with ``s`` (wall seconds) and
``max_rss`` (peak resident memory, MB). The table sums the seconds of a rule's jobs and
takes the maximum of their peak memory.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd


def stage_table(folder: Path) -> pd.DataFrame:
    """Return one row per rule: jobs, summed and maximum wall seconds, maximum peak memory."""
    rows = []
    for path in sorted(folder.rglob("*.tsv")):
        relative = path.relative_to(folder)
        rule = relative.parts[0].removesuffix(".tsv")
        record = pd.read_csv(path, sep="\t").iloc[0]
        rows.append({"rule": rule, "job": str(relative), "s": float(record["s"]), "max_rss_mb": float(record["max_rss"])})
    jobs = pd.DataFrame(rows)
    table = jobs.groupby("rule", sort=False).agg(
        jobs=("job", "size"), wall_s_sum=("s", "sum"), wall_s_max=("s", "max"), peak_rss_mb_max=("max_rss_mb", "max")
    )
    return table.sort_values("wall_s_sum", ascending=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="the run's benchmarks/ folder")
    args = parser.parse_args()
    table = stage_table(args.folder)
    lines = ["| rule | jobs | wall s (sum) | wall s (max job) | peak RSS MB (max job) |", "|---|---|---|---|---|"]
    for rule, row in table.iterrows():
        lines.append(
            f"| {rule} | {int(row.jobs)} | {row.wall_s_sum:.1f} | {row.wall_s_max:.1f} | {row.peak_rss_mb_max:.0f} |"
        )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
