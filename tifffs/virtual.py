"""``VirtualTiff``: one view of one source version, readable at any offset."""

from __future__ import annotations

import bisect
import functools
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Callable, Hashable

import numpy as np

from tifffs import downsample, metadata
from tifffs.cache import LruCache
from tifffs.errors import UnsupportedSource
from tifffs.layout import Layout, OutputPage, build_layout
from tifffs.methods import INTERPOLATING_METHODS
from tifffs.source import SourcePage, SourceTiff
from tifffs.stacks import z_blocks
from tifffs.views import View, parse_view

#: A band reads at most about this many source bytes (one output row at least).
BAND_SOURCE_BYTES = 16 << 20
#: linear and lanczos resize whole pages: larger pages are refused.
MAX_WHOLE_PAGE_BYTES = 512 << 20
PHOTOMETRIC_PALETTE = 3


class _Prefetcher:
    """A small pool of threads that render bands ahead of sequential readers.

    Started on first use (after the daemon has forked); at most two bands per worker
    wait, further requests are dropped (the reader then renders its band itself).
    """

    def __init__(self, workers: int) -> None:
        self._workers = workers
        self._pool: ThreadPoolExecutor | None = None
        self._slots = threading.BoundedSemaphore(2 * workers)
        self._lock = threading.Lock()

    def submit(self, task: Callable[[], None]) -> None:
        if not self._slots.acquire(blocking=False):
            return  # enough work queued already
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="prefetch")
        try:
            self._pool.submit(task).add_done_callback(lambda _: self._slots.release())
        except RuntimeError:  # shutting down
            self._slots.release()


CORES = max(1, os.cpu_count() or 1)
PREFETCHER = _Prefetcher(workers=min(4, CORES))
#: Bands rendered at once, whatever the number of readers: more would not run faster
#: (numpy and OpenCV already use the cores) and each holds its source rows in memory.
RENDER_SLOTS = threading.BoundedSemaphore(CORES)


def band_cache(capacity_bytes: int) -> LruCache[bytes]:
    """A cache of rendered bands, bounded by their total size in bytes."""
    return LruCache(capacity_bytes, weigh=len)


@dataclass(frozen=True, eq=False)
class _PagePlan:
    """One output page: the source pages it reduces and its bands of output rows."""

    out: OutputPage
    sources: tuple[int, ...]  # several when the view reduces along Z
    band_rows: int
    rows: downsample.AreaAxis | None = None  # fit views: area weights per axis
    columns: downsample.AreaAxis | None = None
    level: SourcePage | None = None  # a pyramid level to start from (``use_levels``)
    level_factor: int = 1  # how much smaller than the source page that level is

    @property
    def band_bytes(self) -> int:
        return self.band_rows * self.out.row_bytes


