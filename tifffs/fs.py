"""The FUSE adapter: each operation maps a path, delegates to ``ViewTree``, maps errors.

It and ``fs3`` (the same operations over libfuse 3) are the only modules that import a
FUSE binding. Paths cross it as latin-1
strings (one character per byte), so names that are not valid UTF-8 survive the round
trip; they become OS strings with ``os.fsdecode`` here. The kernel keeps attributes for
a second (``attr_timeout=1``); a ``getattr`` with a handle answers for that handle's own
version.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from fuse import FUSE, FuseOSError, Operations, c_stat

from tifffs.errors import TifffsError
from tifffs.listing import NO_ATTRIBUTES, Listing
from tifffs.problems import printable
from tifffs.threadstate import keep_thread_state
from tifffs.tree import Handle, ViewTree
from tifffs.virtual import Piece

log = logging.getLogger("tifffs")

#: Operations that fail often and harmlessly; not logged as problems.
_QUIET_ERRNOS = {errno.ENOENT, errno.ENOTDIR, errno.EROFS, errno.ENODATA, errno.ENOTSUP,
                 errno.EISDIR}
#: libfuse options tifffs sets unless given. The kernel keeps attributes for 1 s: with
#: 0 it asks again for every folder of a path on every access (default_permissions
#: checks them), eight requests per file of an ``ls -l``. Inode numbers are tifffs's own
#: (stable across mounts, for NFS and rsync).
DEFAULT_FUSE_OPTIONS: dict[str, Any] = {"attr_timeout": "1", "entry_timeout": "1",
                                        "use_ino": True}

#: Listings from this many entries on get a hint at --libfuse 3 in the log (once).
LARGE_FOLDER = 5000


def _os_path(fuse_path: str) -> str:
    return os.fsdecode(fuse_path.encode("latin-1"))


class TifffsOperations(Operations):
    """Read-only FUSE operations over a ``ViewTree``."""

    use_ns = True  # times in integer nanoseconds: the source's mtime exactly
    # Not implemented, so libfuse answers ENOSYS and the kernel stops asking (with an
    # error such as ENOTSUP it would ask again for every file `ls -l` shows).
    getxattr = listxattr = None
    # Nothing to do: libfuse then needs no round trip into Python.
    opendir = releasedir = flush = None

    def __init__(self, tree: ViewTree, on_ready: Callable[[], None] | None = None) -> None:
        self.tree = tree
        self._on_ready = on_ready
        self._handles: dict[int, tuple[str, Handle]] = {}
        self._next_handle = 1
        self._lock = threading.Lock()

    # -- error mapping: the one place where exceptions become errno values
    def __call__(self, op: str, *args: Any) -> Any:
        """Run one request; with the log at DEBUG, trace it in one line."""
        keep_thread_state()
        if not log.isEnabledFor(logging.DEBUG):
            return self._call(op, args)
        started = time.perf_counter()
        outcome = "error"
        try:
            result = self._call(op, args)
            outcome = (f"{sum(len(piece) for piece in result)} bytes" if op == "read"
                       else "ok")
            return result
        except FuseOSError as exc:
            outcome = errno.errorcode.get(exc.errno, str(exc.errno))
            raise
        finally:
            log.debug("%s %s%s -> %s in %.3f ms", op, _trace_path(args),
                      _trace_detail(op, args), outcome, (time.perf_counter() - started) * 1e3)

    def _call(self, op: str, args: tuple) -> Any:
        try:
            return super().__call__(op, *args)
        except FuseOSError:
            raise
        except TifffsError as exc:
            self._report(args, str(exc), exc.errno_code)
            raise FuseOSError(exc.errno_code) from None
        except OSError as exc:
            code = exc.errno or errno.EIO
            if code not in _QUIET_ERRNOS:
                self._report(args, exc.strerror or str(exc), code)
            raise FuseOSError(code) from None
        except Exception as exc:
            self._report(args, f"internal error in {op}: {exc!r} (please report it; "
                         "--debug logs the traceback)", errno.EIO)
            log.debug("traceback of the internal error in %s", op, exc_info=True)
            raise FuseOSError(errno.EIO) from None

    def _report(self, args: tuple, cause: str, code: int) -> None:
        path = _os_path(args[0]) if args and isinstance(args[0], str) else "?"
        self.tree.problems.report(self.tree.source_of(path), cause,
                                  errno.errorcode.get(code, str(code)))

    # -- lifecycle
    def init(self, path: str) -> None:
        if self._on_ready is not None:
            self._on_ready()

    def destroy(self, path: str) -> None:
        with self._lock:
            handles, self._handles = self._handles, {}
        for _, handle in handles.values():
            handle.close()
        self.tree.caching.forget_open()
        self.tree.catalog.shutdown()
        if self.tree.catalog.index is not None:
            self.tree.catalog.index.close()

    # -- metadata
    def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
        open_file = self._handles.get(fh.fh) if fh else None  # fh: NULL or fuse_file_info
        if open_file is not None and open_file[1].version is not None:
            return open_file[1].attributes()
        return self.tree.attributes(_os_path(path))

    def readdir(self, path: str, fh: Any) -> Listing:
        """The names (as bytes, which the adapters hand to libfuse as they are) and the
        type and inode of each."""
        return self.tree.list(_os_path(path))

    def statfs(self, path: str) -> dict[str, int]:
        return self.tree.statfs()

    def access(self, path: str, amode: int) -> int:
        if amode & os.W_OK:
            raise FuseOSError(errno.EROFS)
        self.tree.attributes(_os_path(path))
        return 0

    # -- files
    def open(self, path: str, fi: Any) -> int:
        if fi.flags & os.O_ACCMODE != os.O_RDONLY:
            raise FuseOSError(errno.EROFS)
        handle = self.tree.open(_os_path(path))
        if handle.version is None:
            fi.direct_io = 1  # the stats file: its size is unknown until it is read
        else:
            caching = self.tree.caching.opened(_os_path(path), handle.version)
            fi.direct_io, fi.keep_cache = int(caching.direct_io), int(caching.keep_cache)
        with self._lock:
            fi.fh = self._next_handle
            self._next_handle += 1
            self._handles[fi.fh] = (path, handle)
        return 0

    def read(self, path: str, size: int, offset: int, fi: Any) -> Sequence[Piece]:
        """The bytes as pieces, which the binding copies into libfuse's buffer."""
        pieces = self._handles[fi.fh][1].read_pieces(offset, size)
        self.tree.counters.add(reads=1, bytes_served=sum(len(piece) for piece in pieces))
        return pieces

    def release(self, path: str, fi: Any) -> int:
        with self._lock:
            entry = self._handles.pop(fi.fh, None)
        if entry is not None:
            open_path, handle = entry
            if handle.version is not None:
                self.tree.caching.closed(_os_path(open_path), handle.version)
            handle.close()
        return 0


