"""Rendering bands of output rows, on a bounded pool with reused source buffers.

A band is rendered from just the source rows it needs: they are read into a buffer
that belongs to one render slot (no fresh memory per band: on many VMs touching new
memory costs more than the copy itself), reduced by a kernel of ``downsample``, and
returned as one contiguous little-endian array that the band cache keeps.
"""

from __future__ import annotations

import math
import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from tifffs import downsample
from tifffs.pages import SourcePage
from tifffs.pixels import SourceFile
from tifffs.plan import BlockPlan, FitPlan, PagePlan, WholePagePlan


class _RowBuffer:
    """A growable byte buffer whose arrays are views: reused from band to band."""

    def __init__(self) -> None:
        self.data = np.empty(0, dtype=np.uint8)

    def array(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        nbytes = math.prod(shape) * dtype.itemsize
        if self.data.size < nbytes:
            self.data = np.empty(nbytes, dtype=np.uint8)
        return self.data[:nbytes].view(dtype).reshape(shape)


class RenderPool:
    """At most ``slots`` bands render at once, each with its own reused buffers, and a
    few threads render bands ahead of sequential readers.

    The prefetch threads start on first use (after the daemon has forked); at most two
    bands per thread wait, further requests are dropped (the reader then renders its
    band itself). Memory held: ``slots`` buffers of one band's source rows.
    """

    def __init__(self, slots: int | None = None) -> None:
        self.slots = max(1, slots or os.cpu_count() or 1)
        self._buffers: queue.SimpleQueue[list[_RowBuffer]] = queue.SimpleQueue()
        for _ in range(self.slots):
            self._buffers.put([])
        self._executor: ThreadPoolExecutor | None = None
        self._queued = threading.BoundedSemaphore(2 * self.slots)
        self._lock = threading.Lock()

    def run(self, render: Callable[[list[_RowBuffer]], np.ndarray]) -> np.ndarray:
        """``render(buffers)`` in a free slot (waits for one)."""
        buffers = self._buffers.get()
        try:
            return render(buffers)
        finally:
            self._buffers.put(buffers)

    def submit(self, task: Callable[[], None]) -> bool:
        """Run ``task`` in the background; False (dropped) when enough work is queued."""
        if not self._queued.acquire(blocking=False):
            return False
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.slots, thread_name_prefix="render")
            executor = self._executor
        try:
            executor.submit(task).add_done_callback(lambda _: self._queued.release())
        except RuntimeError:  # shutting down
            self._queued.release()
            return False
        return True

    def shutdown(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)


def _buffer(buffers: list[_RowBuffer], i: int) -> _RowBuffer:
    while len(buffers) <= i:
        buffers.append(_RowBuffer())
    return buffers[i]


def render_band(source: SourceFile, plan: PagePlan, plane: int, band: int,
                buffers: list[_RowBuffer]) -> np.ndarray:
    """Output rows of band ``band`` of one plane, as a C-contiguous little-endian array."""
    first = band * plan.band_rows
    last = min(first + plan.band_rows, plan.out.height)
    with source.in_use():
        pixels = _render_rows(source, plan, plane, first, last, buffers)
        # bytes read while the source changed would mix two versions
        source.check_unchanged()
    result = np.ascontiguousarray(pixels, dtype=pixels.dtype.newbyteorder("<"))
    if any(np.may_share_memory(result, buffer.data) for buffer in buffers):
        result = result.copy()  # the buffer is reused by the next band
    return result


def _render_rows(source: SourceFile, plan: PagePlan, plane: int, first: int, last: int,
                 buffers: list[_RowBuffer]) -> np.ndarray:
    pages = source.pages
    src = pages[plan.sources[0]]
    if isinstance(plan, FitPlan):
        if (plan.out.width, plan.out.height) == (src.width, src.height):
            return _read(source, src, plane, first, last, 1, _buffer(buffers, 0))
        start, stop = plan.rows.source_range(first, last)
        rows = _read(source, src, plane, start, stop, 1, _buffer(buffers, 0))
        return downsample.area_resize(rows, plan.rows, plan.columns, first, last)
    if isinstance(plan, WholePagePlan):
        page = source.read_rows(src, plane, 0, src.height)
        return downsample.interpolate(page, plan.out.height, plan.out.width, plan.method)
    assert isinstance(plan, BlockPlan)
    f = plan.factor // plan.level_factor
    if plan.level is not None:
        src = plan.level
    if plan.method == "nearest":
        rows = _read(source, src, plane, first * f, last * f, f, _buffer(buffers, 0))
        return downsample.nearest(rows, f)
    read_pages = [src] if plan.level is not None else [pages[i] for i in plan.sources]
    slices = [_read(source, page, plane, first * f, last * f, 1, _buffer(buffers, i))
              for i, page in enumerate(read_pages)]
    return downsample.reduce_blocks(slices, f, plan.method)


def advise_band(source: SourceFile, plan: PagePlan, plane: int, band: int) -> None:
    """Have the kernel read ahead the source rows that ``render_band`` of this band will
    read (the same rows as ``_render_rows`` picks)."""
    first = band * plan.band_rows
    last = min(first + plan.band_rows, plan.out.height)
    pages = source.pages
    if isinstance(plan, BlockPlan):
        f = plan.factor // plan.level_factor
        read_pages = [plan.level] if plan.level is not None else \
            [pages[i] for i in plan.sources]
        for page in read_pages:
            source.advise_rows(page, plane, first * f, last * f)
    elif isinstance(plan, FitPlan):
        start, stop = plan.rows.source_range(first, last)
        source.advise_rows(pages[plan.sources[0]], plane, start, stop)
    else:
        page = pages[plan.sources[0]]
        source.advise_rows(page, plane, 0, page.height)


def _read(source: SourceFile, page: SourcePage, plane: int, start: int, stop: int,
          step: int, buffer: _RowBuffer) -> np.ndarray:
    """Rows of a page read into ``buffer`` (reused: the result is valid until the next
    read into the same buffer)."""
    count = len(range(start, min(stop, page.height), step))
    out = buffer.array((count, page.width, page.samples_per_row_pixel), page.dtype)
    return source.read_rows(page, plane, start, stop, step, out=out)
