"""The byte layout of a view: header and IFDs first, then all pixel data in page order.

Pure: from a description of each output page it computes every offset, the exact file
size, and the bytes of the header and all IFDs (with their tag data). Classic TIFF is
used while every offset fits in 32 bits, BigTIFF beyond.

::

    [header][IFD 0 + its tag data][IFD 1 + ...]...[pad][page 0 pixels][page 1 pixels]...

A page's pixels are its planes one after another (one plane unless planar separate),
each plane its rows top to bottom, cut into strips of ``rowsperstrip`` rows.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from tifffs.arith import ceil_div
from tifffs.cache import LruCache

#: Preferred size of an output strip; small pages get one strip.
TARGET_STRIP_BYTES = 1 << 20
#: Pixel data starts on this boundary (helps readers that memory-map the data).
PIXEL_ALIGNMENT = 4096
CLASSIC_LIMIT = 2**32 - 1

# TIFF field types
ASCII, SHORT, LONG, RATIONAL, LONG8 = 2, 3, 4, 5, 16
_TYPE_FORMAT = {SHORT: "H", LONG: "I", RATIONAL: "I", LONG8: "Q"}


@dataclass(frozen=True, eq=False)
class OutputPage:
    """One page of a view, as it is written."""

    width: int
    height: int
    samples: int
    itemsize: int
    sampleformat: int
    photometric: int
    planar_separate: bool
    extrasamples: tuple[int, ...] = ()
    colormap: np.ndarray | None = None
    subfiletype: int = 0
    xresolution: Fraction | None = None
    yresolution: Fraction | None = None
    resolutionunit: int | None = None
    description: str | None = None
    #: further tags as (tag, field type, count, little-endian value bytes)
    extra_tags: tuple[tuple[int, int, int, bytes], ...] = ()

    @property
    def planes(self) -> int:
        return self.samples if self.planar_separate else 1

    @property
    def row_bytes(self) -> int:
        """Bytes of one row of one plane."""
        per_pixel = 1 if self.planar_separate else self.samples
        return self.width * per_pixel * self.itemsize

    @property
    def plane_bytes(self) -> int:
        return self.row_bytes * self.height

    @property
    def page_bytes(self) -> int:
        return self.plane_bytes * self.planes

    @property
    def rowsperstrip(self) -> int:
        return max(1, min(self.height, TARGET_STRIP_BYTES // self.row_bytes))


@dataclass(frozen=True)
class Layout:
    """Where everything is in a view file."""

    head: bytes  # header and all IFDs, from offset 0
    page_offsets: tuple[int, ...]  # start of each page's pixel data
    size: int
    bigtiff: bool

    @property
    def pixel_start(self) -> int:
        return self.page_offsets[0]


def build_layout(pages: list[OutputPage], imagej_large: bool = False) -> Layout:
    """Compute the layout of a view with ``pages``: classic TIFF if it fits, else BigTIFF.

    With ``imagej_large``, a view over 4 GiB whose first page has an ImageJ description
    follows ImageJ's own convention instead: classic TIFF with the first IFD only, the
    description's ``images=`` telling ImageJ (and tifffile) that the other pages follow
    contiguously. Other readers then see one page.
    """
    return _encode(pages, *_format(pages, imagej_large))


def layout_size(pages: list[OutputPage], imagej_large: bool = False) -> int:
    """The exact size of the file ``build_layout`` makes, without encoding its IFDs."""
    bigtiff, ifd_pages = _format(pages, imagej_large)
    return _pixel_end(pages, _ifd_sizes(pages, bigtiff, ifd_pages), bigtiff)


def _format(pages: list[OutputPage], imagej_large: bool) -> tuple[bool, int]:
    """(BigTIFF?, how many pages get an IFD)."""
    if _pixel_end(pages, _ifd_sizes(pages, False, len(pages)), False) <= CLASSIC_LIMIT:
        return False, len(pages)
    if imagej_large and (pages[0].description or "").startswith("ImageJ="):
        return False, 1
    return True, len(pages)


def _ifd_sizes(pages: list[OutputPage], bigtiff: bool, ifd_pages: int) -> list[int]:
    entries = _EntryMaker(bigtiff)
    return [entries.ifd_size(page) for page in pages[:ifd_pages]]


def _pixel_end(pages: list[OutputPage], ifd_sizes: list[int], bigtiff: bool) -> int:
    return _align((16 if bigtiff else 8) + sum(ifd_sizes), PIXEL_ALIGNMENT) + \
        sum(page.page_bytes for page in pages)


def _encode(pages: list[OutputPage], bigtiff: bool, ifd_pages: int) -> Layout:
    entries = _EntryMaker(bigtiff)
    ifd_offsets = []
    position = 16 if bigtiff else 8
    for page in pages[:ifd_pages]:
        ifd_offsets.append(position)
        position += entries.ifd_size(page)
    position = _align(position, PIXEL_ALIGNMENT)
    page_offsets = []
    for page in pages:
        page_offsets.append(position)
        position += page.page_bytes
    head = bytearray(_header(bigtiff, ifd_offsets[0]))
    for i, page in enumerate(pages[:ifd_pages]):
        next_ifd = ifd_offsets[i + 1] if i + 1 < ifd_pages else 0
        head += _encode_ifd(entries(page, page_offsets[i]), bigtiff, ifd_offsets[i], next_ifd)
    head += bytes(page_offsets[0] - len(head))
    return Layout(bytes(head), tuple(page_offsets), position, bigtiff)


class _EntryMaker:
    """Builds IFD entries; the tags that do not depend on offsets are built once for all
    pages that share them: a stack's pages, and the files of a folder of alike files."""

    def __init__(self, bigtiff: bool) -> None:
        self.bigtiff = bigtiff
        # by page object (alike pages of a plan share one): the page, its static entries
        self._static: dict[int, tuple[OutputPage, list[Entry]]] = {}
        self._sizes: dict[int, tuple[OutputPage, int]] = {}

    def __call__(self, page: OutputPage, pixel_offset: int | None) -> list[Entry]:
        """All entries of ``page``, sorted; strip offsets are 0 when ``pixel_offset`` is None."""
        held = self._static.get(id(page))
        if held is None:
            held = self._static[id(page)] = (page, _STATIC.get(
                (_signature(page), self.bigtiff), lambda: _static_entries(page, self.bigtiff)))
        static = held[1]
        offsets = _strip_offsets(page, pixel_offset or 0)
        if pixel_offset is None:
            offsets = [0] * len(offsets)
        strip_offsets = _field(273, LONG8 if self.bigtiff else LONG, offsets)
        return sorted([*static, strip_offsets])

    def ifd_size(self, page: OutputPage) -> int:
        """Bytes of the IFD of ``page`` and its tag data (the same for alike pages)."""
        held = self._sizes.get(id(page))
        if held is None:
            held = self._sizes[id(page)] = (page, _ifd_size(self(page, None), self.bigtiff))
        return held[1]


