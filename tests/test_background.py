"""The background start: the parent waits for the daemon's READY line, but not forever."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from conftest import MOUNT_TIMEOUT, is_mounted, unmount
from tifffs import background
from tifffs.config import MountConfig

CONFIG = MountConfig(source="/data/raw", mountpoint="/mnt/small")


# -- the fork and the wait, with a stand-in daemon (no FUSE)
def _ready_daemon(config, on_ready):
    os.write(2, b"a startup note\n")
    on_ready()
    return 0


def _failing_daemon(config, on_ready):
    raise RuntimeError("libfuse said no")


def _stuck_daemon(config, on_ready):
    signal.pause()  # until the parent's SIGTERM
    return 0


def test_the_parent_returns_once_the_daemon_is_ready(capfd):
    assert background.serve_in_background(CONFIG, _ready_daemon, "the log") == 0
    assert capfd.readouterr().err == "a startup note\n"


def test_a_daemon_that_fails_gives_its_error_and_exit_1(capfd):
    assert background.serve_in_background(CONFIG, _failing_daemon, "the log") == 1
    err = capfd.readouterr().err
    assert "tifffs: error: libfuse said no" in err
    assert "mounting /data/raw on /mnt/small failed (exit status 1)" in err


def test_a_daemon_never_ready_is_stopped_after_the_timeout(capfd, monkeypatch):
    monkeypatch.setenv("TIFFFS_READY_TIMEOUT", "0.5")
    assert background.serve_in_background(CONFIG, _stuck_daemon, "/var/log/t.log") == 1
    err = capfd.readouterr().err
    assert "was not done after 0.5 s, so tifffs stopped it" in err
    assert "/var/log/t.log" in err and "fusermount -u /mnt/small" in err


# -- the real command


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


@pytest.mark.mount  # the preconditions need /dev/fuse and libfuse
def test_a_daemon_that_never_gets_ready_is_stopped_and_the_log_named(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    tifffile.imwrite(source / "a.tif", np.zeros((8, 8), np.uint8))
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    log = tmp_path / "stuck.log"
    os.mkfifo(log)  # opening it for writing blocks: a log on a stuck file server
    try:
        result = subprocess.run([sys.executable, "-m", "tifffs", str(source), str(mountpoint),
                                 "--log-file", str(log)], capture_output=True, text=True,
                                stdin=subprocess.DEVNULL, timeout=MOUNT_TIMEOUT,
                                env={**os.environ, "TIFFFS_READY_TIMEOUT": "1"}, check=False)
        assert result.returncode == 1
        assert "was not done after 1 s" in result.stderr, result.stderr
        assert str(log) in result.stderr and "Traceback" not in result.stderr
        assert not is_mounted(mountpoint)
        assert _daemons_of(mountpoint) == []
    finally:
        unmount(mountpoint)
