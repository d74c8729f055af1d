"""Logging set-up for workflow scripts: one log file per rule."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

__all__ = ["configure_logging"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(log_file: str | Path | None = None, *, level: int = logging.INFO) -> None:
    """Send log records of all libraries, warnings, stdout and stderr to ``log_file``.

    With a log file, file descriptors 1 and 2 themselves are redirected to it, so progress
    bars and messages that libraries print (lightning, pyro, C extensions) land in the
    rule's log as well. Without one, records go to stderr.
    """
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        stream = open(log_file, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 (lives as long as the job)
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(stream.fileno(), 1)
        os.dup2(stream.fileno(), 2)
        sys.stdout = sys.stderr = stream
    logging.basicConfig(level=level, format=LOG_FORMAT, handlers=[logging.StreamHandler(sys.stderr)], force=True)
    logging.captureWarnings(True)