def _trace_path(args: tuple) -> str:
    """The path of a request, printable (the debug trace is one line per request)."""
    return printable(_os_path(args[0])) if args and isinstance(args[0], str) else "-"


def _trace_detail(op: str, args: tuple) -> str:
    """The arguments of a request that the debug trace shows besides the path."""
    if op == "read" and len(args) >= 3:
        return f" offset={args[2]} size={args[1]}"
    if op in ("open", "release", "getattr") and len(args) >= 2 and hasattr(args[1], "fh"):
        return f" fh={args[1].fh}"
    return ""


def copy_pieces(pieces: Sequence[Piece], buffer: Any, size: int) -> int:
    """Copy a read's pieces into libfuse's reply ``buffer`` (a ctypes pointer of ``size``
    bytes), each straight from where it lies; the number of bytes."""
    address = ctypes.cast(buffer, ctypes.c_void_p).value
    position = 0
    for piece in pieces:
        length = len(piece)
        if position + length > size:
            raise ValueError(f"a read of {size} bytes got {position + length}")
        source = piece if isinstance(piece, bytes) else piece.ctypes.data
        ctypes.memmove(address + position, source, length)
        position += length
    return position


class _FUSE(FUSE):
    """fusepy's binding with a ``read`` that copies each piece straight into libfuse's
    buffer (fusepy's own copies a bytes object, which a read would first have to join)
    and a leaner ``readdir``: one ``stat`` buffer for the whole listing, only the type
    and inode set (libfuse copies them for each entry). fusepy's own builds and fills a
    new structure from a dict per entry, most of the cost of listing a folder of 20,000
    files."""

    _hinted = False

    def read(self, path: Any, buf: Any, size: int, offset: int, fip: Any) -> int:
        pieces = self.operations("read", self._decode_optional_path(path), size, offset,
                                 fip.contents)
        return copy_pieces(pieces, buf, size)

    def readdir(self, path: Any, buf: Any, filler: Any, offset: int, fip: Any) -> int:
        entry_stat = c_stat()
        listing: Listing = self.operations("readdir", self._decode_optional_path(path),
                                           fip.contents.fh)
        if len(listing) > LARGE_FOLDER and not self._hinted:
            self._hinted = True
            log.info("a folder of %d entries: with --libfuse 3 (-o libfuse=3) listings "
                     "carry each file's size, and ls -l of such a folder is several times "
                     "faster", len(listing) - listing.modes.count(NO_ATTRIBUTES))
        for name, mode, inode in zip(listing.names, listing.modes, listing.inodes):
            if mode != NO_ATTRIBUTES:
                entry_stat.st_mode = mode
                entry_stat.st_ino = inode
                stat_pointer = entry_stat
            else:
                stat_pointer = None
            if filler(buf, name, stat_pointer, 0) != 0:
                break
        return 0


def mount(operations: TifffsOperations, mountpoint: str, fuse_options: dict[str, Any]) -> None:
    """Mount in the foreground until unmounted or signalled (SIGINT/SIGTERM unmount)."""
    root = operations.tree.root
    _FUSE(operations, mountpoint, foreground=True, nothreads=False, raw_fi=True,
         encoding="latin-1", ro=True, default_permissions=True, subtype="tifffs",
         fsname=root.replace("\\", "\\\\").replace(",", "\\,"),
         **{**DEFAULT_FUSE_OPTIONS, **fuse_options})
