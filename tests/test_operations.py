"""Operations: the systemd unit (verified by systemd-analyze and run through its
lifecycle), mounting from /etc/fstab through mount(8), readiness for systemd, the
debug trace, log lines without floods, a stale mount that is not ours.
"""

from __future__ import annotations

import errno
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from conftest import MOUNT_TIMEOUT, mounted, unmount, wait_for, write_stack
from crafted import broken_files
from robustness import INSTALL_HINT, clear_mount, errno_of, mounted_filesystem, require
from tifffs import open_view

pytestmark = pytest.mark.mount

REPO = Path(__file__).resolve().parent.parent
SYSTEMD = REPO / "systemd"
UNIT = SYSTEMD / "tifffs@.service"
VENV_BIN = Path(sys.executable).parent
TIFFFS_BIN = VENV_BIN / "tifffs"


@pytest.fixture
def small_source(tmp_path) -> tuple[Path, bytes]:
    """SOURCE with one stack; and the bytes of its x2 view."""
    source = tmp_path / "src"
    write_stack(source / "run" / "a.tif", np.arange(3 * 64 * 48, dtype=np.uint16)
                .reshape(3, 64, 48))
    (source / "broken.tif").write_bytes(broken_files()["truncated_half.tif"])
    view = open_view(str(source / "run" / "a.tif"), 2)
    return source, view.read(0, view.size)


def _tifffs_processes(mountpoint: Path) -> list[int]:
    """Processes whose command line names ``mountpoint`` (a daemon left behind)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if os.fsencode(mountpoint) in argv and any(b"tifffs" in a for a in argv):
                found.append(int(entry.name))
    return found


# -- the systemd unit
def _rendered_unit(directory: Path) -> Path:
    """The template unit with ExecStart pointing at this checkout's tifffs."""
    assert TIFFFS_BIN.exists(), f"{TIFFFS_BIN} is missing: {INSTALL_HINT}"
    text = UNIT.read_text()
    assert "/usr/local/bin/tifffs " in text
    target = directory / UNIT.name
    target.write_text(text.replace("/usr/local/bin/tifffs ", f"{TIFFFS_BIN} "))
    return target


def test_systemd_unit_passes_systemd_analyze_verify(tmp_path):
    analyze = require("systemd-analyze")
    unit = _rendered_unit(tmp_path)
    instance = tmp_path / "tifffs@raw.service"  # verify loads the template for it
    result = subprocess.run([analyze, "verify", str(instance)], capture_output=True,
                            text=True, timeout=120, cwd=tmp_path, check=False)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and not output, output
    # and it can fail: a unit naming a command that does not exist is refused
    unit.write_text(unit.read_text().replace(str(TIFFFS_BIN), str(tmp_path / "nowhere")))
    result = subprocess.run([analyze, "verify", str(instance)], capture_output=True,
                            text=True, timeout=120, cwd=tmp_path, check=False)
    assert result.returncode != 0 and "nowhere" in result.stderr


def _unit_settings(path: Path) -> dict[str, list[str]]:
    """``Key`` -> values of a unit file (keys may repeat)."""
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def _systemd_command(line: str, environment: dict[str, str]) -> tuple[list[str], bool]:
    """An Exec*= line as systemd runs it: ``${VAR}`` is one word, ``$VAR`` alone is
    split at whitespace; a leading ``-`` means failure is ignored."""
    ignore_failure = line.startswith("-")
    words = []
    for word in shlex.split(line.lstrip("-@+!")):
        alone = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word)
        if alone:
            words += environment.get(alone.group(1), "").split()
        else:
            words.append(re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}",
                                lambda m: environment.get(m.group(1), ""), word))
    return words, ignore_failure


