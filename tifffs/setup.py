"""Assembling a mount's parts: band cache, render pool, index, catalog, tree."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import resource

from tifffs.ahead import DescribeAhead
from tifffs.catalog import Catalog
from tifffs.index import open_index
from tifffs.render import RenderPool
from tifffs.tree import ViewTree
from tifffs.views import View
from tifffs.virtual import band_cache

log = logging.getLogger("tifffs")


def build_tree(source: str, views: tuple[View, ...], cache_bytes: int,
               index_dir: str | None, render_threads: int | None = None,
               describe_ahead: bool = False) -> ViewTree:
    """The tree of a mount; ``index_dir`` None: no index, "": the default folder;
    ``render_threads`` None: one per core this process may run on; ``describe_ahead``:
    large new folders are described by a helper process as they are listed."""
    index = None if index_dir is None else open_index(index_dir or None)
    catalog = Catalog(band_cache(cache_bytes), RenderPool(render_threads), index,
                      inside=os.path.realpath(source))
    tree = ViewTree(source, views, catalog)
    if describe_ahead:
        catalog.ahead = DescribeAhead(tree.root, index and os.path.dirname(index.path),
                                      catalog.remember_size)
    return tree


#: glibc's mallopt parameter for the number of malloc arenas.
_M_ARENA_MAX = -8


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Keep glibc to a few malloc arenas. By default every thread that allocates may get
    an arena of its own (up to 8 per core), and the freed band buffers of a dozen FUSE
    threads then stay resident in a dozen arenas. A no-op where glibc is not the libc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(_M_ARENA_MAX, arenas)
    except (OSError, AttributeError):
        pass


def raise_descriptor_limit() -> int:
    """Raise the soft limit of open files to the hard limit; the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, hard,
                        exc)
    return soft
