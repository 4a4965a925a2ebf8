"""The libfuse 3 adapter (``--libfuse 3``): the same operations over mfusepy.

What libfuse 3 adds for tifffs: listings that carry each entry's attributes
(readdirplus), so ``ls -l``, file dialogs and ``rsync`` need no lookup per file, and
reads of up to 1 MiB instead of 128 KiB. libfuse's high-level API passes attributes on
only when the file system lists with offsets (a listing given whole at offset 0 reaches
the kernel without them), so each open folder keeps its names, and the attributes of a
chunk are computed when the kernel asks for that chunk with them. The kernel asks for
the first chunk of every listing with attributes; replies carry at most ``PLUS_CHUNK``
entries, so a ``find`` that never stats pays for the sizes of that many files only.

mfusepy reads ``FUSE_LIBRARY_NAME`` when it is first imported, so this module must be
imported before anything else imports mfusepy.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from typing import Any

from tifffs.fs import DEFAULT_FUSE_OPTIONS, TifffsOperations, _os_path, copy_pieces
from tifffs.listing import NO_ATTRIBUTES, Listing
from tifffs.problems import printable
from tifffs.virtual import Piece

os.environ["FUSE_LIBRARY_NAME"] = "fuse3"
import mfusepy  # after the library is chosen

log = logging.getLogger("tifffs")

#: fuse_readdir_flags / fuse_fill_dir_flags / fuse_conn_info.want bits (fuse_common.h).
READDIR_PLUS = 1 << 0
FILL_DIR_PLUS = 1 << 1
_CAP_READDIRPLUS = 1 << 13
#: Entries of one readdirplus reply, whose attributes are computed together.
PLUS_CHUNK = 256
#: The read-ahead asked of the kernel (libfuse 3 takes requests of up to 1 MiB).
MAX_READAHEAD = 1 << 20
#: libfuse 3.14.0 warns about its own default of idle threads unless one is given;
#: 10 is the default libfuse documents.
LIBFUSE3_OPTIONS = {"max_idle_threads": "10"}
#: libfuse 2 options libfuse 3 refuses (it mounts on non-empty folders by default).
_LIBFUSE2_ONLY = {"nonempty"}
#: What libfuse 3's fuse_main returns when its loop ended with a non-zero result
#: (helper.c; other failures, such as a failed mount, return 1 to 7). The loop returns
#: the number of the signal that ended it (SIGINT, SIGTERM: fuse_session_loop in
#: fuse_lowlevel.h), else a failure to read /dev/fuse, which libfuse has already
#: reported ("fuse: reading device: ..."). libfuse 2's loop returns 0 on a signal.
LOOP_ENDED_NONZERO = 8


def check_usable() -> None:
    """Raise ``OSError`` when mfusepy found no libfuse 3."""
    if mfusepy.fuse_version_major != 3:
        raise OSError(f"mfusepy loaded libfuse {mfusepy.fuse_version_major}, not 3")


class _OpenFolder:
    """One open folder: its listing (names with their type and inode), and the
    attributes of the names a readdirplus request is about to pass on."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.listing: Listing | None = None  # read at the first readdir
        self.attributes: dict[int, dict[str, Any] | None] = {}  # by position


class Libfuse3Operations:
    """``TifffsOperations`` as mfusepy calls them (it calls methods by name, not through
    the error-mapping ``__call__``), plus the open folders' listings."""

    use_ns = True  # times in integer nanoseconds

    def __init__(self, operations: TifffsOperations) -> None:
        self.operations = operations
        self.tree = operations.tree
        self._folders: dict[int, _OpenFolder] = {}
        self._next_folder = 1
        self._lock = threading.Lock()

    def init_with_config(self, conn: Any, config: Any) -> None:
        if conn is not None:
            conn.want |= conn.capable & _CAP_READDIRPLUS
            conn.max_readahead = MAX_READAHEAD
        self.operations("init", "/")

    def destroy(self, path: str) -> None:
        self.operations("destroy", path)

    def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
        return self.operations("getattr", path, fh)

    def statfs(self, path: str) -> dict[str, int]:
        return self.operations("statfs", path)

    def access(self, path: str, amode: int) -> int:
        return self.operations("access", path, amode)

    def open(self, path: str, fi: Any) -> int:
        return self.operations("open", path, fi)

    def read(self, path: str, size: int, offset: int, fi: Any) -> Sequence[Piece]:
        return self.operations("read", path, size, offset, fi)

    def release(self, path: str, fi: Any) -> int:
        return self.operations("release", path, fi)

    def readdir(self, path: str, fh: int) -> Listing:
        return self.operations("readdir", path, fh)

    def opendir(self, path: str) -> int:
        with self._lock:
            handle = self._next_folder
            self._next_folder += 1
            self._folders[handle] = _OpenFolder(path)
        return handle

    def releasedir(self, path: str, fh: int) -> int:
        with self._lock:
            self._folders.pop(fh, None)
        return 0

    def open_folder(self, fh: int, offset: int) -> _OpenFolder:
        """The open folder ``fh``; its names are read again from the source at offset 0
        (the start of a listing, and what ``rewinddir`` asks for)."""
        folder = self._folders[fh]
        if offset == 0 or folder.listing is None:
            folder.listing = self.readdir(folder.folder, fh)
            folder.attributes = {}
        return folder

    def attributes_at(self, folder: _OpenFolder, position: int) -> dict[str, Any] | None:
        """The attributes of the name at ``position`` (found with the chunk from there
        on when not yet), or None when they cannot be given."""
        if position not in folder.attributes:
            self.fill_attributes(folder, position)
        return folder.attributes.get(position)

    def fill_attributes(self, folder: _OpenFolder, start: int) -> None:
        """Find the attributes of the names from ``start`` on (as many as one reply
        may hold), and forget those of names already passed on."""
        if len(folder.attributes) > 2 * PLUS_CHUNK:
            folder.attributes = {p: a for p, a in folder.attributes.items() if p >= start}
        listing = folder.listing
        assert listing is not None  # open_folder read it
        positions = [p for p in range(start, min(start + PLUS_CHUNK, len(listing)))
                     if listing.modes[p] != NO_ATTRIBUTES and p not in folder.attributes]
        names = [os.fsdecode(listing.names[p]) for p in positions]
        try:
            found = self.tree.listed_attributes(_os_path(folder.folder), names)
        except Exception as exc:  # a bug: the names go without attributes, looked up later
            log.error("internal error while listing %s: %r (please report it; --debug "
                      "logs the traceback)", printable(_os_path(folder.folder)), exc)
            log.debug("traceback of the internal error", exc_info=True)
            found = [None] * len(positions)
        folder.attributes.update(zip(positions, found))


