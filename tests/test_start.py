"""Two starts racing for one mountpoint: one mounts, the other says it is mounted; and
the lock that orders them leaves no file behind."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import is_mounted, unmount
from tifffs.startlock import _lock_path
from tools import mount_table

pytestmark = pytest.mark.mount


def test_the_loser_of_a_start_race_says_the_point_is_mounted(tmp_path):
    source, mountpoint = tmp_path / "src", tmp_path / "mnt"
    source.mkdir()
    mountpoint.mkdir()
    command = [sys.executable, "-m", "tifffs", str(source), str(mountpoint), "--no-index",
               "--log-file", str(tmp_path / "log")]
    try:
        for _ in range(3):
            starts = [subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
                      for _ in range(2)]
            results = [(p.wait(timeout=60), p.stderr.read()) for p in starts]
            codes = sorted(code for code, _ in results)
            assert codes == [0, 2], results
            loser = next(text for code, text in results if code == 2)
            assert "already mounted" in loser and "nonempty" not in loser, loser
            assert [e.point for e in mount_table()].count(str(mountpoint)) == 1
            unmount(mountpoint)
    finally:
        unmount(mountpoint)  # also when an assertion above failed
    assert not is_mounted(mountpoint)


def test_starts_leave_no_lock_file(tmp_path):
    """Each start holds a lock file until the mount is usable, then removes it (a mount
    per test, or per job of a batch system, would otherwise leave one file each)."""
    source, mountpoint = tmp_path / "src", tmp_path / "mnt"
    source.mkdir()
    mountpoint.mkdir()
    lock = _lock_path(str(mountpoint))
    command = [sys.executable, "-m", "tifffs", str(source), str(mountpoint), "--no-index",
               "--log-file", str(tmp_path / "log")]
    try:
        starts = [subprocess.Popen(command, stderr=subprocess.DEVNULL) for _ in range(2)]
        codes = sorted(p.wait(timeout=60) for p in starts)
        assert codes == [0, 2]
        assert is_mounted(mountpoint)
        assert not os.path.exists(lock)
    finally:
        unmount(mountpoint)
