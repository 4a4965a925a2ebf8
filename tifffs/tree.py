"""``ViewTree``: the mount's files and folders, without FUSE.

Paths here are OS strings (``/x4/run1/a.tif``). The tree maps them to source files,
keeps listings inside SOURCE, gives attributes (sizes from the catalog), opens handles,
serves the stats file, and decides how the kernel may cache each open file. Errors are
raised as ``OSError`` (with their errno) or ``TifffsError``; the FUSE adapter maps them.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import os
import stat
import threading
import time
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from tifffs.ahead import DescribeAhead
from tifffs.arith import ceil_div
from tifffs.catalog import Catalog
from tifffs.errors import TifffsError
from tifffs.kernel_cache import KernelCachePolicy
from tifffs.listing import Listing
from tifffs.pages import SourceVersion
from tifffs.problems import ProblemLog
from tifffs.sources import open_regular
from tifffs.stats import STATS_DIR, STATS_FILE, ReadCounters, format_stats
from tifffs.threadstate import threads_kept
from tifffs.views import MountPath, View, is_inside, is_tiff_name, parse_mount_path, source_path
from tifffs.virtual import Piece

#: Reported as st_blksize so that readers (cp, Python) make large reads.
BLOCK_SIZE = 1 << 20
#: Inode numbers of the root, the stats folder and file; views' folders follow.
ROOT_INO, STATS_DIR_INO, STATS_FILE_INO = 1, 2, 3
_FIRST_VIEW_INO = 16
#: How long a folder's resolved path is trusted (the kernel's attr_timeout).
FOLDER_SECONDS = 1.0
MAX_REAL_FOLDERS = 4096


class Handle(Protocol):
    """An open file of the mount."""

    version: SourceVersion | None  # None for the stats file

    def read_pieces(self, offset: int, length: int) -> Sequence[Piece]:
        """Bytes ``[offset, offset + length)``, in pieces (short only at the end)."""
        ...

    def attributes(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


_MASK64 = (1 << 64) - 1


@functools.lru_cache(maxsize=64)
def _view_salt(view: str) -> int:
    return int.from_bytes(hashlib.blake2b(view.encode(), digest_size=8).digest(), "little")


def view_inode(device: int, inode: int, view: str) -> int:
    """A stable inode number for ``view``'s entry of the source (device, inode): the same
    on every mount and in every order of lookups, different for each view. The view's
    salt, the device and the inode are mixed by splitmix64's finaliser (cheap enough for
    a listing of 20,000 entries)."""
    return _mix(inode + _inode_base(device, view))


def _inode_base(device: int, view: str) -> int:
    """What ``view_inode`` adds to every inode of ``device`` in ``view``."""
    return device * 0x9E3779B97F4A7C15 + _view_salt(view)


def view_inodes(device: int, inodes: list[int], view: str) -> list[int]:
    """``view_inode`` of many inodes of one device at once (numpy's wrapping uint64
    arithmetic: a folder of 20,000 files in well under a millisecond)."""
    x = np.array(inodes, dtype=np.uint64) + np.uint64(_inode_base(device, view) & _MASK64)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = (x ^ (x >> np.uint64(31))) >> np.uint64(1)
    return np.maximum(x, np.uint64(_FIRST_VIEW_INO + 1024)).tolist()


def _mix(x: int) -> int:
    x &= _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return max(_FIRST_VIEW_INO + 1024, (x ^ (x >> 31)) >> 1)


class ViewTree:
    """Read-only tree over ``source_root`` with one folder per view."""

    def __init__(self, source_root: str, views: tuple[View, ...], catalog: Catalog) -> None:
        self.root = os.path.abspath(source_root)
        self.real_root = os.path.realpath(source_root)
        self.views = {v.name: v for v in views}
        self._view_ino = {name: _FIRST_VIEW_INO + i for i, name in enumerate(self.views)}
        self.catalog = catalog
        self.problems = ProblemLog()
        self.counters = ReadCounters()
        self.caching = KernelCachePolicy()
        self._lock = threading.Lock()
        self._real_folders: dict[str, tuple[str, float]] = {}

    # -- paths
    def resolve(self, path: str) -> tuple[MountPath, str]:
        """(mount path, source path) of a path of the mount; ENOENT if there is none."""
        mount_path, source, _ = self._resolve_with_stat(path)
        return mount_path, source

    def _resolve_with_stat(self, path: str) -> tuple[MountPath, str, os.stat_result]:
        """``resolve`` and the source's ``stat`` (following links)."""
        mount_path = parse_mount_path(path, self.views)
        if mount_path is None:
            raise FileNotFoundError(errno.ENOENT, "no such view or path")
        source = source_path(self.root, mount_path.relative)
        if not mount_path.relative:
            return mount_path, source, os.stat(source)
        real, st = self._real_path(source)
        if not is_inside(real, self.real_root):
            raise FileNotFoundError(errno.ENOENT, "a symlink leading out of SOURCE")
        return mount_path, source, st

    def _real_path(self, source: str) -> tuple[str, os.stat_result]:
        """The resolved path of ``source`` and its stat. The resolved folder is kept for
        ``FOLDER_SECONDS`` (the kernel keeps attributes as long), so a ``stat`` costs one
        ``lstat`` instead of one per path component. Reading is confined on the opened
        descriptor itself (``sources.open_regular``), whatever this check saw."""
        folder, name = os.path.split(source)
        now = time.monotonic()
        known = self._real_folders.get(folder)
        if known is None or now - known[1] > FOLDER_SECONDS:
            if len(self._real_folders) >= MAX_REAL_FOLDERS:
                self._real_folders.clear()
            known = self._real_folders[folder] = (os.path.realpath(folder), now)
        st = os.lstat(source)
        if stat.S_ISLNK(st.st_mode):
            return os.path.realpath(source), os.stat(source)
        return os.path.join(known[0], name), st

    def source_of(self, path: str) -> str:
        """The source file a mount path names (for log lines), else the path itself."""
        mount_path = parse_mount_path(path, self.views)
        if mount_path is None or mount_path.is_root:
            return path
        return source_path(self.root, mount_path.relative)

    # -- attributes
    def attributes(self, path: str) -> dict[str, Any]:
        """``stat`` of a mount path: sizes of views from metadata alone."""
        self.counters.add(getattrs=1)
        return self._attributes_of(path)

    def listed_attributes(self, folder: str, names: list[str]) -> list[dict[str, Any] | None]:
        """The attributes of ``names``, listed in the mount folder ``folder``, for a
        listing that carries them (readdirplus), as ``attributes`` gives them; None
        where they cannot be given, so that the kernel asks with a lookup, which
        reports the cause. The folder is resolved once for all names."""
        self.counters.add(listed_attributes=len(names))
        mount_path = parse_mount_path(folder, self.views)
        view = mount_path.view if mount_path is not None else None
        if view is None or folder == STATS_DIR:
            return [self._attributes_or_none(f"{folder.rstrip('/')}/{n}") for n in names]
        try:
            source_folder = source_path(self.root, mount_path.relative)
            real_folder = os.path.realpath(source_folder)
        except OSError:
            return [None] * len(names)
        if not is_inside(real_folder, self.real_root):
            return [None] * len(names)
        self.catalog.prepare_sizes(source_folder, [os.path.join(source_folder, name)
                                                   for name in names if is_tiff_name(name)],
                                   view)
        return [self._listed_file(folder, source_folder, view, name) for name in names]

    def _listed_file(self, folder: str, source_folder: str, view: View,
                     name: str) -> dict[str, Any] | None:
        """``attributes`` of a name in a resolved folder: one ``lstat``, no path walk."""
        path = f"{folder.rstrip('/')}/{name}"
        source = os.path.join(source_folder, name)
        try:
            st = os.lstat(source)
            if stat.S_ISLNK(st.st_mode):  # confined and followed the general way
                return self._attributes_of(path)
            return self._shown(path, source, st, view,
                               view_inode(st.st_dev, st.st_ino, view.name))
        except (OSError, TifffsError):
            return None

    def _attributes_or_none(self, path: str) -> dict[str, Any] | None:
        try:
            return self._attributes_of(path)
        except (OSError, TifffsError):
            return None

    def _attributes_of(self, path: str) -> dict[str, Any]:
        if path in (STATS_DIR, STATS_FILE):
            return self._stats_attributes(path)
        mount_path, source, st = self._resolve_with_stat(path)
        if mount_path.is_root:
            attrs = _attributes(st, ROOT_INO)
            attrs.update(st_mode=stat.S_IFDIR | 0o555, st_nlink=3 + len(self.views))
            return attrs
        view = mount_path.view
        assert view is not None
        ino = (view_inode(st.st_dev, st.st_ino, view.name) if mount_path.relative
               else self._view_ino[view.name])
        return self._shown(path, source, st, view, ino)

    def _shown(self, path: str, source: str, st: os.stat_result, view: View,
               ino: int) -> dict[str, Any]:
        """The attributes of a source folder or regular file as ``view`` shows it at
        ``path``; ENOENT for what is not shown (fifos, sockets, devices)."""
        if stat.S_ISDIR(st.st_mode):
            return _attributes(st, ino)
        if not stat.S_ISREG(st.st_mode):
            raise FileNotFoundError(errno.ENOENT, "not shown")
        size = self.catalog.size(source, st, view) if is_tiff_name(path) else st.st_size
        self.caching.reported(path, SourceVersion.of(st))
        return _attributes(st, ino, size)

    # -- listings
    def list(self, path: str) -> Listing:
        """The names of a folder of the mount, with their types and inode numbers."""
        if path == STATS_DIR:
            return Listing.with_dots([os.fsencode(os.path.basename(STATS_FILE))],
                                     [stat.S_IFREG], [STATS_FILE_INO])
        mount_path, source = self.resolve(path)
        if mount_path.is_root:
            names = [STATS_DIR[1:], *self.views]
            return Listing.with_dots(list(map(os.fsencode, names)), [stat.S_IFDIR] * len(names),
                                     [STATS_DIR_INO, *self._view_ino.values()])
        view = mount_path.view
        assert view is not None
        device = os.stat(source).st_dev
        above = self._real_directories(mount_path.relative)
        listing = self._entries(source, device, view.name, above)
        self.catalog.listed(source, view, listing.names)
        return listing

    def _entries(self, source: str, device: int, view: str, above: list[str]) -> Listing:
        names: list[bytes] = []
        modes: list[int] = []
        inodes: list[int] = []  # of the source; 0 for symlinks
        linked: dict[int, int] = {}  # position -> view inode of a symlink's target
        with os.scandir(os.fsencode(source)) as entries:  # bytes: names as readdir gives them
            for entry in entries:
                try:  # without a system call: the listing's entry types
                    if entry.is_symlink():
                        mode = self._listed_link_type(entry, above)
                        if mode is not None:
                            st = entry.stat()
                            linked[len(names)] = view_inode(st.st_dev, st.st_ino, view)
                            names.append(entry.name)
                            modes.append(mode)
                            inodes.append(0)
                        continue
                    if entry.is_file(follow_symlinks=False):
                        mode = stat.S_IFREG
                    elif entry.is_dir(follow_symlinks=False):
                        mode = stat.S_IFDIR
                    else:
                        continue
                    inode = entry.inode()
                except OSError:
                    continue
                names.append(entry.name)
                modes.append(mode)
                inodes.append(inode)
        numbers = view_inodes(device, inodes, view)
        for position, number in linked.items():
            numbers[position] = number
        return Listing.with_dots(names, modes, numbers)

    def _listed_link_type(self, entry: os.DirEntry, above: list[str]) -> int | None:
        """S_IFREG or S_IFDIR for a symlink that is listed: one to a file or folder
        inside SOURCE, but not to a folder the listing is already in (recursive tools
        would never finish). None for the rest."""
        target = os.path.realpath(os.fsdecode(entry.path))
        if not is_inside(target, self.real_root):
            return None
        if entry.is_dir():
            return None if any(is_inside(d, target) for d in above) else stat.S_IFDIR
        return stat.S_IFREG if entry.is_file() else None

    def _real_directories(self, relative: str) -> list[str]:
        """Resolved paths of SOURCE and of every folder down to ``relative``."""
        parts = relative.split("/") if relative else []
        return [self.real_root] + [
            os.path.realpath(source_path(self.root, "/".join(parts[:i])))
            for i in range(1, len(parts) + 1)]

    # -- files
    def open(self, path: str) -> Handle:
        """A handle of a file of the mount (read-only)."""
        self.counters.add(opens=1)
        if path == STATS_FILE:
            return Snapshot(self.stats_text().encode())
        mount_path, source = self.resolve(path)
        if mount_path.is_root or not mount_path.relative:
            raise IsADirectoryError(errno.EISDIR, "is a folder")
        view = mount_path.view
        assert view is not None
        if is_tiff_name(mount_path.relative):
            return ViewHandle(self.catalog, source, view)
        return PassthroughFile(source, self.real_root, view.name)

    def statfs(self) -> dict[str, int]:
        """Figures of the source's filesystem, as they are: ``df`` shows the source's
        use, not a full disk (a read-only mount has no free space to offer, but monitors
        that alarm on 100 % would fire on every tifffs mount)."""
        sv = os.statvfs(self.root)
        return {"f_bsize": BLOCK_SIZE, "f_frsize": sv.f_frsize, "f_blocks": sv.f_blocks,
                "f_bfree": sv.f_bfree, "f_bavail": sv.f_bavail, "f_files": sv.f_files,
                "f_ffree": sv.f_ffree, "f_favail": sv.f_favail, "f_namemax": sv.f_namemax}

    # -- statistics
    def _stats_attributes(self, path: str) -> dict[str, Any]:
        st = os.stat(self.root)
        is_dir = path == STATS_DIR
        return {"st_mode": stat.S_IFDIR | 0o555 if is_dir else stat.S_IFREG | 0o444,
                "st_ino": STATS_DIR_INO if is_dir else STATS_FILE_INO,
                "st_nlink": 2 if is_dir else 1, "st_size": 0, "st_uid": st.st_uid,
                "st_gid": st.st_gid, "st_mtime": st.st_mtime_ns, "st_atime": st.st_atime_ns,
                "st_ctime": st.st_ctime_ns, "st_blksize": BLOCK_SIZE}

    def stats_text(self) -> str:
        bands = self.catalog.bands
        return format_stats(self.counters, bands.stats(), bands.capacity,
                            self.problems.errors_per_file(), self.problems.errors_total(),
                            {"render_threads": self.catalog.pool.slots,
                             "sources_open": self.catalog.held_sources(),
                             "thread_states_kept": threads_kept(),
                             **_ahead_stats(self.catalog.ahead)})


