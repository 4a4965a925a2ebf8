"""Pixel I/O of one open source version: rows of a page as numpy arrays.

Pixels are read with ``os.pread``/``os.preadv`` on a read-only descriptor, never
through a memory map: a map of a file that shrinks kills the process with SIGBUS,
while a short read is an ordinary error (``SourceChanged``) the mount reports as EIO.
Uncompressed strips are read in place into the caller's buffer; compressed strips and
tiles are decoded by tifffile (imagecodecs; JPEG XR and JPEG 2000 in helper processes),
only those that hold a wanted row, their bytes fetched with one read per run of
neighbouring segments.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from tifffs import isolated
from tifffs.arith import ceil_div
from tifffs.decoding import decoding_failure, guarded_decoder
from tifffs.errors import BrokenSource, SourceChanged, TifffsError
from tifffs.pages import FileDescription, SourcePage, SourceVersion
from tifffs.samples import bilevel_to_grey
from tifffs.scratch import ScratchBuffer

#: Rows read one by one with gaps up to this are read as one span (``nearest``).
SMALL_GAP_BYTES = 256 << 10
#: The most compressed bytes of neighbouring strips or tiles read at once.
MAX_RUN_BYTES = 4 << 20
#: At most this many buffers in one ``preadv`` (Linux's IOV_MAX is 1024).
MAX_IOVECS = 1024


class SourceFile:
    """One version of a source TIFF, open read-only, and its description.

    The descriptor is kept while the object lives (a handle reads it), so a source that
    is renamed over or deleted keeps serving the version that was opened; a source that
    is truncated or rewritten in place is detected by ``check_unchanged``.
    """

    def __init__(self, path: str, fd: int, version: SourceVersion,
                 description: FileDescription) -> None:
        self.path = path
        self.fd = fd
        self._closer = weakref.finalize(self, os.close, fd)
        self.version = version
        self.description = description
        self._decoders: dict[int, Callable[..., Any]] = {}
        self._decoder_lock = threading.Lock()
        self._users = 0  # renders reading now
        self._closing = False
        self._use_lock = threading.Lock()

    @property
    def pages(self) -> tuple[SourcePage, ...]:
        return self.description.pages

    def close(self) -> None:
        """Close the descriptor once no render reads it (at once if none does; it is
        also closed when the object is collected). Later renders fail."""
        with self._use_lock:
            self._closing = True
            if self._users:
                return
        self._closer()

    @contextlib.contextmanager
    def in_use(self) -> Iterator[None]:
        """Keep the descriptor open while a render reads it (a render ahead may still
        run when the last handle closes; a closed descriptor's number can be reused)."""
        with self._use_lock:
            if self._closing:
                raise SourceChanged("the view was closed while it was being rendered")
            self._users += 1
        try:
            yield
        finally:
            with self._use_lock:
                self._users -= 1
                last = self._closing and not self._users
            if last:
                self._closer()

    @property
    def closing(self) -> bool:
        """Whether its last handle has closed (renders that start now fail)."""
        return self._closing

    @property
    def closed(self) -> bool:
        return not self._closer.alive

    def check_unchanged(self) -> None:
        """Raise ``SourceChanged`` if the open file no longer is the version described."""
        if not self.version.same_content(os.fstat(self.fd)):
            raise SourceChanged("source changed while its view was open; reopen the view")

    def read_rows(self, page: SourcePage, plane: int, start: int, stop: int, step: int = 1,
                  out: np.ndarray | None = None,
                  runs: ScratchBuffer | None = None) -> np.ndarray:
        """Rows ``start:stop:step`` of one plane as a little-endian array (rows, width,
        samples), written into ``out`` when given (it must have that shape and dtype);
        compressed bytes are read into ``runs`` when given (``segment_row``)."""
        rows = range(start, min(stop, page.height), step)
        shape = (len(rows), page.width, page.samples_per_row_pixel)
        if out is None:
            out = np.empty(shape, dtype=page.dtype)
        elif out.shape != shape or out.dtype != page.dtype:
            raise ValueError(f"out has shape {out.shape} {out.dtype}, needs {shape}")
        if rows:
            if page.direct:
                self._pread_rows(page, plane, rows, out)
            else:
                self._decode_rows(page, plane, rows, out, runs)
                if page.bilevel_white is not None:
                    bilevel_to_grey(out, page.bilevel_white)
        if out.dtype.byteorder == ">":
            out = out.byteswap().view(out.dtype.newbyteorder("<"))
        return out

    def advise(self, spans: list[tuple[int, int]]) -> None:
        """Have the kernel start reading these (offset, length) spans of the file into its
        page cache (``POSIX_FADV_WILLNEED``), the neighbouring ones as one
        (``merged_spans``), for a render ahead that will read them: from a cold disk the
        reads then overlap the rendering."""
        for offset, length in merged_spans(spans):
            with contextlib.suppress(OSError):
                os.posix_fadvise(self.fd, offset, length, os.POSIX_FADV_WILLNEED)

    def _pread_rows(self, page: SourcePage, plane: int, rows: range, out: np.ndarray) -> None:
        """Fill ``out`` with ``rows`` of uncompressed strips: one ``preadv`` per run of
        rows in one strip; rows skipped by ``step`` go to a scratch buffer when the gap
        is small (one contiguous read beats many small ones), else rows are read apart."""
        row_bytes = page.row_bytes
        target = memoryview(out.reshape(-1).view(np.uint8))
        gap = (rows.step - 1) * row_bytes
        scratch = _scratch(gap) if 0 < gap <= SMALL_GAP_BYTES else None
        for offset, buffers, size in _runs(page, plane, rows, target, scratch):
            if offset is None:  # a strip never written: zeros
                for buffer in buffers:
                    np.asarray(buffer).fill(0)
                continue
            if os.preadv(self.fd, buffers, offset) != size:
                raise SourceChanged(
                    f"source ends before page {page.index} row {rows.start} (file shrank?)")

    def _decode_rows(self, page: SourcePage, plane: int, rows: range, out: np.ndarray,
                     runs: ScratchBuffer | None) -> None:
        """Fill ``out`` with ``rows`` from the strips or tiles that hold them."""
        seg_rows = page.segment_rows
        for seg_y in range(rows[0] // seg_rows, rows[-1] // seg_rows + 1):
            top = seg_y * seg_rows
            # the part of ``rows`` inside this row of segments, as out[i0:i1]
            i0 = max(0, ceil_div(top - rows.start, rows.step))
            i1 = min(len(rows), ceil_div(top + seg_rows - rows.start, rows.step))
            if i0 >= i1:
                continue
            local = slice(rows[i0] - top, rows[i1 - 1] - top + 1, rows.step)
            for left, width, segment in self.segment_row(page, plane, seg_y, local.stop,
                                                         runs=runs):
                if segment is None:  # a segment that was never written: zeros
                    out[i0:i1, left:left + width] = 0
                else:
                    out[i0:i1, left:left + width] = segment[local, :width]

    def segment_row(self, page: SourcePage, plane: int, seg_y: int, needed_rows: int,
                    side_by_side: int = 1, runs: ScratchBuffer | None = None,
                    place: int = 0) -> Iterator[tuple[int, int, np.ndarray | None]]:
        """The decoded strips or tiles of row ``seg_y`` of segments of one plane, one at a
        time, as (left column, columns inside the page, (rows, columns, samples) array in
        the page's byte order), None for a segment never written (zeros). A segment with
        fewer than ``needed_rows`` rows or columns than the page needs is broken. A
        caller that walks ``side_by_side`` rows of segments at once gets runs of
        compressed bytes that many times smaller, so that it holds ``MAX_RUN_BYTES``.
        The runs are read into part ``place`` of ``runs`` when given (the rows walked
        at once share it, one part each: it holds ``MAX_RUN_BYTES``), else into new
        memory."""
        first = plane * page.segments_per_plane + seg_y * page.segments_across
        run_bytes = max(1, MAX_RUN_BYTES // side_by_side)
        part = None if runs is None else runs.array((side_by_side, run_bytes), np.uint8)[place]
        segments = self._segments(page, first, page.segments_across, run_bytes, part)
        for seg_x, segment in enumerate(segments):
            left = seg_x * page.segment_width
            width = min(page.segment_width, page.width - left)
            if segment is not None and (segment.shape[0] < needed_rows
                                        or segment.shape[1] < width):
                raise BrokenSource(f"page {page.index} segment {first + seg_x} is too small")
            yield left, width, segment

    def _segments(self, page: SourcePage, first: int, count: int, run_bytes: int,
                  runs: np.ndarray | None) -> Iterator[np.ndarray | None]:
        """Decoded segments ``first:first+count`` of a page, (rows, columns, samples) each,
        None for a segment never written, one at a time."""
        decode = self._decoder(page)
        for index, chunk in self._read_segment_bytes(page, first, count, run_bytes, runs):
            yield None if chunk is None else _decoded(page, decode, chunk, index)

    def _read_segment_bytes(self, page: SourcePage, first: int, count: int, run_bytes: int,
                            runs: np.ndarray | None) -> Iterator[tuple[int, bytes | None]]:
        """(index, compressed bytes) of segments ``first:first+count``, None for one never
        written. Neighbours in the file are read together, up to ``run_bytes`` at a
        time: a row of tiles of a slide scan holds tens of MB, and each render slot
        holds only its current run, in ``runs`` (``run_bytes`` of memory) when given (a
        segment larger than that in new memory, which is not kept)."""
        offsets = page.offsets[first:first + count].tolist()
        counts = page.bytecounts[first:first + count].tolist()
        i = 0
        while i < count:
            if not offsets[i]:  # never written (see ``with_segments``)
                yield first + i, None
                i += 1
                continue
            j = i + 1  # extend the run while the next segment follows in the file
            while (j < count and offsets[j] == offsets[j - 1] + counts[j - 1]
                   and offsets[j] + counts[j] - offsets[i] <= run_bytes):
                j += 1
            size = offsets[j - 1] + counts[j - 1] - offsets[i]
            data = _read_run(self.fd, size, offsets[i], runs if size <= run_bytes else None)
            if len(data) != size:
                raise SourceChanged(f"source ends inside segment {first + i} of page "
                                    f"{page.index}")
            with memoryview(data) as view:
                for k in range(i, j):
                    begin = offsets[k] - offsets[i]
                    yield first + k, bytes(view[begin:begin + counts[k]])
            del data  # else it is held while the next run is read: two runs at once
            i = j

    def _decoder(self, page: SourcePage) -> Callable[..., Any]:
        """The decoder of a page, built from its IFD once per open file: in this process
        behind its codec's check (``tifffs.decoding``), or in a helper process for codecs
        that no check makes safe (``tifffs.isolated``)."""
        with self._decoder_lock:
            decode = self._decoders.get(page.ifd_offset)
            if decode is None:
                name = os.path.basename(self.path)
                if isolated.is_isolated(page.compression):
                    decode = isolated.isolated_decoder(self.fd, self.version, page, name)
                else:
                    decode = guarded_decoder(self.fd, page, name)
                self._decoders[page.ifd_offset] = decode
            return decode


_local = threading.local()


def _scratch(size: int) -> memoryview:
    """A per-thread buffer of at least ``size`` bytes (at most SMALL_GAP_BYTES): the rows
    a strided read skips land there and are overwritten again."""
    buffer = getattr(_local, "scratch", None)
    if buffer is None:
        buffer = _local.scratch = memoryview(bytearray(SMALL_GAP_BYTES))
    return buffer[:size]


def _read_run(fd: int, size: int, offset: int, runs: np.ndarray | None) -> Any:
    """``size`` bytes at ``offset`` (fewer at the end of the file), read into ``runs``
    when given: memory of the render slot, reused run after run, so that runs of
    several MB take no fresh memory."""
    if runs is None:
        return os.pread(fd, size, offset)
    buffer = runs[:size]
    return buffer[:os.preadv(fd, [buffer], offset)]


def _decoded(page: SourcePage, decode: Callable[..., Any], data: bytes,
             index: int) -> np.ndarray | None:
    try:
        segment = decode(data, index)[0]
    except TifffsError:  # said already (a codec's check, a decoding helper's report)
        raise
    except Exception as exc:
        raise BrokenSource(f"page {page.index} segment {index}: "
                           f"{decoding_failure(page.compression, exc)}") from exc
    if segment is None:
        return None
    return segment.reshape(segment.shape[-3:])


#: The most bytes one read-ahead advice covers.
MAX_ADVICE_BYTES = 64 << 20
#: Spans of advice at most this far apart are advised as one (the IFD between two
#: pages): one request instead of a request per small page.
ADVICE_GAP_BYTES = 64 << 10


def merged_spans(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(offset, length) spans in file order, those that overlap or lie
    ``ADVICE_GAP_BYTES`` apart merged while the merged span stays within
    ``MAX_ADVICE_BYTES``: every byte of every span is still covered."""
    merged: list[list[int]] = []
    for offset, length in sorted(spans):
        end = offset + length
        if (merged and offset <= merged[-1][1] + ADVICE_GAP_BYTES
                and max(merged[-1][1], end) - merged[-1][0] <= MAX_ADVICE_BYTES):
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([offset, end])
    return [(start, end - start) for start, end in merged]


def row_span(page: SourcePage, plane: int, start: int, stop: int) -> tuple[int, int] | None:
    """(offset, length) of the file bytes that hold rows ``start:stop`` of one plane
    (from the first to the last of their strips or tiles), or None when there is none
    or the segments are not in file order."""
    if start >= stop:
        return None
    seg_rows = page.segment_rows
    first = plane * page.segments_per_plane
    top, bottom = start // seg_rows, (stop - 1) // seg_rows
    if page.direct:  # uncompressed strips: exactly the rows' bytes
        strips = page.offsets[first:]
        if not (strips[top] and strips[bottom]):
            return None  # a strip never written: nothing to read ahead there
        begin = int(strips[top]) + (start - top * seg_rows) * page.row_bytes
        end = int(strips[bottom]) + (stop - bottom * seg_rows) * page.row_bytes
    else:
        across = page.segments_across
        segments = slice(first + top * across, first + (bottom + 1) * across)
        offsets, counts = page.offsets[segments], page.bytecounts[segments]
        begin, end = int(offsets.min()), int((offsets + counts).max())
    if end <= begin:
        return None
    return begin, min(end - begin, MAX_ADVICE_BYTES)


def _runs(page: SourcePage, plane: int, rows: range, target: memoryview,
          scratch: memoryview | None) -> Iterator[tuple[int | None, list[memoryview], int]]:
    """(file offset, buffers, bytes) of each ``preadv`` that reads ``rows`` into
    ``target``: runs of rows in one strip, skipped rows into ``scratch``. The offset is
    None for rows of a strip never written (offset 0, see ``with_segments``): they are
    zeros, as tifffile reads them."""
    row_bytes, rps = page.row_bytes, page.segment_rows
    strips = page.offsets[plane * page.segments_per_plane:]
    if rows.step == 1:
        position = 0
        for strip in range(rows.start // rps, (rows.stop - 1) // rps + 1):
            first, last = max(rows.start, strip * rps), min(rows.stop, (strip + 1) * rps)
            size = (last - first) * row_bytes
            start = int(strips[strip])
            offset = start + (first - strip * rps) * row_bytes if start else None
            yield offset, [target[position:position + size]], size
            position += size
        return
    yield from _strided_runs(strips, rps, row_bytes, rows, target, scratch)


def _strided_runs(strips: np.ndarray, rps: int, row_bytes: int, rows: range,
                  target: memoryview, scratch: memoryview | None
                  ) -> Iterator[tuple[int | None, list[memoryview], int]]:
    """Every ``step``-th row: with a scratch buffer, one read per strip (and per
    IOV_MAX buffers) takes the skipped rows into scratch; else one read per row."""
    position = 0
    run: list[memoryview] = []
    run_offset = run_size = 0
    last_strip = seen_strip = -1
    strip_offset = 0
    for row in rows:
        strip = row // rps
        if strip != seen_strip:  # a numpy scalar once per strip, not per row
            strip_offset, seen_strip = int(strips[strip]), strip
        offset = strip_offset + (row - strip * rps) * row_bytes
        row_view = target[position:position + row_bytes]
        position += row_bytes
        if not strip_offset:  # a strip never written: zeros
            yield None, [row_view], row_bytes
            continue
        contiguous = scratch is not None and strip == last_strip and \
            len(run) + 2 <= MAX_IOVECS and offset == run_offset + run_size + len(scratch)
        if contiguous:
            run += [scratch, row_view]
            run_size += len(scratch) + row_bytes
            continue
        if run:
            yield run_offset, run, run_size
        run, run_offset, run_size, last_strip = [row_view], offset, row_bytes, strip
    if run:
        yield run_offset, run, run_size