#: Static entries by page signature, shared by all layouts.
_STATIC: LruCache[list[Entry]] = LruCache(1024)


def _signature(page: OutputPage) -> tuple:
    """Everything of a page that its static tags depend on."""
    colormap = None if page.colormap is None else page.colormap.tobytes()
    return (page.width, page.height, page.samples, page.itemsize, page.sampleformat,
            page.photometric, page.planar_separate, page.extrasamples, colormap,
            page.subfiletype, page.xresolution, page.yresolution, page.resolutionunit,
            page.description, page.extra_tags)


def _align(value: int, alignment: int) -> int:
    return ceil_div(value, alignment) * alignment


def _header(bigtiff: bool, first_ifd: int) -> bytes:
    if bigtiff:
        return struct.pack("<2sHHHQ", b"II", 43, 8, 0, first_ifd)
    return struct.pack("<2sHI", b"II", 42, first_ifd)


def _strip_offsets(page: OutputPage, start: int) -> list[int]:
    rps = page.rowsperstrip
    strip_bytes = rps * page.row_bytes
    per_plane = ceil_div(page.height, rps)
    return [start + plane * page.plane_bytes + s * strip_bytes
            for plane in range(page.planes) for s in range(per_plane)]


def _strip_bytecounts(page: OutputPage) -> list[int]:
    rps = page.rowsperstrip
    per_plane = ceil_div(page.height, rps)
    counts = [rps * page.row_bytes] * per_plane
    counts[-1] = (page.height - rps * (per_plane - 1)) * page.row_bytes
    return counts * page.planes


