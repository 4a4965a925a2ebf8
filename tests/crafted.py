"""Broken and hostile TIFF files, crafted byte by byte with ``struct`` or patched from
valid files that tifffile writes. Shared by the fault tests and the fuzzer.

Classic little-endian TIFF only: header ``II*\\0`` and the offset of IFD 0, then IFDs of
12-byte entries (tag, type, count, value or offset) and a 4-byte next-IFD offset.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import numpy as np
import tifffile

ASCII, SHORT, LONG, SSHORT, FLOAT = 2, 3, 4, 8, 11
ENTRY = struct.Struct("<HHII")


def gray8(width: int = 64, height: int = 48, **tags: tuple[int, int, int] | None) -> bytes:
    """A one-strip, uncompressed 8-bit grey TIFF; ``t<code>=(type, count, value)``
    replaces (or with None removes) a tag; the value is stored in the entry itself, so a
    count > 1 makes it an offset."""
    pixels = (np.arange(width * height) % 251).astype(np.uint8).tobytes()
    entries = {256: (LONG, 1, width), 257: (LONG, 1, height), 258: (SHORT, 1, 8),
               259: (SHORT, 1, 1), 262: (SHORT, 1, 1), 273: (LONG, 1, 8),
               277: (SHORT, 1, 1), 278: (LONG, 1, height), 279: (LONG, 1, len(pixels))}
    for name, value in tags.items():
        code = int(name.removeprefix("t"))
        if value is None:
            entries.pop(code, None)
        else:
            entries[code] = value
    ifd_offset = 8 + len(pixels) + len(pixels) % 2
    out = bytearray(b"II*\0" + struct.pack("<I", ifd_offset) + pixels)
    out += bytes(ifd_offset - len(out))
    out += struct.pack("<H", len(entries))
    for code in sorted(entries):
        field_type, count, value = entries[code]
        if field_type == SHORT and count == 1:
            out += struct.pack("<HHIHH", code, field_type, count, value, 0)
        else:
            out += ENTRY.pack(code, field_type, count, value)
    out += struct.pack("<I", 0)
    return bytes(out)


def tifffile_bytes(array: np.ndarray, **kwargs) -> bytes:
    """``array`` written by tifffile (classic, little-endian unless told otherwise)."""
    buffer = io.BytesIO()
    kwargs.setdefault("photometric", "minisblack")
    tifffile.imwrite(buffer, array, **kwargs)
    return buffer.getvalue()


@dataclass(frozen=True)
class Ifd:
    """Where one IFD of a classic little-endian TIFF is, and its entries."""

    offset: int
    entries: dict[int, tuple[int, int, int, int]]  # tag -> (entry offset, type, count, value)
    next_field: int  # offset of the 4-byte next-IFD pointer


def ifd_chain(data: bytes, limit: int = 100000) -> list[Ifd]:
    """The IFDs of a valid classic little-endian TIFF, in chain order."""
    assert data[:4] == b"II*\0", "classic little-endian TIFF expected"
    ifds: list[Ifd] = []
    offset = struct.unpack_from("<I", data, 4)[0]
    while offset and len(ifds) < limit:
        (count,) = struct.unpack_from("<H", data, offset)
        entries = {}
        for i in range(count):
            at = offset + 2 + 12 * i
            tag, field_type, n, value = ENTRY.unpack_from(data, at)
            entries[tag] = (at, field_type, n, value)
        next_field = offset + 2 + 12 * count
        ifds.append(Ifd(offset, entries, next_field))
        offset = struct.unpack_from("<I", data, next_field)[0]
    return ifds


def patch_u32(data: bytes, at: int, value: int) -> bytes:
    """``data`` with the 4 bytes at ``at`` replaced by ``value`` (little-endian)."""
    return data[:at] + struct.pack("<I", value) + data[at + 4:]


def set_entry(data: bytes, ifd: Ifd, tag: int, count: int | None = None,
              value: int | None = None) -> bytes:
    """``data`` with the count and/or value field of ``tag`` in ``ifd`` replaced."""
    at = ifd.entries[tag][0]
    if count is not None:
        data = patch_u32(data, at + 4, count)
    if value is not None:
        data = patch_u32(data, at + 8, value)
    return data


def with_ifd_loop(pages: int, back_to: int) -> bytes:
    """A valid ``pages``-page file whose last IFD points back to IFD ``back_to``."""
    data = tifffile_bytes(np.zeros((pages, 4, 4), dtype=np.uint8))
    chain = ifd_chain(data)
    assert len(chain) == pages
    return patch_u32(data, chain[-1].next_field, chain[back_to].offset)


def overwrite_first_strip(data: bytes, garbage: bytes) -> bytes:
    """``data`` with the start of the first strip or tile of page 0 replaced."""
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        at = int(tif.pages.first.dataoffsets[0])
    return data[:at] + garbage + data[at + len(garbage):]


def jpegxr_reserved_format() -> bytes:
    """A JPEG XR TIFF whose first tile's image header gives reserved values for the output
    colour format and bit depth (0xBB; found by scripts/fuzz): jxrlib, imagecodecs' JPEG
    XR decoder, then divides by zero and kills its process (SIGFPE)."""
    data = bytearray(tifffile_bytes(np.arange(48 * 64, dtype=np.uint16).reshape(48, 64),
                                    compression="jpegxr", tile=(16, 16)))
    with tifffile.TiffFile(io.BytesIO(bytes(data))) as tif:
        start = int(tif.pages.first.dataoffsets[0])
    header = data.index(b"WMPHOTO\0", start)  # the image header of the first tile
    data[header + 11] = 0xBB  # OUTPUT_CLR_FMT and OUTPUT_BITDEPTH: 11, reserved
    return bytes(data)


def jpeg2000_claiming_a_terabyte() -> bytes:
    """A JPEG 2000 TIFF whose first tile's SIZ marker claims an image and a tile of
    2^20 x 2^20 pixels (as found by scripts/fuzz): OpenJPEG then fills memory until
    an allocation fails, 3.8 GB under a 4 GB limit and without one the OOM killer."""
    data = bytearray(tifffile_bytes(np.arange(64 * 48, dtype=np.uint8).reshape(48, 64),
                                    compression="jpeg2000", tile=(16, 16)))
    with tifffile.TiffFile(io.BytesIO(bytes(data))) as tif:
        start = int(tif.pages.first.dataoffsets[0])
    assert data[start:start + 4] == b"\xff\x4f\xff\x51"  # SOC, then SIZ
    for field in (8, 12, 24, 28):  # Xsiz, Ysiz, XTsiz, YTsiz
        struct.pack_into(">I", data, start + field, 1 << 20)
    return bytes(data)


def jpeg_claiming_a_huge_frame(side: int = 65000) -> bytes:
    """A JPEG TIFF whose first tile's SOF marker claims ``side`` x ``side`` pixels:
    libjpeg-turbo then fills that much memory (4 GB) before tifffile refuses the tile."""
    data = bytearray(tifffile_bytes(np.arange(64 * 48, dtype=np.uint8).reshape(48, 64),
                                    compression="jpeg", tile=(16, 16)))
    with tifffile.TiffFile(io.BytesIO(bytes(data))) as tif:
        start = int(tif.pages.first.dataoffsets[0])
    sof = data.index(b"\xff\xc0", start)  # baseline start of frame: P, Y, X, Nf
    struct.pack_into(">HH", data, sof + 5, side, side)
    return bytes(data)


def png_damaged_chunk() -> bytes:
    """A PNG-compressed TIFF with one byte of its first tile's first chunk flipped:
    imagecodecs cannot even word libpng's error (a UnicodeDecodeError)."""
    data = bytearray(tifffile_bytes(np.arange(64 * 48, dtype=np.uint8).reshape(48, 64),
                                    compression="png", tile=(16, 16)))
    with tifffile.TiffFile(io.BytesIO(bytes(data))) as tif:
        start = int(tif.pages.first.dataoffsets[0])
    data[start + 40] ^= 0xFF
    return bytes(data)


