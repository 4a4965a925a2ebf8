"""Helpers shared by the fault, load, security and operations tests."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import fusermount
from tools import INSTALL_HINT, mount_table, require  # noqa: F401  (re-exported)

NOBODY = 65534


def memory_kib(pid: int | str = "self") -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in KiB, from /proc/<pid>/status."""
    values = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
    return values


def call_with_timeout(function: Callable[[], Any], timeout: float, what: str) -> Any:
    """``function()`` in a thread; its result or exception, or AssertionError if it does
    not return within ``timeout`` seconds (a hang detector, not a timing claim).

    The thread of a call that hangs is left behind (a daemon thread): a call blocked on
    a FUSE mount returns once the mount goes away.
    """
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = function()
        except BaseException as exc:  # noqa: BLE001  (handed to the caller)
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True, name=f"call {what}")
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise AssertionError(f"{what} did not return within {timeout:.0f} s (hang)")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def errno_of(function: Callable[[], Any], timeout: float = 30.0, what: str = "call") -> int:
    """The errno ``function()`` fails with (0 if it succeeds), with a hang detector."""
    try:
        call_with_timeout(function, timeout, what)
    except OSError as exc:
        return exc.errno or -1
    return 0


def world_readable_workdir(prefix: str) -> Path:
    """A directory other users can traverse (pytest's tmp_path is private to root)."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(work, 0o755)
    return work


def as_nobody(command: list[str]) -> list[str]:
    """``command`` run as uid/gid 65534 without supplementary groups (needs root)."""
    assert os.geteuid() == 0, "this test runs as root (it switches to uid 65534)"
    return [require("setpriv"), f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
            "--reset-env", *command]


def clear_mount(mountpoint: Path) -> None:
    """Unmount ``mountpoint`` lazily, also when its daemon is dead ("transport endpoint
    is not connected", which ``os.path.ismount`` does not recognise)."""
    subprocess.run([fusermount(), "-uz", str(mountpoint)], capture_output=True, check=False)


def guarded(mount: Any, function: Callable[[], Any], what: str, timeout: float) -> Any:
    """``function()`` on ``mount`` with a hang detector: on a hang, the daemon is killed
    (every request blocked on it returns) and the mount cleared, then the test fails."""
    try:
        return call_with_timeout(function, timeout, what)
    except AssertionError:
        mount.process.kill()
        mount.process.wait()
        clear_mount(mount.path)
        raise


def guarded_errno(mount: Any, function: Callable[[], Any], what: str, timeout: float) -> int:
    """The errno ``function()`` fails with on ``mount`` (0 if it succeeds), see ``guarded``."""
    try:
        guarded(mount, function, what, timeout)
    except OSError as exc:
        return exc.errno or -1
    return 0


def python_in_subprocess(code: str, timeout: float, what: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter; a hang kills it and fails the test (an endless
    loop in a thread of the test process itself would run for the rest of the session)."""
    try:
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=timeout, cwd=Path(__file__).parent, check=False)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{what} did not return within {timeout:.0f} s (hang)") from None


def mounted_filesystem(mountpoint: Path) -> str | None:
    """The type of the filesystem mounted at ``mountpoint`` (``fuse.tifffs``), from
    /proc/self/mounts: unlike ``os.path.ismount`` it needs no access to the mount."""
    return next((entry.type for entry in mount_table() if entry.point == str(mountpoint)),
                None)
