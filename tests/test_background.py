"""The background start: the parent waits for the daemon's READY line, but not forever."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import tifffile

from conftest import MOUNT_TIMEOUT, is_mounted, unmount

pytestmark = pytest.mark.mount  # the preconditions need /dev/fuse and libfuse


def _daemons_of(mountpoint) -> list[int]:
    """Processes whose command line names ``mountpoint`` (tifffs daemons left behind)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                arguments = cmdline.read().split(b"\0")
        except OSError:
            continue
        if os.fsencode(str(mountpoint)) in arguments and int(pid) != os.getpid():
            found.append(int(pid))
    return found


def test_a_daemon_that_never_gets_ready_is_stopped_and_the_log_named(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    tifffile.imwrite(source / "a.tif", np.zeros((8, 8), np.uint8))
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    log = tmp_path / "stuck.log"
    os.mkfifo(log)  # opening it for writing blocks: a log on a stuck file server
    started = time.monotonic()
    try:
        result = subprocess.run([sys.executable, "-m", "tifffs", str(source), str(mountpoint),
                                 "--log-file", str(log)], capture_output=True, text=True,
                                stdin=subprocess.DEVNULL, timeout=MOUNT_TIMEOUT,
                                env={**os.environ, "TIFFFS_READY_TIMEOUT": "1"}, check=False)
        assert result.returncode == 1
        assert "was not done after 1 s" in result.stderr, result.stderr
        assert str(log) in result.stderr and "Traceback" not in result.stderr
        assert time.monotonic() - started < MOUNT_TIMEOUT
        assert not is_mounted(mountpoint)
        assert _daemons_of(mountpoint) == []
    finally:
        unmount(mountpoint)