def _environment_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def test_systemd_unit_lifecycle(small_source, tmp_path):
    """What systemd does with the unit and example.conf: ExecStartPre, ExecStart in the
    foreground (READY=1 once usable), stop with SIGTERM (clean unmount), ExecStopPost;
    after a SIGKILL (Restart=on-failure): ExecStopPost, then a new start."""
    source, expected = small_source
    mountpoint = tmp_path / "mnt" / "small"  # ExecStartPre creates it
    settings = _unit_settings(_rendered_unit(tmp_path))
    assert settings["Type"] == ["notify"] and settings["Restart"] == ["on-failure"]
    conf = tmp_path / "test.conf"
    conf.write_text(SYSTEMD.joinpath("example.conf").read_text()
                    .replace("/data/raw", str(source)).replace("/mnt/small", str(mountpoint))
                    .replace("-o allow_other", f"--log-file {tmp_path / 'log'}"))
    environment = _environment_file(conf)
    assert environment["SOURCE"] == str(source)

    def run_all(key: str) -> None:
        for line in settings.get(key, []):
            command, ignore_failure = _systemd_command(line, environment)
            result = subprocess.run(command, capture_output=True, text=True, timeout=60,
                                    check=False)
            assert ignore_failure or result.returncode == 0, (command, result.stderr)

    def start() -> subprocess.Popen:
        run_all("ExecStartPre")
        (command, _), = [_systemd_command(line, environment)
                         for line in settings["ExecStart"]]
        assert command[0] == str(TIFFFS_BIN) and "--foreground" in command
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(tmp_path / "notify"))
        notify.settimeout(MOUNT_TIMEOUT)
        try:
            service = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL,
                                       env={**os.environ, "NOTIFY_SOCKET": str(tmp_path /
                                                                               "notify")})
            message = notify.recv(4096)
        finally:
            notify.close()
            os.unlink(tmp_path / "notify")
        assert b"READY=1" in message.split(b"\n")
        # usable as soon as systemd is told so
        assert (mountpoint / "x2" / "run" / "a.tif").read_bytes() == expected
        return service

    service = start()
    try:
        service.send_signal(signal.SIGTERM)  # systemctl stop
        assert service.wait(timeout=MOUNT_TIMEOUT) == 0
        run_all("ExecStopPost")
        assert mounted_filesystem(mountpoint) is None
        service = start()
        service.kill()  # a crash: Restart=on-failure
        service.wait()
        assert errno_of(lambda: os.listdir(mountpoint)) == errno.ENOTCONN
        run_all("ExecStopPost")
        assert mounted_filesystem(mountpoint) is None
        service = start()
    finally:
        if service.poll() is None:
            service.send_signal(signal.SIGTERM)
            service.wait(timeout=MOUNT_TIMEOUT)
        clear_mount(mountpoint)