def broken_files() -> dict[str, bytes]:
    """Name -> bytes of every kind of broken input tifffs must refuse with EIO.

    All of them fail when described (stat or open), except ``corrupt_*`` ones, whose
    metadata is fine and whose pixel data cannot be decoded (they fail on read).
    """
    good = tifffile_bytes(np.arange(64 * 48, dtype=np.uint8).reshape(48, 64))
    first = ifd_chain(good)[0]
    lzw = tifffile_bytes(np.arange(64 * 48, dtype=np.uint16).reshape(48, 64),
                         compression="lzw", rowsperstrip=8)
    deflate = tifffile_bytes(np.arange(64 * 48, dtype=np.uint8).reshape(48, 64),
                             compression="zlib")
    jpeg = tifffile_bytes(np.arange(64 * 48, dtype=np.uint8).reshape(48, 64),
                          compression="jpeg")
    rgb = tifffile_bytes(np.zeros((16, 16, 3), np.uint8), photometric="rgb")
    return {
        "empty.tif": b"",
        "header_only.tif": b"II*\0",
        "truncated_header.tif": b"II*\0\x08\0",
        "not_a_tiff.tif": b"GIF89a this is not a TIFF",
        "truncated_half.tif": good[: len(good) // 2],
        "ifd_past_end.tif": patch_u32(good, 4, 10**8),
        "ifd_loop_self.tif": patch_u32(good, first.next_field, first.offset),
        "ifd_loop_short.tif": with_ifd_loop(3, 0),
        "ifd_loop_after_100.tif": with_ifd_loop(130, 110),
        "huge_1e9_x_1e9.tif": gray8(t256=(LONG, 1, 10**9), t257=(LONG, 1, 10**9)),
        "huge_narrow_1e9_rows.tif": gray8(16, 48, t257=(LONG, 1, 10**9), t278=(LONG, 1, 1)),
        "huge_tiles.tif": gray8(t256=(LONG, 1, 10**6), t257=(LONG, 1, 10**6),
                                t322=(LONG, 1, 1 << 30), t323=(LONG, 1, 1 << 30),
                                t324=(LONG, 1, 8), t325=(LONG, 1, 100), t273=None,
                                t279=None),
        "absurd_count_offsets.tif": set_entry(good, first, 273, count=2**32 - 1),
        "absurd_count_width.tif": set_entry(good, first, 256, count=2**31),
        "absurd_tag_number.tif": good[:first.offset] + struct.pack("<H", 65535)
        + good[first.offset + 2:],
        "strip_past_end.tif": gray8(t273=(LONG, 1, 10**6)),
        "strip_bytecounts_past_end.tif": tifffile_bytes(
            np.zeros((48, 64), np.uint8), compression="zlib")[:-40],
        "samples_65535.tif": gray8(t277=(SHORT, 1, 65535)),
        "bits_3_signed.tif": gray8(t258=(SHORT, 1, 3), t339=(SHORT, 1, 2)),
        "zero_width.tif": gray8(t256=(LONG, 1, 0)),
        "jpeg_tagged_1_bit.tif": set_entry(jpeg, ifd_chain(jpeg)[0], 258, value=1),
        "rgb_planar_config_0.tif": set_entry(rgb, ifd_chain(rgb)[0], 284, value=0),
        # strip offsets of the wrong type (found by scripts/fuzz): text, negative, fraction
        "offsets_as_text.tif": gray8(t273=(ASCII, 1, ord("8"))),
        "offsets_negative.tif": gray8(t273=(SSHORT, 1, 0xFFFF)),
        "offsets_as_float.tif": gray8(t273=(FLOAT, 1, struct.unpack("<I", struct.pack("<f", 8))[0])),
        "corrupt_lzw.tif": overwrite_first_strip(lzw, b"\xff" * 16),
        "corrupt_deflate.tif": overwrite_first_strip(deflate, b"\0" * 8),
        # CLEAR, then the table code 300 where a literal must come (scripts/fuzz: the
        # LZW decoder read uninitialised memory and could crash the daemon)
        "corrupt_lzw_table_code.tif": overwrite_first_strip(lzw, b"\x80\x4b\x20\x20"),
        "corrupt_jpeg_marker.tif": gray8(t259=(SHORT, 1, 7)),
        # decoded in a helper process: the decoder's crash fails only the read
        "corrupt_jpegxr_header.tif": jpegxr_reserved_format(),
        # decoded in a helper process whose memory is limited
        "corrupt_jpeg2000_size.tif": jpeg2000_claiming_a_terabyte(),
        "corrupt_jpeg_huge_frame.tif": jpeg_claiming_a_huge_frame(),
        "corrupt_png_chunk.tif": png_damaged_chunk(),
    }


#: Broken files whose metadata is readable: they fail on read, not on stat.
FAIL_ON_READ = {"corrupt_lzw.tif", "corrupt_deflate.tif", "corrupt_jpeg_marker.tif",
                "corrupt_lzw_table_code.tif", "corrupt_jpegxr_header.tif",
                "corrupt_jpeg2000_size.tif", "corrupt_jpeg_huge_frame.tif",
                "corrupt_png_chunk.tif"}