def _ahead_stats(ahead: DescribeAhead | None) -> dict[str, int]:
    return {"describe_ahead_helpers": ahead.started if ahead else 0,
            "described_ahead": ahead.described if ahead else 0}


class Snapshot:
    """Bytes fixed at open (the stats file)."""

    version = None

    def __init__(self, data: bytes) -> None:
        self.data = data

    def read_pieces(self, offset: int, length: int) -> Sequence[Piece]:
        return [self.data[offset:offset + length]]

    def attributes(self) -> dict[str, Any]:
        raise FileNotFoundError(errno.ENOENT, "no attributes of its own")

    def close(self) -> None:
        pass


class ViewHandle:
    """An open view: a reader of one source version, held until closed."""

    def __init__(self, catalog: Catalog, source: str, view: View) -> None:
        self._catalog = catalog
        self.reader = catalog.open(source, view)
        self.version: SourceVersion | None = self.reader.view.source.version
        self._view = view.name

    def read_pieces(self, offset: int, length: int) -> Sequence[Piece]:
        return self.reader.read_pieces(offset, length)

    def attributes(self) -> dict[str, Any]:
        """Attributes of the version this handle serves, even if replaced since."""
        st = os.fstat(self.reader.view.source.fd)
        return _attributes(st, view_inode(st.st_dev, st.st_ino, self._view), self.reader.size)

    def close(self) -> None:
        self._catalog.close(self.reader)


