"""The persistent index: source descriptions and view sizes kept in SQLite.

Like ratarmount's index of an archive, it spares a new mount (or a new listing) the
parse of every source file. Each row is keyed by the source's path and is used only
when the whole stat key (device, inode, size, mtime, ctime) still matches and it was
written by this very format of tifffs: a stale, foreign or damaged row is a miss, never
wrong bytes. Rows of another tifffs version are ignored and overwritten, so mounts of
different versions can share one index (each re-describes what the other wrote).

SQLite in WAL mode: readers never wait for the writer; several threads, mounts and
``tifffs index`` runs may use one file at once. Writes go through one background thread
in batches. A database that cannot be opened, is corrupt or becomes unusable is set
aside or bypassed with one log line: the mount works without it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from typing import NamedTuple

from tifffs import __version__
from tifffs.pages import FORMAT, SourceVersion

log = logging.getLogger("tifffs")

SCHEMA = 1
FILE_NAME = f"index-v{SCHEMA}.sqlite"
ENTRY_FORMAT = f"{FORMAT}/{__version__}"
#: Rows are written once none was queued for this long (a listing is not slowed by
#: the writer thread), or when this many bytes wait (a long scan; bounded memory).
QUIET_SECONDS = 0.3
MAX_PENDING_BYTES = 32 << 20
_ROW_BYTES = 256  # a row's own weight in the pending bytes, beside its description
#: Connections to the database shared by all threads.
READERS = 2
_SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS files (
    path BLOB PRIMARY KEY, dir BLOB NOT NULL, dev INTEGER, ino INTEGER, size INTEGER,
    mtime_ns INTEGER, ctime_ns INTEGER, format TEXT, description BLOB, error TEXT);
CREATE INDEX IF NOT EXISTS files_by_dir ON files (dir);
CREATE TABLE IF NOT EXISTS sizes (
    path BLOB, view TEXT, dir BLOB NOT NULL, dev INTEGER, ino INTEGER, size INTEGER,
    mtime_ns INTEGER, ctime_ns INTEGER, format TEXT, view_size INTEGER,
    PRIMARY KEY (path, view));
CREATE INDEX IF NOT EXISTS sizes_by_dir ON sizes (dir, view);
"""


