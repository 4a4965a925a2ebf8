"""How the kernel may cache the pages of an open file: one version per path.

The kernel caches a file's pages per path, whichever open handle read them. So a handle
opened while handles of another version of the same path are open reads around that
cache (direct I/O); otherwise the cache is kept if it holds this very version, else
dropped. The kernel also keeps a file's size for ``attr_timeout`` and ends cached reads
there: a handle of a version other than the one whose size was last given reads
directly too, to its own end. A file whose size is exact from metadata needs no direct
I/O otherwise.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import NamedTuple

from tifffs.pages import SourceVersion

#: How many paths remember the version the kernel may cache (for keeping that cache).
SERVED_VERSIONS = 65536


class Caching(NamedTuple):
    direct_io: bool
    keep_cache: bool


class KernelCachePolicy:
    """Tracks open handles per path and version; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._served: OrderedDict[str, SourceVersion] = OrderedDict()
        self._reported: OrderedDict[str, SourceVersion] = OrderedDict()
        self._open: dict[str, dict[SourceVersion, int]] = {}

    def reported(self, path: str, version: SourceVersion) -> None:
        """Record that the attributes (size) of ``version`` were given for ``path``: the
        kernel may go on using them for ``attr_timeout``."""
        with self._lock:
            _remember(self._reported, path, version)

    def opened(self, path: str, version: SourceVersion) -> Caching:
        """Record a handle of ``version`` of ``path``; how it must use the cache."""
        with self._lock:
            versions = self._open.setdefault(path, {})
            others = any(other != version for other in versions)
            versions[version] = versions.get(version, 0) + 1
            if others:
                return Caching(direct_io=True, keep_cache=True)  # leave their pages alone
            reported = self._reported.get(path)
            if reported is not None and reported != version:
                # the kernel may still hold the size of another version, and would end
                # reads there; direct reads end where this version ends
                return Caching(direct_io=True, keep_cache=False)
            keep = self._served.get(path) == version
            _remember(self._served, path, version)
            return Caching(direct_io=False, keep_cache=keep)

    def closed(self, path: str, version: SourceVersion) -> None:
        with self._lock:
            versions = self._open.get(path)
            if not versions or version not in versions:
                return
            versions[version] -= 1
            if not versions[version]:
                del versions[version]
            if not versions:
                del self._open[path]

    def forget_open(self) -> None:
        with self._lock:
            self._open.clear()


def _remember(versions: OrderedDict[str, SourceVersion], path: str,
              version: SourceVersion) -> None:
    versions[path] = version
    versions.move_to_end(path)
    if len(versions) > SERVED_VERSIONS:
        versions.popitem(last=False)
