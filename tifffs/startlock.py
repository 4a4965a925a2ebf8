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
    place for the lock file, starts are not serialised."""
    try:
        fd = os.open(_lock_path(mountpoint),
                     os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        _inherited.append(fd)
        yield
    finally:
        if fd in _inherited:
            _inherited.remove(fd)
        os.close(fd)


def release_inherited() -> None:
    """In the daemon after the fork: close the copy of the lock it inherited, so that
    the lock ends with the starting command."""
    while _inherited:
        os.close(_inherited.pop())
