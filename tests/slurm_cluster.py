"""A real single-node SLURM on this machine, for tests: munge, MariaDB, slurmdbd, slurmctld, slurmd.

Everything listens on 127.0.0.1 and keeps its configuration, state, sockets, pid files and
logs in one temporary folder. :func:`local_slurm` starts the daemons, registers the cluster,
an account and the user for accounting (the Snakemake SLURM executor reads job states with
``sacct``), yields the environment that points the SLURM commands at this cluster, and
stops every daemon it started. The node offers 8 CPUs and one count-only GPU (``gres.conf``
names ``/dev/null``), so GPU-tagged jobs schedule on a machine without a GPU.

The Debian packages ``slurm-wlm``, ``slurmdbd``, ``munge`` and ``mariadb-server`` must be
installed; ``.ci/run`` installs them.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

DAEMONS = ("munged", "munge", "unmunge", "mariadbd", "slurmdbd", "slurmctld", "slurmd", "sbatch", "sacct", "sacctmgr", "mariadb-install-db")
CLUSTER = "histodecon"
ACCOUNT = "histodecon_tests"


def missing_tools() -> list[str]:
    """Return the SLURM, munge and MariaDB programs that are not installed."""
    return [name for name in DAEMONS if shutil.which(name) is None and not Path("/usr/sbin", name).exists()]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(check, what: str, log: Path | None = None, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    tail = log.read_text()[-2000:] if log is not None and log.exists() else ""
    raise RuntimeError(f"{what} did not start within {timeout:.0f} s. {tail}")


def _run(command: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, env=env, check=True)


def _sbin(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _stop(pid_file: Path) -> None:
    with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
        os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)


def _munge_answers() -> bool:
    """Return True when a running munged encodes and decodes a credential on the default socket."""
    encoded = subprocess.run(["munge", "-n"], capture_output=True)
    if encoded.returncode != 0:
        return False
    return subprocess.run(["unmunge"], input=encoded.stdout, capture_output=True).returncode == 0


def _start_munge(root: Path) -> Path:
    """Start munged unless a running one already works.

    A socket file alone proves nothing: a munged that was killed leaves its socket and lock
    behind, and clients then get "Connection refused". ``--force`` lets the new daemon
    replace that stale socket.
    """
    run_dir = Path("/run/munge")
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.chown(run_dir, "munge", "munge")
    pid_file = root / "munged.pid"
    if not _munge_answers():
        subprocess.run([_sbin("munged"), "--force", f"--pid-file={pid_file}"], capture_output=True, check=True)
    _wait(_munge_answers, "munged")
    return pid_file


def _start_mariadb(root: Path) -> tuple[Path, int, Path]:
    datadir, socket_path, port = root / "mysql", root / "mysql.sock", _free_port()
    _run([_sbin("mariadb-install-db"), f"--datadir={datadir}", "--user=root", "--auth-root-authentication-method=normal"])
    pid_file = root / "mariadbd.pid"
    log = root / "mariadbd.log"
    subprocess.Popen(
        [_sbin("mariadbd"), "--no-defaults", f"--datadir={datadir}", f"--socket={socket_path}", f"--port={port}",
         "--bind-address=127.0.0.1", "--user=root", f"--pid-file={pid_file}", f"--log-error={log}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    _wait(socket_path.exists, "mariadbd", log)
    return pid_file, port, socket_path


def _write_configs(root: Path, *, db_port: int, dbd_port: int, ctld_port: int, slurmd_port: int, memory_mb: int) -> Path:
    user = getpass.getuser()
    common = {"pid": root / "pids", "state": root / "state", "spool": root / "spool", "logs": root / "logs"}
    for folder in common.values():
        folder.mkdir(exist_ok=True)
    (root / "slurmdbd.conf").write_text(
        "\n".join(
            [
                "AuthType=auth/munge", "DbdHost=localhost", "DbdAddr=127.0.0.1", f"DbdPort={dbd_port}", f"SlurmUser={user}",
                f"LogFile={common['logs'] / 'slurmdbd.log'}", f"PidFile={common['pid'] / 'slurmdbd.pid'}",
                "StorageType=accounting_storage/mysql", "StorageHost=127.0.0.1", f"StoragePort={db_port}",
                "StorageUser=root", "StorageLoc=slurm_acct_db",
            ]
        )
        + "\n"
    )
    (root / "slurmdbd.conf").chmod(0o600)
    (root / "gres.conf").write_text("NodeName=localhost Name=gpu Count=1 File=/dev/null\n")
    (root / "slurm.conf").write_text(
        "\n".join(
            [
                f"ClusterName={CLUSTER}", "SlurmctldHost=localhost(127.0.0.1)", f"SlurmctldPort={ctld_port}",
                f"SlurmdPort={slurmd_port}", f"SlurmUser={user}", "AuthType=auth/munge",
                f"StateSaveLocation={common['state']}", f"SlurmdSpoolDir={common['spool']}",
                f"SlurmctldPidFile={common['pid'] / 'slurmctld.pid'}", f"SlurmdPidFile={common['pid'] / 'slurmd.pid'}",
                f"SlurmctldLogFile={common['logs'] / 'slurmctld.log'}", f"SlurmdLogFile={common['logs'] / 'slurmd.log'}",
                # Configless: slurmd fetches this file from slurmctld and links its copy at
                # /run/slurm/conf, where commands inside jobs find it. Snakemake's job step
                # drops SLURM_CONF from the environment of the srun it starts.
                "SlurmctldParameters=enable_configless",
                # 8 CPUs on a 2-core machine (config_overrides accepts it), so a job that
                # groups several slides fits on the node.
                "SlurmdParameters=config_overrides",
                "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_Core_Memory", "GresTypes=gpu", "MpiDefault=none", "ReturnToService=2",
                # Memory is checked by polling the job's processes (no cgroups here), so a job
                # over its --mem is killed, as on a real cluster.
                "JobAcctGatherType=jobacct_gather/linux", "JobAcctGatherFrequency=1",
                "JobAcctGatherParams=OverMemoryKill", "DefMemPerCPU=1000",
                "AccountingStorageType=accounting_storage/slurmdbd", "AccountingStorageHost=localhost",
                f"AccountingStoragePort={dbd_port}", "AccountingStorageTRES=gres/gpu", "AccountingStorageEnforce=associations",
                "AccountingStoreFlags=job_comment",
                f"NodeName=localhost NodeAddr=127.0.0.1 CPUs=8 RealMemory={memory_mb} Gres=gpu:1 State=UNKNOWN",
                "PartitionName=main Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
            ]
        )
        + "\n"
    )
    return root / "slurm.conf"


@contextlib.contextmanager
def local_slurm(root: Path, *, memory_mb: int = 16000) -> Iterator[dict[str, str]]:
    """Start a single-node SLURM with accounting in ``root``; yield the environment for its clients."""
    root.mkdir(parents=True, exist_ok=True)
    pid_files: list[Path] = []
    try:
        _start_munge(root)  # shared with other users of munge on this machine; left running
        mariadb_pid, db_port, _ = _start_mariadb(root)
        pid_files.append(mariadb_pid)
        ports = {"dbd_port": _free_port(), "ctld_port": _free_port(), "slurmd_port": _free_port()}
        conf = _write_configs(root, db_port=db_port, memory_mb=memory_mb, **ports)
        env = {**os.environ, "SLURM_CONF": str(conf)}
        pid_files.append(root / "pids" / "slurmdbd.pid")
        subprocess.run([_sbin("slurmdbd")], env=env, check=True, capture_output=True)
        _wait(lambda: subprocess.run(["sacctmgr", "-n", "list", "cluster"], env=env, capture_output=True).returncode == 0,
              "slurmdbd", root / "logs" / "slurmdbd.log")
        _run(["sacctmgr", "-i", "add", "cluster", CLUSTER], env)
        _run(["sacctmgr", "-i", "add", "account", ACCOUNT, f"cluster={CLUSTER}"], env)
        _run(["sacctmgr", "-i", "add", "user", getpass.getuser(), f"account={ACCOUNT}", f"cluster={CLUSTER}"], env)
        pid_files += [root / "pids" / "slurmctld.pid", root / "pids" / "slurmd.pid"]
        subprocess.run([_sbin("slurmctld")], env=env, check=True, capture_output=True)
        subprocess.run([_sbin("slurmd"), "--conf-server", f"127.0.0.1:{ports['ctld_port']}"], env=env, check=True, capture_output=True)

        def node_idle() -> bool:
            state = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True).stdout.strip()
            return state in ("idle", "mixed")

        _wait(node_idle, "slurmctld and slurmd", root / "logs" / "slurmctld.log")
        yield env
    finally:
        if (root / "slurm.conf").exists():
            subprocess.run(["scontrol", "shutdown"], env={**os.environ, "SLURM_CONF": str(root / "slurm.conf")}, capture_output=True)
        for pid_file in reversed(pid_files):
            _stop(pid_file)
        link = Path("/run/slurm/conf")
        if link.is_symlink() and str(root) in os.readlink(link):
            link.unlink()
