"""The FUSE adapter: each operation maps a mount path and delegates.

This is the only module that imports the FUSE binding. Paths cross it as latin-1
strings (one character per byte), so names that are not valid UTF-8 survive the round
trip; they are turned into OS strings with ``os.fsdecode`` here.

The kernel caches a file's pages per path, whichever open handle read them, so a
handle opened while handles of another version of the same path are open reads
around that cache (direct I/O): the cache only ever holds one version. Attributes
are not cached by the kernel (``attr_timeout=0``), so a file that grows or shrinks
is read to its current end; when a read goes past the size the kernel knows, it asks
with the handle, which answers for its own version (a source replaced meanwhile).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
import time
from collections import OrderedDict
from typing import Any, Callable, NamedTuple, Protocol

from fuse import FUSE, FuseOSError, Operations

from tifffs.catalog import Catalog
from tifffs.errors import TifffsError
from tifffs.problems import ProblemLog, printable
from tifffs.source import SourceVersion
from tifffs.stats import STATS_DIR, STATS_FILE, ReadCounters, format_stats
from tifffs.views import MountPath, View, is_inside, is_tiff_name, parse_mount_path, source_path
from tifffs.virtual import VirtualTiff

log = logging.getLogger("tifffs")

#: Reported as st_blksize so that readers (cp, Python) make large reads.
BLOCK_SIZE = 1 << 20
WRITE_BITS = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
#: Operations that fail often and harmlessly; not logged as problems.
_QUIET_ERRNOS = {errno.ENOENT, errno.ENOTDIR, errno.EROFS, errno.ENODATA, errno.ENOTSUP}
#: How many paths remember the version the kernel may cache (for keeping that cache).
_SERVED_VERSIONS = 65536
#: libfuse options tifffs sets unless given: attributes are asked for on every stat.
DEFAULT_FUSE_OPTIONS: dict[str, str] = {"attr_timeout": "0"}


class _Readable(Protocol):
    def read(self, offset: int, length: int) -> bytes: ...


class _PassthroughFile:
    """A non-TIFF source file served unchanged."""

    def __init__(self, path: str) -> None:
        # O_NONBLOCK: a fifo put in the file's place must not block the open
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        st = os.fstat(self.fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(self.fd)
            raise FuseOSError(errno.ENOENT)  # not shown, as in getattr
        self.version = SourceVersion.of(st)

    def read(self, offset: int, length: int) -> bytes:
        return os.pread(self.fd, length, offset)

    def close(self) -> None:
        os.close(self.fd)


class _Snapshot:
    """Bytes fixed at open (the stats file)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, offset: int, length: int) -> bytes:
        return self.data[offset:offset + length]


class _OpenFile(NamedTuple):
    """An open handle: its mount path, the source version it serves, what it reads."""

    path: str
    version: SourceVersion | None  # None for the stats file
    file: _Readable


def _os_path(fuse_path: str) -> str:
    return os.fsdecode(fuse_path.encode("latin-1"))


def _fuse_name(os_name: str) -> str:
    return os.fsencode(os_name).decode("latin-1")


