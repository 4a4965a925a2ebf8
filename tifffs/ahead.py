"""Describing a large folder's files ahead of its listing, in a helper process.

``ls -l`` of a folder of thousands of TIFFs that the index does not know yet asks for
one file's size after the other, and each answer needs that file described: the daemon
works on one core (Python's GIL) while the others wait. So when the stats that follow
a listing of at least ``MIN_FILES`` TIFFs have had to describe ``START_AFTER`` of them,
a helper process describes the same folder's other files from the last listed name
back, as ``tifffs index`` would (writing them to the index), and sends the daemon each
file's size as it goes. The stats, which come from the first name on, and the helper
meet in the middle; from there on every stat is answered from memory. The helper stops
when it reaches a file the daemon knows already, and ends with the mount. ``tifffs
index`` runs a helper the same way, from the other end of its list of files.

A size from the helper is kept under the stat version the helper saw, so a stat of any
other version describes the file anew. Nothing else the helper says is used but the
page counts of ``tifffs index``'s summary.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from tifffs.errors import TifffsError
from tifffs.pages import SourceVersion
from tifffs.problems import printable
from tifffs.spawn import signal_name, start_helper, wait_or_kill
from tifffs.views import View, is_tiff_name

log = logging.getLogger("tifffs")

#: Listings of fewer TIFFs are not described ahead: the helper's start (0.2-0.3 s)
#: would come after their last stat.
MIN_FILES = 1000
#: Large listings remembered until their stats have described this many files: more
#: than a first readdirplus chunk (``fs3.PLUS_CHUNK``, 256), whose sizes the kernel asks
#: for with every listing, even ``find``'s, which needs none.
START_AFTER = 300
#: How long a large listing is remembered for the stats that follow it.
LISTING_SECONDS = 30.0
#: Large listings remembered at once (the latest).
KEPT_LISTINGS = 16
#: Sizes a helper sends at once (one line of JSON).
BATCH = 32
#: A helper commits its index rows every this many files: its memory stays small, and
#: what it described is kept even if it is killed.
COMMIT_FILES = 1024
#: How long a helper that was told to stop may take to write its index rows and exit.
STOP_SECONDS = 10.0

#: remember(path, version, view name, size) -> False when the daemon knew it already
Remember = Callable[[str, SourceVersion, str, int], bool]
#: received(path, version, sizes of the request's views, pages) -> False to stop the
#: helper (the caller has described this file itself: the two have met)
Received = Callable[[str, SourceVersion, list[int], int], bool]


class DescribeAhead:
    """The daemon's side: remembers large listings and runs one helper at a time."""

    def __init__(self, root: str, index_dir: str | None, remember: Remember) -> None:
        self._root = root
        self._index_dir = index_dir  # None: the helper keeps nothing on disk either
        self._remember = remember
        self._listings: OrderedDict[tuple[str, str], _Listing] = OrderedDict()  # (folder, view)
        self._lock = threading.Lock()
        self._helper: Helper | None = None
        self._stopped = False
        self.described = 0  # sizes that came from helpers before the daemon needed them
        self.started = 0  # helpers started

    def listed(self, folder: str, view: View, names: Iterable[bytes]) -> None:
        """A listing of ``view``'s ``folder`` (its source path) showed these ``names``."""
        tiffs = filter(is_tiff_name, names)
        if sum(1 for _ in itertools.islice(tiffs, MIN_FILES)) < MIN_FILES:
            return
        key = (folder, view.name)
        with self._lock:
            self._listings[key] = _Listing(time.monotonic())
            self._listings.move_to_end(key)
            while len(self._listings) > KEPT_LISTINGS:
                self._listings.popitem(last=False)

    def missed(self, path: str, view: View) -> None:
        """``view``'s size of ``path`` is about to be found by describing it in this
        process. The ``START_AFTER``-th such file of a large folder listed in the last
        ``LISTING_SECONDS`` starts a helper on the rest of that folder, unless one runs."""
        if not self._listings:  # the common case, without the lock
            return
        key = (os.path.dirname(path), view.name)
        with self._lock:
            listing = self._listings.get(key)
            if listing is None or self._stopped:
                return
            if time.monotonic() - listing.when > LISTING_SECONDS:
                del self._listings[key]
                return
            listing.misses += 1
            if listing.misses < START_AFTER or \
                    (self._helper is not None and self._helper.running):
                return
            del self._listings[key]
            self._helper = Helper(self._root, self._index_dir, (view,),
                                  functools.partial(self._received, view.name),
                                  folder=key[0], skip=path)
            self._helper.start()
            self.started += 1

    def _received(self, view: str, path: str, version: SourceVersion, sizes: list[int],
                  pages: int) -> bool:
        new = self._remember(path, version, view, sizes[0])
        if new:
            self.described += 1
        return new

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until no helper runs (for tests); False on timeout."""
        helper = self._helper
        return helper is None or helper.join(timeout)

    def stop(self) -> None:
        """Stop the running helper, if any (it writes what it described to the index
        first); start no more."""
        with self._lock:
            self._stopped = True
            helper = self._helper
        if helper is not None:
            helper.stop()


@dataclasses.dataclass
class _Listing:
    when: float  # time.monotonic() of the listing
    misses: int = 0  # files its stats have described since


class Helper:
    """One helper process describing files under SOURCE ``root`` (with the index in
    ``index_dir``; None: none), fed and read by a thread of this process: ``paths`` in
    this order, or else the TIFF files of ``folder`` but ``skip``, last listed first.
    ``received`` gets each file's sizes of ``views``. ``folder`` (else ``root``) names
    the work on the helper's command line and in the log line of a helper that dies."""

    def __init__(self, root: str, index_dir: str | None, views: tuple[View, ...],
                 received: Received, *, paths: list[str] | None = None,
                 folder: str | None = None, skip: str | None = None) -> None:
        self.folder = folder or root
        self._request: dict[str, Any] = {
            "root": root, "index_dir": index_dir,
            "views": [dataclasses.asdict(view) for view in views],
            **({"paths": paths} if paths is not None else {"folder": folder, "skip": skip})}
        self._received = received
        self._process: subprocess.Popen | None = None
        self._told_to_stop = False
        self._thread = threading.Thread(target=self._run, name="describe-ahead", daemon=True)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def stop(self) -> None:
        self._told_to_stop = True
        self._end()
        self._thread.join()

    def _end(self) -> None:
        """Ask the helper to end: on SIGTERM it writes its index rows and exits."""
        process = self._process
        if process is not None and process.poll() is None:
            process.terminate()

    def _run(self) -> None:
        try:
            process = self._process = start_helper(
                "tifffs.ahead:serve", self.folder, stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        except OSError as exc:
            log.warning("%s: could not start a helper to describe its files ahead (%s); "
                        "they are described as they are asked for", printable(self.folder),
                        exc)
            return
        log.debug("describing the files of %s ahead in helper %d", printable(self.folder),
                  process.pid)
        trouble: Exception | None = None
        try:
            if not self._told_to_stop:  # stop() may have come before the process
                with process.stdin:
                    process.stdin.write(json.dumps(self._request).encode())
                self._take(process.stdout)
        except (OSError, ValueError, TypeError) as exc:  # it ended early, or broke its word
            trouble = exc
        finally:
            process.stdin.close()
            process.stdout.close()  # a helper writing sizes no one reads gets EPIPE
            self._end()
            status = wait_or_kill(process, STOP_SECONDS)
        if self._told_to_stop or (status in (0, -signal.SIGTERM) and trouble is None):
            return
        cause = (f"killed by {signal_name(status)}" if status < 0
                 else f"exit status {status}" if status else str(trouble))
        log.warning("%s: the helper describing its files ahead ended (%s); they are "
                    "described as they are asked for", printable(self.folder), cause)

    def _take(self, lines: Any) -> None:
        views = len(self._request["views"])
        for line in lines:
            if self._told_to_stop:
                return
            for path, version, sizes, pages in json.loads(line):
                if not (isinstance(path, str) and _naturals(version, 5)
                        and _naturals(sizes, views) and _naturals([pages], 1)):
                    raise ValueError(f"an answer that is not a size: {line[:200]!r}")
                if not self._received(path, SourceVersion(*version), sizes, pages):
                    return  # the caller has described this one: the two have met


def _naturals(values: Any, count: int) -> bool:
    return isinstance(values, list) and len(values) == count and \
        all(isinstance(v, int) and v >= 0 for v in values)


# -- the helper process


def serve(folder: str = "") -> None:
    """A helper's life: read one request on stdin (``Helper`` makes it), describe its files
    in order, write their sizes and page counts on stdout, ``BATCH`` to a line. Files
    the index has up to date are left out, and so is a file that fails or whose IFD
    chain breaks off: its caller describes it and logs why. It ends when done, on
    SIGTERM, when stdout closes or when its parent ends, with what it described written
    to the index. ``folder`` only shows in ``ps``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    logging.disable(logging.CRITICAL)  # the daemon logs a file's problem when it meets it
    from tifffs.setup import build_tree

    parent = os.getppid()
    request = json.load(sys.stdin)
    views = tuple(View(**fields) for fields in request["views"])
    tree = build_tree(request["root"], views, 1 << 20, request["index_dir"], 1)
    catalog = tree.catalog
    paths = request["paths"] if "paths" in request else \
        _files_backwards(request["folder"], request["skip"])
    batch: list[tuple[str, SourceVersion, list[int], int]] = []
    try:
        for done, path in enumerate(paths, 1):
            if stop.is_set() or os.getppid() != parent:
                break
            if done % COMMIT_FILES == 0 and catalog.index is not None:
                catalog.index.flush()
            try:
                st = os.stat(path)
                version = SourceVersion.of(st)
                if all(catalog.indexed_size(path, version, view) is not None
                       for view in views):
                    continue  # the caller finds these sizes in the index too
                sizes = [catalog.size(path, st, view) for view in views]
                description = catalog.description(path, version)
            except (OSError, TifffsError):
                continue
            if description.truncated is None:
                batch.append((path, version, sizes, len(description.pages)))
            if len(batch) == BATCH:
                _send(batch)
        _send(batch)
    except BrokenPipeError:  # no one reads: the exit's flush must not fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        if catalog.index is not None:
            catalog.index.close()


def _files_backwards(folder: str, skip: str) -> list[str]:
    """The TIFF files of ``folder`` but ``skip``, last listed first (the mount lists a
    folder in the order of ``os.scandir``)."""
    with os.scandir(folder) as entries:
        names = [e.name for e in entries if is_tiff_name(e.name) and e.is_file()]
    paths = (os.path.join(folder, name) for name in reversed(names))
    return [path for path in paths if path != skip]


def _send(batch: list[tuple[str, SourceVersion, list[int], int]]) -> None:
    if batch:
        sys.stdout.write(json.dumps(batch) + "\n")
        sys.stdout.flush()
        batch.clear()
