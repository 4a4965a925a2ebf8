"""How the kernel may cache the pages of an open file: one version per path.

The kernel caches a file's pages per path, whichever open handle read them. So a handle
opened while handles of another version of the same path are open reads around that
cache (direct I/O); otherwise the cache is kept if it holds this very version, else
dropped. A file whose size is exact from metadata needs no direct I/O otherwise.
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
        self._open: dict[str, dict[SourceVersion, int]] = {}

    def opened(self, path: str, version: SourceVersion) -> Caching:
        """Record a handle of ``version`` of ``path``; how it must use the cache."""
        with self._lock:
            versions = self._open.setdefault(path, {})
            others = any(other != version for other in versions)
            versions[version] = versions.get(version, 0) + 1
            if others:
                return Caching(direct_io=True, keep_cache=True)  # leave their pages alone
            keep = self._served.get(path) == version
            self._served[path] = version
            self._served.move_to_end(path)
            if len(self._served) > SERVED_VERSIONS:
                self._served.popitem(last=False)
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
