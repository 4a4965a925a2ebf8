"""Reporting of problems with source files: one log line per file and cause.

Paths and causes are made printable first: any file name gives exactly one line.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict

log = logging.getLogger("tifffs")

#: Distinct (file, cause) pairs remembered, so that repeats are not logged again, and
#: files whose problems are counted one by one (the least recent ones are forgotten).
MAX_REMEMBERED = 10000


def printable(text: str) -> str:
    """``text`` as one printable line: bytes that are not UTF-8 (surrogate escapes from
    ``os.fsdecode``) as ``\\xNN``, newlines and other control characters escaped, so a
    file name can neither break a log line nor forge one."""
    if text.isprintable():
        return text
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text)


class ProblemLog:
    """Logs each (file, cause) once; counts every occurrence, in all and per file.

    Memory stays bounded however many files fail: at most ``MAX_REMEMBERED`` pairs and
    files are remembered, the least recently seen forgotten first.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._errors_per_file: OrderedDict[str, int] = OrderedDict()
        self._total = 0

    def report(self, path: str, cause: str, errno_name: str) -> None:
        """Record a problem with ``path``; log it unless this cause was logged before."""
        path, cause = printable(path), printable(cause)
        key = (path, cause)
        with self._lock:
            self._total += 1
            self._errors_per_file[path] = self._errors_per_file.pop(path, 0) + 1
            if len(self._errors_per_file) > MAX_REMEMBERED:
                self._errors_per_file.popitem(last=False)
            if key in self._seen:
                self._seen.move_to_end(key)
                return
            self._seen[key] = None
            if len(self._seen) > MAX_REMEMBERED:
                self._seen.popitem(last=False)
        log.error("%s: %s (%s)", path, cause, errno_name)

    def errors_per_file(self) -> dict[str, int]:
        """A snapshot: number of problems seen per file (of the files remembered)."""
        with self._lock:
            return dict(self._errors_per_file)

    def errors_total(self) -> int:
        """Number of problems seen since the start, forgotten files included."""
        with self._lock:
            return self._total
