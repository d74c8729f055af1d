"""The tiny workflow through a real SLURM: sbatch for every job, GPUs where tagged, retries on OOM.

A single-node SLURM with accounting runs on this machine's loopback for the duration of the
module (tests/slurm_cluster.py). The workflow runs through ``--workflow-profile
profiles/slurm``. Memory estimates are scaled down (``cluster.mem_mb_scale``) so the first
attempt of an ingest job requests less memory than it uses and SLURM kills it. The second
attempt requests twice as much and succeeds.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import PROJECT_ROOT
from slurm_cluster import local_slurm, missing_tools

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

GPU_RULES = {"reference_signatures", "map_cell_types"}
# Constant memory for the rules that are not meant to fail, so only ingest and patches run
# out of memory on their first attempt.
FIXED_MEMORY = ["embed:mem_mb=3000", "reference_signatures:mem_mb=4000", "map_cell_types:mem_mb=4000", "cross_validate:mem_mb=3000"]


@pytest.fixture(scope="module")
def slurm_env(tmp_path_factory):
    missing = missing_tools()
    if missing:
        message = f"SLURM test needs {missing}: run .ci/run (as root) or apt-get install slurm-wlm slurmdbd munge mariadb-server"
        if os.environ.get("HISTODECON_REQUIRE_SLURM"):
            pytest.fail(message)
        pytest.skip(message)
    with local_slurm(tmp_path_factory.mktemp("slurm")) as env:
        yield env


@pytest.fixture(scope="module")
def slurm_run(slurm_env, workdir, tmp_path_factory):
    root = tmp_path_factory.mktemp("slurm_workflow")
    (root / "config").mkdir()
    (root / "config" / "samples.tsv").write_text((workdir / "config" / "samples.tsv").read_text())
    config = yaml.safe_load((workdir / "config" / "config.yaml").read_text())
    # An ingest job peaks at about 700 MB. Scaled by 0.5, it requests about 516 MB on its first
    # attempt (killed) and 1,032 MB on its second.
    config["cluster"] = {"mem_mb_scale": 0.5}
    (root / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    env = {**slurm_env, "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{slurm_env['PATH']}"}
    command = [
        sys.executable, "-m", "snakemake", "--snakefile", str(PROJECT_ROOT / "Snakefile"), "--directory", str(root),
        "--workflow-profile", str(PROJECT_ROOT / "profiles" / "slurm"), "--jobs", "4", "--latency-wait", "5",
        # ingest runs as its own job here, so its memory request is its own estimate.
        "--slurm-init-seconds-before-status-checks", "5", "--groups", "patches=slide_prep",
        "--set-resources", *FIXED_MEMORY,
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    accounting = subprocess.run(
        ["sacct", "-X", "--parsable2", "--noheader", "-o", "JobID,State,ReqMem,AllocTRES,Comment%200"],
        capture_output=True, text=True, env=slurm_env, check=True,
    ).stdout
    jobs = pd.DataFrame([line.split("|") for line in accounting.splitlines()], columns=["id", "state", "req_mem", "tres", "comment"])
    jobs["rule"] = jobs["comment"].str.extract(r"^rule_([A-Za-z_]+?)(?:_wildcards_|$)", expand=False)
    jobs.loc[jobs["comment"].str.contains("slide_prep"), "rule"] = "slide_prep"  # the slides' patches jobs
    jobs["wildcards"] = jobs["comment"].str.extract(r"_wildcards_(.*)$", expand=False).fillna("")
    return {"result": result, "root": root, "jobs": jobs}


def test_slurm_workflow_completes(slurm_run):
    result = slurm_run["result"]
    assert result.returncode == 0, result.stderr[-5000:]


def test_every_job_went_through_sbatch(slurm_run):
    jobs = slurm_run["jobs"]
    rules = set(jobs["rule"].dropna())
    assert {"reference_signatures", "map_cell_types", "embed", "cross_validate", "evaluate", "summarize"} <= rules
    # The patches jobs of the three slides run as one group job.
    assert "slide_prep" in rules, jobs["comment"].tolist()
    completed = jobs[jobs["state"] == "COMPLETED"].groupby("comment").size()
    # One completed job per rule and wildcards; the three slides' group jobs share a comment.
    expected = pd.Series(1, index=completed.index)
    assert completed.equals(expected.loc[completed.index]), jobs[["state", "comment"]].to_string()


def test_gpu_tagged_rules_requested_a_gpu(slurm_run):
    jobs = slurm_run["jobs"]
    for _, job in jobs[jobs["rule"].isin(GPU_RULES)].iterrows():
        assert "gres/gpu=1" in job["tres"], job["comment"]
    embed = jobs[jobs["rule"] == "embed"]
    assert embed["tres"].str.contains("gres/gpu=1").sum() == (embed["wildcards"].str.contains("vit_small_random")).sum()


def test_cpu_rules_requested_no_gpu(slurm_run):
    jobs = slurm_run["jobs"]
    cpu = jobs[jobs["rule"].isin({"cross_validate", "evaluate", "summarize"})]
    assert len(cpu)
    assert not cpu["tres"].str.contains("gres/gpu").any()


def test_out_of_memory_job_retried_with_more_memory(slurm_run):
    jobs = slurm_run["jobs"]
    failed = jobs[jobs["state"].isin({"OUT_OF_MEMORY", "FAILED"})]
    assert len(failed), jobs[["state", "comment"]].to_string()
    first = failed.iloc[0]
    assert first["rule"] == "ingest", jobs[["state", "req_mem", "comment"]].to_string()
    same = jobs[(jobs["comment"] == first["comment"]) & (jobs["state"] == "COMPLETED")]
    assert len(same) == 1, jobs[["state", "req_mem", "comment"]].to_string()
    assert int(same.iloc[0]["req_mem"].rstrip("M")) > int(first["req_mem"].rstrip("M"))


def test_slurm_results_equal_local_run(slurm_run, completed_run, workdir):
    local = pd.read_csv(workdir / "results" / "metrics" / "summary.tsv", sep="\t")
    remote = pd.read_csv(slurm_run["root"] / "results" / "metrics" / "summary.tsv", sep="\t")
    assert list(local.columns) == list(remote.columns)
    numeric = local.select_dtypes("number").columns
    np.testing.assert_allclose(remote[numeric].to_numpy(), local[numeric].to_numpy(), rtol=1e-5, atol=1e-7, equal_nan=True)
