"""Source TIFF files: describe their pages from metadata, read bands of rows.

Pixel data is read with ``os.pread`` on a read-only descriptor, never through a
memory map: a map of a file that shrinks kills the process with SIGBUS, while a short
``pread`` is an ordinary error (``SourceChanged``) the mount reports as EIO.
Compressed strips are decoded one by one with tifffile's decoder (imagecodecs),
only those that overlap the requested rows.
"""

from __future__ import annotations

import os
import stat
import struct
import weakref
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable, NamedTuple

import numpy as np
import tifffile

from tifffs.errors import BrokenSource, SourceChanged, UnsupportedSource

#: Compression schemes served in strips (TIFF tag 259 values).
SUPPORTED_COMPRESSION = {
    1: "none",
    5: "LZW",
    8: "Deflate",
    32946: "Deflate",
    32773: "PackBits",
    50000: "Zstd",
}
#: One row of one source page may not exceed this (a band holds at least factor rows).
MAX_ROW_BYTES = 64 << 20
#: A compressed strip may not decode to more than this.
MAX_SEGMENT_BYTES = 512 << 20

PLANAR_SEPARATE = 2


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
    rowsperstrip: int
    extrasamples: tuple[int, ...]
    colormap: np.ndarray | None
    subfiletype: int
    offsets: np.ndarray
    bytecounts: np.ndarray
    xresolution: Fraction | None
    yresolution: Fraction | None
    resolutionunit: int | None
    decode: Callable[..., Any] | None  # None for uncompressed strips read directly

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
    def strips_per_plane(self) -> int:
        return -(-self.height // self.rowsperstrip)


class SourceTiff:
    """One version of a source TIFF, open read-only.

    The descriptor is kept open, so a source that is renamed over or deleted keeps
    serving the version that was opened; a source that is truncated or rewritten in
    place is detected by ``check_unchanged``.
    """

    def __init__(self, path: str, fd: int, version: SourceVersion, pages: list[SourcePage],
                 imagej_description: str | None) -> None:
        self.path = path
        self.fd = fd
        self._closer = weakref.finalize(self, os.close, fd)
        self.version = version
        self.pages = pages
        self.imagej_description = imagej_description

    @classmethod
    def open(cls, path: str) -> "SourceTiff":
        """Open ``path`` read-only and describe all its pages; reads no pixel data.

        Raises ``BrokenSource``/``UnsupportedSource`` for files tifffs cannot serve,
        ``PermissionError``/``FileNotFoundError`` as the OS reports them.
        """
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise UnsupportedSource("not a regular file")
            if st.st_size == 0:
                raise BrokenSource("empty file")
            pages, description = _describe(fd, st.st_size, os.path.basename(path))
            return cls(path, fd, SourceVersion.of(st), pages, description)
        except BaseException:
            os.close(fd)
            raise

    def close(self) -> None:
        """Close the descriptor now (it is also closed when the object is collected)."""
        self._closer()

    def check_unchanged(self) -> None:
        """Raise ``SourceChanged`` if the open file no longer is the version described."""
        if SourceVersion.of(os.fstat(self.fd)) != self.version:
            raise SourceChanged("source changed while its view was open; reopen the view")

    def read_rows(self, page: SourcePage, plane: int, start: int, stop: int,
                  step: int = 1) -> np.ndarray:
        """Rows ``start:stop:step`` of one plane as a little-endian array (rows, width, samples).

        Uncompressed strips are read with ``pread``, only the rows asked for;
        compressed strips are decoded whole, only those that hold a wanted row.
        """
        rows = range(start, min(stop, page.height), step)
        spp = page.samples_per_row_pixel
        if page.decode is None:
            out = np.empty((len(rows), page.width, spp), dtype=page.dtype)
            self._pread_rows(page, plane, rows, out)
        else:
            out = self._decode_rows(page, plane, rows)
        if out.dtype.byteorder == ">":
            out = out.astype(out.dtype.newbyteorder("<"))
        return out

    def _pread_rows(self, page: SourcePage, plane: int, rows: range, out: np.ndarray) -> None:
        flat = out.reshape(len(rows), -1).view(np.uint8)
        row_bytes = page.row_bytes
        rps = page.rowsperstrip
        strip0 = plane * page.strips_per_plane
        i = 0
        while i < len(rows):
            row = rows[i]
            strip = row // rps
            # with step 1, all rows of the same strip are one contiguous read
            run = 1
            if rows.step == 1:
                run = min(len(rows) - i, (strip + 1) * rps - row)
            offset = int(page.offsets[strip0 + strip]) + (row - strip * rps) * row_bytes
            buffer = flat[i:i + run].reshape(-1)
            got = os.preadv(self.fd, [buffer], offset)
            if got != buffer.nbytes:
                raise SourceChanged(
                    f"source ends before page {page.index} row {row} (file shrank?)")
            i += run

    def _decode_rows(self, page: SourcePage, plane: int, rows: range) -> np.ndarray:
        rps = page.rowsperstrip
        strip0 = plane * page.strips_per_plane
        parts = []
        for strip in range(rows.start // rps, (rows[-1] // rps) + 1 if rows else 0):
            first = strip * rps
            wanted = [r - first for r in rows if first <= r < first + rps]
            if not wanted:
                continue
            index = strip0 + strip
            count = int(page.bytecounts[index])
            data = os.pread(self.fd, count, int(page.offsets[index]))
            if len(data) != count:
                raise SourceChanged(f"source ends inside strip {index} of page {page.index}")
            try:
                segment = page.decode(data, index)[0]
            except Exception as exc:  # codecs raise many types for corrupt data
                raise BrokenSource(f"page {page.index} strip {index}: cannot decode: {exc}") \
                    from exc
            if segment is None:
                raise BrokenSource(f"page {page.index} strip {index} is empty")
            segment = segment.reshape(-1, page.width, page.samples_per_row_pixel)
            if segment.shape[0] <= wanted[-1]:
                raise BrokenSource(f"page {page.index} strip {index} holds too few rows")
            parts.append(segment[wanted[0]:wanted[-1] + 1:rows.step])
        if not parts:
            return np.empty((0, page.width, page.samples_per_row_pixel), dtype=page.dtype)
        return np.concatenate(parts) if len(parts) > 1 else np.ascontiguousarray(parts[0])


def _describe(fd: int, file_size: int, name: str) -> tuple[list[SourcePage], str | None]:
    """Parse all IFDs of the open file; return its pages and ImageJ description."""
    # random access for the IFD scan: no readahead of pixel data
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
    try:
        with open(fd, "rb", closefd=False) as fh:
            try:
                with tifffile.TiffFile(fh, name=name) as tif:
                    byteorder = tif.byteorder
                    pages = [_describe_page(p, i, byteorder, file_size)
                             for i, p in enumerate(tif.pages)]
                    description = tif.pages.first.description if tif.is_imagej else None
            except (tifffile.TiffFileError, ValueError, struct.error, EOFError,
                    IndexError, KeyError, TypeError, OverflowError, MemoryError) as exc:
                raise BrokenSource(f"not a readable TIFF: {exc}") from exc
    finally:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_NORMAL)
    if not pages:
        raise BrokenSource("TIFF has no pages")
    return pages, description


def _describe_page(page: Any, index: int, byteorder: str, file_size: int) -> SourcePage:
    where = f"page {index}"
    if not isinstance(page, tifffile.TiffPage):
        raise BrokenSource(f"{where}: unreadable IFD")
    if page.is_tiled:
        raise UnsupportedSource(f"{where}: tiled pages are not supported yet")
    if page.imagedepth != 1:
        raise UnsupportedSource(f"{where}: volumetric (ImageDepth) pages are not supported")
    if page.compression not in SUPPORTED_COMPRESSION:
        name = getattr(page.compression, "name", page.compression)
        raise UnsupportedSource(f"{where}: compression {name} is not supported yet")
    if page.dtype is None or page.dtype.kind not in "uif" or page.dtype.itemsize * 8 != \
            page.bitspersample:
        raise UnsupportedSource(
            f"{where}: {page.bitspersample}-bit samples (format {int(page.sampleformat)}) "
            "are not supported yet")
    if int(page.photometric) == 6 and page.compression != 7:  # YCbCr
        raise UnsupportedSource(f"{where}: YCbCr pages are not supported yet")
    if page.imagewidth < 1 or page.imagelength < 1:
        raise BrokenSource(f"{where}: empty image ({page.imagewidth} x {page.imagelength})")
    dtype = np.dtype(byteorder + page.dtype.char)
    planar_separate = int(page.planarconfig) == PLANAR_SEPARATE and page.samplesperpixel > 1
    spp_row = 1 if planar_separate else page.samplesperpixel
    row_bytes = page.imagewidth * spp_row * dtype.itemsize
    if row_bytes > MAX_ROW_BYTES:
        raise UnsupportedSource(f"{where}: rows of {row_bytes} bytes are too wide")
    rps = max(1, min(int(page.rowsperstrip or page.imagelength), page.imagelength))
    planes = page.samplesperpixel if planar_separate else 1
    strips = -(-page.imagelength // rps) * planes
    offsets = np.asarray(page.dataoffsets, dtype=np.uint64)
    bytecounts = np.asarray(page.databytecounts, dtype=np.uint64)
    if offsets.size != strips or bytecounts.size != strips:
        raise BrokenSource(f"{where}: has {offsets.size} strip offsets, expected {strips}")
    direct = (page.compression == 1 and page.fillorder == 1 and page.predictor == 1)
    if direct:
        # every strip must hold all its rows inside the file
        rows_in_strip = np.full(strips // planes, rps, dtype=np.uint64)
        rows_in_strip[-1] = page.imagelength - rps * (strips // planes - 1)
        ends = offsets + np.tile(rows_in_strip, planes) * np.uint64(row_bytes)
    else:
        if rps * row_bytes > MAX_SEGMENT_BYTES:
            raise UnsupportedSource(f"{where}: strips of {rps} rows are too large to decode")
        ends = offsets + bytecounts
    if int(ends.max()) > file_size:
        raise BrokenSource(f"{where}: strip data lies past the end of the file "
                           f"({int(ends.max())} > {file_size} bytes)")
    tags = page.tags
    extrasamples = page.extrasamples
    if isinstance(extrasamples, int):
        extrasamples = (extrasamples,)
    return SourcePage(
        index=index,
        width=int(page.imagewidth),
        height=int(page.imagelength),
        samples=int(page.samplesperpixel),
        planar_separate=planar_separate,
        dtype=dtype,
        sampleformat=int(page.sampleformat),
        photometric=int(page.photometric),
        compression=int(page.compression),
        rowsperstrip=rps,
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
    )


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
