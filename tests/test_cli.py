"""The command line: background mounts, options, signals, and errors that say what to do."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from conftest import MOUNT_TIMEOUT, mounted, unmount, wait_for
from tifffs.config import MOUNT_SETTINGS
from tifffs.index import FILE_NAME

TIFFFS = [sys.executable, "-m", "tifffs"]


@pytest.fixture
def small_source(tmp_path) -> Path:
    source = tmp_path / "src"
    source.mkdir()
    tifffile.imwrite(source / "a.tif", np.arange(64 * 48, dtype=np.uint16).reshape(64, 48))
    return source


@pytest.mark.mount
def test_background_mount_returns_when_usable_and_releases_the_terminal(small_source, tmp_path):
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    try:
        # stdout is a pipe, as in `tifffs ... | cat`: communicate() returns only when the
        # daemon has let go of it
        result = subprocess.run([*TIFFFS, str(small_source), str(mountpoint),
                                 "--log-file", str(tmp_path / "log")],
                                stdin=subprocess.DEVNULL, capture_output=True,
                                timeout=MOUNT_TIMEOUT, check=False)
        assert result.returncode == 0, result.stderr
        assert os.path.ismount(mountpoint)
        assert tifffile.imread(mountpoint / "x2" / "a.tif").shape == (32, 24)
    finally:
        unmount(mountpoint)
    assert not os.path.ismount(mountpoint)


@pytest.mark.mount
def test_a_relative_index_folder_is_taken_from_where_tifffs_was_started(small_source,
                                                                        tmp_path):
    """The daemon works in / once started (and so do its helpers)."""
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    try:
        result = subprocess.run([*TIFFFS, "src", "mnt", "--index-dir", "idx", "--log-file",
                                 "log"], cwd=tmp_path, stdin=subprocess.DEVNULL,
                                capture_output=True, timeout=MOUNT_TIMEOUT, check=False)
        assert result.returncode == 0, result.stderr
        assert tifffile.imread(mountpoint / "x2" / "a.tif").shape == (32, 24)
    finally:
        unmount(mountpoint)
    wait_for(lambda: "unmounted" in (tmp_path / "log").read_text(), MOUNT_TIMEOUT,
             "the daemon's end")
    with contextlib.closing(sqlite3.connect(tmp_path / "idx" / FILE_NAME)) as index:
        assert index.execute("SELECT count(*) FROM files WHERE path = ?",
                             (os.fsencode(small_source / "a.tif"),)).fetchone() == (1,)


@pytest.mark.mount
def test_mount_options_in_o_form(small_source, tmp_path):
    with mounted(small_source, tmp_path, "-o", "factors=3:5,method=nearest,cache_size=8M") as m:
        assert sorted(os.listdir(m.path)) == [".tifffs", "x3", "x5"]
        view = tifffile.imread(m.path / "x3" / "a.tif")
        source = tifffile.imread(small_source / "a.tif")
        np.testing.assert_array_equal(view, source[::3, ::3])


@pytest.mark.mount
@pytest.mark.parametrize("libfuse", ["2", "3"])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_foreground_signal_unmounts_cleanly(small_source, tmp_path, signum, libfuse):
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    process = subprocess.Popen([*TIFFFS, str(small_source), str(mountpoint), "-f",
                                "--no-index", "--libfuse", libfuse],
                               stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: os.path.ismount(mountpoint), MOUNT_TIMEOUT, "the mount", process)
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=MOUNT_TIMEOUT)
        assert process.returncode == 0, stderr
        assert " ERROR " not in stderr and "unmounted" in stderr, stderr
        assert not os.path.ismount(mountpoint)
    finally:
        unmount(mountpoint)
        if process.poll() is None:
            process.kill()
            process.wait()


def _fails(args: list[str], *expected: str) -> None:
    result = subprocess.run([*TIFFFS, *args], capture_output=True, text=True,
                            stdin=subprocess.DEVNULL, timeout=MOUNT_TIMEOUT, check=False)
    assert result.returncode != 0
    for text in expected:
        assert text in result.stderr, result.stderr


def test_errors_say_what_to_do(small_source, tmp_path):
    missing = tmp_path / "nowhere"
    _fails([str(small_source), str(missing)], "does not exist", "mkdir -p")
    a_file = small_source / "a.tif"
    _fails([str(small_source), str(a_file)], "is not a directory")
    _fails([str(missing), str(tmp_path)], "SOURCE", "does not exist")
    not_empty = tmp_path / "full"
    not_empty.mkdir()
    (not_empty / "x").write_text("x")
    _fails([str(small_source), str(not_empty)], "not empty")
    _fails([str(small_source), str(tmp_path / "m"), "--factors", "0,2"], "invalid factor")
    _fails([str(small_source), str(tmp_path / "m"), "--method", "cubic"], "invalid method")
    _fails([str(small_source), str(tmp_path / "m"), "--cache-size", "lots"], "invalid size")


@pytest.mark.parametrize("options, expected", [
    (["--factors", "2,x"], "invalid factor 'x' in '2,x'"),
    (["--factors", "x"], "invalid factor 'x':"),
    (["--factors", "2,,4"], "empty factor in '2,,4'"),
    (["--views", "x4,,x8"], "empty view in 'x4,,x8'"),
    (["--factors", ""], "no factors given"),
    (["--views", ""], "no views given"),
    (["-o", "views="], "no views given"),
    (["--log-file", ""], "--log-file is empty"),
    (["-o", "factors=2,4,allow_other"], "-o factors=2,4: inside -o, separate factors"),
    (["-o", "ro,views=x4,fit100"], "-o views=x4,fit100: inside -o, separate views with"),
])
def test_option_errors_name_the_item_and_exit_2(small_source, tmp_path, options, expected):
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    try:
        result = subprocess.run([*TIFFFS, str(small_source), str(mountpoint), *options],
                                capture_output=True, text=True, stdin=subprocess.DEVNULL,
                                timeout=MOUNT_TIMEOUT, check=False)
        assert result.returncode == 2 and f"tifffs: error: {expected}" in result.stderr, \
            result.stderr
    finally:
        unmount(mountpoint)  # in case it mounted (the defaults, for an empty value)


def test_help_lists_every_o_setting_and_the_subcommands():
    text = subprocess.run([*TIFFFS, "--help"], capture_output=True, text=True,
                          check=True).stdout
    flat = " ".join(text.split())
    listed = flat.split("mount options: ")[1].split(" (")[0].split(", ")
    assert listed == list(MOUNT_SETTINGS)
    assert {"views=", "index_dir=", "no_index", "libfuse=", "foreground"} <= set(listed)
    assert "tifffs render --help" in flat and "tifffs index --help" in flat
    assert "default 2,4,8 unless --views is given" in flat


@pytest.mark.mount
def test_already_mounted_mountpoint_is_refused(small_source, tmp_path):
    with mounted(small_source, tmp_path) as m:
        _fails([str(small_source), str(m.path)], "already mounted", "fusermount -u")


def test_render_reports_broken_source(tmp_path):
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"II*\0garbage")
    result = subprocess.run([*TIFFFS, "render", str(bad), str(tmp_path / "out.tif")],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert "bad.tif" in result.stderr


@pytest.mark.mount
def test_restart_after_sigkill_clears_the_stale_mount(small_source, tmp_path):
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    process = subprocess.Popen([*TIFFFS, str(small_source), str(mountpoint), "-f"],
                               stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: os.path.ismount(mountpoint), MOUNT_TIMEOUT, "the mount", process)
        process.kill()
        process.wait()
        with pytest.raises(OSError):  # "Transport endpoint is not connected"
            os.listdir(mountpoint)
        result = subprocess.run([*TIFFFS, str(small_source), str(mountpoint)],
                                capture_output=True, text=True, stdin=subprocess.DEVNULL,
                                timeout=MOUNT_TIMEOUT, check=False)
        assert result.returncode == 0, result.stderr
        assert "cleared a stale tifffs mount" in result.stderr
        assert tifffile.imread(mountpoint / "x2" / "a.tif").shape == (32, 24)
    finally:
        unmount(mountpoint)
        unmount(mountpoint)  # the stale one, if it was not cleared