def _fill_stat(entry_stat: Any, attrs: dict[str, Any]) -> None:
    """Copy ``ViewTree`` attributes (times in nanoseconds) into a ``struct stat``."""
    entry_stat.st_mode = attrs["st_mode"]
    entry_stat.st_ino = attrs["st_ino"]
    entry_stat.st_nlink = attrs["st_nlink"]
    entry_stat.st_uid = attrs["st_uid"]
    entry_stat.st_gid = attrs["st_gid"]
    entry_stat.st_size = attrs["st_size"]
    entry_stat.st_blocks = attrs.get("st_blocks", 0)
    entry_stat.st_blksize = attrs.get("st_blksize", 0)
    for name in ("st_atime", "st_mtime", "st_ctime"):
        spec = getattr(entry_stat, name + "spec")
        spec.tv_sec, spec.tv_nsec = divmod(attrs[name], 1_000_000_000)


class _FUSE3(mfusepy.FUSE):
    """mfusepy's binding with a ``readdir`` that lists with offsets and, when the
    kernel asks for readdirplus, passes each entry's attributes on, and a ``read`` that
    copies each piece straight into libfuse's buffer."""

    def read(self, path: Any, buf: Any, size: int, offset: int, fip: Any) -> int:
        name = None if path is None else path.decode(self.encoding, self.errors)
        pieces = self.operations.read(name, size, offset, fip.contents)
        return copy_pieces(pieces, buf, size)

    def readdir_fuse_3(self, path: Any, buf: Any, filler: Any, offset: int, fip: Any,
                       flags: int) -> int:
        operations: Libfuse3Operations = self.operations
        folder = operations.open_folder(fip.contents.fh, offset)
        listing = folder.listing
        assert listing is not None  # open_folder read it
        plus = flags & READDIR_PLUS
        entry_stat = mfusepy.c_stat()  # libfuse copies what it needs at each call
        end = min(len(listing), offset + PLUS_CHUNK) if plus else len(listing)
        for position in range(offset, end):
            mode = listing.modes[position]  # NO_ATTRIBUTES for . and ..
            attrs = operations.attributes_at(folder, position) if plus and mode else None
            if attrs is not None:
                _fill_stat(entry_stat, attrs)
            elif mode:
                entry_stat.st_mode, entry_stat.st_ino = mode, listing.inodes[position]
            # the offset given is that of the next entry, where a later call resumes
            if filler(buf, listing.names[position], entry_stat if mode else None,
                      position + 1, FILL_DIR_PLUS if attrs is not None else 0):
                break
        return 0


def mount(operations: TifffsOperations, mountpoint: str, fuse_options: dict[str, Any]) -> None:
    """Mount with libfuse 3 in the foreground until unmounted or signalled (SIGINT and
    SIGTERM unmount, and return as an unmount does); ``RuntimeError`` when it fails."""
    check_usable()
    root = operations.tree.root
    options = {key: value for key, value in {**DEFAULT_FUSE_OPTIONS, **LIBFUSE3_OPTIONS,
                                             **fuse_options}.items()
               if key not in _LIBFUSE2_ONLY}
    try:
        _FUSE3(Libfuse3Operations(operations), mountpoint, foreground=True, nothreads=False,
               raw_fi=True, encoding="latin-1", ro=True, default_permissions=True,
               subtype="tifffs", fsname=root.replace("\\", "\\\\").replace(",", "\\,"),
               **options)
    except RuntimeError as exc:  # mfusepy raises fuse_main's non-zero result
        if exc.args != (LOOP_ENDED_NONZERO,):
            raise
        log.info("libfuse 3 stopped serving (on SIGINT or SIGTERM; any other cause is "
                 "in the lines above)")

