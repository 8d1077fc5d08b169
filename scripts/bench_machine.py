"""Describe the machine and code version of a benchmark run, for its JSON report."""

__all__ = ["cpu_model", "git_commit", "machine_info"]

import datetime
import os
import platform
import subprocess
from pathlib import Path

import torch
import torchdiffeq


def cpu_model() -> str:
    """Return the CPU model name from /proc/cpuinfo, or `platform.processor()` where that file is missing."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit(path: Path) -> str | None:
    """Return the commit checked out at `path`, or None outside a git checkout."""
    try:
        completed = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return completed.stdout.strip()


def machine_info(threads: int | None = None) -> dict:
    """Return date, CPU, core count, versions, load average and this repository's commit."""
    info = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchdiffeq": torchdiffeq.__version__,
        "load_average_start": os.getloadavg(),
        "sparse_cnf_commit": git_commit(Path(__file__).resolve().parent),
    }
    if threads is not None:
        info["torch_threads"] = threads
    return info