class PassthroughFile:
    """A non-TIFF source file served unchanged."""

    def __init__(self, path: str, real_root: str, view: str) -> None:
        self.fd = open_regular(path, inside=real_root)
        self.version: SourceVersion | None = SourceVersion.of(os.fstat(self.fd))
        self._view = view

    def read_pieces(self, offset: int, length: int) -> Sequence[Piece]:
        return [os.pread(self.fd, length, offset)]

    def attributes(self) -> dict[str, Any]:
        st = os.fstat(self.fd)
        return _attributes(st, view_inode(st.st_dev, st.st_ino, self._view))

    def close(self) -> None:
        os.close(self.fd)


def _attributes(st: os.stat_result, ino: int, size: int | None = None) -> dict[str, Any]:
    """Attributes of a source file or folder as the mount shows them: its mode bits
    (copies behave like copies of the source; the mount itself is read-only), times in
    nanoseconds, a stable inode number, and ``size`` (a view's) or the source's own."""
    size = st.st_size if size is None else size
    return {
        "st_mode": st.st_mode,
        "st_ino": ino,
        "st_nlink": st.st_nlink,
        "st_uid": st.st_uid,
        "st_gid": st.st_gid,
        "st_atime": st.st_atime_ns,
        "st_mtime": st.st_mtime_ns,
        "st_ctime": st.st_ctime_ns,
        "st_size": size,
        "st_blocks": ceil_div(size, 512),
        "st_blksize": BLOCK_SIZE,
    }
