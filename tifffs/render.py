"""Rendering bands of output rows, on a bounded pool with reused scratch buffers.

A band is rendered from just the source rows it needs: they are read into a buffer
that belongs to one render slot (no fresh memory per band: on many VMs touching new
memory costs more than the copy itself), reduced by a kernel of ``downsample``, and
returned as one contiguous little-endian array that the band cache keeps.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from tifffs import area, downsample
from tifffs.arith import ceil_div
from tifffs.errors import BrokenSource
from tifffs.pages import SourcePage
from tifffs.pixels import SourceFile, row_span
from tifffs.plan import (
    BlockPlan,
    FitPlan,
    PagePlan,
    WholePagePlan,
    reducible_by_segments,
)
from tifffs.pools import available_cores
from tifffs.scratch import Scratch


class RenderPool:
    """At most ``slots`` bands render at once (default: one per core this process may
    run on), each with its own reused buffers, and a few threads render bands ahead of
    sequential readers.

    The prefetch threads start on first use (after the daemon has forked); at most two
    bands per thread wait, further requests are dropped (the reader then renders its
    band itself). Memory held: per slot, buffers of one band's source rows and, for fit
    views, the kernel's intermediates (a few MiB: ``area._CHUNK_BYTES`` each).
    """

    def __init__(self, slots: int | None = None) -> None:
        self.slots = max(1, slots or available_cores())
        self._scratch: queue.SimpleQueue[Scratch] = queue.SimpleQueue()
        for _ in range(self.slots):
            self._scratch.put(Scratch())
        self._executor: ThreadPoolExecutor | None = None
        self.queue_limit = 2 * self.slots  # bands queued or rendering in the background
        self._queued = threading.BoundedSemaphore(self.queue_limit)
        self._lock = threading.Lock()

    def run(self, render: Callable[[Scratch], np.ndarray]) -> np.ndarray:
        """``render(scratch)`` in a free slot (waits for one), with the slot's buffers."""
        scratch = self._scratch.get()
        try:
            return render(scratch)
        finally:
            self._scratch.put(scratch)

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
        """Stop the background threads once the bands queued (at most two per slot)
        have rendered: each holds its key in the band cache, where a reader may wait."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)


def render_band(source: SourceFile, plan: PagePlan, plane: int, band: int,
                scratch: Scratch) -> np.ndarray:
    """Output rows of band ``band`` of one plane, as a C-contiguous little-endian array."""
    first, last = _band_rows(plan, band)
    # NaN, signalling NaN and infinities in float pages give the NaN and infinite pixels
    # the reference documents; numpy would also print a warning on the daemon's stderr
    with source.in_use(), np.errstate(invalid="ignore", over="ignore"):
        pixels = _render_rows(source, plan, plane, first, last, scratch)
        # bytes read while the source changed would mix two versions
        source.check_unchanged()
    result = np.ascontiguousarray(pixels, dtype=pixels.dtype.newbyteorder("<"))
    _check_band(source, plan, result, last - first)
    if scratch.holds(result):
        result = result.copy()  # the buffer is reused by the next band
    return result


def stackable(source: SourceFile, plans: list[PagePlan]) -> bool:
    """Whether whole-page bands of these page plans can render as one stack
    (``render_stack``): block methods or ``nearest`` of one source page each, alike in
    size and type, whose blocks never span two pages."""
    first = plans[0]
    if not all(isinstance(plan, BlockPlan) and plan.level is None and len(plan.sources) == 1
               and (plan.factor, plan.method, plan.band_rows)
               == (first.factor, first.method, first.band_rows) for plan in plans):
        return False
    assert isinstance(first, BlockPlan)
    page = source.pages[first.sources[0]]
    if (page.dtype.byteorder == ">" or first.band_rows < first.out.height
            or (first.method != "nearest" and page.height % first.factor)
            or _by_segments([(page, 0, page.height)], first.factor)):
        return False
    pages = [source.pages[plan.sources[0]] for plan in plans]
    return len({(p.height, p.width, p.samples_per_row_pixel, p.dtype) for p in pages}) == 1


def render_stack(source: SourceFile, plans: list[PagePlan], plane: int,
                 scratch: Scratch) -> list[np.ndarray]:
    """The whole-page bands of one plane of several pages (``stackable``), read into one
    stack of rows and reduced by one kernel call: the same blocks, so the same pixels, as
    one page at a time, for a fraction of the calls."""
    first = plans[0]
    assert isinstance(first, BlockPlan)
    page = source.pages[first.sources[0]]
    step = first.factor if first.method == "nearest" else 1
    rows = len(range(0, page.height, step))
    stack = scratch.array("stack", (len(plans) * rows, page.width,
                                    page.samples_per_row_pixel), page.dtype)
    with source.in_use(), np.errstate(invalid="ignore", over="ignore"):
        for i, plan in enumerate(plans):
            source.read_rows(source.pages[plan.sources[0]], plane, 0, page.height, step,
                             out=stack[i * rows:(i + 1) * rows],
                             runs=scratch.buffer("runs"))
        source.check_unchanged()  # bytes read while the source changed would mix versions
        if first.method == "nearest":
            pixels = downsample.nearest(stack, first.factor)
        else:
            pixels = downsample.reduce_blocks([stack], first.factor, first.method)
    result = np.ascontiguousarray(pixels, dtype=pixels.dtype.newbyteorder("<"))
    height = first.out.height
    # each band its own copy: the cache weighs what it keeps, and a view would keep the
    # whole stack's result alive
    bands = [result[i * height:(i + 1) * height].copy() for i in range(len(plans))]
    for plan, band in zip(plans, bands):
        _check_band(source, plan, band, height)
    return bands


def _check_band(source: SourceFile, plan: PagePlan, band: np.ndarray, rows: int) -> None:
    """A band must fill exactly its place in the view's layout: bytes of another length
    would shift every byte after them in the file that readers get."""
    if band.dtype.itemsize != plan.out.itemsize or band.nbytes != rows * plan.out.row_bytes:
        raise BrokenSource(
            f"page {source.pages[plan.sources[0]].index}: its pixels decode to "
            f"{band.dtype} {band.shape[:2]} where its tags make {plan.out.itemsize}-byte "
            f"samples, {rows} x {plan.out.width}: the file is damaged")


def _render_rows(source: SourceFile, plan: PagePlan, plane: int, first: int, last: int,
                 scratch: Scratch) -> np.ndarray:
    reads = _source_rows(source.pages, plan, first, last)
    if isinstance(plan, FitPlan):
        page, start, stop = reads[0]
        if plan.by_tile_columns:
            return _fit_by_tile_columns(source, page, plane, plan, first, last, scratch)
        rows = _read(source, page, plane, start, stop, 1, scratch, 0)
        if (plan.out.width, plan.out.height) == (page.width, page.height):
            return rows
        return downsample.area_resize(rows, plan.rows, plan.columns, first, last,
                                      scratch=scratch)
    if isinstance(plan, WholePagePlan):
        page, start, stop = reads[0]
        whole = source.read_rows(page, plane, start, stop)
        return downsample.interpolate(whole, plan.out.height, plan.out.width, plan.method)
    assert isinstance(plan, BlockPlan)
    f = plan.factor // plan.level_factor
    if _by_segments(reads, f):
        return _reduce_segments(source, reads, plane, f, plan.method,
                                (last - first, plan.out.width), scratch)
    if plan.method == "nearest":
        page, start, stop = reads[0]
        return downsample.nearest(_read(source, page, plane, start, stop, f, scratch, 0), f)
    slices = [_read(source, page, plane, start, stop, 1, scratch, i)
              for i, (page, start, stop) in enumerate(reads)]
    return downsample.reduce_blocks(slices, f, plan.method)


def _by_segments(reads: list[tuple[SourcePage, int, int]], f: int) -> bool:
    """Whether a band can be reduced one segment at a time (``reducible_by_segments``):
    its rows are also whole rows of segments, the same in every slice. Then a slot holds
    one decoded tile or strip, not a row of them (tens of MB in a slide scan)."""
    page, start, stop = reads[0]
    return (reducible_by_segments([p for p, _, _ in reads], f)
            and start % page.segment_rows == 0
            and (stop % page.segment_rows == 0 or stop >= page.height)
            and all((rows_start, rows_stop) == (start, stop)
                    for _, rows_start, rows_stop in reads))


def _reduce_segments(source: SourceFile, reads: list[tuple[SourcePage, int, int]],
                     plane: int, f: int, method: str, shape: tuple[int, int],
                     scratch: Scratch) -> np.ndarray:
    """Output rows of a band, reduced one segment at a time (``_by_segments``): the same
    blocks, so the same pixels, as reducing the band's rows at once."""
    page, start, stop = reads[0]
    stop = min(stop, page.height)
    out: np.ndarray | None = None
    for seg_y in range(start // page.segment_rows, ceil_div(stop, page.segment_rows)):
        top = seg_y * page.segment_rows
        rows = min(page.segment_rows, page.height - top)
        columns = [source.segment_row(p, plane, seg_y, rows, len(reads), scratch.buffer("runs"), k)
                   for k, (p, _, _) in enumerate(reads)]
        for tiles in zip(*columns):
            left, width = tiles[0][:2]
            slices = [_inside(tile, rows, width, page) for _, _, tile in tiles]
            if out is None:
                out = np.empty((*shape, page.samples_per_row_pixel), dtype=slices[0].dtype)
            r0, c0 = (top - start) // f, left // f
            place = out[r0:r0 + ceil_div(rows, f), c0:c0 + ceil_div(width, f)]
            if method == "nearest":  # the first pixel of each block (of the first slice)
                place[...] = slices[0][::f, ::f]
            else:
                downsample.reduce_blocks(slices, f, method, out=place)
    assert out is not None
    return out


def _fit_by_tile_columns(source: SourceFile, page: SourcePage, plane: int, plan: FitPlan,
                         first: int, last: int, scratch: Scratch) -> np.ndarray:
    """Output rows ``first:last`` of a fit view of a tiled page, summed one column of
    tiles at a time (``plan.fit_by_tile_columns``): the same sums, so the same pixels, as
    ``area_resize`` of the band's source rows, with each tile decoded once."""
    start, stop = plan.rows.source_range(first, last)
    served = page.dtype.newbyteorder("<")
    samples = page.samples_per_row_pixel
    exact = area.ExactArea(served, plan.rows, plan.columns, first, last, scratch)
    sums = scratch.buffer(0).array((last - first, page.width, samples),
                                     np.dtype(exact.row_type))
    tile_rows = range(start // page.segment_rows, ceil_div(stop, page.segment_rows))
    # the rows of each row of tiles that the band needs, from its top
    needed = [min(stop - y * page.segment_rows, page.segment_rows) for y in tile_rows]
    columns = [source.segment_row(page, plane, y, n, len(tile_rows), scratch.buffer("runs"), k)
               for k, (y, n) in enumerate(zip(tile_rows, needed))]
    for tiles in zip(*columns):
        left, width = tiles[0][:2]
        strip = scratch.buffer(1).array((stop - start, width, samples), served)
        for y, n, (_, _, tile) in zip(tile_rows, needed, tiles):
            top = y * page.segment_rows
            skip = max(start - top, 0)
            strip[top + skip - start:top + n - start] = _inside(tile, n, width, page)[skip:]
        sums[:, left:left + width] = exact.rows(strip)
    return exact.columns(sums)


def _inside(tile: np.ndarray | None, rows: int, width: int, page: SourcePage) -> np.ndarray:
    """The part of a decoded tile inside the page, in the page's type, little-endian
    (a tile that decodes to another type is cast, as tifffile casts it); zeros for a
    tile never written."""
    served = page.dtype.newbyteorder("<")
    if tile is None:
        return np.zeros((rows, width, page.samples_per_row_pixel), dtype=served)
    tile = tile[:rows, :width]
    return tile if tile.dtype == served else tile.astype(served)


def _source_rows(pages: tuple[SourcePage, ...], plan: PagePlan, first: int,
                 last: int) -> list[tuple[SourcePage, int, int]]:
    """The source pages, and their rows ``start:stop``, that output rows ``first:last``
    of ``plan`` are made from (``nearest`` reads every f-th of the first page's)."""
    src = pages[plan.sources[0]]
    if isinstance(plan, FitPlan):
        return [(src, *plan.rows.source_range(first, last))]
    if isinstance(plan, WholePagePlan):
        return [(src, 0, src.height)]
    f = plan.factor // plan.level_factor
    if plan.level is not None or plan.method == "nearest":
        return [(plan.level or src, first * f, last * f)]
    return [(pages[i], first * f, last * f) for i in plan.sources]


def _band_rows(plan: PagePlan, band: int) -> tuple[int, int]:
    """Output rows ``first:last`` of band ``band``."""
    first = band * plan.band_rows
    return first, min(first + plan.band_rows, plan.out.height)


def band_spans(source: SourceFile, plan: PagePlan, plane: int,
               band: int) -> list[tuple[int, int]]:
    """The (offset, length) spans of the file that ``render_band`` of this band reads,
    for read-ahead advice (``SourceFile.advise``)."""
    spans = (row_span(page, plane, start, min(stop, page.height))
             for page, start, stop in _source_rows(source.pages, plan, *_band_rows(plan, band)))
    return [span for span in spans if span is not None]


def _read(source: SourceFile, page: SourcePage, plane: int, start: int, stop: int,
          step: int, scratch: Scratch, slot: int) -> np.ndarray:
    """Rows of a page read into the scratch buffer ``slot`` (reused: the result is valid
    until the next read into the same buffer), its compressed bytes into "runs"."""
    count = len(range(start, min(stop, page.height), step))
    out = scratch.buffer(slot).array((count, page.width, page.samples_per_row_pixel),
                                     page.dtype)
    return source.read_rows(page, plane, start, stop, step, out=out,
                            runs=scratch.buffer("runs"))
