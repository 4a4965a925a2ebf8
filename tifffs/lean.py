"""A lean reader of TIFF IFDs for the common case (see ``describe``).

It reads the header and then each IFD of the main chain with as few ``pread`` calls as
possible, decodes only the tags a view needs, and returns None (so tifffile describes
the file instead) as soon as it meets anything outside the plain case: an unknown tag,
a codec that needs tifffile's fixes, samples that are not 8 to 64 bits.
"""

from __future__ import annotations

import functools
import os
import struct
from typing import Any

import numpy as np
import tifffile

from tifffs.cache import LruCache
from tifffs.errors import BrokenSource, TifffsError
from tifffs.page_rules import check_supported, make_page, positive_fraction, with_segments
from tifffs.pages import FileDescription, FileMetadata, SourcePage

#: Tags whose meaning the lean reader knows: those it uses and harmless ones
#: (names, dates, positions, orientation, sample ranges, software, copyright).
_USED_TAGS = {254, 255, 256, 257, 258, 259, 262, 266, 270, 273, 277, 278, 279, 282, 283,
              284, 296, 317, 320, 322, 323, 324, 325, 338, 339, 347, 50838, 50839}
_HARMLESS_TAGS = {269, 271, 272, 274, 280, 281, 285, 286, 287, 297, 305, 306, 315, 316,
                  318, 319, 330, 532, 33432, 34665, 34853, 700, 34675}
KNOWN_TAGS = frozenset(_USED_TAGS | _HARMLESS_TAGS)
#: Codecs tifffile decodes from the segment bytes alone (no file-specific fixes).
PLAIN_CODECS = frozenset({1, 5, 7, 8, 32773, 32946, 34925, 50000, 34712, 33003, 33005,
                          50001, 50002, 52546, 34887, 34926, 34927, 34933, 34934})
#: TIFF field type -> (struct code, size)
_TYPES = {1: ("B", 1), 2: ("B", 1), 3: ("H", 2), 4: ("I", 4), 5: ("I", 4), 6: ("b", 1),
          7: ("B", 1), 8: ("h", 2), 9: ("i", 4), 10: ("i", 4), 11: ("f", 4), 12: ("d", 8),
          13: ("I", 4), 16: ("Q", 8), 17: ("q", 8), 18: ("Q", 8)}
#: Types that are never one plain number: ASCII and UNDEFINED (bytes), rationals (pairs).
_NOT_SINGLE = {2, 5, 7, 10}
#: IFDs with more entries than this are broken (tifffile's limit too).
MAX_TAGS = 4096
_CHUNK = 4096


class _GiveUp(Exception):
    """The file is not a plain case: tifffile describes it."""


