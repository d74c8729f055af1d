"""Reruns of the tiny workflow: the same bytes on a rerun, read-only inputs, and resuming
after SIGKILL in the embedding and cell2location stages.

Each rerun starts in a fresh folder with the config of the session's tiny workflow and the
same input files, and is compared with that workflow's uninterrupted run (``completed_run``).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from conftest import BACKBONES, REGRESSORS, TINY_SLIDES, TINY_SPOTS, snakemake, snakemake_command

KILL_WAIT_S = 900  # maximum wait for the stage to start before the test fails
POLL_S = 0.02


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _new_project(workdir: Path, root: Path) -> Path:
    """A new project folder with the tiny workflow's sample sheet and config."""
    (root / "config").mkdir(parents=True)
    for name in ("samples.tsv", "config.yaml"):
        (root / "config" / name).write_text((workdir / "config" / name).read_text())
    return root


def _manifest_outputs(root: Path) -> dict[str, str]:
    manifest = json.loads((root / "results" / "run_manifest.json").read_text())
    return {path: entry["sha256"] for path, entry in manifest["outputs"].items()}


def _input_state(folder: Path) -> dict[str, tuple]:
    """Checksum, size and modification time of every file in ``folder``, and its listing."""
    state = {}
    for path in sorted(folder.rglob("*")):
        info = path.stat()
        state[str(path.relative_to(folder))] = (_sha256(path) if path.is_file() else "folder", info.st_size, info.st_mtime_ns)
    return state


def _set_read_only(folder: Path) -> dict[Path, int]:
    """Remove write permission from ``folder`` and everything in it; return the old modes."""
    modes = {}
    for path in [folder, *folder.rglob("*")]:
        modes[path] = stat.S_IMODE(path.stat().st_mode)
        path.chmod(modes[path] & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    return modes


def _read_only_prefix(folder: Path) -> list[str]:
    """Return a command prefix under which ``folder`` cannot be written.

    Without root, the permissions that :func:`_set_read_only` removes already bind. Root
    ignores permissions, so the command then runs in its own mount namespace where
    ``folder`` is bind-mounted read-only.
    """
    if os.geteuid() != 0:
        return []
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(folder)]


@dataclass
class Rerun:
    root: Path
    result: subprocess.CompletedProcess
    inputs_before: dict
    inputs_after: dict
    write_attempt: subprocess.CompletedProcess


@pytest.fixture(scope="module")
def rerun(tiny_data, workdir, completed_run, tmp_path_factory) -> Rerun:
    """The tiny workflow run again from scratch in a new folder, with read-only inputs."""
    folder = Path(tiny_data["root"])
    root = _new_project(workdir, tmp_path_factory.mktemp("rerun"))
    before = _input_state(folder)
    prefix = _read_only_prefix(folder)
    modes = _set_read_only(folder)
    try:
        command, env = snakemake_command(root, "--cores", "2")
        result = subprocess.run(prefix + command, capture_output=True, text=True, env=env, check=False)
        probe = [sys.executable, "-c", f"open({str(folder / 'samples.tsv')!r}, 'a').close()"]
        write_attempt = subprocess.run(prefix + probe, capture_output=True, text=True, check=False)
    finally:
        for path, mode in modes.items():
            path.chmod(mode)
    return Rerun(root=root, result=result, inputs_before=before, inputs_after=_input_state(folder), write_attempt=write_attempt)


def test_rerun_completes(rerun):
    assert rerun.result.returncode == 0, rerun.result.stderr[-5000:]


def test_rerun_summary_is_byte_identical(rerun, workdir):
    summary = Path("results") / "metrics" / "summary.tsv"
    assert (rerun.root / summary).read_bytes() == (workdir / summary).read_bytes()


def test_rerun_predictions_are_identical(rerun, workdir):
    for backbone in BACKBONES:
        for regressor in REGRESSORS:
            path = Path("results") / "cv" / backbone / regressor / "predictions.parquet"
            pd.testing.assert_frame_equal(pd.read_parquet(rerun.root / path), pd.read_parquet(workdir / path), check_exact=True)


def test_rerun_writes_every_output_byte_identical(rerun, workdir):
    outputs = _manifest_outputs(rerun.root)
    differing = [path for path, digest in outputs.items() if _sha256(workdir / path) != digest]
    assert len(outputs) > 40
    assert differing == []


def test_rerun_run_manifest_is_identical(rerun, workdir):
    manifest = Path("results") / "run_manifest.json"
    assert (rerun.root / manifest).read_bytes() == (workdir / manifest).read_bytes()


def test_read_only_inputs_refuse_writes(rerun):
    assert rerun.write_attempt.returncode != 0
    assert "Read-only file system" in rerun.write_attempt.stderr or "Permission denied" in rerun.write_attempt.stderr


def test_rerun_left_inputs_unchanged(rerun):
    assert rerun.inputs_after == rerun.inputs_before


# Kill and resume ------------------------------------------------------------------------


@dataclass
class Kill:
    in_flight: list[Path]  # outputs of the jobs that were running when the run was killed
    complete: dict[Path, int]  # rows of each output of the stage that existed after the kill
    survivors: bool  # whether any process of the killed run was still alive afterwards


