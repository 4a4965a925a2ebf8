"""The work of ``tifffs render`` that runs in worker processes, local or on dask.

Every function takes and returns plain picklable values and reports a problem with its
file as an ``Outcome`` instead of raising: one broken source must not stop a run, and an
exception would have to be pickled back to the coordinator.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass

from tifffs.config import DEFAULT_METHOD
from tifffs.errors import TifffsError
from tifffs.outputs import (
    Readable,
    Stamp,
    check_source,
    create,
    discard,
    finish,
    is_up_to_date,
    write_range,
)
from tifffs.problems import printable

RENDERED = "rendered"
COPIED = "copied"
UP_TO_DATE = "up to date"
WROTE_RANGE = "wrote range"
FAILED = "failed"


@dataclass(frozen=True)
class ViewSpec:
    """Which view to render and how: the options of ``tifffs render``."""

    view: str
    method: str = DEFAULT_METHOD  # for view names that do not name one
    use_levels: bool = False
    imagej_large: bool = False
    cache_bytes: int = 64 << 20
    force: bool = False  # write outputs that are up to date too
    #: bands one file renders side by side: the cores shared among the files at once
    render_slots: int | None = None

    @contextlib.contextmanager
    def open(self, path: str) -> Iterator[Readable]:
        """The view of the source TIFF at ``path``, closed afterwards."""
        from tifffs import open_view  # numpy and tifffile: only where rendering

        view = open_view(path, method=self.method, view=self.view, use_levels=self.use_levels,
                         imagej_large=self.imagej_large, cache_bytes=self.cache_bytes,
                         render_slots=self.render_slots)
        try:
            yield view
        finally:
            close = getattr(view, "close", None)
            if close is not None:
                close()


@dataclass(frozen=True)
class Outcome:
    """What became of one source file (or of one range of a large one)."""

    source: str
    action: str
    bytes_in: int = 0
    bytes_out: int = 0
    error: str = ""


def describe(exc: BaseException) -> str:
    """One line saying why a file failed."""
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {printable(os.fsdecode(exc.filename))}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    if isinstance(exc, (TifffsError, OSError, ValueError)):
        return printable(str(exc)) or type(exc).__name__
    return printable(f"internal error ({type(exc).__name__}: {exc}): please report it")


def quiet_libraries() -> None:
    """tifffile logs the oddities it works around; render reports failures itself."""
    logging.getLogger("tifffile").setLevel(logging.CRITICAL)


def render_file(spec: ViewSpec, source: str, final: str, temp: str) -> Outcome:
    """Render the view of ``source`` to ``final`` through ``temp``, unless up to date."""
    quiet_libraries()
    try:
        stamp = Stamp.of(source)
        with spec.open(source) as view:
            size = view.size
            if not spec.force and is_up_to_date(final, stamp, size):
                return Outcome(source, UP_TO_DATE)
            _write_whole(view, source, stamp, final, temp)
        return Outcome(source, RENDERED, stamp.size, size)
    except Exception as exc:  # noqa: BLE001  (one file: reported, the run goes on)
        return Outcome(source, FAILED, error=describe(exc))


def _write_whole(view: Readable, source: str, stamp: Stamp, final: str, temp: str) -> None:
    try:
        fd = create(temp)
        try:
            write_range(view, fd, 0, view.size)
        finally:
            os.close(fd)
        check_source(source, stamp)
        finish(temp, final, stamp)
    except BaseException:  # also KeyboardInterrupt: never leave a partial file
        discard(temp)
        raise


def copy_file(source: str, final: str, temp: str, force: bool = False) -> Outcome:
    """Copy a file that is not a TIFF to ``final`` through ``temp``, unless up to date."""
    try:
        stamp = Stamp.of(source)
        if not force and is_up_to_date(final, stamp, stamp.size):
            return Outcome(source, UP_TO_DATE)
        try:
            shutil.copyfile(source, temp)
            check_source(source, stamp)
            finish(temp, final, stamp)
        except BaseException:
            discard(temp)
            raise
        return Outcome(source, COPIED, stamp.size, stamp.size)
    except Exception as exc:  # noqa: BLE001  (one file: reported, the run goes on)
        return Outcome(source, FAILED, error=describe(exc))


def render_range(spec: ViewSpec, source: str, stamp: Stamp, temp: str, start: int,
                 end: int) -> Outcome:
    """Write bytes ``[start, end)`` of the view into ``temp``, created by the coordinator
    at the view's full size; several such tasks fill one large file side by side."""
    quiet_libraries()
    try:
        check_source(source, stamp)
        with spec.open(source) as view:
            fd = os.open(temp, os.O_WRONLY | os.O_CLOEXEC)  # never recreate a discarded one
            try:
                written = write_range(view, fd, start, end)
            finally:
                os.close(fd)
        check_source(source, stamp)
        return Outcome(source, WROTE_RANGE, bytes_out=written)
    except Exception as exc:  # noqa: BLE001  (the coordinator discards the file)
        return Outcome(source, FAILED, error=describe(exc))


def view_size(spec: ViewSpec, source: str) -> int:
    """The exact size of the view of ``source`` (reads metadata only)."""
    quiet_libraries()
    with spec.open(source) as view:
        return view.size
