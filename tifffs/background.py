"""Start the daemon in the background and return once its mount is usable.

The command forks; the child (the daemon) writes its startup errors to a pipe and, once
mounted, a READY line, then lets go of the pipe. The parent passes on what it said and
exits 0 on READY, or 1 when the daemon fails or is not ready after ``READY_TIMEOUT``
seconds (environment variable ``TIFFFS_READY_TIMEOUT``), in which case it stops it.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time
from collections.abc import Callable

from tifffs.config import MountConfig

READY = b"\0tifffs-ready\n"
READY_TIMEOUT = 60.0
#: Seconds between SIGTERM and SIGKILL for a daemon that is stopped.
STOP_GRACE = 5.0


def serve_in_background(config: MountConfig,
                        start: Callable[[MountConfig, Callable[[], None]], int],
                        log_destination: str) -> int:
    """Fork; the child runs ``start(config, on_ready)`` and exits with its status; the
    parent waits for ``on_ready`` and returns the command's exit status.
    ``log_destination`` says in words where the daemon logs, for the timeout message."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: the daemon
        os.close(read_end)
        _run_daemon(config, start, write_end)
    os.close(write_end)
    return _await_daemon(config, pid, read_end, _ready_timeout(), log_destination)


def _run_daemon(config: MountConfig, start: Callable[[MountConfig, Callable[[], None]], int],
                pipe: int) -> None:
    """The child: detach, report startup errors on ``pipe`` until ready, never return."""
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.dup2(pipe, 2)  # startup errors reach the parent until the mount is ready
    os.close(pipe)
    os.chdir("/")

    def ready() -> None:
        os.write(2, READY)
        os.dup2(devnull, 2)  # lets go of the terminal: the parent sees end of file

    status = 1
    try:
        status = start(config, ready)
    except BaseException as exc:  # noqa: BLE001  (reported, never a traceback into the void)
        os.write(2, f"tifffs: error: {exc}\n".encode())
    finally:
        os._exit(status)


def _ready_timeout() -> float:
    try:
        return float(os.environ.get("TIFFFS_READY_TIMEOUT", READY_TIMEOUT))
    except ValueError:
        return READY_TIMEOUT


def _await_daemon(config: MountConfig, pid: int, read_end: int, timeout: float,
                  log_destination: str) -> int:
    """Pass on what the daemon says until it is ready (0), fails (1) or times out (1)."""
    output, finished = _read_until_closed(read_end, timeout)
    os.close(read_end)
    ready_at = output.find(READY)
    sys.stderr.write(output[:ready_at if ready_at >= 0 else None].decode(errors="replace"))
    if ready_at >= 0:
        return 0
    if not finished:
        _stop(pid)
        print(f"tifffs: mounting {config.source} on {config.mountpoint} was not done after "
              f"{timeout:g} s, so tifffs stopped it; its log ({log_destination}) may say "
              f"why. If {config.mountpoint} is still mounted, clear it with "
              f"fusermount -u {config.mountpoint}", file=sys.stderr)
        return 1
    _, status = os.waitpid(pid, 0)
    print(f"tifffs: mounting {config.source} on {config.mountpoint} failed "
          f"(exit status {os.waitstatus_to_exitcode(status)})", file=sys.stderr)
    return 1


def _read_until_closed(fd: int, timeout: float) -> tuple[bytes, bool]:
    """Everything written to ``fd`` until its writer closes it (True) or ``timeout``
    seconds pass (False)."""
    deadline = time.monotonic() + timeout
    output = bytearray()
    while (remaining := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([fd], [], [], remaining)
        if readable:
            chunk = os.read(fd, 65536)
            if not chunk:
                return bytes(output), True
            output += chunk
    return bytes(output), False


def _stop(pid: int) -> None:
    """SIGTERM the daemon (libfuse unmounts on it), SIGKILL it after ``STOP_GRACE`` s."""
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    while time.monotonic() < deadline:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
