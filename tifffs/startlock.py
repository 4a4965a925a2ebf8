"""One start at a time per mountpoint: the loser of a race is told the point is mounted.

Two ``tifffs`` commands started at once for one mountpoint would both find it free;
the second would then fail inside libfuse with its advice to mount over it
(``nonempty``), which would stack two mounts. The lock is held from the checks until
the mount is usable (or has failed); the daemon lets go of its inherited copy at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
from collections.abc import Iterator

_inherited: list[int] = []


def _lock_path(mountpoint: str) -> str:
    digest = hashlib.sha256(os.path.realpath(mountpoint).encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"tifffs-{os.getuid()}-{digest}.lock")


@contextlib.contextmanager
def start_lock(mountpoint: str) -> Iterator[None]:
    """Hold the start lock of ``mountpoint`` (waits for a start in progress). Without a
    place for the lock file, starts are not serialised. The lock file is removed when
    the lock is let go, so none is left behind."""
    path = _lock_path(mountpoint)
    fd = _locked(path)
    if fd is None:
        yield
        return
    _inherited.append(fd)
    try:
        yield
    finally:
        if fd in _inherited:
            _inherited.remove(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)  # while locked: a waiter then finds the file gone, and retries
        os.close(fd)


def _locked(path: str) -> int | None:
    """A descriptor of the lock file at ``path``, locked; None without a place for it."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError:
            return None
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                return fd  # still the file at the path: the lock is ours
        except FileNotFoundError:
            pass  # its holder removed it when letting go
        os.close(fd)


def release_inherited() -> None:
    """In the daemon after the fork: close the copy of the lock it inherited, so that
    the lock ends with the starting command."""
    while _inherited:
        os.close(_inherited.pop())