# -- /etc/fstab and mount(8)
def _fstab_line(source: Path, mountpoint: Path, log: Path) -> str:
    lines = [line for line in SYSTEMD.joinpath("fstab.example").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert len(lines) == 1, lines
    fields = lines[0].split()
    assert fields[2] == "fuse.tifffs", fields
    fields[0], fields[1] = str(source), str(mountpoint)
    fields[3] += f",log_file={log}"
    return " ".join(fields)


#: Runs in a mount namespace of its own (see the test): mount, read, unmount.
MOUNT8_SCRIPT = r"""
import errno, os, subprocess, sys, time
from pathlib import Path
mountpoint, expected, mount_command = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]

def mounted_type():
    for line in open("/proc/self/mounts"):
        fields = line.split()
        if fields[1] == str(mountpoint):
            return fields[2]

def daemons():
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if entry.name.isdigit() and entry.name != str(os.getpid()) and \
                os.fsencode(mountpoint) in argv:
            found.append(entry.name)
    return found

try:
    result = subprocess.run(mount_command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"mount: {result.stderr}"
    assert mounted_type() == "fuse.tifffs", mounted_type()
    view = mountpoint / "x2" / "run" / "a.tif"
    assert view.read_bytes() == expected.read_bytes(), "wrong bytes"
    try:
        os.stat(mountpoint / "x2" / "broken.tif")
    except OSError as exc:
        assert exc.errno == errno.EIO, exc
    else:
        raise AssertionError("a broken file was served")
    result = subprocess.run(["umount", str(mountpoint)], capture_output=True, text=True)
    assert result.returncode == 0, f"umount: {result.stderr}"
    assert mounted_type() is None
    deadline = time.monotonic() + 60
    while daemons():
        assert time.monotonic() < deadline, "the daemon did not exit"
        time.sleep(0.05)
    print("OK")
finally:
    subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)
"""


@pytest.mark.parametrize("how", ["fstab", "mount -t"])
def test_mount_through_mount8_read_and_unmount(small_source, tmp_path, how):
    """mount(8) -> mount.fuse3 -> ``/bin/sh -c 'tifffs SOURCE MOUNTPOINT -o OPTIONS'``.

    mount(8) drops PATH from the helper's environment, so the shell looks in its default
    path (/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin): tifffs must be
    installed there. The test runs in a mount namespace of its own (unshare) in which
    /usr/local/sbin holds a link to this checkout's tifffs; nothing outside changes.
    """
    unshare, mount_command = require("unshare"), require("mount")
    assert shutil.which("mount.fuse3") or shutil.which("mount.fuse"), \
        f"mount.fuse3 (package fuse3) is missing: {INSTALL_HINT}"
    source, expected = small_source
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    log = tmp_path / "tifffs.log"
    expected_file = tmp_path / "expected.tif"
    expected_file.write_bytes(expected)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "tifffs").symlink_to(TIFFFS_BIN)
    if how == "fstab":
        fstab = tmp_path / "fstab"
        fstab.write_text(_fstab_line(source, mountpoint, log) + "\n")
        command = [mount_command, "--fstab", str(fstab), str(mountpoint)]
    else:
        command = [mount_command, "-t", "fuse.tifffs", str(source), str(mountpoint), "-o",
                   f"factors=2:3,log_file={log}"]
    script = (f"mount --bind {shlex.quote(str(bin_dir))} /usr/local/sbin && exec "
              + shlex.join([sys.executable, "-c", MOUNT8_SCRIPT, str(mountpoint),
                            str(expected_file), *command]))
    try:
        result = subprocess.run([unshare, "--mount", "--propagation", "private", "sh", "-c",
                                 script], capture_output=True, text=True, timeout=180, check=False)
        assert result.returncode == 0 and result.stdout.strip() == "OK", \
            f"{result.stdout}\n{result.stderr}\n{log.read_text() if log.exists() else ''}"
        text = log.read_text()
        assert "broken.tif" in text and "Traceback" not in text, text
    finally:
        for pid in _tifffs_processes(mountpoint):  # a daemon left in that namespace
            os.kill(pid, signal.SIGKILL)
    assert mounted_filesystem(mountpoint) is None


