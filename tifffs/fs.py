"""The FUSE adapter: each operation maps a mount path and delegates.

This is the only module that imports the FUSE binding. Paths cross it as latin-1
strings (one character per byte), so names that are not valid UTF-8 survive the round
trip; they are turned into OS strings with ``os.fsdecode`` here.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
from collections import OrderedDict
from typing import Any, Callable, Protocol

from fuse import FUSE, FuseOSError, Operations

from tifffs.catalog import Catalog
from tifffs.errors import TifffsError
from tifffs.problems import ProblemLog
from tifffs.source import SourceVersion
from tifffs.stats import STATS_DIR, STATS_FILE, ReadCounters, format_stats
from tifffs.views import MountPath, View, is_inside, is_tiff_name, parse_mount_path, source_path

log = logging.getLogger("tifffs")

#: Reported as st_blksize so that readers (cp, Python) make large reads.
BLOCK_SIZE = 1 << 20
WRITE_BITS = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
#: Operations that fail often and harmlessly; not logged as problems.
_QUIET_ERRNOS = {errno.ENOENT, errno.ENOTDIR, errno.EROFS, errno.ENODATA, errno.ENOTSUP}
#: How many paths remember the version they last served (for keeping the kernel cache).
_SERVED_VERSIONS = 65536


class _Readable(Protocol):
    def read(self, offset: int, length: int) -> bytes: ...


class _PassthroughFile:
    """A non-TIFF source file served unchanged."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self.version = SourceVersion.of(os.fstat(self.fd))

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
        self._handles: dict[int, _Readable] = {}
        self._next_handle = 1
        self._lock = threading.Lock()
        self._served: OrderedDict[str, SourceVersion] = OrderedDict()
        self.counters = ReadCounters()

    # -- error mapping: the one place where exceptions become errno values
    def __call__(self, op: str, *args: Any) -> Any:
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
        for handle in handles.values():
            if isinstance(handle, _PassthroughFile):
                handle.close()

    # -- metadata
    def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
        if path in (STATS_DIR, STATS_FILE):
            return self._stats_attributes(path)
        mount_path, source = self._resolve(path)
        st = os.stat(source)
        attrs = {
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

    def readdir(self, path: str, fh: Any) -> list[str]:
        if path == STATS_DIR:
            return [".", "..", os.path.basename(STATS_FILE)]
        mount_path, source = self._resolve(path)
        if mount_path.is_root:
            return [".", "..", STATS_DIR[1:], *self.views]
        names = [".", ".."]
        with os.scandir(source) as entries:
            for entry in entries:
                if self._listed(entry):
                    names.append(_fuse_name(entry.name))
        return names

    def _listed(self, entry: os.DirEntry) -> bool:
        try:
            if entry.is_symlink() and not is_inside(os.path.realpath(entry.path),
                                                    self.real_root):
                return False
            return entry.is_dir() or entry.is_file()
        except OSError:
            return False

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
            return self._add_handle(fi, _Snapshot(self._stats_text().encode()))
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
        # keep the kernel's cached pages only if this path still serves the same version
        fi.keep_cache = int(self._remember_version(path, version))
        return self._add_handle(fi, handle)

    def _add_handle(self, fi: Any, handle: _Readable) -> int:
        with self._lock:
            fi.fh = self._next_handle
            self._next_handle += 1
            self._handles[fi.fh] = handle
        return 0

    def _remember_version(self, path: str, version: SourceVersion) -> bool:
        """Record ``version`` as served for ``path``; True if it was already."""
        with self._lock:
            same = self._served.get(path) == version
            self._served[path] = version
            self._served.move_to_end(path)
            if len(self._served) > _SERVED_VERSIONS:
                self._served.popitem(last=False)
        return same

    def read(self, path: str, size: int, offset: int, fi: Any) -> bytes:
        data = self._handles[fi.fh].read(offset, size)
        self.counters.add(reads=1, bytes_served=len(data))
        return data

    def release(self, path: str, fi: Any) -> int:
        with self._lock:
            handle = self._handles.pop(fi.fh, None)
        if isinstance(handle, _PassthroughFile):
            handle.close()
        return 0


def mount(operations: TifffsOperations, mountpoint: str, fuse_options: dict[str, Any]) -> None:
    """Mount in the foreground until unmounted or signalled (SIGINT/SIGTERM unmount)."""
    FUSE(operations, mountpoint, foreground=True, nothreads=False, raw_fi=True,
         encoding="latin-1", ro=True, default_permissions=True, subtype="tifffs",
         fsname=operations.root.replace("\\", "\\\\").replace(",", "\\,"), **fuse_options)
