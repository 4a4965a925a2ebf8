"""A tifffs mount in the foreground, as our child: started, polled until ready, unmounted."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import final

from benchmarks import commands

READY_TIMEOUT = 60.0


class MountError(RuntimeError):
    """tifffs did not mount: the end of its log says why."""


def fusermount() -> str:
    """The fusermount command of this system (fuse 2 or 3)."""
    for name in ("fusermount", "fusermount3"):
        if shutil.which(name):
            return name
    raise MountError("neither fusermount nor fusermount3 found: install fuse3")


def _poll(condition, timeout: float, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


@final
class Mount:
    """``tifffs SOURCE MNT -f OPTIONS`` in a temporary folder under ``workdir``.

    Use as a context manager: entering returns once the mount is live; leaving always
    unmounts and reaps the daemon, even when the measurement failed.
    """

    def __init__(self, source: str, workdir: str, options: list[str]) -> None:
        self.source = source
        self.workdir = workdir
        self.options = options
        self.mountpoint = ""
        self.log_path = ""
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Mount:
        self.mountpoint = tempfile.mkdtemp(prefix="mnt-", dir=self.workdir)
        self.log_path = self.mountpoint + ".log"
        with open(self.log_path, "wb") as log:
            self.proc = commands.start(
                [sys.executable, "-m", "tifffs", self.source, self.mountpoint, "-f",
                 *self.options], stdout=log, stderr=subprocess.STDOUT, cwd="/")
        ready = _poll(lambda: os.path.ismount(self.mountpoint) or self.proc.poll() is not None,
                      READY_TIMEOUT)
        if not ready or not os.path.ismount(self.mountpoint):
            text = self._log_tail()
            self.close()
            raise MountError(f"tifffs did not mount {self.source}: {text}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def path(self, *parts: str) -> str:
        """A path inside the mount."""
        return os.path.join(self.mountpoint, *parts)

    @property
    def pid(self) -> int:
        """The daemon's process id (we run it in the foreground: it is our child)."""
        assert self.proc is not None
        return self.proc.pid

    def peak_rss_mb(self) -> float | None:
        """The daemon's peak resident memory so far (VmHWM), in MiB."""
        try:
            with open(f"/proc/{self.pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    def open_fds(self) -> int | None:
        """How many descriptors the daemon holds open now."""
        try:
            return len(os.listdir(f"/proc/{self.pid}/fd"))
        except OSError:
            return None

    def _log_tail(self) -> str:
        try:
            with open(self.log_path, errors="replace") as fh:
                lines = [line for line in fh.read().splitlines() if line.strip()]
        except OSError:
            return "(no log)"
        return lines[-1][:300] if lines else "(empty log)"

    def close(self) -> None:
        """Unmount (retrying while busy, lazily as a last resort) and reap the daemon."""
        if self.mountpoint and os.path.ismount(self.mountpoint):
            def unmounted() -> bool:
                return subprocess.run([fusermount(), "-u", self.mountpoint],
                                      capture_output=True, check=False).returncode == 0
            if not _poll(unmounted, 10.0, 0.1):
                subprocess.run([fusermount(), "-uz", self.mountpoint], capture_output=True,
                               check=False)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=20)
                commands.forget(self.proc)
            except subprocess.TimeoutExpired:
                commands.stop(self.proc)
        for path, remove in ((self.mountpoint, os.rmdir), (self.log_path, os.unlink)):
            if path:
                with contextlib.suppress(OSError):
                    remove(path)
