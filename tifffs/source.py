"""Source TIFF files: describe their pages from metadata, read bands of rows.

Pixel data is read with ``os.pread`` on a read-only descriptor, never through a
memory map: a map of a file that shrinks kills the process with SIGBUS, while a short
``pread`` is an ordinary error (``SourceChanged``) the mount reports as EIO.
Compressed strips and all tiles are decoded one by one with tifffile's decoder
(imagecodecs), only those that overlap the requested rows.
"""

from __future__ import annotations

import math
import os
import stat
import threading
import weakref
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Callable, Iterator, NamedTuple

import numpy as np
import tifffile

from tifffs.errors import BrokenSource, SourceChanged, TifffsError, UnsupportedSource

#: One row of one source page may not exceed this (a band holds at least factor rows).
MAX_ROW_BYTES = 64 << 20
#: Rows read one by one with gaps up to this are read ahead as one span (``nearest``).
SMALL_GAP_BYTES = 256 << 10
#: A compressed strip may not decode to more than this.
MAX_SEGMENT_BYTES = 512 << 20

PLANAR_SEPARATE = 2
PHOTOMETRIC_RGB = 2
PHOTOMETRIC_YCBCR = 6
JPEG = 7


class SourceVersion(NamedTuple):
    """Identity of one version of a source file; a change of any field is a new version."""

    device: int
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> "SourceVersion":
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass(frozen=True, eq=False)
class SourcePage:
    """What tifffs needs to know of one source page (IFD)."""

    index: int
    width: int
    height: int
    samples: int
    planar_separate: bool
    dtype: np.dtype  # with the file's byte order
    sampleformat: int
    photometric: int
    compression: int
    segment_rows: int  # rows per strip, or tile length
    segment_width: int  # the image width for strips, or tile width
    extrasamples: tuple[int, ...]
    colormap: np.ndarray | None
    subfiletype: int
    offsets: np.ndarray
    bytecounts: np.ndarray
    xresolution: Fraction | None
    yresolution: Fraction | None
    resolutionunit: int | None
    decode: Callable[..., Any] | None  # None for uncompressed strips read directly
    jpegtables: bytes | None = None

    @property
    def planes(self) -> int:
        """Number of sample planes stored one after another (1 unless planar separate)."""
        return self.samples if self.planar_separate else 1

    @property
    def samples_per_row_pixel(self) -> int:
        """Samples stored per pixel within one plane."""
        return 1 if self.planar_separate else self.samples

    @property
    def row_bytes(self) -> int:
        """Bytes of one row of one plane."""
        return self.width * self.samples_per_row_pixel * self.dtype.itemsize

    @property
    def segments_across(self) -> int:
        """Strips or tiles per row of segments."""
        return -(-self.width // self.segment_width)

    @property
    def segments_per_plane(self) -> int:
        return -(-self.height // self.segment_rows) * self.segments_across


class SourceTiff:
    """One version of a source TIFF, open read-only.

    The descriptor is kept open, so a source that is renamed over or deleted keeps
    serving the version that was opened; a source that is truncated or rewritten in
    place is detected by ``check_unchanged``.
    """

    def __init__(self, path: str, fd: int, version: SourceVersion, pages: list[SourcePage],
                 metadata: "FileMetadata") -> None:
        self.path = path
        self.fd = fd
        self._closer = weakref.finalize(self, os.close, fd)
        self.version = version
        self.pages = pages
        self.metadata = metadata
        self._series: SeriesInfo | None = None
        self._series_lock = threading.Lock()

    @classmethod
    def open(cls, path: str) -> "SourceTiff":
        """Open ``path`` read-only and describe all its pages; reads no pixel data.

        Raises ``BrokenSource``/``UnsupportedSource`` for files tifffs cannot serve,
        ``PermissionError``/``FileNotFoundError`` as the OS reports them.
        """
        # O_NONBLOCK: a fifo in the file's place must not block the open; regular files
        # ignore the flag
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise UnsupportedSource("not a regular file")
            if st.st_size == 0:
                raise BrokenSource("empty file")
            pages, metadata = _describe(fd, st.st_size, os.path.basename(path))
            return cls(path, fd, SourceVersion.of(st), pages, metadata)
        except BaseException:
            os.close(fd)
            raise

    def close(self) -> None:
        """Close the descriptor now (it is also closed when the object is collected)."""
        self._closer()

    def series_info(self) -> SeriesInfo:
        """Stack dimensions and pyramid levels. tifffile's series cost a second pass over
        the IFDs, so they are read on first use: only Z views and ``use_levels`` ask."""
        with self._series_lock:
            if self._series is None:
                info = _read_series_info(self.fd, self.version.size,
                                         os.path.basename(self.path), self.pages)
                self.check_unchanged()
                self._series = info
            return self._series

    def check_unchanged(self) -> None:
        """Raise ``SourceChanged`` if the open file no longer is the version described."""
        if SourceVersion.of(os.fstat(self.fd)) != self.version:
            raise SourceChanged("source changed while its view was open; reopen the view")

    def read_rows(self, page: SourcePage, plane: int, start: int, stop: int,
                  step: int = 1) -> np.ndarray:
        """Rows ``start:stop:step`` of one plane as a little-endian array (rows, width, samples).

        Uncompressed strips are read with ``pread``, only the rows asked for; other
        segments (compressed strips, tiles) are decoded whole, only those that hold a
        wanted row.
        """
        rows = range(start, min(stop, page.height), step)
        out = np.empty((len(rows), page.width, page.samples_per_row_pixel), dtype=page.dtype)
        if page.decode is None:
            self._pread_rows(page, plane, rows, out)
        else:
            self._decode_rows(page, plane, rows, out)
        if out.dtype.byteorder == ">":
            out = out.astype(out.dtype.newbyteorder("<"))
        return out

    def _pread_rows(self, page: SourcePage, plane: int, rows: range, out: np.ndarray) -> None:
        """Fill ``out`` with ``rows`` of uncompressed strips: one read per run of adjacent
        rows in one strip (one per row when rows are skipped)."""
        if not rows:
            return
        row_bytes = page.row_bytes
        rps = page.segment_rows
        strip_offsets = page.offsets[plane * page.segments_per_plane:]
        buffer = memoryview(out.reshape(-1).view(np.uint8))
        if rows.step == 1:  # runs: the parts of the row range in each strip
            first_strip, last_strip = rows.start // rps, (rows.stop - 1) // rps
            starts = [max(rows.start, s * rps) for s in range(first_strip, last_strip + 1)]
            ends = [min(rows.stop, (s + 1) * rps) for s in range(first_strip, last_strip + 1)]
        else:
            starts = list(rows)
            ends = [r + 1 for r in starts]
            self._advise_span(page, plane, rows)
        row_array = np.asarray(starts, dtype=np.int64)
        file_offsets = (strip_offsets[row_array // rps].astype(np.int64)
                        + (row_array % rps) * row_bytes).tolist()
        position = 0
        for start, end, offset in zip(starts, ends, file_offsets):
            size = (end - start) * row_bytes
            if os.preadv(self.fd, [buffer[position:position + size]], offset) != size:
                raise SourceChanged(
                    f"source ends before page {page.index} row {start} (file shrank?)")
            position += size

    def _advise_span(self, page: SourcePage, plane: int, rows: range) -> None:
        """Ask the kernel to read ahead the whole span of rows that are read one by one
        with small gaps: a disk reads a contiguous span faster than every k-th row."""
        gap = (rows.step - 1) * page.row_bytes
        if gap > SMALL_GAP_BYTES:
            return
        strips = page.offsets[plane * page.segments_per_plane:]
        rps = page.segment_rows
        first, last = rows[0], rows[-1]
        start = int(strips[first // rps]) + (first % rps) * page.row_bytes
        end = int(strips[last // rps]) + (last % rps + 1) * page.row_bytes
        if end > start:  # one contiguous run when the strips are in order
            os.posix_fadvise(self.fd, start, end - start, os.POSIX_FADV_WILLNEED)

    def _decode_rows(self, page: SourcePage, plane: int, rows: range, out: np.ndarray) -> None:
        """Fill ``out`` with ``rows`` from the strips or tiles that hold them."""
        if not rows:
            return
        seg_rows, seg_width = page.segment_rows, page.segment_width
        first_index = plane * page.segments_per_plane
        for seg_y in range(rows[0] // seg_rows, rows[-1] // seg_rows + 1):
            top = seg_y * seg_rows
            # the part of ``rows`` inside this row of segments, as out[i0:i1]
            i0 = max(0, -(-(top - rows.start) // rows.step))
            i1 = min(len(rows), -(-(top + seg_rows - rows.start) // rows.step))
            if i0 >= i1:
                continue
            local = slice(rows[i0] - top, rows[i1 - 1] - top + 1, rows.step)
            for seg_x in range(page.segments_across):
                index = first_index + seg_y * page.segments_across + seg_x
                segment = self._decode_segment(page, index)
                left = seg_x * seg_width
                right = min(left + seg_width, page.width)
                if segment is None:  # a segment that was never written: zeros
                    out[i0:i1, left:right] = 0
                    continue
                if segment.shape[0] < local.stop or segment.shape[1] < right - left:
                    raise BrokenSource(f"page {page.index} segment {index} is too small")
                out[i0:i1, left:right] = segment[local, :right - left]

    def _decode_segment(self, page: SourcePage, index: int) -> np.ndarray | None:
        """One strip or tile as (rows, columns, samples), None if it was never written."""
        count = int(page.bytecounts[index])
        offset = int(page.offsets[index])
        if count == 0 or offset == 0:
            return None
        data = os.pread(self.fd, count, offset)
        if len(data) != count:
            raise SourceChanged(f"source ends inside segment {index} of page {page.index}")
        try:
            segment = page.decode(data, index, jpegtables=page.jpegtables)[0]
        except Exception as exc:  # codecs raise many types for corrupt data
            raise BrokenSource(f"page {page.index} segment {index}: cannot decode: {exc}") \
                from exc
        if segment is None:
            return None
        return segment.reshape(segment.shape[-3:])


@dataclass(frozen=True)
class FileMetadata:
    """File-level metadata that views carry over."""

    imagej_description: str | None = None
    imagej_metadata: dict[str, Any] | None = None  # parsed, IJMetadata tag included
    ome_xml: str | None = None


@dataclass(frozen=True)
class SeriesInfo:
    """What tifffile's series tell: stack dimensions and pyramid levels."""

    #: axes and shape of the page axes when one series holds all pages (e.g. "TZC")
    stack_axes: str | None = None
    stack_shape: tuple[int, ...] | None = None
    #: page index -> its reduced-resolution levels (k, level), exactly ceil(W/k) wide
    levels: dict[int, tuple[tuple[int, SourcePage], ...]] = field(default_factory=dict)


def _describe(fd: int, file_size: int, name: str) -> tuple[list[SourcePage], FileMetadata]:
    """Parse all IFDs of the open file; return its pages and file metadata."""
    # random access for the IFD scan: no readahead of pixel data
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
    try:
        with open(fd, "rb", closefd=False) as fh:
            try:
                with tifffile.TiffFile(fh, name=name) as tif:
                    byteorder = tif.byteorder
                    pages = [_describe_page(p, i, byteorder, file_size)
                             for i, p in enumerate(_main_chain(tif))]
                    metadata = FileMetadata(
                        imagej_description=tif.pages.first.description if tif.is_imagej
                        else None,
                        imagej_metadata=tif.imagej_metadata if tif.is_imagej else None,
                        ome_xml=tif.pages.first.description if tif.is_ome else None)
            except TifffsError:
                raise
            except Exception as exc:  # tifffile raises many kinds on corrupt files
                raise BrokenSource(f"not a readable TIFF: {_cause(exc)}") from exc
    finally:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_NORMAL)
    if not pages:
        raise BrokenSource("TIFF has no pages")
    return pages, metadata


def _main_chain(tif: tifffile.TiffFile) -> Iterator[Any]:
    """The pages of the main IFD chain; a chain that loops back is a broken file."""
    seen: set[int] = set()
    for page in tif.pages:
        offset = getattr(page, "offset", None)
        if offset in seen:
            raise BrokenSource(f"the IFD chain loops back to offset {offset}")
        seen.add(offset)
        yield page


def _cause(exc: Exception) -> str:
    """An exception as a short cause for a log line."""
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, (tifffile.TiffFileError, ValueError)) else \
        f"{type(exc).__name__}: {text}"


def _read_series_info(fd: int, file_size: int, name: str,
                      pages: list[SourcePage]) -> SeriesInfo:
    """Stack dimensions and pyramid levels from tifffile's series of the open file."""
    with open(fd, "rb", closefd=False) as fh:
        fh.seek(0)  # the descriptor is shared; pixel reads use pread and ignore its position
        try:
            with tifffile.TiffFile(fh, name=name) as tif:
                # levels first: series turn the pages they group into TiffFrames
                levels = _levels(tif, pages, file_size)
                return SeriesInfo(**_stack_dimensions(tif, len(pages)), levels=levels)
        except TifffsError:
            raise
        except Exception as exc:  # tifffile raises many kinds on corrupt files
            raise BrokenSource(f"not a readable TIFF: {_cause(exc)}") from exc


def _levels(tif: tifffile.TiffFile, pages: list[SourcePage],
            file_size: int) -> dict[int, tuple[tuple[int, SourcePage], ...]]:
    """Each page's reduced-resolution levels: its SubIFDs (OME pyramids) and the levels
    tifffile's series know (SVS, libvips and other main-chain pyramids)."""
    candidates: dict[int, list[Any]] = {i: [] for i in range(len(pages))}
    try:
        for i, page in enumerate(tif.pages):
            if isinstance(page, tifffile.TiffPage) and page.pages:
                candidates[i] += list(page.pages)
        for series in tif.series:
            for level in series.levels[1:]:
                for main, reduced in zip(series.levels[0].pages, level.pages):
                    if (isinstance(getattr(main, "index", None), int)
                            and main.index in candidates and reduced is not None):
                        candidates[main.index].append(reduced)
    except Exception:  # noqa: BLE001  (levels are optional: a broken pyramid is not used)
        return {}
    result = {}
    for i, page in enumerate(pages):
        levels: dict[int, SourcePage] = {}
        for candidate in candidates[i]:
            level = _level_of(page, candidate, tif.byteorder, file_size)
            if level is not None:
                levels.setdefault(level[0], level[1])
        if levels:
            result[i] = tuple(sorted(levels.items()))
    return result


def _level_of(page: SourcePage, candidate: Any, byteorder: str,
              file_size: int) -> tuple[int, SourcePage] | None:
    """(k, level) if ``candidate`` is exactly ``page`` reduced k times, else None."""
    if not isinstance(candidate, tifffile.TiffPage) or not candidate.imagewidth:
        return None
    k = round(page.width / candidate.imagewidth)
    if k < 2 or candidate.imagewidth != -(-page.width // k) or \
            candidate.imagelength != -(-page.height // k):
        return None
    try:
        level = _describe_page(candidate, page.index, byteorder, file_size)
    except TifffsError:
        return None
    if (level.samples, level.dtype, level.planar_separate) != (page.samples, page.dtype,
                                                                page.planar_separate):
        return None
    return k, level


def _stack_dimensions(tif: tifffile.TiffFile, pages: int) -> dict[str, Any]:
    """Page axes of the file's one series (``stack_axes``/``stack_shape``), if it has one."""
    series = tif.series
    if len(series) != 1 or len(series[0].pages) != pages:
        return {}
    page_axes = len(series[0].keyframe.axes)
    axes = series[0].axes[:len(series[0].axes) - page_axes]
    shape = tuple(series[0].shape[:len(axes)])
    if math.prod(shape) != pages:
        return {}
    return {"stack_axes": axes, "stack_shape": shape}


def _describe_page(page: Any, index: int, byteorder: str, file_size: int) -> SourcePage:
    where = f"page {index}"
    if not isinstance(page, tifffile.TiffPage):
        raise BrokenSource(f"{where}: unreadable IFD")
    _check_supported(page, where)
    if page.imagewidth < 1 or page.imagelength < 1:
        raise BrokenSource(f"{where}: empty image ({page.imagewidth} x {page.imagelength})")
    width, height = int(page.imagewidth), int(page.imagelength)
    if page.samplesperpixel < 1 or (page.is_tiled and (page.tilewidth < 1 or
                                                       page.tilelength < 1)):
        raise BrokenSource(f"{where}: no samples per pixel or empty tiles")
    dtype = np.dtype(byteorder + page.dtype.char)
    planar_separate = int(page.planarconfig) == PLANAR_SEPARATE and page.samplesperpixel > 1
    samples_per_pixel_in_plane = 1 if planar_separate else int(page.samplesperpixel)
    row_bytes = width * samples_per_pixel_in_plane * dtype.itemsize
    if row_bytes > MAX_ROW_BYTES:
        raise UnsupportedSource(f"{where}: rows of {row_bytes} bytes are too wide")
    if page.is_tiled:
        segment_rows, segment_width = int(page.tilelength), int(page.tilewidth)
    else:
        segment_rows = max(1, min(int(page.rowsperstrip or height), height))
        segment_width = width
    planes = page.samplesperpixel if planar_separate else 1
    down, across = -(-height // segment_rows), -(-width // segment_width)
    segments = down * across * planes
    offsets = np.asarray(page.dataoffsets, dtype=np.uint64)
    bytecounts = np.asarray(page.databytecounts, dtype=np.uint64)
    if offsets.size != segments or bytecounts.size != segments:
        raise BrokenSource(f"{where}: has {offsets.size} strip or tile offsets, "
                           f"expected {segments}")
    direct = (page.compression == 1 and not page.is_tiled and page.fillorder == 1
              and page.predictor == 1)
    if direct:
        # every strip must hold all its rows inside the file
        rows_in_strip = np.full(down, segment_rows, dtype=np.uint64)
        rows_in_strip[-1] = height - segment_rows * (down - 1)
        ends = offsets + np.tile(rows_in_strip, planes) * np.uint64(row_bytes)
    else:
        decoded = segment_rows * segment_width * samples_per_pixel_in_plane * dtype.itemsize
        if decoded > MAX_SEGMENT_BYTES:
            raise UnsupportedSource(f"{where}: strips or tiles of {decoded} bytes are too "
                                    "large to decode")
        ends = np.where(offsets > 0, offsets + bytecounts, 0)
    if int(ends.max()) > file_size:
        raise BrokenSource(f"{where}: pixel data lies past the end of the file "
                           f"({int(ends.max())} > {file_size} bytes)")
    tags = page.tags
    extrasamples = page.extrasamples
    if isinstance(extrasamples, int):
        extrasamples = (extrasamples,)
    photometric = int(page.photometric)
    if photometric == PHOTOMETRIC_YCBCR:  # JPEG: tifffile decodes YCbCr to RGB
        photometric = PHOTOMETRIC_RGB
    return SourcePage(
        index=index,
        width=width,
        height=height,
        samples=int(page.samplesperpixel),
        planar_separate=planar_separate,
        dtype=dtype,
        sampleformat=int(page.sampleformat),
        photometric=photometric,
        compression=int(page.compression),
        segment_rows=segment_rows,
        segment_width=segment_width,
        extrasamples=tuple(int(e) for e in extrasamples),
        colormap=np.asarray(page.colormap, dtype=np.uint16) if page.colormap is not None
        else None,
        subfiletype=int(page.subfiletype),
        offsets=offsets,
        bytecounts=bytecounts,
        xresolution=_rational(tags, "XResolution"),
        yresolution=_rational(tags, "YResolution"),
        resolutionunit=int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else None,
        decode=None if direct else page.decode,
        jpegtables=page.jpegtables if page.compression == JPEG else None,
    )


def _check_supported(page: Any, where: str) -> None:
    """Raise ``UnsupportedSource`` naming what tifffs cannot serve in ``page``."""
    if page.imagedepth != 1:
        raise UnsupportedSource(f"{where}: volumetric (ImageDepth) pages are not supported")
    compression = int(page.compression)
    if compression != 1 and compression not in tifffile.TIFF.DECOMPRESSORS:
        name = getattr(page.compression, "name", compression)
        raise UnsupportedSource(f"{where}: no decoder for compression {name} "
                                "(install or upgrade imagecodecs)")
    if page.dtype is None or page.dtype.kind not in "uif" or \
            page.dtype.itemsize * 8 != page.bitspersample:
        raise UnsupportedSource(
            f"{where}: {page.bitspersample}-bit samples (sample format "
            f"{int(page.sampleformat)}) are not supported yet")
    if int(page.photometric) == PHOTOMETRIC_YCBCR and compression != JPEG:
        raise UnsupportedSource(f"{where}: YCbCr pixels without JPEG are not supported yet")


def _rational(tags: Any, name: str) -> Fraction | None:
    """A positive RATIONAL tag value, or None when absent or invalid."""
    tag = tags.get(name)
    if tag is None:
        return None
    value = tag.value
    try:
        numerator, denominator = (value if isinstance(value, tuple) else (value, 1))[:2]
        if numerator > 0 and denominator > 0:
            return Fraction(int(numerator), int(denominator))
    except (TypeError, ValueError):
        pass
    return None
