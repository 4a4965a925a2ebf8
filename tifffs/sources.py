"""Opening source files: read-only, regular files only, never blocking."""

from __future__ import annotations

import errno
import os
import stat

from tifffs.describe import describe
from tifffs.errors import UnsupportedSource
from tifffs.pages import SourceVersion
from tifffs.pixels import SourceFile
from tifffs.views import is_inside


def opened_path(fd: int) -> str:
    """The path of the file an open descriptor refers to (from /proc/self/fd)."""
    return os.readlink(f"/proc/self/fd/{fd}")


def open_regular(path: str, inside: str | None = None) -> int:
    """A read-only descriptor of the regular file at ``path``.

    O_NONBLOCK: a fifo put in the file's place must not block the open (regular files
    ignore the flag). Raises ``UnsupportedSource`` for anything but a regular file. With
    ``inside`` (a resolved folder), the file actually opened must lie inside it: checked
    on the descriptor, so a symlink swapped after a check of the path cannot lead out.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnsupportedSource("not a regular file")
        if inside is not None and not is_inside(opened_path(fd), inside):
            raise FileNotFoundError(errno.ENOENT, "leads out of SOURCE", path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_source(path: str) -> SourceFile:
    """Open ``path`` and describe it from its IFDs (no index, no cache)."""
    fd = open_regular(path)
    try:
        st = os.fstat(fd)
        return SourceFile(path, fd, SourceVersion.of(st),
                          describe(fd, st.st_size, os.path.basename(path)))
    except BaseException:
        os.close(fd)
        raise