@functools.lru_cache(maxsize=256)
def _rational(value: Fraction) -> tuple[int, int]:
    """A positive fraction as the nearest RATIONAL whose terms fit 32 bits (clamped)."""
    if value >= CLASSIC_LIMIT:
        return CLASSIC_LIMIT, 1
    if value <= Fraction(1, CLASSIC_LIMIT):
        return 1, CLASSIC_LIMIT
    # the largest denominator that keeps the numerator within 32 bits
    approximation = value.limit_denominator(min(CLASSIC_LIMIT, int(CLASSIC_LIMIT / value)))
    return max(1, approximation.numerator), approximation.denominator


Entry = tuple[int, int, int, bytes]  # tag, field type, count, little-endian value bytes


def _field(tag: int, field_type: int, values: list[int] | bytes) -> Entry:
    """An IFD entry; ASCII values are given as bytes (NUL included)."""
    if field_type == ASCII:
        return tag, ASCII, len(values), bytes(values)
    data = struct.pack(f"<{len(values)}{_TYPE_FORMAT[field_type]}", *values)
    count = len(values) // 2 if field_type == RATIONAL else len(values)
    return tag, field_type, count, data


def _static_entries(page: OutputPage, bigtiff: bool) -> list[Entry]:
    """The IFD entries of one page, except StripOffsets."""
    offset_type = LONG8 if bigtiff else LONG
    entries = [
        _field(256, LONG, [page.width]),
        _field(257, LONG, [page.height]),
        _field(258, SHORT, [page.itemsize * 8] * page.samples),
        _field(259, SHORT, [1]),
        _field(262, SHORT, [page.photometric]),
        _field(277, SHORT, [page.samples]),
        _field(278, LONG, [page.rowsperstrip]),
        _field(279, offset_type, _strip_bytecounts(page)),
        _field(284, SHORT, [2 if page.planar_separate else 1]),
        _field(339, SHORT, [page.sampleformat] * page.samples),
    ]
    if page.subfiletype:
        entries.append(_field(254, LONG, [page.subfiletype]))
    if page.description is not None:
        entries.append(_field(270, ASCII, page.description.encode("ascii", "replace") + b"\0"))
    if page.xresolution is not None and page.yresolution is not None:
        entries.append(_field(282, RATIONAL, list(_rational(page.xresolution))))
        entries.append(_field(283, RATIONAL, list(_rational(page.yresolution))))
    if page.resolutionunit is not None:
        entries.append(_field(296, SHORT, [page.resolutionunit]))
    if page.colormap is not None:
        entries.append(_field(320, SHORT, [int(v) for v in page.colormap.reshape(-1)]))
    if page.extrasamples:
        entries.append(_field(338, SHORT, list(page.extrasamples)))
    entries += page.extra_tags
    return entries


def _ifd_size(entries: list[Entry], bigtiff: bool) -> int:
    entry_size, inline, head, tail = (20, 8, 8, 8) if bigtiff else (12, 4, 2, 4)
    size = head + entry_size * len(entries) + tail
    for _, _, _, data in entries:
        if len(data) > inline:
            size += _align(len(data), 8)
    return size


def _encode_ifd(entries: list[Entry], bigtiff: bool, offset: int, next_ifd: int) -> bytes:
    """One IFD followed by the tag data that does not fit in its entries."""
    entry_size, inline = (20, 8) if bigtiff else (12, 4)
    count_format, offset_format = ("<Q", "<Q") if bigtiff else ("<H", "<I")
    fixed = (8 if bigtiff else 2) + entry_size * len(entries) + (8 if bigtiff else 4)
    table = bytearray(struct.pack(count_format, len(entries)))
    extra = bytearray()
    for tag, field_type, count, data in entries:
        table += struct.pack("<HH", tag, field_type)
        table += struct.pack("<Q" if bigtiff else "<I", count)
        if len(data) <= inline:
            table += data + bytes(inline - len(data))
        else:
            table += struct.pack(offset_format, offset + fixed + len(extra))
            extra += data + bytes(_align(len(data), 8) - len(data))
    table += struct.pack(offset_format, next_ifd)
    return bytes(table + extra)
