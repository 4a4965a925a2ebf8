"""The programs and mounts the tests drive: one place to find a tool, read the mount
table, a mount's counters or the page cache, and stop a server. A missing tool fails the
test (never a skip): scripts/test installs them all."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any, NamedTuple

INSTALL_HINT = "run scripts/test, which installs it"


class MissingTool(AssertionError):
    """A program the tests need is not installed."""


def require(name: str, error: type[AssertionError] = MissingTool,
            hint: str = INSTALL_HINT) -> str:
    """The path of the program ``name``; raise ``error`` (a failure) when it is missing."""
    path = shutil.which(name)
    if path is None:
        raise error(f"{name} not found: {hint}")
    return path


class MountEntry(NamedTuple):
    source: str
    point: str
    type: str
    options: tuple[str, ...]


def mount_table() -> list[MountEntry]:
    """/proc/self/mounts, with the octal escapes of its fields undone."""
    def unescape(field: str) -> str:
        return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)

    entries = []
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) >= 4:
                entries.append(MountEntry(unescape(fields[0]), unescape(fields[1]), fields[2],
                                          tuple(fields[3].split(","))))
    return entries


def resident_bytes(path: Path) -> int:
    """Bytes of ``path`` in the page cache, as util-linux ``fincore`` reports them."""
    result = subprocess.run([require("fincore"), "--bytes", "--noheadings", "--raw",
                             "--output", "RES", str(path)],
                            capture_output=True, text=True, check=True)
    return int(result.stdout.strip())


def evict(path: Path) -> None:
    """Drop the cached pages of one file (written back first; no root needed)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def mount_stats(mount: Any) -> dict[str, int]:
    """The counters of a mount's ``.tifffs/stats`` file (not its per-file error lines)."""
    text = (mount.path / ".tifffs" / "stats").read_text()
    return {k: int(v) for k, v in (line.split(" ", 1) for line in text.splitlines()
                                   if not line.startswith("error ") and " " in line)}


def source_fds(pid: int, source: Path) -> list[str]:
    """The targets of the daemon's descriptors that are files under ``source``."""
    targets = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        if target.startswith(str(source)):
            targets.append(target)
    return targets


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on (bound, then closed again)."""
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_group(process: subprocess.Popen, timeout: float = 30) -> None:
    """Stop a process started with ``start_new_session`` and everything it forked:
    SIGTERM to its group, SIGKILL if it has not exited within ``timeout``."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
