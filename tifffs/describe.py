"""Describe a source TIFF from its IFDs alone: ``describe(fd, size, name)``.

Two readers give the same ``FileDescription``:

* a lean IFD reader (``lean.py``) for the common case: standard tags only, a codec that
  tifffile decodes without file-specific fixes. It reads each IFD with one ``pread``
  and decodes only the tags a view needs, several times faster than building
  tifffile's ``TiffPage`` objects (the bench's many-files cases).
* tifffile itself for everything else (LSM, STK, NDPI, old-style JPEG, CCITT, packed
  samples, ...), which knows the quirks of those files.

The lean reader gives up (returns None) at the first thing it does not know, so a file
is never described differently from what tifffile would read.
"""

from __future__ import annotations

import logging
import os
from fractions import Fraction
from typing import Any

import numpy as np
import tifffile

from tifffs import lean
from tifffs.errors import BrokenSource, TifffsError
from tifffs.page_rules import check_supported, make_page, positive_fraction
from tifffs.pages import FileDescription, FileMetadata, SourcePage

log = logging.getLogger("tifffs")
#: Files up to this size are described without changing the kernel's read-ahead.
SMALL_FILE = 1 << 20

def describe(fd: int, file_size: int, name: str) -> FileDescription:
    """Describe the open source file; reads IFDs only, never pixel data.

    Raises ``BrokenSource`` or ``UnsupportedSource`` naming the cause.
    """
    if file_size == 0:
        raise BrokenSource("empty file")
    # random access for the IFD scan of a large file: the kernel's read-ahead (often
    # MiBs) would load pixel data around every IFD (a small file is read whole anyway)
    random_access = file_size > SMALL_FILE
    if random_access:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
    try:
        description = lean.read_description(fd, file_size)
        if description is None:
            description = _describe_with_tifffile(fd, file_size, name)
    finally:
        if random_access:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_NORMAL)
    if not description.pages:
        raise BrokenSource("TIFF has no pages")
    return description


def _describe_with_tifffile(fd: int, file_size: int, name: str) -> FileDescription:
    with open(fd, "rb", closefd=False) as fh:
        fh.seek(0)
        try:
            with tifffile.TiffFile(fh, name=name) as tif:
                return _from_tifffile(tif, file_size)
        except TifffsError:
            raise
        except Exception as exc:
            raise BrokenSource(f"not a readable TIFF: {_cause(exc)}") from exc


def _from_tifffile(tif: tifffile.TiffFile, file_size: int) -> FileDescription:
    pages, truncated = _pages_of(tif, file_size)
    if not pages:
        raise BrokenSource("TIFF has no pages")
    first = tif.pages.first
    tag = first.tags.get(50839)
    counts = first.tags.get(50838)
    with_tag = tag is not None and counts is not None
    metadata = FileMetadata(
        imagej_description=first.description if tif.is_imagej else None,
        ome_xml=first.description if tif.is_ome else None,
        imagej_tag=_raw_tag(tif, tag) if with_tag else None,
        imagej_tag_counts=tuple(int(c) for c in np.atleast_1d(counts.value)) if with_tag
        else (),
        byteorder=tif.byteorder)
    return FileDescription(tuple(pages), metadata, truncated)


def _pages_of(tif: tifffile.TiffFile, file_size: int) -> tuple[list[SourcePage], str | None]:
    """The pages of the main chain up to a loop, an unreadable IFD or a broken page after
    good ones, and why the chain was cut there (None: at its end). tifffile itself would
    go round a loop for ever."""
    pages: list[SourcePage] = []
    seen: set[int] = set()
    chain = iter(tif.pages)
    while True:
        try:
            page = next(chain)
        except StopIteration:
            return pages, None
        except Exception as exc:
            if not pages:
                raise
            return pages, f"IFD {len(pages)} is unreadable: {exc}"
        offset = getattr(page, "offset", None)
        if offset in seen:
            return pages, f"the IFD chain loops back to offset {offset}"
        seen.add(offset)
        try:
            pages.append(page_from_tifffile(page, len(pages), tif.byteorder, file_size))
        except TifffsError as exc:  # a broken or unsupported page after good ones
            if not pages:
                raise
            return pages, f"page {len(pages)}: {exc}"


def _raw_tag(tif: tifffile.TiffFile, tag: Any) -> bytes | None:
    """The undecoded bytes of a tag (tifffile replaces IJMetadata by its parsed dict)."""
    if tag is None:
        return None
    fh = tif.filehandle
    fh.seek(tag.valueoffset)
    return fh.read(tag.count)


def page_from_tifffile(page: Any, index: int, byteorder: str, file_size: int) -> SourcePage:
    """A ``SourcePage`` of one tifffile page; raises what tiffs cannot serve."""
    where = f"page {index}"
    if not isinstance(page, tifffile.TiffPage):
        raise BrokenSource(f"{where}: unreadable IFD")
    check_supported(where, compression=int(page.compression), photometric=int(
        page.photometric), dtype=page.dtype, bits=page.bitspersample,
        sampleformat=int(page.sampleformat), imagedepth=page.imagedepth)
    tags = page.tags
    extrasamples = page.extrasamples
    if isinstance(extrasamples, int):
        extrasamples = (extrasamples,)
    fields = {
        "index": index, "ifd_offset": int(page.offset), "width": int(page.imagewidth),
        "height": int(page.imagelength), "samples": int(page.samplesperpixel),
        "planarconfig": int(page.planarconfig),
        "dtype": np.dtype(byteorder + page.dtype.char), "sampleformat": int(page.sampleformat),
        "photometric": int(page.photometric), "compression": int(page.compression),
        "tiled": bool(page.is_tiled), "tile": (int(page.tilelength), int(page.tilewidth)),
        "rowsperstrip": int(page.rowsperstrip or 0), "extrasamples": tuple(
            int(e) for e in extrasamples),
        "colormap": page.colormap, "subfiletype": int(page.subfiletype),
        "offsets": page.dataoffsets, "bytecounts": page.databytecounts,
        "xresolution": _rational(tags, "XResolution"),
        "yresolution": _rational(tags, "YResolution"),
        "resolutionunit": int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags
        else None,
        "direct_candidate": int(page.fillorder) == 1 and int(page.predictor) == 1,
        "bits": int(page.bitspersample)}
    return make_page(fields, file_size)


def _cause(exc: Exception) -> str:
    """An exception as a short cause for a log line."""
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, (tifffile.TiffFileError, ValueError)) else \
        f"{type(exc).__name__}: {text}"


def _rational(tags: Any, name: str) -> Fraction | None:
    """A positive RATIONAL tag value, or None when absent or invalid."""
    tag = tags.get(name)
    if tag is None:
        return None
    value = tag.value
    try:
        numerator, denominator = (value if isinstance(value, tuple) else (value, 1))[:2]
        return positive_fraction(int(numerator), int(denominator))
    except (TypeError, ValueError):
        return None
