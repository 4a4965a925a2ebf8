"""The domain errors of tifffs, each carrying the errno a FUSE caller receives."""

from __future__ import annotations

import errno


class TifffsError(Exception):
    """Base class: a problem with one source file, reported as ``errno_code``."""

    errno_code: int = errno.EIO


class BrokenSource(TifffsError):
    """The source is not a readable TIFF (empty, truncated, corrupt)."""


class UnsupportedSource(TifffsError):
    """The source is a valid TIFF of a kind tifffs cannot serve yet."""


class SourceChanged(TifffsError):
    """The source changed (size, mtime or inode) while a view of it was open."""