class _File:
    """``pread`` with a one-chunk buffer: an IFD and its small values take one read."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd, self.size = fd, size
        self._start, self._data = 0, b""

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise _GiveUp
        end = offset + length
        if not (self._start <= offset and end <= self._start + len(self._data)):
            self._start = offset
            self._data = os.pread(self.fd, max(length, _CHUNK), offset)
            if len(self._data) < length:
                raise _GiveUp
        return self._data[offset - self._start:end - self._start]


def read_description(fd: int, size: int) -> FileDescription | None:
    """The description of a plain TIFF, or None when tifffile must describe it.

    Raises ``TifffsError`` for what tifffs cannot serve whichever reader reads it.
    """
    try:
        return _read(_File(fd, size))
    except (_GiveUp, struct.error, ValueError, OverflowError):
        return None


def _read(file: _File) -> FileDescription:
    head = file.read(0, 16 if file.size >= 16 else 8)
    byteorder = {b"II": "<", b"MM": ">"}.get(head[:2])
    if byteorder is None:
        raise _GiveUp
    magic = struct.unpack(byteorder + "H", head[2:4])[0]
    if magic == 42:
        layout = _layout(byteorder, bigtiff=False)
        offset = struct.unpack(byteorder + "I", head[4:8])[0]
    elif magic == 43 and struct.unpack(byteorder + "HH", head[4:8]) == (8, 0):
        layout = _layout(byteorder, bigtiff=True)
        offset = struct.unpack(byteorder + "Q", head[8:16])[0]
    else:
        raise _GiveUp
    if offset >= file.size:  # tifffile finds no page there either
        raise BrokenSource(f"the header's offset of the first IFD ({offset}) points outside "
                           f"the file ({file.size} bytes): a damaged header, or not a TIFF")
    return _Chain(file, layout).read(offset)


_SEGMENT_TAGS = (273, 279, 324, 325)


class _Chain:
    """Reads the main IFD chain into pages. A page whose tags equal, but for its
    segments, those of a page seen before (the previous pages of a stack, the pages of
    the files of a folder of alike files) reuses that description and checks only its
    own segments."""

    def __init__(self, file: _File, layout: _Layout) -> None:
        self.file, self.layout = file, layout
        self.pages: list[SourcePage] = []

    def read(self, offset: int) -> FileDescription:
        seen: set[int] = set()
        metadata = FileMetadata(byteorder=self.layout.byteorder)
        truncated = None
        while offset:
            if offset in seen:
                truncated = f"the IFD chain loops back to offset {offset}"
                break
            seen.add(offset)
            try:
                tags, next_offset = _read_ifd(self.file, self.layout, offset)
            except _GiveUp:
                if not self.pages:
                    raise
                truncated = f"IFD {len(self.pages)} at offset {offset} is unreadable"
                break
            if not self.pages:
                metadata = _file_metadata(tags, self.layout.byteorder)
            try:
                self.pages.append(self._page(tags, offset))
            except TifffsError as exc:  # a broken or unsupported page after good ones
                if not self.pages:
                    raise
                truncated = f"page {len(self.pages)}: {exc}"
                break
            offset = next_offset
        return FileDescription(tuple(self.pages), metadata, truncated)

    def _page(self, tags: dict[int, Any], offset: int) -> SourcePage:
        # the tags in file order: files written alike list them alike, and a file that
        # orders them otherwise merely makes a template of its own
        shared = tags.copy()
        for code in _SEGMENT_TAGS:
            shared.pop(code, None)
        key = (self.layout.byteorder, tuple(shared.items()))
        index, size = len(self.pages), self.file.size
        try:
            template = _TEMPLATES.get(key, lambda: page_fields(tags, index, offset,
                                                               self.layout.byteorder, size))
            return with_segments(template, index, offset, tags[324 if template.tiled
                                 else 273], tags[325 if template.tiled else 279], size)
        except TifffsError:
            raise
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise _GiveUp from exc


#: Pages by their tags but for the segments, shared by all reads.
_TEMPLATES: LruCache[SourcePage] = LruCache(256)


class _Layout:
    def __init__(self, byteorder: str, bigtiff: bool) -> None:
        self.byteorder = byteorder
        self.bigtiff = bigtiff
        self.count_format = byteorder + ("Q" if bigtiff else "H")
        self.count_size = 8 if bigtiff else 2
        self.entry_size = 20 if bigtiff else 12
        self.entry_format = byteorder + ("HHQ8s" if bigtiff else "HHI4s")
        self.inline = 8 if bigtiff else 4
        self.offset_format = byteorder + ("Q" if bigtiff else "I")
        #: one numeric value held in the entry itself, the common case: its decoder
        self.single = {field_type: struct.Struct(byteorder + code)
                       for field_type, (code, size) in _TYPES.items()
                       if field_type not in _NOT_SINGLE and size <= self.inline}


@functools.cache
def _layout(byteorder: str, bigtiff: bool) -> _Layout:
    return _Layout(byteorder, bigtiff)


def _read_ifd(file: _File, layout: _Layout, offset: int) -> tuple[dict[int, Any], int]:
    """The tags of one IFD (code -> value) and the offset of the next IFD."""
    count = struct.unpack(layout.count_format, file.read(offset, layout.count_size))[0]
    if count == 0 or count > MAX_TAGS:
        raise _GiveUp
    start = offset + layout.count_size
    table = file.read(start, count * layout.entry_size + layout.inline)
    tags: dict[int, Any] = {}
    fields = struct.unpack_from(layout.byteorder + layout.entry_format[1:] * count, table)
    single = layout.single
    entries = iter(fields)
    for code, field_type, n, value in zip(entries, entries, entries, entries):
        if code not in KNOWN_TAGS or field_type not in _TYPES:
            raise _GiveUp
        if code in tags:
            continue  # tifffile keeps the first too
        if n == 1 and field_type in single:
            tags[code] = single[field_type].unpack_from(value)
        else:
            tags[code] = _value(file, layout, field_type, n, value, code in _SEGMENT_TAGS)
    next_offset = struct.unpack_from(layout.offset_format, table, count * layout.entry_size)[0]
    return tags, next_offset


def _value(file: _File, layout: _Layout, field_type: int, count: int, inline: bytes,
           as_array: bool) -> Any:
    """A tag's value: bytes for ASCII/UNDEFINED, else a tuple (a numpy array when
    ``as_array`` and long: strip and tile offsets)."""
    code, size = _TYPES[field_type]
    if field_type in (5, 10):
        count *= 2
    nbytes = count * size
    if nbytes > file.size:
        raise _GiveUp
    if nbytes <= layout.inline:
        data = inline[:nbytes]
    else:
        where = struct.unpack(layout.offset_format, inline[:layout.inline])[0]
        if where < 8:  # inside the header: tifffile drops such a tag (and repairs)
            raise _GiveUp
        data = file.read(where, nbytes) if nbytes <= 1 << 20 else \
            _read_large(file, where, nbytes)
    if field_type in (2, 7):
        return bytes(data)
    if count <= 16 or not as_array:
        return struct.unpack(f"{layout.byteorder}{count}{code}", data)
    return np.frombuffer(data, dtype=np.dtype(layout.byteorder + code))


def _read_large(file: _File, offset: int, nbytes: int) -> bytes:
    data = os.pread(file.fd, nbytes, offset)
    if len(data) != nbytes:
        raise _GiveUp
    return data


def _text(raw: bytes) -> str:
    """An ASCII tag as tifffile decodes it."""
    value = raw.rstrip(b"\0")
    try:
        return value.decode("utf-8").strip()
    except UnicodeDecodeError:
        try:
            return value.decode("cp1252").strip()
        except UnicodeDecodeError:
            raise _GiveUp from None


def _file_metadata(tags: dict[int, Any], byteorder: str) -> FileMetadata:
    description = _text(tags[270]) if 270 in tags and isinstance(tags[270], bytes) else None
    imagej = description if description and description.startswith("ImageJ=") else None
    ome = description if (description and description[-10:].strip().endswith("OME>")) \
        else None
    raw, counts = tags.get(50839), tags.get(50838)
    if isinstance(raw, tuple):
        raw = bytes(raw)
    with_tag = isinstance(raw, bytes) and counts is not None and not isinstance(counts, bytes)
    return FileMetadata(imagej_description=imagej, ome_xml=ome,
                        imagej_tag=raw if with_tag else None,
                        imagej_tag_counts=tuple(int(c) for c in counts) if with_tag else (),
                        byteorder=byteorder)


def _one(tags: dict[int, Any], code: int, default: int | None = None) -> int:
    """The value of a tag that holds one number (all equal when given per sample)."""
    if code not in tags:
        if default is None:
            raise _GiveUp
        return default
    values = tags[code]
    if isinstance(values, (bytes, np.ndarray)) or not values or \
            values.count(values[0]) != len(values):
        raise _GiveUp
    return int(values[0])


def page_fields(tags: dict[int, Any], index: int, offset: int, byteorder: str,
                file_size: int) -> SourcePage:
    """The ``SourcePage`` of one IFD's tags; ``_GiveUp`` for anything but the plain case."""
    compression, bits = _one(tags, 259, 1), _one(tags, 258, 1)
    sampleformat, photometric = _one(tags, 339, 1), _one(tags, 262)
    char = tifffile.TIFF.SAMPLE_DTYPES.get((sampleformat, bits))
    if compression not in PLAIN_CODECS or bits not in (8, 16, 32, 64) or char is None \
            or photometric not in (0, 1, 2, 3, 5):
        raise _GiveUp
    dtype = np.dtype(byteorder + char)
    check_supported(f"page {index}", compression=compression, photometric=photometric,
                    dtype=dtype, bits=bits, sampleformat=sampleformat)
    tiled = 322 in tags
    subfiletype = _one(tags, 254, 0)
    if subfiletype == 0:
        subfiletype = {2: 1, 3: 2}.get(_one(tags, 255, 0), 0)
    colormap = tags.get(320)
    fields = {
        "index": index, "ifd_offset": offset, "width": _one(tags, 256), "height": _one(tags, 257),
        "samples": _one(tags, 277, 1), "planarconfig": _one(tags, 284, 1), "dtype": dtype,
        "sampleformat": sampleformat, "photometric": photometric, "compression": compression,
        "tiled": tiled, "tile": (_one(tags, 323), _one(tags, 322)) if tiled else (0, 0),
        "rowsperstrip": _one(tags, 278, 2**32 - 1),
        "extrasamples": tuple(int(v) for v in tags.get(338, ())),
        "colormap": None if colormap is None or photometric != 3 else
        np.asarray(colormap).reshape(3, -1),
        "subfiletype": subfiletype, "offsets": tags[324 if tiled else 273],
        "bytecounts": tags[325 if tiled else 279], "xresolution": _resolution(tags, 282),
        "yresolution": _resolution(tags, 283),
        "resolutionunit": _one(tags, 296) if 296 in tags else None,
        "direct_candidate": _one(tags, 266, 1) == 1 and _one(tags, 317, 1) == 1, "bits": bits}
    return make_page(fields, file_size)


def _resolution(tags: dict[int, Any], code: int):
    value = tags.get(code)
    if value is None or isinstance(value, bytes) or len(value) < 2:
        return None
    return positive_fraction(int(value[0]), int(value[1]))
