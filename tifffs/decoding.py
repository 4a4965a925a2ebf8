"""Decoding one strip or tile in this process: tifffile's decoder of the page's IFD,
behind the check its codec needs against damage that would crash the decoder or fill
memory (``tifffs.lzwcheck``, ``tifffs.jpegcheck``), and what a failure tells the user.
Codecs no such check can make safe are decoded in helper processes (``tifffs.isolated``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tifffile
from tifffile import COMPRESSION

from tifffs import jpegcheck, lzwcheck
from tifffs.errors import BrokenSource
from tifffs.pages import SourcePage


def tifffile_decoder(fd: int, ifd_offset: int, page_index: int,
                     name: str) -> Callable[..., Any]:
    """``TiffPage.decode`` of the IFD at ``ifd_offset`` of the open file ``fd`` (with
    its JPEG tables)."""
    with open(fd, "rb", closefd=False) as fh:
        fh.seek(0)
        try:
            with tifffile.TiffFile(fh, name=name) as tif:
                tif.filehandle.seek(ifd_offset)
                tiff_page = tifffile.TiffPage(tif, index=page_index)
                decode = tiff_page.decode
                tables = tiff_page.jpegtables
        except Exception as exc:
            raise BrokenSource(f"page {page_index}: IFD unreadable: {exc!r}") from exc

    def run(data: bytes, index: int) -> Any:
        return decode(data, index, jpegtables=tables)

    return run


def guarded_decoder(fd: int, page: SourcePage, name: str) -> Callable[..., Any]:
    """``tifffile_decoder`` of ``page``, which first refuses (``BrokenSource``) a segment
    its codec's check finds unsafe."""
    decode = tifffile_decoder(fd, page.ifd_offset, page.index, name)
    check = _CHECKS.get(page.compression)
    if check is None:
        return decode

    def run(data: bytes, index: int) -> Any:
        check(page, data, index)
        return decode(data, index)

    return run


def _check_lzw(page: SourcePage, data: bytes, index: int) -> None:
    if not lzwcheck.safe_start(data):
        raise BrokenSource(f"page {page.index} segment {index}: damaged LZW data (a table "
                           "code right after CLEAR), which the decoder cannot read safely")


def _check_jpeg(page: SourcePage, data: bytes, index: int) -> None:
    frame = jpegcheck.oversized(data, page.segment_samples * page.dtype.itemsize)
    if frame is not None:
        raise BrokenSource(f"page {page.index} segment {index}: damaged JPEG data: its "
                           f"header claims {frame.width} x {frame.height} pixels, far more "
                           f"than the {page.segment_width} x {page.segment_rows} of the "
                           "strip or tile")


_CHECKS: dict[int, Callable[[SourcePage, bytes, int], None]] = {
    COMPRESSION.LZW: _check_lzw,
    COMPRESSION.JPEG: _check_jpeg,
    COMPRESSION.OJPEG: _check_jpeg,
}


def decoding_failure(compression: int, exc: BaseException) -> str:
    """What a decoder's exception tells a user: ``cannot decode (<codec>): <cause>``."""
    try:
        codec = COMPRESSION(compression).name
    except ValueError:
        codec = f"compression {compression}"
    cause = str(exc) or type(exc).__name__
    # imagecodecs words libpng's errors from a buffer that damaged data can leave
    # unwritten: its bytes then fail as UTF-8, or read as "0" or other signs, no words
    if isinstance(exc, UnicodeDecodeError) or not cause.isprintable() or \
            not any(character.isalpha() for character in cause):
        cause = "the decoder failed on damaged data"
    return f"cannot decode ({codec}): {cause}"
