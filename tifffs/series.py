"""Stack dimensions and pyramid levels, from tifffile's series of an open source.

tifffile's series cost a second pass over the IFDs, so they are read only for the
views that need them: Z reduction and ``use_levels``.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass, field
from typing import Any

import tifffile

from tifffs.arith import ceil_div
from tifffs.describe import page_from_tifffile
from tifffs.errors import BrokenSource, TifffsError
from tifffs.pages import FileDescription, SourcePage


@dataclass(frozen=True)
class SeriesInfo:
    """What tifffile's series tell: stack dimensions and pyramid levels."""

    #: axes and shape of the page axes when one series holds all pages (e.g. "TZC")
    stack_axes: str | None = None
    stack_shape: tuple[int, ...] | None = None
    #: page index -> its reduced-resolution levels (k, level), exactly ceil(W/k) wide
    levels: dict[int, tuple[tuple[int, SourcePage], ...]] = field(default_factory=dict)


#: What tifffile raises while it groups the pages of a damaged file into series (a
#: RuntimeError "incompatible keyframe" and a ZeroDivisionError among others, found by
#: scripts/fuzz).
_DAMAGED = (tifffile.TiffFileError, RuntimeError, ValueError, TypeError, KeyError,
            IndexError, AttributeError, ArithmeticError, OSError, struct.error)


def read_series_info(fd: int, file_size: int, name: str,
                     description: FileDescription) -> SeriesInfo:
    """Stack dimensions and pyramid levels from tifffile's series of the open file. Of
    a file whose IFD chain is broken or loops (``description.truncated``), only the
    SubIFD levels of the pages served: tifffile would follow the chain past where tifffs
    stops (a loop it does not see made 850,000 pages of a 4 KB file)."""
    pages = description.pages
    with open(fd, "rb", closefd=False) as fh:
        fh.seek(0)  # the descriptor is shared; pixel reads use pread and ignore its position
        try:
            with tifffile.TiffFile(fh, name=name) as tif:
                # levels first: series turn the pages they group into TiffFrames
                whole_chain = description.truncated is None
                levels = _levels(tif, pages, file_size, with_series=whole_chain)
                stack = _stack_dimensions(tif, len(pages)) if whole_chain else {}
                return SeriesInfo(**stack, levels=levels)
        except TifffsError:
            raise
        except _DAMAGED as exc:
            raise BrokenSource(f"not a readable TIFF: {exc}") from exc


def _levels(tif: tifffile.TiffFile, pages: tuple[SourcePage, ...], file_size: int,
            with_series: bool) -> dict[int, tuple[tuple[int, SourcePage], ...]]:
    """Each page's reduced-resolution levels: its SubIFDs (OME pyramids) and, with
    ``with_series``, the levels tifffile's series know (SVS, libvips and other
    main-chain pyramids)."""
    candidates: dict[int, list[Any]] = {i: [] for i in range(len(pages))}
    try:
        for i in candidates:  # the pages served, not the rest of the chain
            page = tif.pages[i]
            if isinstance(page, tifffile.TiffPage) and page.pages:
                candidates[i] += list(page.pages)
        for series in tif.series if with_series else ():
            for level in series.levels[1:]:
                for main, reduced in zip(series.levels[0].pages, level.pages):
                    if (isinstance(getattr(main, "index", None), int)
                            and main.index in candidates and reduced is not None):
                        candidates[main.index].append(reduced)
    except _DAMAGED:
        return {}  # levels are optional: a broken pyramid is not used
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
    if k < 2 or candidate.imagewidth != ceil_div(page.width, k) or \
            candidate.imagelength != ceil_div(page.height, k):
        return None
    try:
        level = page_from_tifffile(candidate, page.index, byteorder, file_size)
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


def series_of(fd: int, path: str, description: FileDescription) -> SeriesInfo:
    """``read_series_info`` of an open source file."""
    return read_series_info(fd, os.fstat(fd).st_size, os.path.basename(path), description)