class VirtualTiff:
    """The bytes of ``view`` of ``source``.

    ``size`` and the header come from metadata alone; ``read`` renders only the bands
    of rows that the requested range covers, through the shared ``cache``.
    """

    def __init__(self, source: SourceTiff, view: View, cache: LruCache[bytes]) -> None:
        self.source = source
        self.view = view
        self._cache = cache
        self._plans = [self._plan(group) for group in self._page_groups()]
        pages = [plan.out for plan in self._plans]
        pages[0] = self._with_file_metadata(pages[0])
        self._plans[0] = replace(self._plans[0], out=pages[0])
        self.layout: Layout = build_layout(pages, imagej_large=view.imagej_large)
        self._key_prefix: Hashable = (source.path, source.version, view)
        # a reader going through the file in order: where its last read ended, the last
        # band it read and how many bands it has read in a row (races are harmless)
        self._sequential_end = -1
        self._last_band = (-1, -1, -1)
        self._bands_in_run = 0

    @property
    def size(self) -> int:
        """Exact size of the view file in bytes."""
        return self.layout.size

    def read(self, offset: int, length: int) -> bytes:
        """Bytes ``[offset, offset + length)`` of the view, short only at the end of file."""
        end = min(offset + length, self.layout.size)
        if offset >= end:
            return b""
        head = self.layout.head
        if end <= len(head):
            return head[offset:end]
        pieces: list[bytes | memoryview] = []
        position = offset
        if position < len(head):
            pieces.append(head[position:])
            position = len(head)
        offsets = self.layout.page_offsets
        while position < end:
            page = bisect.bisect_right(offsets, position) - 1
            plan = self._plans[page]
            plane, within_plane = divmod(position - offsets[page], plan.out.plane_bytes)
            band = within_plane // plan.band_bytes
            band_start = offsets[page] + plane * plan.out.plane_bytes + band * plan.band_bytes
            data = memoryview(self._band(page, plane, band))
            piece = data[position - band_start:end - band_start]
            pieces.append(piece)
            position += len(piece)
        self._follow_reader(offset, end, (page, plane, band))
        return b"".join(pieces)

    def _follow_reader(self, offset: int, end: int, last_band: tuple[int, int, int]) -> None:
        """Render ahead of a reader that has read on through two bands (a copy, not a
        look at one page: kernel read-ahead alone reaches into the next band)."""
        if offset != self._sequential_end:
            self._bands_in_run = 0
        if last_band != self._last_band:
            self._bands_in_run += 1
            self._last_band = last_band
        self._sequential_end = end
        if self._bands_in_run > 2:
            self._prefetch_after(*last_band)

    def _prefetch_after(self, page: int, plane: int, band: int) -> None:
        """Start rendering the bands that follow (page, plane, band) in the file: one per
        core, so that they render side by side while the reader takes this one."""
        for _ in range(CORES):
            plan = self._plans[page]
            if (band + 1) * plan.band_rows < plan.out.height:
                band += 1
            elif plane + 1 < plan.out.planes:
                plane, band = plane + 1, 0
            elif page + 1 < len(self._plans):
                page, plane, band = page + 1, 0, 0
            else:
                return
            key = (self._key_prefix, page, plane, band)
            self._cache.prefetch(key, functools.partial(self._render, page, plane, band),
                                 PREFETCHER.submit)

    def _band(self, page: int, plane: int, band: int) -> bytes:
        key = (self._key_prefix, page, plane, band)
        return self._cache.get(key, lambda: self._render(page, plane, band))

    def _render(self, page: int, plane: int, band: int) -> bytes:
        plan = self._plans[page]
        first = band * plan.band_rows
        last = min(first + plan.band_rows, plan.out.height)
        with RENDER_SLOTS:
            pixels = self._render_rows(plan, plane, first, last)
        # bytes read while the source changed would mix two versions
        self.source.check_unchanged()
        return np.ascontiguousarray(pixels, dtype=pixels.dtype.newbyteorder("<")).tobytes()

    def _render_rows(self, plan: _PagePlan, plane: int, first: int, last: int) -> np.ndarray:
        """Output rows ``first:last`` of one plane of a page, from just the rows they need."""
        source = self.source
        src = source.pages[plan.sources[0]]
        if plan.rows is not None and plan.columns is not None:  # fit view
            if (plan.out.width, plan.out.height) == (src.width, src.height):
                return source.read_rows(src, plane, first, last)
            start, stop = plan.rows.source_range(first, last)
            rows = source.read_rows(src, plane, start, stop)
            return downsample.area_resize(rows, plan.rows, plan.columns, first, last)
        method = self._method_for(src)
        f = self.view.factor // plan.level_factor
        if plan.level is not None:
            src = plan.level
        if method in INTERPOLATING_METHODS:  # one band holds the whole page
            page = source.read_rows(src, plane, 0, src.height)
            return downsample.interpolate(page, plan.out.height, plan.out.width, method)
        if method == "nearest":
            rows = source.read_rows(src, plane, first * f, last * f, step=f)
            return downsample.nearest(rows, f)
        pages = [src] if plan.level is not None else [source.pages[i] for i in plan.sources]
        slices = [source.read_rows(page, plane, first * f, last * f) for page in pages]
        return downsample.reduce_blocks(slices, f, method)

    def _method_for(self, page: SourcePage) -> str:
        # averages of palette indices are meaningless colours; the most frequent is fine
        if page.photometric == PHOTOMETRIC_PALETTE and self.view.method != "mode":
            return "nearest"
        return self.view.method

    # -- planning, from metadata only
    def _page_groups(self) -> list[tuple[int, ...]]:
        """Source pages of each output page: one each, or runs along Z."""
        pages = self.source.pages
        z_factor = self.view.z_factor
        if z_factor == 1 or len(pages) == 1:
            return [(i,) for i in range(len(pages))]
        if not _uniform(pages):
            raise UnsupportedSource("Z reduction needs pages of one shape and type")
        info = self.source.series_info()
        if info.stack_axes is not None and info.stack_shape is not None:
            return z_blocks(info.stack_axes, info.stack_shape, z_factor)
        return z_blocks("Q", (len(pages),), z_factor)

    def _plan(self, group: tuple[int, ...]) -> _PagePlan:
        src = self.source.pages[group[0]]
        view = self.view
        if view.fit is not None:
            width, height = fit_size(src.width, src.height, view.fit)
            rows, columns = (downsample.AreaAxis(src.height, height),
                             downsample.AreaAxis(src.width, width))
            out = self._output_page(src, width, height, Fraction(src.width, width),
                                    Fraction(src.height, height))
            source_rows_per_row = -(-src.height // height) + 1
            band_rows = BAND_SOURCE_BYTES // (source_rows_per_row * src.row_bytes)
            return _PagePlan(out, group, max(1, min(height, band_rows)), rows, columns)
        f = view.factor
        out = self._output_page(src, downsample.output_length(src.width, f),
                                downsample.output_length(src.height, f), Fraction(f),
                                Fraction(f))
        if self._method_for(src) in INTERPOLATING_METHODS:
            if src.height * src.row_bytes > MAX_WHOLE_PAGE_BYTES:
                raise UnsupportedSource(f"page {src.index} is too large for {view.method} "
                                        "(it resizes whole pages); use a block method")
            return _PagePlan(out, group, out.height)
        level_factor, level = self._level_for(src) if len(group) == 1 else (1, None)
        read = level or src
        return _PagePlan(out, group, self._band_rows(read, out, f // level_factor, len(group)),
                         level=level, level_factor=level_factor)

    def _level_for(self, src: SourcePage) -> tuple[int, SourcePage | None]:
        """The most reduced pyramid level whose reduction k divides the factor."""
        if not self.view.use_levels:
            return 1, None
        levels = self.source.series_info().levels.get(src.index, ())
        usable = [(k, level) for k, level in levels if self.view.factor % k == 0]
        return max(usable, key=lambda item: item[0]) if usable else (1, None)

    def _output_page(self, src: SourcePage, width: int, height: int, ratio_x: Fraction,
                     ratio_y: Fraction) -> OutputPage:
        return OutputPage(
            width=width,
            height=height,
            samples=src.samples,
            itemsize=src.dtype.itemsize,
            sampleformat=src.sampleformat,
            photometric=src.photometric,
            planar_separate=src.planar_separate,
            extrasamples=src.extrasamples,
            colormap=src.colormap,
            subfiletype=src.subfiletype,
            xresolution=metadata.scaled_resolution(src.xresolution, ratio_x),
            yresolution=metadata.scaled_resolution(src.yresolution, ratio_y),
            resolutionunit=src.resolutionunit,
        )

    def _with_file_metadata(self, first: OutputPage) -> OutputPage:
        """Page 1 with the OME-XML of an OME source, else an ImageJ description and tags."""
        source, view = self.source, self.view
        plain_factor_view = view.fit is None and view.z_factor == 1
        if source.metadata.ome_xml and plain_factor_view:
            ome = metadata.ome_xml_for_view(source.metadata.ome_xml, view.factor)
            if ome:
                return replace(first, description=ome)
        if not _uniform(source.pages):
            return first  # ImageJ shows only stacks of equal pages
        src = source.pages[0]
        description = metadata.imagej_description(
            len(self._plans), source.metadata.imagej_description, src.resolutionunit,
            Fraction(src.width, first.width) if view.fit else Fraction(view.factor),
            Fraction(src.height, first.height) if view.fit else Fraction(view.factor),
            view.z_factor)
        return replace(first, description=description,
                       extra_tags=metadata.imagej_tags(source.metadata.imagej_metadata))

    @staticmethod
    def _band_rows(src: SourcePage, out: OutputPage, f: int, slices: int) -> int:
        """Output rows per band: bounded source bytes, whole segments when they are decoded."""
        source_rows = max(f, BAND_SOURCE_BYTES // (src.row_bytes * slices))
        if src.decode is not None:
            unit = math.lcm(src.segment_rows, f)
            if unit * src.row_bytes <= 4 * BAND_SOURCE_BYTES:
                source_rows = max(1, source_rows // unit) * unit
        return max(1, min(out.height, source_rows // f))


def fit_size(width: int, height: int, longest: int) -> tuple[int, int]:
    """Size whose longest side is ``longest`` (never larger than the source), aspect kept,
    the other side rounded to the nearest pixel (halves up), at least 1."""
    if max(width, height) <= longest:
        return width, height
    if width >= height:
        return longest, max(1, (2 * height * longest + width) // (2 * width))
    return max(1, (2 * width * longest + height) // (2 * height)), longest


def _uniform(pages: list[SourcePage]) -> bool:
    """True when all pages share shape and type, as an ImageJ stack requires."""
    first = pages[0]
    return all((p.width, p.height, p.samples, p.dtype) == (first.width, first.height,
               first.samples, first.dtype) for p in pages)


def open_view(path: str, factor: int = 4, method: str = "mean", *, view: str | None = None,
              use_levels: bool = False, imagej_large: bool = False,
              cache_bytes: int = 64 << 20) -> VirtualTiff:
    """The view of the TIFF at ``path``, without a mount: ``.size`` and ``.read(offset, n)``.

    ``view`` names any view (``x4z2``, ``x4-max``, ``fit1000``); otherwise ``factor`` and
    ``method`` give ``x<factor>-<method>``; ``use_levels`` starts from a matching
    pyramid level of the source when there is one; ``imagej_large`` writes views over
    4 GiB in ImageJ's format instead of BigTIFF. Raises ``tifffs.errors.TifffsError``
    (``BrokenSource``, ``UnsupportedSource``) for files tifffs cannot serve,
    ``tifffs.views.ViewError`` for an invalid view, and ``OSError`` as the OS reports it.
    """
    spec = replace(parse_view(view or f"x{factor}-{method}", method), use_levels=use_levels,
                   imagej_large=imagej_large)
    return VirtualTiff(SourceTiff.open(path), spec, band_cache(cache_bytes))
