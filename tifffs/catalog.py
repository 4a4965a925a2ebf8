"""The catalog: source path + current version -> cached ``SourceTiff`` and ``VirtualTiff``.

Entries are keyed by the source's (device, inode, size, mtime), so a source that
changes is described anew, and a broken source is parsed (and reported) once per
version: its error is cached like a value.
"""

from __future__ import annotations

import os
import stat

from tifffs.cache import LruCache
from tifffs.errors import TifffsError, UnsupportedSource
from tifffs.source import SourceTiff, SourceVersion
from tifffs.views import View
from tifffs.virtual import VirtualTiff

#: Source files kept open and described (each holds one descriptor).
DEFAULT_MAX_SOURCES = 128


class Catalog:
    """Finds the view of a source file for its current version."""

    def __init__(self, bands: LruCache[bytes], max_sources: int = DEFAULT_MAX_SOURCES) -> None:
        self.bands = bands
        self._sources: LruCache[SourceTiff | TifffsError] = LruCache(max_sources)
        self._views: LruCache[VirtualTiff | TifffsError] = LruCache(4 * max_sources)

    def view(self, path: str, spec: View) -> VirtualTiff:
        """The view of the current version of ``path``; raises the source's error if any."""
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):  # opening a fifo would block
            raise UnsupportedSource("not a regular file")
        version = SourceVersion.of(st)
        key = (path, version, spec)
        view = self._views.get(key, lambda: self._build_view(path, version, spec))
        if isinstance(view, TifffsError):
            # a fresh exception each time: re-raising one instance would grow its traceback
            raise type(view)(*view.args)
        return view

    def _build_view(self, path: str, version: SourceVersion,
                    spec: View) -> VirtualTiff | TifffsError:
        source = self._sources.get((path, version), lambda: _open_source(path))
        if isinstance(source, TifffsError):
            return source
        try:
            return VirtualTiff(source, spec, self.bands)
        except TifffsError as exc:
            return exc


def _open_source(path: str) -> SourceTiff | TifffsError:
    try:
        return SourceTiff.open(path)
    except TifffsError as exc:
        return exc
