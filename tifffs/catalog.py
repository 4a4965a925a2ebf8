"""The catalog: source path + stat -> description, view sizes, and open views.

Descriptions and view sizes come from memory, else from the index on disk, else from
the file itself (opened, described, closed at once: a ``stat`` or a listing leaves no
descriptor open). A source is held open only while a handle reads it: handles of one
version share one descriptor, closed with the last of them, so a replaced or deleted
source is never held once nobody reads it. Errors are cached per version like values,
so a broken source is parsed and reported once.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tifffs.ahead import DescribeAhead
from tifffs.cache import LruCache
from tifffs.describe import describe
from tifffs.errors import BrokenSource, TifffsError, UnsupportedSource
from tifffs.index import Index
from tifffs.pages import FileDescription, SourceVersion
from tifffs.pixels import SourceFile
from tifffs.plan import ViewPlan, plan_view
from tifffs.problems import printable
from tifffs.render import RenderPool
from tifffs.series import SeriesInfo, series_of
from tifffs.sources import open_regular
from tifffs.views import View
from tifffs.virtual import ViewReader, VirtualTiff

log = logging.getLogger("tifffs")

#: Descriptions kept in memory (the index keeps all of them on disk).
MAX_DESCRIPTIONS = 1024
#: View sizes kept in memory: a few listings of large folders.
MAX_SIZES = 65536
#: View plans (layout and page plans) kept in memory.
MAX_PLANS = 256
_ERRORS = {cls.__name__: cls for cls in (BrokenSource, UnsupportedSource, TifffsError)}


@dataclass
class _Held:
    source: SourceFile
    handles: int = 0


class Catalog:
    """Finds descriptions, sizes and views of source files for their current version."""

    def __init__(self, bands: LruCache[np.ndarray], pool: RenderPool,
                 index: Index | None = None, inside: str | None = None) -> None:
        self.bands = bands
        self.inside = inside  # every source opened must lie in this resolved folder
        self.pool = pool
        self.index = index
        self._descriptions: LruCache[FileDescription | TifffsError] = \
            LruCache(MAX_DESCRIPTIONS)
        self._sizes: LruCache[int] = LruCache(MAX_SIZES)
        self._plans: LruCache[ViewPlan] = LruCache(MAX_PLANS)
        self._series: LruCache[SeriesInfo] = LruCache(MAX_PLANS)
        self._held: dict[tuple[str, SourceVersion], _Held] = {}
        self._lock = threading.Lock()
        # what the index had when a folder's first stat asked: the sizes of a view (by
        # folder and view), the version each description is of (by folder)
        self._folder_sizes: LruCache[dict] = LruCache(MAX_SIZES, weigh=_entries)
        self._described: LruCache[dict[str, int]] = LruCache(MAX_SIZES, weigh=_entries)
        self._chunked: LruCache[bool] = LruCache(64)  # folders a listing read a chunk of
        self.ahead: DescribeAhead | None = None  # describes large new folders in a helper

    # -- metadata, without holding the file
    def size(self, path: str, st: os.stat_result, view: View) -> int:
        """The exact size of ``view`` of the source at ``path`` whose stat is ``st``."""
        version = SourceVersion.of(st)
        key = (path, version, view.name)
        size = self._sizes.peek(key)
        if size is None:
            size = self.indexed_size(path, version, view)
            if size is None:
                size = self._sizes.get(key, lambda: self._size(path, version, view))
        return size

    def indexed_size(self, path: str, version: SourceVersion, view: View) -> int | None:
        """The index's size of ``view`` of ``path`` at ``version``, if it has one."""
        indexed = self._indexed_sizes(os.path.dirname(path), view).get(path)
        return indexed[1] if indexed is not None and indexed[0] == version else None

    def _size(self, path: str, version: SourceVersion, view: View) -> int:
        if self.ahead is not None:
            self.ahead.missed(path, view)
        description = self.description(path, version)
        if _needs_series(view):
            size = self._plan_with_file(path, version, view).size
        else:
            size = self._shared_plan(description, view).size
        if self.index is not None:
            self.index.put_size(path, version, view.name, size)
        return size

    def remember_size(self, path: str, version: SourceVersion, view: str, size: int) -> bool:
        """Keep a size found by a helper; False when this process has found it already."""
        key = (path, version, view)
        if self._sizes.peek(key) is not None:
            return False
        self._sizes.put(key, size)
        return True

    def listed(self, folder: str, view: View, names: Sequence[bytes]) -> None:
        """A listing of ``view``'s source ``folder`` showed these ``names``. What
        the index had for the folder is read afresh by the stats that follow: it may
        have been read before this process (or its helper, or another mount) wrote the
        folder's rows, and a folder larger than the sizes kept in memory would
        otherwise be described anew."""
        key = (folder, view.name)
        if self.index is not None and (self._folder_sizes.peek(key) is not None
                                       or self._described.peek(folder) is not None):
            self.index.flush()  # the rows this process has queued belong in it
            self._folder_sizes.discard(key)
            self._chunked.discard(key)
            self._described.discard(folder)
        if self.ahead is not None:
            self.ahead.listed(folder, view, names)

    def _indexed_sizes(self, directory: str, view: View) -> dict[str, tuple[tuple, int]]:
        """The index's sizes of ``view`` for the files of ``directory`` (path -> version,
        size), read at the first ``stat`` there that memory cannot answer: one query
        instead of one per ``stat`` of a listing."""
        if self.index is None:
            return {}
        return self._folder_sizes.get((directory, view.name),
                                      lambda: self.index.sizes_in(directory, view.name))

    def prepare_sizes(self, directory: str, paths: list[str], view: View) -> None:
        """Ready the index's sizes of ``paths`` (files of ``directory`` a listing is
        about to give with their attributes). The first such chunk of a folder reads
        just those rows, later chunks the whole folder: a listing that stops after its
        first chunk (``find``'s, which needs no sizes) does not read 20,000 rows."""
        if self.index is None or self._folder_sizes.peek((directory, view.name)) is not None:
            return
        if self._chunked.peek((directory, view.name)) is not None:
            self._indexed_sizes(directory, view)
            return
        self._chunked.put((directory, view.name), True)
        for path, (version, size) in self.index.sizes_of(paths, view.name).items():
            self._sizes.put((path, SourceVersion(*version), view.name), size)

    def _may_be_described(self, path: str, version: SourceVersion) -> bool:
        """False when the index had no description of ``path`` at ``version`` when its
        folder was first asked about: a first listing of a new folder, or one of
        touched files, looks none up."""
        directory = os.path.dirname(path)
        versions = self._described.get(directory, lambda: self.index.versions_in(directory))
        return versions.get(path) == hash(version)

    def shutdown(self) -> None:
        """Stop rendering and describing ahead."""
        if self.ahead is not None:
            self.ahead.stop()
        self.pool.shutdown()

    def description(self, path: str, version: SourceVersion,
                    fd: int | None = None) -> FileDescription:
        """The description of ``path`` at ``version`` (raises the source's error)."""
        value = self._descriptions.get((path, version),
                                       lambda: self._describe(path, version, fd))
        if isinstance(value, TifffsError):
            # a fresh exception each time: re-raising one instance would grow its traceback
            raise type(value)(*value.args)
        return value

    def _describe(self, path: str, version: SourceVersion,
                  fd: int | None) -> FileDescription | TifffsError:
        if self.index is not None and self._may_be_described(path, version):
            entry = self.index.lookup(path, version)
            if entry is not None:
                if entry.error is not None:
                    kind, _, message = entry.error.partition(":")
                    return _ERRORS.get(kind, TifffsError)(message)
                try:
                    return _logged(path, FileDescription.from_bytes(entry.description or b""))
                except ValueError:
                    pass  # described anew below
        try:
            description = self._describe_file(path, version, fd)
        except TifffsError as exc:
            if self.index is not None:
                self.index.put(path, version, None, f"{type(exc).__name__}:{exc}")
            return exc
        if self.index is not None:
            self.index.put(path, version, description.to_bytes, None, _weight(description))
            described = self._described.peek(os.path.dirname(path))
            if described is not None and path in described:  # replaced, never grown
                described[path] = hash(version)  # read from the index once evicted here
        return _logged(path, description)

    def _describe_file(self, path: str, version: SourceVersion,
                       fd: int | None) -> FileDescription:
        own = fd is None
        if own:
            fd = open_regular(path, self.inside)
        try:
            if SourceVersion.of(os.fstat(fd)) != version:
                raise BrokenSource("the source changed while it was being read; retry")
            return describe(fd, version.size, os.path.basename(path))
        finally:
            if own:
                os.close(fd)

    def _plan_with_file(self, path: str, version: SourceVersion, view: View) -> ViewPlan:
        source = self._hold(path)
        try:
            if source.version != version:
                raise BrokenSource("the source changed while it was being read; retry")
            return self._plan(source, view)
        finally:
            self._release(source)

    def _plan(self, source: SourceFile, view: View) -> ViewPlan:
        key = (source.path, source.version)

        def series() -> SeriesInfo:
            return self._series.get(key, lambda: series_of(source.fd, source.path,
                                                           source.description))

        if not _needs_series(view):
            return self._shared_plan(source.description, view)
        return self._plans.get((*key, view), lambda: plan_view(source.description, view,
                                                                  series))

    def _shared_plan(self, description: FileDescription, view: View) -> ViewPlan:
        """The plan of a view that needs no series. It depends on the description but
        for where the pixels lie, so alike files (a folder of one acquisition) share it,
        and its layout, instead of planning each."""
        return self._plans.get((description.layout_key(), view),
                               lambda: plan_view(description, view, _no_series))

    # -- open views, holding the file
    def open(self, path: str, view: View) -> ViewReader:
        """A reader of ``view`` of the current version of ``path``; ``close`` it."""
        source = self._hold(path)
        try:
            virtual = VirtualTiff(source, view, self._plan(source, view), self.bands,
                                  self.pool)
        except BaseException:
            self._release(source)
            raise
        return virtual.reader()

    def close(self, reader: ViewReader) -> None:
        """Let go of the source a reader held (closed with the last reader)."""
        self._release(reader.view.source)

    def _hold(self, path: str) -> SourceFile:
        fd = open_regular(path, self.inside)
        try:
            version = SourceVersion.of(os.fstat(fd))
            with self._lock:
                held = self._held.get((path, version))
                if held is not None:
                    held.handles += 1
                    os.close(fd)
                    return held.source
            description = self.description(path, version, fd)
        except BaseException:
            os.close(fd)
            raise
        # tifffs reads exactly the rows it renders and renders ahead itself: the kernel's
        # read-ahead past them would only load pages that a look at one page never needs
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        with self._lock:
            held = self._held.get((path, version))
            if held is None:
                held = self._held[(path, version)] = _Held(SourceFile(path, fd, version,
                                                                      description))
            else:
                os.close(fd)  # another thread opened it meanwhile
            held.handles += 1
            return held.source

    def _release(self, source: SourceFile) -> None:
        key = (source.path, source.version)
        with self._lock:
            held = self._held.get(key)
            if held is None or held.source is not source:
                return
            held.handles -= 1
            if held.handles > 0:
                return
            del self._held[key]
        source.close()

    def held_sources(self) -> int:
        """Source files open now (for the stats file and tests)."""
        with self._lock:
            return len(self._held)


def _entries(folder: dict) -> int:
    """The weight of a folder's map in a cache: its entries, and itself (so that empty
    maps of many folders count too)."""
    return len(folder) + 1


def _weight(description: FileDescription) -> int:
    """About the memory ``description`` holds while its index row waits (measured: 1.5 KB
    for a file of two pages; the segment tables of tiled pages add to it)."""
    return sum(768 + page.offsets.nbytes + page.bytecounts.nbytes
               for page in description.pages)


def _logged(path: str, description: FileDescription) -> FileDescription:
    """``description``, once its IFD chain's break (if any) is logged: whether it was
    described now or read from the index (which a helper or ``tifffs index`` wrote)."""
    if description.truncated:
        count = len(description.pages)
        log.warning("%s: %s: serving the %d page%s before it", printable(path),
                    description.truncated, count, "" if count == 1 else "s")
    return description


def _no_series() -> SeriesInfo:
    raise AssertionError("plain factor views do not read series")


def _needs_series(view: View) -> bool:
    """Whether the plan of ``view`` reads the source's series (Z runs, pyramid levels)."""
    return view.z_factor > 1 or view.use_levels
