"""Output files of ``tifffs render``: written under a temporary name, then renamed.

A reader of the output folder sees the previous file or the complete new one, never a
partial file. A finished output carries its source's mtime, which is how a rerun knows
that it is up to date (same size as the view, same mtime as the source).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from tifffs.virtual import Piece

#: Every temporary output ends with this, after a token of the run that writes it.
TEMP_SUFFIX = ".tifffs-part"
#: Bytes rendered and written at a time.
CHUNK_BYTES = 16 << 20


class Readable(Protocol):
    """What ``tifffs.open_view`` returns, as far as writing it out needs."""

    size: int

    def read_pieces(self, offset: int, length: int) -> Sequence[Piece]: ...


@dataclass(frozen=True)
class Stamp:
    """The identity of a source version: a change to any field means a new version."""

    size: int
    mtime_ns: int
    inode: int
    device: int

    @classmethod
    def of(cls, path: str) -> Stamp:
        """Stamp of the file at ``path`` (followed if a link)."""
        st = os.stat(path)
        return cls(st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)


class SourceChangedError(OSError):
    """The source changed while its output was being written."""


def new_run_token() -> str:
    """A token that makes the temporary names of one run unique."""
    return secrets.token_hex(4)


def temp_path(final: str, token: str) -> str:
    """The hidden temporary name of ``final`` in its own folder (so the rename is atomic)."""
    folder, name = os.path.split(final)
    return os.path.join(folder, f".{name}.{token}{TEMP_SUFFIX}")


def is_up_to_date(final: str, source: Stamp, size: int) -> bool:
    """True when ``final`` is a regular file of ``size`` bytes with the source's mtime."""
    try:
        st = os.stat(final)
    except FileNotFoundError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size == size and st.st_mtime_ns == source.mtime_ns


def create(temp: str, size: int | None = None) -> int:
    """Open ``temp`` for writing (created, or emptied); ``size`` preallocates a sparse file
    for tasks that each write a range of it."""
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
    if size is not None:
        try:
            os.ftruncate(fd, size)
        except BaseException:
            os.close(fd)
            raise
    return fd


def write_range(view: Readable, fd: int, start: int, end: int) -> int:
    """Write bytes ``[start, end)`` of ``view`` at the same offsets of ``fd``; their count.
    Each piece is written from where it lies (no joined copy)."""
    position = start
    while position < end:
        pieces = view.read_pieces(position, min(CHUNK_BYTES, end - position))
        if not pieces:
            raise SourceChangedError(f"the view ended at byte {position} instead of {end}: "
                                     "the source changed while it was rendered")
        for piece in pieces:
            data = memoryview(piece).cast("B")
            written = 0
            while written < len(data):  # pwrite may write less than asked
                written += os.pwrite(fd, data[written:], position + written)
            position += len(data)
    return end - start


def finish(temp: str, final: str, source: Stamp) -> None:
    """Give ``temp`` the source's mtime and rename it to ``final``.

    The mtime is set before the rename, so that a finished name always carries it: a run
    stopped at any point leaves either no output or an up-to-date one.
    """
    os.utime(temp, ns=(time.time_ns(), source.mtime_ns))
    os.replace(temp, final)


def discard(temp: str) -> None:
    """Remove ``temp`` if it exists."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temp)


def check_source(path: str, expected: Stamp) -> None:
    """Raise ``SourceChangedError`` if ``path`` is no longer the version ``expected``."""
    if Stamp.of(path) != expected:
        raise SourceChangedError("the source changed while it was rendered: run again")