class TifffsOperations(Operations):
    """Read-only FUSE operations over ``source_root`` with one directory per view."""

    use_ns = True  # times in integer nanoseconds: the source's mtime exactly

    def __init__(self, source_root: str, views: tuple[View, ...], catalog: Catalog,
                 on_ready: Callable[[], None] | None = None) -> None:
        self.root = os.path.abspath(source_root)
        self.real_root = os.path.realpath(source_root)
        self.views = {v.name: v for v in views}
        self.catalog = catalog
        self.problems = ProblemLog()
        self._on_ready = on_ready
        self._handles: dict[int, _OpenFile] = {}
        self._next_handle = 1
        self._lock = threading.Lock()
        # path -> the version whose pages the kernel may cache for it
        self._served: OrderedDict[str, SourceVersion] = OrderedDict()
        # path -> {version: number of open handles}
        self._open_versions: dict[str, dict[SourceVersion, int]] = {}
        self.counters = ReadCounters()

    # -- error mapping: the one place where exceptions become errno values
    def __call__(self, op: str, *args: Any) -> Any:
        """Run one request; with the log at DEBUG, trace it in one line."""
        if not log.isEnabledFor(logging.DEBUG):
            return self._call(op, args)
        started = time.perf_counter()
        outcome = "error"
        try:
            result = self._call(op, args)
            outcome = f"{len(result)} bytes" if op == "read" else "ok"
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
            self._report(op, args, str(exc), exc.errno_code)
            raise FuseOSError(exc.errno_code) from None
        except OSError as exc:
            code = exc.errno or errno.EIO
            if code not in _QUIET_ERRNOS:
                self._report(op, args, exc.strerror or str(exc), code)
            raise FuseOSError(code) from None
        except Exception as exc:  # a bug: keep the mount up, say where
            log.exception("internal error in %s%r", op, args[:1])
            self._report(op, args, f"internal error: {exc!r}", errno.EIO)
            raise FuseOSError(errno.EIO) from None

    def _report(self, op: str, args: tuple, cause: str, code: int) -> None:
        path = args[0] if args and isinstance(args[0], str) else "?"
        where = self._describe(path)
        self.problems.report(where, cause, errno.errorcode.get(code, str(code)))

    def _describe(self, fuse_path: str) -> str:
        mount_path = parse_mount_path(_os_path(fuse_path), self.views)
        if mount_path is None or mount_path.is_root:
            return fuse_path
        return source_path(self.root, mount_path.relative)

    # -- path resolution
    def _resolve(self, fuse_path: str) -> tuple[MountPath, str]:
        mount_path = parse_mount_path(_os_path(fuse_path), self.views)
        if mount_path is None:
            raise FuseOSError(errno.ENOENT)
        path = source_path(self.root, mount_path.relative)
        if mount_path.relative and not is_inside(os.path.realpath(path), self.real_root):
            raise FuseOSError(errno.ENOENT)  # a symlink leading out of SOURCE
        return mount_path, path

    # -- lifecycle
    def init(self, path: str) -> None:
        if self._on_ready is not None:
            self._on_ready()

    def destroy(self, path: str) -> None:
        with self._lock:
            handles, self._handles = self._handles, {}
            self._open_versions.clear()
        for handle in handles.values():
            if isinstance(handle.file, _PassthroughFile):
                handle.file.close()

    # -- metadata
    def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
        if path in (STATS_DIR, STATS_FILE):
            return self._stats_attributes(path)
        open_file = self._handles.get(fh.fh) if fh else None  # fh: NULL or fuse_file_info
        if open_file is not None and open_file.version is not None:
            return self._open_file_attributes(open_file.file)  # its own version
        mount_path, source = self._resolve(path)
        st = os.stat(source)
        attrs = _attributes(st)
        if mount_path.is_root:
            attrs.update(st_mode=stat.S_IFDIR | 0o555, st_nlink=3 + len(self.views))
        elif stat.S_ISDIR(st.st_mode):
            pass
        elif not stat.S_ISREG(st.st_mode):
            raise FuseOSError(errno.ENOENT)  # fifos, sockets, devices are not shown
        elif is_tiff_name(mount_path.relative):
            attrs["st_size"] = self.catalog.view(source, mount_path.view).size
        attrs["st_blocks"] = -(-attrs["st_size"] // 512)
        return attrs

    def _open_file_attributes(self, file: _Readable) -> dict[str, Any]:
        """Attributes of the version an open view or file serves, even if replaced since."""
        if isinstance(file, VirtualTiff):
            attrs = _attributes(os.fstat(file.source.fd))
            attrs["st_size"] = file.size
        else:
            assert isinstance(file, _PassthroughFile)
            attrs = _attributes(os.fstat(file.fd))
        attrs["st_blocks"] = -(-attrs["st_size"] // 512)
        return attrs

    def readdir(self, path: str, fh: Any) -> list[str]:
        if path == STATS_DIR:
            return [".", "..", os.path.basename(STATS_FILE)]
        mount_path, source = self._resolve(path)
        if mount_path.is_root:
            return [".", "..", STATS_DIR[1:], *self.views]
        names = [".", ".."]
        above = self._real_directories(mount_path.relative)
        with os.scandir(source) as entries:
            for entry in entries:
                if self._listed(entry, above):
                    names.append(_fuse_name(entry.name))
        return names

    def _listed(self, entry: os.DirEntry, above: list[str]) -> bool:
        """Regular files and directories; symlinks only to inside SOURCE, and not to a
        directory the listing is already in (recursive tools would never finish)."""
        try:
            if entry.is_symlink():
                target = os.path.realpath(entry.path)
                if not is_inside(target, self.real_root):
                    return False
                if entry.is_dir() and any(is_inside(d, target) for d in above):
                    return False
            return entry.is_dir() or entry.is_file()
        except OSError:
            return False

    def _real_directories(self, relative: str) -> list[str]:
        """Resolved paths of SOURCE and of every directory down to ``relative``."""
        parts = relative.split("/") if relative else []
        return [self.real_root] + [
            os.path.realpath(source_path(self.root, "/".join(parts[:i])))
            for i in range(1, len(parts) + 1)]

    def statfs(self, path: str) -> dict[str, int]:
        sv = os.statvfs(self.root)
        return {"f_bsize": BLOCK_SIZE, "f_frsize": sv.f_frsize, "f_blocks": sv.f_blocks,
                "f_bfree": 0, "f_bavail": 0, "f_files": sv.f_files, "f_ffree": 0,
                "f_favail": 0, "f_namemax": sv.f_namemax}

    def access(self, path: str, amode: int) -> int:
        if amode & os.W_OK:
            raise FuseOSError(errno.EROFS)
        self.getattr(path)
        return 0

    # -- statistics
    def _stats_attributes(self, path: str) -> dict[str, Any]:
        st = os.stat(self.root)
        mode = stat.S_IFDIR | 0o555 if path == STATS_DIR else stat.S_IFREG | 0o444
        return {"st_mode": mode, "st_nlink": 2 if path == STATS_DIR else 1, "st_size": 0,
                "st_uid": st.st_uid, "st_gid": st.st_gid, "st_mtime": st.st_mtime_ns,
                "st_atime": st.st_atime_ns, "st_ctime": st.st_ctime_ns,
                "st_blksize": BLOCK_SIZE}

    def _stats_text(self) -> str:
        return format_stats(self.counters, self.catalog.bands.stats(),
                            self.catalog.bands.capacity, self.problems.errors_per_file())

    # -- files
    def open(self, path: str, fi: Any) -> int:
        if fi.flags & os.O_ACCMODE != os.O_RDONLY:
            raise FuseOSError(errno.EROFS)
        self.counters.add(opens=1)
        if path == STATS_FILE:
            fi.direct_io = 1  # its size is unknown until it is read
            return self._add_handle(fi, _OpenFile(path, None, _Snapshot(
                self._stats_text().encode())))
        mount_path, source = self._resolve(path)
        if mount_path.is_root or not mount_path.relative:
            raise FuseOSError(errno.EISDIR)
        handle: Any
        if is_tiff_name(mount_path.relative):
            handle = self.catalog.view(source, mount_path.view)
            version = handle.source.version
        else:
            handle = _PassthroughFile(source)
            version = handle.version
        return self._add_handle(fi, _OpenFile(path, version, handle))

    def _add_handle(self, fi: Any, handle: _OpenFile) -> int:
        with self._lock:
            if handle.version is not None:
                self._choose_caching(fi, handle.path, handle.version)
                versions = self._open_versions.setdefault(handle.path, {})
                versions[handle.version] = versions.get(handle.version, 0) + 1
            fi.fh = self._next_handle
            self._next_handle += 1
            self._handles[fi.fh] = handle
        return 0

    def _choose_caching(self, fi: Any, path: str, version: SourceVersion) -> None:
        """Keep one version in the kernel's page cache of ``path`` (with the lock held).

        While handles of another version are open, this one reads around the cache;
        otherwise the cache is kept if it holds this version, else dropped.
        """
        if any(other != version for other in self._open_versions.get(path, ())):
            fi.direct_io = 1
            fi.keep_cache = 1  # leave the other version's pages alone
            return
        fi.keep_cache = int(self._served.get(path) == version)
        self._served[path] = version
        self._served.move_to_end(path)
        if len(self._served) > _SERVED_VERSIONS:
            self._served.popitem(last=False)

    def read(self, path: str, size: int, offset: int, fi: Any) -> bytes:
        data = self._handles[fi.fh].file.read(offset, size)
        self.counters.add(reads=1, bytes_served=len(data))
        return data

    def release(self, path: str, fi: Any) -> int:
        with self._lock:
            handle = self._handles.pop(fi.fh, None)
            if handle is not None and handle.version is not None:
                versions = self._open_versions[handle.path]
                versions[handle.version] -= 1
                if not versions[handle.version]:
                    del versions[handle.version]
                if not versions:
                    del self._open_versions[handle.path]
        if handle is not None and isinstance(handle.file, _PassthroughFile):
            handle.file.close()
        return 0


def _attributes(st: os.stat_result) -> dict[str, Any]:
    """FUSE attributes of a source file or directory, without write permission."""
    return {
        "st_mode": st.st_mode & ~WRITE_BITS,
        "st_nlink": st.st_nlink,
        "st_uid": st.st_uid,
        "st_gid": st.st_gid,
        "st_atime": st.st_atime_ns,
        "st_mtime": st.st_mtime_ns,
        "st_ctime": st.st_ctime_ns,
        "st_size": st.st_size,
        "st_blksize": BLOCK_SIZE,
    }


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


def mount(operations: TifffsOperations, mountpoint: str, fuse_options: dict[str, Any]) -> None:
    """Mount in the foreground until unmounted or signalled (SIGINT/SIGTERM unmount)."""
    FUSE(operations, mountpoint, foreground=True, nothreads=False, raw_fi=True,
         encoding="latin-1", ro=True, default_permissions=True, subtype="tifffs",
         fsname=operations.root.replace("\\", "\\\\").replace(",", "\\,"),
         **{**DEFAULT_FUSE_OPTIONS, **fuse_options})
