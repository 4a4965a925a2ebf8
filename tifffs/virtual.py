"""``VirtualTiff``: one view of one source version, readable at any offset.

The plan (layout and page plans) comes from the source's description alone; ``read``
renders only the bands of rows that the requested range covers, through the shared band
cache, on the shared render pool. Each open handle reads through a ``ViewReader`` that
keeps its own read-ahead state.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import itertools
from collections.abc import Hashable, Iterator
from dataclasses import replace
from typing import Any

import numpy as np

from tifffs.arith import ceil_div
from tifffs.cache import LruCache
from tifffs.errors import SourceChanged
from tifffs.pixels import SourceFile
from tifffs.plan import ViewPlan, band_bytes, plan_view
from tifffs.readahead import BandKey, SequentialReadAhead
from tifffs.render import RenderPool, band_spans, render_band, render_stack, stackable
from tifffs.scratch import Scratch
from tifffs.series import SeriesInfo, series_of
from tifffs.views import View, parse_view

#: Part of a read: header bytes, or a flat uint8 slice of a rendered band.
Piece = bytes | np.ndarray

#: A read renders its further bands side by side when they hold at least this many
#: output bytes; below, handing them to other threads costs more than it saves.
SIDE_BY_SIDE_BYTES = 256 << 10
#: Bands of fewer output bytes render in runs: with each, the bands after it, up to this
#: many bytes in all, in the same render slot and thread (whole pages alike as one stack,
#: ``render_stack``). Handing a band to a slot costs more than rendering a small one: a
#: time-lapse of 20,000 pages of 64 x 64 makes 20,000 bands of 2 KiB.
RUN_BYTES = 256 << 10
#: A run also reads at most this many source bytes, and holds at most this many bands
#: and a quarter of the band cache: a fit or x32 view of large frames has small bands
#: whose runs would otherwise read hundreds of frames for one small read, and a small
#: cache would drop a run's bands before its reader reached them.
RUN_SOURCE_BYTES = 1 << 20
RUN_BANDS = 64
#: Bands of fewer output bytes are not rendered ahead in the background (a reader's own
#: runs are quicker than handing them to other threads; several readers, or the
#: kernel's parallel reads, render runs side by side).
SMALL_BAND_BYTES = 64 << 10


def band_cache(capacity_bytes: int) -> LruCache[np.ndarray]:
    """A cache of rendered bands, bounded by their total size in bytes."""
    return LruCache(capacity_bytes, weigh=lambda band: band.nbytes)


class VirtualTiff:
    """The bytes of ``view`` of ``source`` as planned by ``plan``."""

    def __init__(self, source: SourceFile, view: View, plan: ViewPlan,
                 cache: LruCache[np.ndarray], pool: RenderPool) -> None:
        self.source = source
        self.view = view
        self.plan = plan
        self.layout = plan.layout
        self._cache = cache
        self._pool = pool
        self._key_prefix: Hashable = (source.path, source.version, view)
        self._advised_through: BandKey = (-1, -1, -1)  # the last band read ahead by the kernel

    @property
    def size(self) -> int:
        """Exact size of the view file in bytes."""
        return self.layout.size

    def reader(self) -> ViewReader:
        """A reader for one open handle, with its own read-ahead state."""
        return ViewReader(self, SequentialReadAhead(self._pool.queue_limit))

    def read_pieces(self, offset: int, length: int) -> tuple[list[Piece], BandKey | None]:
        """Bytes ``[offset, offset + length)`` as pieces in order, uncopied where they lie
        in rendered bands, and the last band they came from (None: header bytes only)."""
        end = min(offset + length, self.layout.size)
        if offset >= end:
            return [], None
        head = self.layout.head
        if end <= len(head):
            return [head[offset:end]], None
        pieces: list[Piece] = []
        position = offset
        if position < len(head):
            pieces.append(head[position:])
            position = len(head)
        spans = list(self._spans(position, end))
        # a large read over several bands (``tifffs render``) renders them side by side:
        # the pool renders the next few while this thread takes each band in turn (and
        # renders those the pool had no room for). Small bands (a folder of small files)
        # render faster here than handed to another thread.
        ahead = (self._pool.queue_limit if sum(stop - start for _, start, stop in spans[1:])
                 >= SIDE_BY_SIDE_BYTES else 0)
        for i, ((page, plane, band), start, stop) in enumerate(spans):
            for key, _, _ in spans[i + 1:i + 1 + ahead]:
                self._prefetch(key)
            pieces.append(self._band(page, plane, band).reshape(-1).view(np.uint8)[start:stop])
        return pieces, spans[-1][0]

    def _spans(self, position: int, end: int) -> Iterator[tuple[BandKey, int, int]]:
        """The bands that bytes ``[position, end)`` of the pixel data lie in: (key, start,
        stop) with start and stop relative to each band's first byte."""
        offsets = self.layout.page_offsets
        while position < end:
            page = bisect.bisect_right(offsets, position) - 1
            plan = self.plan.pages[page]
            plane, within_plane = divmod(position - offsets[page], plan.out.plane_bytes)
            band = within_plane // band_bytes(plan)
            band_start = offsets[page] + plane * plan.out.plane_bytes + band * band_bytes(plan)
            length = min(band_bytes(plan), plan.out.plane_bytes - band * band_bytes(plan))
            stop = min(end - band_start, length)
            yield (page, plane, band), position - band_start, stop
            position = band_start + stop

    def prefetch_after(self, key: BandKey, count: int) -> None:
        """Start rendering the ``count`` bands that follow ``key`` in the file, and have
        the kernel read the source rows of the ``3 * count`` bands after those (the
        source's descriptor reads at random: the kernel reads ahead nothing by itself,
        and from a cold disk the reads then overlap the rendering): neighbouring rows as
        one request (the pages of a time-lapse)."""
        spans: list[tuple[int, int]] = []
        for i, following in enumerate(itertools.islice(self._bands_after(key), 4 * count)):
            if i < count:
                self._prefetch(following)
            elif following > self._advised_through:  # bands are keyed in file order
                self._advised_through = following
                page, plane, band = following
                if self._cache.peek((self._key_prefix, *following)) is None:
                    # (a band rendered already will not read its source rows)
                    spans += band_spans(self.source, self.plan.pages[page], plane, band)
        if spans:
            with contextlib.suppress(SourceChanged), self.source.in_use():
                self.source.advise(spans)

    def _bands_after(self, key: BandKey) -> Iterator[BandKey]:
        """The bands after ``key``, in file order."""
        page, plane, band = key
        while True:
            plan = self.plan.pages[page]
            if (band + 1) * plan.band_rows < plan.out.height:
                band += 1
            elif plane + 1 < plan.out.planes:
                plane, band = plane + 1, 0
            elif page + 1 < len(self.plan.pages):
                page, plane, band = page + 1, 0, 0
            else:
                return
            yield page, plane, band

    def _prefetch(self, key: BandKey) -> None:
        """Have the pool render ``key`` in the background (dropped if the pool is busy);
        not small bands (``SMALL_BAND_BYTES``)."""
        if self._band_length(key) < SMALL_BAND_BYTES:
            return
        self._cache.prefetch((self._key_prefix, *key), functools.partial(self._render, *key),
                             self._pool.submit)

    def _band(self, page: int, plane: int, band: int) -> np.ndarray:
        key = (self._key_prefix, page, plane, band)
        return self._cache.get(key, lambda: self._render(page, plane, band))

    def _render(self, page: int, plane: int, band: int) -> np.ndarray:
        """Band ``band`` of a plane of a page; a small one with the run of small bands
        after it that no one holds or renders (``RUN_BYTES``), which the cache keeps."""
        plan = self.plan.pages[page]

        def render(scratch: Scratch) -> np.ndarray:
            # reserved once the slot is ours: every key reserved is ended below
            run = self._cache.reserve(self._run_after((page, plane, band)))
            ended = 0
            try:
                stacked = self._render_stack((page, plane, band), run, scratch)
                if stacked is not None:
                    for (key, pending), value in zip(run, stacked[1:]):
                        self._cache.keep(key, pending, value)
                        ended += 1
                    return stacked[0]
                value = render_band(self.source, plan, plane, band, scratch)
                for key, pending in run:
                    if self.source.closing:  # its last handle closed: leave the rest
                        break
                    self._render_into_cache(key, pending, scratch)
                    ended += 1
                return value
            finally:
                for key, pending in run[ended:]:
                    self._cache.abandon(key, pending)

        return self._pool.run(render)

    def _render_stack(self, key: BandKey, run: list[tuple[Hashable, Any]],
                      scratch: Scratch) -> list[np.ndarray] | None:
        """The bands of ``key`` and its ``run`` rendered as one stack, when they are whole
        pages alike (``stackable``); None otherwise, or when that fails (each band then
        renders alone, and fails alone)."""
        if not run:
            return None
        plane = key[1]
        keys = [key] + [k[1:] for k, _ in run]  # (page, plane, band) of each
        if any(k[1:] != (plane, 0) for k in keys):
            return None
        plans = [self.plan.pages[k[0]] for k in keys]
        if not stackable(self.source, plans):
            return None
        try:
            return render_stack(self.source, plans, plane, scratch)
        except Exception:  # noqa: BLE001  (rendered again band by band, each with its error)
            return None

    def _render_into_cache(self, key: Hashable, pending: Any, scratch: Scratch) -> None:
        """Render the band of a run that ``key`` names and end its ``pending`` with it:
        kept, or failed (its readers raise the error; it is not kept)."""
        _, page, plane, band = key
        try:
            value = render_band(self.source, self.plan.pages[page], plane, band, scratch)
        except Exception as exc:  # noqa: BLE001  (its readers raise it)
            self._cache.fail(key, pending, exc)
        else:
            self._cache.keep(key, pending, value)

    def _run_after(self, key: BandKey) -> list[Hashable]:
        """Cache keys of the small bands after ``key`` (if it is small itself) that a run
        renders with it: up to ``RUN_BYTES`` of output in all, ``RUN_SOURCE_BYTES`` of
        source, ``RUN_BANDS`` bands and a quarter of the cache."""
        run: list[Hashable] = []
        output_limit = min(RUN_BYTES, self._cache.capacity // 4)
        output = self._band_length(key)
        if output >= output_limit:  # not a small band: no run, nothing more to look at
            return run
        source = self._band_source_bytes(key[0])
        for following in itertools.islice(self._bands_after(key), RUN_BANDS - 1):
            output += self._band_length(following)
            source += self._band_source_bytes(following[0])
            if output > output_limit or source > RUN_SOURCE_BYTES:
                break
            run.append((self._key_prefix, *following))
        return run

    def _band_length(self, key: BandKey) -> int:
        """Output bytes of a full band of ``key``'s page."""
        return band_bytes(self.plan.pages[key[0]])

    def _band_source_bytes(self, page: int) -> int:
        """About how many source bytes a full band of output page ``page`` reads."""
        plan = self.plan.pages[page]
        src = self.source.pages[plan.sources[0]]
        rows = ceil_div(plan.band_rows * src.height, plan.out.height)
        return rows * src.row_bytes * len(plan.sources)


class ViewReader:
    """One open handle's reads of a view, with its read-ahead strategy."""

    def __init__(self, view: VirtualTiff, readahead: SequentialReadAhead) -> None:
        self.view = view
        self.readahead = readahead

    @property
    def size(self) -> int:
        return self.view.size

    def close(self) -> None:
        """Close the source file now (``open_view``'s readers own theirs)."""
        self.view.source.close()

    def __enter__(self) -> ViewReader:  # noqa: PYI034  (typing.Self needs Python 3.11)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self, offset: int, length: int) -> bytes:
        """Bytes ``[offset, offset + length)``, short only at the end of file."""
        return b"".join(self.read_pieces(offset, length))

    def read_pieces(self, offset: int, length: int) -> list[Piece]:
        """The same bytes as pieces (``VirtualTiff.read_pieces``), for a reader that
        copies them to their destination itself."""
        pieces, last_band = self.view.read_pieces(offset, length)
        if last_band is not None:  # the pieces then reach as far as the view lets them
            end = min(offset + length, self.view.size)
            ahead = self.readahead.after_read(offset, end, last_band)
            if ahead:
                self.view.prefetch_after(last_band, ahead)
        return pieces


def open_source_view(source: SourceFile, view: View, cache: LruCache[np.ndarray],
                     pool: RenderPool, series: SeriesInfo | None = None) -> VirtualTiff:
    """The view of an open source: plans it (reading its series only if needed)."""
    info: list[SeriesInfo] = [series] if series is not None else []

    def series_info() -> SeriesInfo:
        if not info:
            info.append(series_of(source.fd, source.path, source.description))
            source.check_unchanged()
        return info[0]

    return VirtualTiff(source, view, plan_view(source.description, view, series_info),
                       cache, pool)


def open_view(path: str, factor: int = 4, method: str = "mean", *, view: str | None = None,
              use_levels: bool = False, imagej_large: bool = False,
              cache_bytes: int = 64 << 20, render_slots: int | None = None) -> ViewReader:
    """The view of the TIFF at ``path``, without a mount: ``.size``, ``.read(offset, n)``
    and ``.close()`` (also a context manager).

    ``view`` names any view (``x4z2``, ``x4-max``, ``fit1000``); otherwise ``factor`` and
    ``method`` give ``x<factor>-<method>``; ``use_levels`` starts from a matching
    pyramid level of the source when there is one; ``imagej_large`` writes views over
    4 GiB in ImageJ's format instead of BigTIFF; ``render_slots`` bands render side by
    side (default: one per core). Raises ``tifffs.errors.TifffsError``
    (``BrokenSource``, ``UnsupportedSource``) for files tifffs cannot serve,
    ``tifffs.views.ViewError`` for an invalid view, and ``OSError`` as the OS reports it.
    """
    from tifffs.sources import open_source

    spec = replace(parse_view(view or f"x{factor}-{method}", method), use_levels=use_levels,
                   imagej_large=imagej_large)
    virtual = open_source_view(open_source(path), spec, band_cache(cache_bytes),
                               RenderPool(render_slots))
    return virtual.reader()