def _embeddings_in_flight(root: Path) -> list[Path]:
    """Embedding outputs whose job has started encoding and not yet written its file."""
    running = []
    for log in (root / "logs" / "embed").glob("*/*.log"):
        output = root / "results" / "embeddings" / log.parent.name / f"{log.stem}.parquet"
        if "embedding slide" in log.read_text(errors="replace") and not output.exists():
            running.append(output)
    return running


def _mapping_in_flight(root: Path) -> list[Path]:
    """Label outputs of a cell2location mapping that is training and has written nothing."""
    log = root / "logs" / "map_cell_types.log"
    outputs = _label_files(root)
    if log.exists() and "Epoch " in log.read_text(errors="replace") and not any(p.exists() for p in outputs):
        return outputs
    return []


def _live_members(group: int) -> list[int]:
    """Return the live processes of process group ``group``.

    Zombies are excluded: in a container no init process may reap the killed jobs, but
    they no longer run.
    """
    members = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            members.append(int(stat_file.parent.name))
    return members


def _label_files(root: Path) -> list[Path]:
    return [root / "results" / "labels" / f"{slide}.parquet" for slide in TINY_SLIDES]


def _embedding_files(root: Path) -> list[Path]:
    return sorted((root / "results" / "embeddings").glob("*/*.parquet"))


def _run_until_killed(
    root: Path, args: list[str], in_flight: Callable[[Path], list[Path]], stage_outputs: Callable[[Path], list[Path]]
) -> Kill:
    """Run snakemake and SIGKILL it with all its jobs as soon as ``in_flight`` finds a running job."""
    command, env = snakemake_command(root, *args)
    with open(root / "killed_runs.log", "a") as console:
        process = subprocess.Popen(command, stdout=console, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + KILL_WAIT_S
    try:
        while process.poll() is None and time.monotonic() < deadline:
            running = in_flight(root)
            if running:
                os.killpg(process.pid, signal.SIGKILL)  # the whole session: snakemake and its jobs
                process.wait()
                time.sleep(1)
                survivors = bool(_live_members(process.pid))
                complete = {p: pq.read_metadata(p).num_rows for p in stage_outputs(root) if p.exists()}
                return Kill(in_flight=running, complete=complete, survivors=survivors)
            time.sleep(POLL_S)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    pytest.fail(f"no job of the stage was seen running before snakemake ended (exit {process.returncode}); see {root / 'killed_runs.log'}")


@dataclass
class Resumed:
    root: Path
    embedding_kill: Kill
    mapping_kill: Kill
    unlock: subprocess.CompletedProcess
    result: subprocess.CompletedProcess


@pytest.fixture(scope="module")
def resumed(workdir, completed_run, tmp_path_factory) -> Resumed:
    """The tiny workflow killed while embedding, then while cell2location maps, then resumed.

    The first run stops at the embeddings (``--until embed``), so that cell2location has not
    run yet when the second run is killed in it. After each kill, ``snakemake --unlock``
    removes the lock that the killed run left. Then the plain command runs again with the
    default profile, as a user would run it.
    """
    root = _new_project(workdir, tmp_path_factory.mktemp("resumed"))
    embedding_kill = _run_until_killed(root, ["--cores", "2", "--until", "embed"], _embeddings_in_flight, _embedding_files)
    snakemake(root, "--unlock")
    mapping_kill = _run_until_killed(root, ["--cores", "2"], _mapping_in_flight, _label_files)
    unlock = snakemake(root, "--unlock")
    result = snakemake(root, "--cores", "2")
    return Resumed(root=root, embedding_kill=embedding_kill, mapping_kill=mapping_kill, unlock=unlock, result=result)


def test_kill_stopped_every_job_process(resumed):
    assert not resumed.embedding_kill.survivors
    assert not resumed.mapping_kill.survivors


def test_killed_embedding_left_no_file(resumed):
    assert resumed.embedding_kill.in_flight
    assert [p for p in resumed.embedding_kill.in_flight if p in resumed.embedding_kill.complete] == []


def test_embeddings_after_kill_are_complete(resumed):
    assert all(rows == TINY_SPOTS for rows in resumed.embedding_kill.complete.values())


def test_killed_mapping_left_no_labels(resumed):
    assert resumed.mapping_kill.in_flight
    assert resumed.mapping_kill.complete == {}


def test_resumed_run_completes(resumed):
    assert resumed.unlock.returncode == 0, resumed.unlock.stderr[-3000:]
    assert resumed.result.returncode == 0, resumed.result.stderr[-5000:]


def test_resumed_summary_matches_uninterrupted(resumed, workdir):
    summary = Path("results") / "metrics" / "summary.tsv"
    assert (resumed.root / summary).read_bytes() == (workdir / summary).read_bytes()


def test_resumed_outputs_match_uninterrupted(resumed, workdir):
    outputs = _manifest_outputs(resumed.root)
    differing = [path for path, digest in outputs.items() if _sha256(workdir / path) != digest]
    assert differing == []


def test_resumed_run_left_no_temporary_files(resumed):
    assert [p for p in (resumed.root / "results").rglob("*") if ".tmp-" in p.name] == []