def default_directory() -> str:
    """``$XDG_CACHE_HOME/tifffs``, else ``~/.cache/tifffs``."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"),
                                                             ".cache")
    return os.path.join(cache, "tifffs")


class Entry(NamedTuple):
    """A usable row: a serialised description, or the error the source gave."""

    description: bytes | None
    error: str | None


class IndexUnavailable(Exception):
    """The index cannot be used; the message says why."""


class Index:
    """Descriptions and view sizes of source files, keyed by path and stat."""

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, FILE_NAME)
        # a few connections shared by all threads (one each at a time): a connection per
        # FUSE thread would hold three descriptors per thread
        self._readers: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._reader_slots = threading.BoundedSemaphore(READERS)
        self._all: list[sqlite3.Connection] = []
        # rows to write, taken by the writer thread when none came for QUIET_SECONDS
        # (or MAX_PENDING_BYTES pile up): appending wakes no thread, so a stat pays
        # almost nothing, and a listing runs without the writer beside it
        self._pending_files: list[tuple] = []
        self._pending_sizes: list[tuple] = []
        self._pending_bytes = 0
        self._last_queued = 0.0
        self._pending_lock = threading.Lock()
        self._writer: _Writer | None = None
        self._failed = False
        self._setup(directory)

    # -- set-up and failure
    def _setup(self, directory: str) -> None:
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            with self._connection() as connection:
                connection.executescript(_SCHEMA_SQL)
        except sqlite3.DatabaseError as exc:
            if not _is_corrupt(exc):
                raise IndexUnavailable(f"index {self.path}: {exc}") from None
            self._set_aside(exc)
        except OSError as exc:
            raise IndexUnavailable(f"index folder {directory}: {exc.strerror}") from None

    def _set_aside(self, exc: Exception) -> None:
        """Move a corrupt database out of the way and start a new one."""
        self._close_all()
        aside = f"{self.path}.corrupt-{int(time.time())}"
        log.warning("index %s is corrupt (%s): moved to %s, building a new one", self.path,
                    exc, aside)
        try:
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(self.path + suffix):
                    os.replace(self.path + suffix, aside + suffix)
            with self._connection() as connection:
                connection.executescript(_SCHEMA_SQL)
        except (OSError, sqlite3.DatabaseError) as again:
            raise IndexUnavailable(f"index {self.path}: {again}") from None

    @contextlib.contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """One of at most ``READERS`` connections, for this thread alone meanwhile."""
        with self._reader_slots:
            try:
                connection = self._readers.get_nowait()
            except queue.Empty:
                connection = self._open_connection()
            try:
                yield connection
            finally:
                self._readers.put(connection)

    def _open_connection(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, timeout=5, isolation_level=None,
                                     check_same_thread=False)
        self._all.append(connection)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        return connection

    def _close_all(self) -> None:
        while True:
            try:
                self._readers.get_nowait()
            except queue.Empty:
                break
        for connection in self._all:
            connection.close()
        self._all.clear()

    def _fail(self, exc: Exception) -> None:
        if not self._failed:
            self._failed = True
            log.warning("index %s is not usable (%s): going on without it", self.path, exc)

    @property
    def usable(self) -> bool:
        return not self._failed

    # -- reads
    def lookup(self, path: str, version: SourceVersion) -> Entry | None:
        """The entry of ``path`` if it was written for this version and format."""
        row = self._query_one(
            "SELECT description, error FROM files WHERE path=? AND dev=? AND ino=? AND "
            "size=? AND mtime_ns=? AND ctime_ns=? AND format=?",
            (os.fsencode(path), *version, ENTRY_FORMAT))
        return None if row is None else Entry(row[0], row[1])

    def sizes_in(self, directory: str, view: str) -> dict[str, tuple[tuple[int, ...], int]]:
        """path -> (version, size of ``view``) of the files of ``directory`` with one;
        the version as a plain tuple (it equals the file's ``SourceVersion`` when
        current): a folder of 20,000 files is read in one query."""
        return self._sizes("dir=?", (os.fsencode(directory),), view)

    def sizes_of(self, paths: list[str], view: str) -> dict[str, tuple[tuple[int, ...], int]]:
        """``sizes_in`` for just these paths (at most a few hundred: one query)."""
        if not paths:
            return {}
        return self._sizes(f"path IN ({','.join('?' * len(paths))})",
                           tuple(map(os.fsencode, paths)), view)

    def _sizes(self, where: str, args: tuple, view: str) -> dict[str, tuple[tuple[int, ...], int]]:
        rows = self._query_all(
            "SELECT path, dev, ino, size, mtime_ns, ctime_ns, view_size FROM sizes "
            f"WHERE {where} AND view=? AND format=?", (*args, view, ENTRY_FORMAT))
        decode = os.fsdecode
        return {decode(r[0]): (r[1:6], r[6]) for r in rows}

    def versions_in(self, directory: str) -> dict[str, int]:
        """path -> hash of the version, of the files of ``directory`` that have a
        description of this format: a listing then looks up only the files whose
        version may match (the lookup checks the whole key)."""
        rows = self._query_all("SELECT path, dev, ino, size, mtime_ns, ctime_ns FROM files "
                               "WHERE dir=? AND format=?",
                               (os.fsencode(directory), ENTRY_FORMAT))
        return {os.fsdecode(row[0]): hash(row[1:]) for row in rows}

    def _query_one(self, sql: str, args: tuple) -> tuple | None:
        rows = self._query_all(sql, args, limit_one=True)
        return rows[0] if rows else None

    def _query_all(self, sql: str, args: tuple, limit_one: bool = False) -> list[tuple]:
        if self._failed:
            return []
        try:
            with self._connection() as connection:
                cursor = connection.execute(sql, args)
                if limit_one:
                    row = cursor.fetchone()
                    return [row] if row else []
                return cursor.fetchall()
        except sqlite3.OperationalError as exc:  # locked too long, disk I/O: a miss
            log.debug("index lookup failed: %s", exc)
            return []
        except sqlite3.DatabaseError as exc:
            self._fail(exc)
            return []

    # -- writes, in the background
    def put(self, path: str, version: SourceVersion,
            description: bytes | Callable[[], bytes] | None, error: str | None,
            weight: int | None = None) -> None:
        """Record a description (or the error) of ``path`` at ``version``. The
        description may be given as a function that makes its bytes, called in the
        writer thread (off a listing's path); ``weight`` then estimates its size."""
        if weight is None:
            weight = len(description) if isinstance(description, bytes) else 0
        self._queue("file", (os.fsencode(path), os.fsencode(os.path.dirname(path)),
                             *version, ENTRY_FORMAT, description, error), weight)

    def put_size(self, path: str, version: SourceVersion, view: str, size: int) -> None:
        self._queue("size", (os.fsencode(path), view, os.fsencode(os.path.dirname(path)),
                             *version, ENTRY_FORMAT, size))

    def _queue(self, kind: str, row: tuple, extra_bytes: int = 0) -> None:
        if self._failed:
            return
        with self._pending_lock:
            pending = self._pending_files if kind == "file" else self._pending_sizes
            pending.append(row)
            self._last_queued = time.monotonic()
            self._pending_bytes += _ROW_BYTES + extra_bytes
            many = self._pending_bytes >= MAX_PENDING_BYTES
            if self._writer is None:
                self._writer = _Writer(self._write_loop)
            writer = self._writer
        if many:
            writer.wake.set()

    def _write_loop(self, writer: _Writer) -> None:
        while True:
            writer.wake.wait(QUIET_SECONDS)
            writer.wake.clear()
            with self._pending_lock:
                stop = writer.stop
                due = (stop or time.monotonic() - self._last_queued >= QUIET_SECONDS
                       or self._pending_bytes >= MAX_PENDING_BYTES)
                if not due:
                    continue
                files, self._pending_files = self._pending_files, []
                sizes, self._pending_sizes = self._pending_sizes, []
                self._pending_bytes = 0
            if files or sizes:
                self._write([row for row in map(_serialised, files) if row], sizes)
            if stop:
                return

    def _write(self, files: list[tuple], sizes: list[tuple]) -> None:
        if self._failed:
            return
        try:
            with self._connection() as connection:
                connection.execute("BEGIN IMMEDIATE")
                try:
                    connection.executemany(
                        "INSERT OR REPLACE INTO files VALUES (?,?,?,?,?,?,?,?,?,?)", files)
                    connection.executemany(
                        "INSERT OR REPLACE INTO sizes VALUES (?,?,?,?,?,?,?,?,?,?)", sizes)
                except BaseException:
                    connection.execute("ROLLBACK")
                    raise
                connection.execute("COMMIT")
        except sqlite3.OperationalError as exc:  # locked, read-only, disk full
            log.debug("index write of %d rows dropped: %s", len(files) + len(sizes), exc)
        except sqlite3.DatabaseError as exc:
            self._fail(exc)

    def flush(self) -> None:
        """Wait until every write queued so far is committed (or dropped), unless a
        writer started meanwhile (rows queued by other threads) took some of them."""
        with self._pending_lock:
            writer, self._writer = self._writer, None
            if writer is not None:
                writer.stop = True  # its own flag: a writer started after it has another
        if writer is not None:
            writer.wake.set()
            writer.thread.join()

    def close(self) -> None:
        self.flush()
        self._close_all()


class _Writer:
    """The thread that writes queued rows, with its own wake-up and stop flag: a flush
    stops this one while rows queued meanwhile by other threads start the next."""

    def __init__(self, loop: Callable[[_Writer], None]) -> None:
        self.wake = threading.Event()
        self.stop = False
        self.thread = threading.Thread(target=loop, args=(self,), name="index-writer",
                                       daemon=True)
        self.thread.start()


def _serialised(row: tuple) -> tuple | None:
    """A row of ``files`` with its description as bytes (None: it cannot be made)."""
    description = row[-2]
    if not callable(description):
        return row
    try:
        return (*row[:-2], description(), row[-1])
    except Exception as exc:  # noqa: BLE001  (a row left out is a miss, not an error)
        log.debug("index row of %s dropped: %s", os.fsdecode(row[0]), exc)
        return None


def _is_corrupt(exc: sqlite3.DatabaseError) -> bool:
    text = str(exc).lower()
    return "not a database" in text or "malformed" in text or "corrupt" in text


def open_index(directory: str | None) -> Index | None:
    """The index in ``directory`` (default: the user's cache), or None with one log line
    when it cannot be used."""
    directory = directory or default_directory()
    try:
        return Index(directory)
    except IndexUnavailable as exc:
        log.warning("%s: going on without an index (use --index-dir DIR to choose a "
                    "writable folder, or --no-index)", exc)
        return None
