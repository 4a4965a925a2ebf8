"""The rules a source page must meet, and the ``SourcePage`` made of its raw tag values."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import numpy as np
import tifffile
from tifffile import COMPRESSION, PHOTOMETRIC

from tifffs import samples as kinds
from tifffs.arith import ceil_div
from tifffs.errors import BrokenSource, UnsupportedSource
from tifffs.pages import SourcePage

#: One row of one source page may not exceed this (a band holds at least factor rows).
MAX_ROW_BYTES = 64 << 20
#: A compressed strip or tile may not decode to more than this.
MAX_SEGMENT_BYTES = 512 << 20
#: Decoding a strip or tile may take this many times its bytes, plus ``DECODE_SLACK``
#: (tifffile's reshaping and casts copy it); more is taken for damage (a JPEG frame that
#: claims more, a decoding helper's address-space limit).
DECODE_FACTOR = 4
DECODE_SLACK = 64 << 20


def decode_allowance(segment_bytes: int) -> int:
    """The most memory decoding a strip or tile of ``segment_bytes`` may take."""
    return DECODE_FACTOR * segment_bytes + DECODE_SLACK


def check_supported(where: str, *, compression: int, photometric: int, dtype: Any, bits: Any,
                    sampleformat: int, imagedepth: int = 1) -> None:
    """Raise ``UnsupportedSource`` naming what tifffs cannot serve."""
    if imagedepth != 1:
        raise UnsupportedSource(f"{where}: volumetric (ImageDepth) pages are not supported")
    if compression != COMPRESSION.NONE and compression not in tifffile.TIFF.DECOMPRESSORS:
        name = getattr(COMPRESSION(compression), "name", compression) \
            if compression in COMPRESSION._value2member_map_ else compression
        raise UnsupportedSource(f"{where}: no decoder for compression {name} "
                                "(install or upgrade imagecodecs)")
    dtype = None if dtype is None else np.dtype(dtype)
    whole = dtype is not None and dtype.kind in "uif" and dtype.itemsize * 8 == bits
    packed = dtype is not None and isinstance(bits, int) and kinds.packed(bits, dtype)
    if not (whole or packed):
        raise UnsupportedSource(
            f"{where}: {bits}-bit samples (sample format {sampleformat}) are not supported "
            "yet")
    if compression in (COMPRESSION.JPEG, COMPRESSION.OJPEG) and isinstance(bits, int) \
            and bits < 8:  # the decoder gives 8-bit values, not what the tags say
        raise UnsupportedSource(f"{where}: JPEG pages of {bits}-bit samples are not "
                                "supported")
    if photometric == PHOTOMETRIC.YCBCR and compression not in (COMPRESSION.JPEG,
                                                                COMPRESSION.OJPEG):
        raise UnsupportedSource(f"{where}: YCbCr pixels without JPEG are not supported yet")


def make_page(f: dict[str, Any], file_size: int) -> SourcePage:
    """Validate the fields read from one IFD and build its ``SourcePage``.

    ``f`` holds the raw tag values (``tile`` as (length, width), ``rowsperstrip``,
    ``planarconfig``, ``direct_candidate`` for fill order 1 and no predictor, ``bits``
    per sample) and the ``dtype`` tifffile decodes to.
    """
    where = f"page {f['index']}"
    width, height, samples = f["width"], f["height"], f["samples"]
    if width < 1 or height < 1:
        raise BrokenSource(f"{where}: empty image ({width} x {height})")
    tile_rows, tile_width = f["tile"]
    if samples < 1 or (f["tiled"] and (tile_rows < 1 or tile_width < 1)):
        raise BrokenSource(f"{where}: no samples per pixel or empty tiles")
    if samples > 1 and f["planarconfig"] not in (1, 2):
        raise BrokenSource(f"{where}: PlanarConfiguration {f['planarconfig']} is neither 1 "
                           "(contiguous) nor 2 (separate)")
    planar_separate = f["planarconfig"] == 2 and samples > 1
    _check_shorts(where, f)
    bits = f["bits"]
    dtype = kinds.served_dtype(f["dtype"])
    row_bytes = width * (1 if planar_separate else samples) * dtype.itemsize
    if row_bytes > MAX_ROW_BYTES:
        raise UnsupportedSource(f"{where}: rows of {row_bytes} bytes are too wide")
    if f["tiled"]:
        segment_rows, segment_width = tile_rows, tile_width
    else:
        segment_rows, segment_width = max(1, min(f["rowsperstrip"] or height, height)), width
    direct = (f["compression"] == COMPRESSION.NONE and not f["tiled"]
              and f["direct_candidate"] and bits == 8 * dtype.itemsize)
    if not direct:
        decoded = segment_rows * segment_width * (row_bytes // width)
        if decoded > MAX_SEGMENT_BYTES:
            raise UnsupportedSource(f"{where}: strips or tiles of {decoded} bytes are too "
                                    "large to decode")
    photometric = f["photometric"]
    if photometric == PHOTOMETRIC.YCBCR:  # JPEG: tifffile decodes YCbCr to RGB
        photometric = int(PHOTOMETRIC.RGB)
    white = kinds.bilevel_white(bits, photometric) if samples == 1 else None
    colormap = kinds.served_colormap(f["colormap"], bits)
    page = SourcePage(
        index=f["index"], ifd_offset=f["ifd_offset"], width=width, height=height,
        samples=samples, planar_separate=planar_separate, dtype=dtype,
        sampleformat=f["sampleformat"],
        photometric=kinds.served_photometric(photometric, white),
        compression=f["compression"], tiled=f["tiled"], segment_rows=segment_rows,
        segment_width=segment_width, extrasamples=f["extrasamples"],
        colormap=None if colormap is None else np.asarray(colormap, dtype=np.uint16),
        subfiletype=f["subfiletype"], offsets=_EMPTY, bytecounts=_EMPTY,
        xresolution=f["xresolution"], yresolution=f["yresolution"],
        resolutionunit=f["resolutionunit"] if f["resolutionunit"] in _UNITS else None,
        direct=direct, bits=bits, bilevel_white=white)
    return with_segments(page, page.index, page.ifd_offset, f["offsets"], f["bytecounts"],
                         file_size)


def _check_shorts(where: str, f: dict[str, Any]) -> None:
    """Fields a view writes back as SHORT must fit one (a mutated IFD may store a LONG)."""
    values = [f["samples"], f["photometric"], f["sampleformat"], *f["extrasamples"]]
    if not all(0 <= int(v) <= 0xFFFF for v in values):
        raise BrokenSource(f"{where}: samples, photometric, sample format or extra samples "
                           "out of range")


_EMPTY = np.zeros(0, dtype=np.uint64)
#: ResolutionUnit values of the TIFF 6 spec (none, inch, centimetre); others are dropped
_UNITS = (1, 2, 3)


def with_segments(page: SourcePage, index: int, ifd_offset: int, offsets: Any,
                  bytecounts: Any, file_size: int) -> SourcePage:
    """``page`` as page ``index`` with these strip or tile offsets, checked against its
    geometry and the file size (a stack's pages share all but their segments)."""
    where = f"page {index}"
    segments = page.segments_per_plane * page.planes
    if len(offsets) != segments or len(bytecounts) != segments:
        raise BrokenSource(f"{where}: has {len(offsets)} strip or tile offsets and "
                           f"{len(bytecounts)} byte counts, expected {segments}")
    # a strip or tile whose offset or byte count is 0 was never written (GDAL's sparse
    # blocks) and reads as zeros: both are 0 from here on, so readers test the offset
    if segments == 1:  # the common contiguous page, without numpy's overhead
        if isinstance(offsets, (bytes, str)) or isinstance(bytecounts, (bytes, str)):
            raise BrokenSource(f"{where}: its strip or tile offsets or byte counts are "
                               "not whole numbers")
        offset = _whole_number(offsets[0], where)
        bytecount = _whole_number(bytecounts[0], where)
        if not offset or not bytecount:
            offset = bytecount = 0
        end = _segment_end(page, offset, bytecount)
        offsets = np.array([offset], dtype=np.uint64)
        bytecounts = np.array([bytecount], dtype=np.uint64)
    else:
        offsets = _segment_table(offsets, where)
        bytecounts = _segment_table(bytecounts, where)
        unwritten = (offsets == 0) | (bytecounts == 0)
        if unwritten.any():
            offsets = np.where(unwritten, 0, offsets)
            bytecounts = np.where(unwritten, 0, bytecounts)
        end = _segments_end(page, offsets, bytecounts)
    if end > file_size:
        raise BrokenSource(f"{where}: pixel data lies past the end of the file "
                           f"({end} > {file_size} bytes)")
    return page.placed(index, ifd_offset, offsets, bytecounts)


def _segment_table(values: Any, where: str) -> np.ndarray:
    """Strip or tile offsets or byte counts as uint64; ``BrokenSource`` unless they are
    whole numbers of 0 or more (a damaged tag may hold text, fractions or negatives)."""
    if isinstance(values, (bytes, str)) or not (
            isinstance(values, np.ndarray) or all(type(v) is int for v in values)):
        raise BrokenSource(f"{where}: its strip or tile offsets or byte counts are not "
                           "whole numbers")
    table = np.asarray(values).reshape(-1)
    if table.dtype.kind not in "iu" or (table.dtype.kind == "i" and table.size
                                        and table.min() < 0):
        raise BrokenSource(f"{where}: its strip or tile offsets or byte counts are not "
                           "whole numbers of 0 or more")
    return table.astype(np.uint64, copy=False)


def _whole_number(value: Any, where: str) -> int:
    """One strip or tile offset or byte count as an int (``_segment_table``'s rules)."""
    if type(value) is not int and not isinstance(value, np.integer):
        raise BrokenSource(f"{where}: its strip or tile offsets or byte counts are not "
                           "whole numbers")
    if value < 0:
        raise BrokenSource(f"{where}: its strip or tile offsets or byte counts are not "
                           "whole numbers of 0 or more")
    return int(value)


def _segment_end(page: SourcePage, offset: int, bytecount: int) -> int:
    if not offset:  # never written: read as zeros
        return 0
    if page.direct:
        return offset + page.height * page.row_bytes
    return offset + bytecount


def _segments_end(page: SourcePage, offsets: np.ndarray, bytecounts: np.ndarray) -> int:
    """Where the last strip or tile ends (the rows a direct strip must hold, for those)."""
    if page.direct:  # every strip must hold all its rows inside the file
        down = ceil_div(page.height, page.segment_rows)
        rows_in_strip = np.full(down, page.segment_rows, dtype=np.uint64)
        rows_in_strip[-1] = page.height - page.segment_rows * (down - 1)
        ends = offsets + np.tile(rows_in_strip, page.planes) * np.uint64(page.row_bytes)
    else:
        ends = offsets + bytecounts
    return int(np.where(offsets > 0, ends, 0).max())  # never written: read as zeros


def positive_fraction(numerator: int, denominator: int) -> Fraction | None:
    """``numerator / denominator`` when both are positive, else None."""
    if numerator > 0 and denominator > 0:
        return Fraction(numerator, denominator)
    return None