# -- logs
def test_debug_trace_names_each_request(small_source, tmp_path):
    source, expected = small_source
    with mounted(source, tmp_path, "--debug", source_is_constant=False) as mount:
        view = mount.path / "x2" / "run" / "a.tif"
        fd = os.open(view, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            assert os.pread(fd, 8192, 4096) == expected[4096:4096 + 8192]
        finally:
            os.close(fd)
        assert errno_of(lambda: os.stat(mount.path / "x2" / "broken.tif")) == errno.EIO
        os.listdir(mount.path / "x2" / "run")
        trace = [line for line in mount.log_text().splitlines() if " DEBUG " in line]
    patterns = [
        r"getattr /x2/run/a\.tif -> ok in [0-9.]+ ms",
        r"open /x2/run/a\.tif fh=\d+ -> ok in [0-9.]+ ms",
        r"read /x2/run/a\.tif offset=4096 size=\d+ -> \d+ bytes in [0-9.]+ ms",
        r"getattr /x2/broken\.tif -> EIO in [0-9.]+ ms",
        r"readdir /x2/run -> ok in [0-9.]+ ms",
        r"release /x2/run/a\.tif fh=\d+ -> ok in [0-9.]+ ms",
    ]
    for pattern in patterns:
        assert any(re.search(pattern, line) for line in trace), (pattern, trace[-30:])


def test_no_trace_without_debug(small_source, tmp_path):
    source, expected = small_source
    with mounted(source, tmp_path, source_is_constant=False) as mount:
        assert (mount.path / "x2" / "run" / "a.tif").read_bytes() == expected
        text = mount.log_text()
    assert " DEBUG " not in text and "getattr" not in text, text


def test_a_problem_seen_by_many_readers_is_one_log_line(small_source, tmp_path):
    source, _ = small_source
    with mounted(source, tmp_path, source_is_constant=False) as mount:
        broken = mount.path / "x2" / "broken.tif"

        def hammer() -> None:
            for _ in range(50):
                assert errno_of(lambda: os.stat(broken)) == errno.EIO

        threads = [threading.Thread(target=hammer) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not any(t.is_alive() for t in threads)
        lines = [line for line in mount.log_text().splitlines() if "broken.tif" in line]
        assert len(lines) == 1, lines
        stats = (mount.path / ".tifffs" / "stats").read_text().splitlines()
        count = [int(line.split()[1]) for line in stats
                 if line.startswith("error ") and line.endswith("broken.tif")]
        assert count and count[0] >= 400, stats  # counted, though logged once


def test_background_mount_logs_to_log_file(small_source, tmp_path):
    source, _ = small_source
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    log = tmp_path / "background.log"
    try:
        result = subprocess.run([sys.executable, "-m", "tifffs", str(source), str(mountpoint),
                                 "--log-file", str(log)], capture_output=True, text=True,
                                stdin=subprocess.DEVNULL, timeout=MOUNT_TIMEOUT, check=False)
        assert result.returncode == 0, result.stderr
        assert errno_of(lambda: os.stat(mountpoint / "x4" / "broken.tif")) == errno.EIO
        wait_for(lambda: "broken.tif" in log.read_text(), 10, "the log line")
        line, = [line for line in log.read_text().splitlines() if "broken.tif" in line]
        assert str(source / "broken.tif") in line and "EIO" in line
    finally:
        unmount(mountpoint)
    wait_for(lambda: not _tifffs_processes(mountpoint), MOUNT_TIMEOUT, "the daemon to exit")


# -- a stale mount that is not a tifffs mount is explained, not touched
OTHER_FS = """
import sys
from fuse import FUSE, Operations
FUSE(Operations(), sys.argv[1], foreground=True, fsname="other", subtype="otherfs")
"""


def test_stale_mount_of_another_filesystem_is_explained_not_cleared(small_source, tmp_path):
    source, _ = small_source
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    other = subprocess.Popen([sys.executable, "-c", OTHER_FS, str(mountpoint)],
                             stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: os.path.ismount(mountpoint), MOUNT_TIMEOUT, "the other mount", other)
        other.kill()
        other.wait()
        assert errno_of(lambda: os.listdir(mountpoint)) == errno.ENOTCONN
        result = subprocess.run([sys.executable, "-m", "tifffs", str(source), str(mountpoint)],
                                capture_output=True, text=True, stdin=subprocess.DEVNULL,
                                timeout=MOUNT_TIMEOUT, check=False)
        assert result.returncode != 0
        assert "stale mount" in result.stderr and f"fusermount -u {mountpoint}" in \
            result.stderr, result.stderr
        assert mounted_filesystem(mountpoint) == "fuse.otherfs"  # left alone
    finally:
        if other.poll() is None:
            other.kill()
            other.wait()
        clear_mount(mountpoint)
    assert mounted_filesystem(mountpoint) is None
