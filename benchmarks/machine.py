"""What a result file records about the run: revision, machine, versions, tifffs features."""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import re
import subprocess
import sys
from importlib import metadata

from benchmarks.commands import REPO, child_env

DISTRIBUTIONS = ("tifffs", "numpy", "tifffile", "opencv-python-headless", "imagecodecs",
                 "fusepy", "dask", "distributed", "matplotlib")


def revision() -> str:
    """The repository's short HEAD, with "-dirty" when tifffs/ or benchmarks/ has changes."""
    git = ["git", "-C", REPO]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, check=False).stdout.strip() or "unknown"
    dirty = subprocess.run([*git, "status", "--porcelain", "tifffs", "benchmarks"],
                           capture_output=True, text=True, check=False).stdout.strip()
    return f"{head}-dirty" if dirty else head


def features() -> set[str]:
    """The options of the installed tifffs: "--index-dir", "render --jobs", "index", ..."""
    def options(*args: str) -> set[str]:
        out = subprocess.run([sys.executable, "-m", "tifffs", *args, "--help"],
                             capture_output=True, text=True, cwd="/", check=False,
                             env=child_env())
        return set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", out.stdout)), out.stdout

    mount_options, _ = options()
    render_options, _ = options("render")
    index_options, index_help = options("index")
    found = mount_options | {f"render {o}" for o in render_options}
    if index_help.startswith("usage: tifffs index"):
        found |= {"index", *(f"index {o}" for o in index_options)}
    return found


def _first(path: str, prefix: str) -> str | None:
    with contextlib.suppress(OSError), open(path) as fh:
        for line in fh:
            if line.startswith(prefix):
                return line.split(":", 1)[1].strip()
    return None


def describe() -> dict[str, object]:
    """The machine and software of this run."""
    versions = {}
    for dist in DISTRIBUTIONS:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    mem = _first("/proc/meminfo", "MemTotal")
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "revision": revision(),
        "cpu": _first("/proc/cpuinfo", "model name") or platform.processor(),
        "cores": len(os.sched_getaffinity(0)),
        "ram_gib": round(int(mem.split()[0]) / 2**20, 1) if mem else None,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": versions,
        "load_at_start": os.getloadavg()[0],
    }
