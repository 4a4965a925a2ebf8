"""``VirtualTiff``: one downsampled view of one source version, readable at any offset."""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, replace
from typing import Hashable

import numpy as np

from tifffs import downsample, metadata
from tifffs.cache import LruCache
from tifffs.layout import Layout, OutputPage, build_layout
from tifffs.source import SourcePage, SourceTiff

#: A band reads at most about this many source bytes (one output row at least).
BAND_SOURCE_BYTES = 16 << 20
PHOTOMETRIC_PALETTE = 3


def band_cache(capacity_bytes: int) -> LruCache[bytes]:
    """A cache of rendered bands, bounded by their total size in bytes."""
    return LruCache(capacity_bytes, weigh=len)


@dataclass(frozen=True, eq=False)
class _PagePlan:
    """How one output page is cut into bands of ``band_rows`` output rows."""

    out: OutputPage
    band_rows: int

    @property
    def band_bytes(self) -> int:
        return self.band_rows * self.out.row_bytes


class VirtualTiff:
    """The bytes of a view of ``source`` reduced ``factor`` times with ``method``.

    ``size`` and the header come from metadata alone; ``read`` renders only the bands
    of rows that the requested range covers, through the shared ``cache``.
    """

    def __init__(self, source: SourceTiff, factor: int, method: str,
                 cache: LruCache[bytes]) -> None:
        if method not in downsample.METHODS:
            raise ValueError(f"unknown method {method!r}")
        self.source = source
        self.factor = factor
        self.method = method
        self._cache = cache
        pages = [self._output_page(p) for p in source.pages]
        pages[0] = self._with_file_metadata(pages[0])
        self._plans = [_PagePlan(out, self._band_rows(src, out))
                       for src, out in zip(source.pages, pages)]
        self.layout: Layout = build_layout(pages)
        self._key_prefix: Hashable = (source.path, source.version, factor, method)

    @property
    def size(self) -> int:
        """Exact size of the view file in bytes."""
        return self.layout.size

    def read(self, offset: int, length: int) -> bytes:
        """Bytes ``[offset, offset + length)`` of the view, short only at the end of file."""
        end = min(offset + length, self.layout.size)
        if offset >= end:
            return b""
        head = self.layout.head
        if end <= len(head):
            return head[offset:end]
        pieces: list[bytes | memoryview] = []
        position = offset
        if position < len(head):
            pieces.append(head[position:])
            position = len(head)
        offsets = self.layout.page_offsets
        while position < end:
            page = bisect.bisect_right(offsets, position) - 1
            plan = self._plans[page]
            plane, within_plane = divmod(position - offsets[page], plan.out.plane_bytes)
            band = within_plane // plan.band_bytes
            band_start = offsets[page] + plane * plan.out.plane_bytes + band * plan.band_bytes
            data = memoryview(self._band(page, plane, band))
            piece = data[position - band_start:end - band_start]
            pieces.append(piece)
            position += len(piece)
        return b"".join(pieces)

    def _band(self, page: int, plane: int, band: int) -> bytes:
        key = (self._key_prefix, page, plane, band)
        return self._cache.get(key, lambda: self._render(page, plane, band))

    def _render(self, page: int, plane: int, band: int) -> bytes:
        plan = self._plans[page]
        src = self.source.pages[page]
        f = self.factor
        first = band * plan.band_rows
        last = min(first + plan.band_rows, plan.out.height)
        if self._method_for(src) == "nearest":
            rows = self.source.read_rows(src, plane, first * f, last * f, step=f)
            pixels = downsample.nearest(rows, f)
        else:
            rows = self.source.read_rows(src, plane, first * f, last * f)
            pixels = downsample.mean(rows, f)
        # bytes read while the source changed would mix two versions
        self.source.check_unchanged()
        return np.ascontiguousarray(pixels, dtype=pixels.dtype.newbyteorder("<")).tobytes()

    def _method_for(self, page: SourcePage) -> str:
        # averaging palette indices gives meaningless colours
        return "nearest" if page.photometric == PHOTOMETRIC_PALETTE else self.method

    def _output_page(self, src: SourcePage) -> OutputPage:
        f = self.factor
        return OutputPage(
            width=downsample.output_length(src.width, f),
            height=downsample.output_length(src.height, f),
            samples=src.samples,
            itemsize=src.dtype.itemsize,
            sampleformat=src.sampleformat,
            photometric=src.photometric,
            planar_separate=src.planar_separate,
            extrasamples=src.extrasamples,
            colormap=src.colormap,
            subfiletype=src.subfiletype,
            xresolution=metadata.scaled_resolution(src.xresolution, f),
            yresolution=metadata.scaled_resolution(src.yresolution, f),
            resolutionunit=src.resolutionunit,
        )

    def _with_file_metadata(self, first: OutputPage) -> OutputPage:
        """Page 1 with the OME-XML of an OME source, else an ImageJ description and tags."""
        source, factor = self.source, self.factor
        if source.metadata.ome_xml:
            ome = metadata.ome_xml_for_view(source.metadata.ome_xml, factor)
            if ome:
                return replace(first, description=ome)
        if not _uniform(source.pages):
            return first  # ImageJ shows only stacks of equal pages
        description = metadata.imagej_description(
            len(source.pages), source.metadata.imagej_description,
            source.pages[0].resolutionunit, factor)
        return replace(first, description=description,
                       extra_tags=metadata.imagej_tags(source.metadata.imagej_metadata))

    def _band_rows(self, src: SourcePage, out: OutputPage) -> int:
        """Output rows per band: bounded source bytes, whole segments when they are decoded."""
        source_rows = max(self.factor, BAND_SOURCE_BYTES // src.row_bytes)
        if src.decode is not None:
            unit = math.lcm(src.segment_rows, self.factor)
            if unit * src.row_bytes <= 4 * BAND_SOURCE_BYTES:
                source_rows = max(1, source_rows // unit) * unit
        return max(1, min(out.height, source_rows // self.factor))


def _uniform(pages: list[SourcePage]) -> bool:
    """True when all pages share shape and type, as an ImageJ stack requires."""
    first = pages[0]
    return all((p.width, p.height, p.samples, p.dtype) == (first.width, first.height,
               first.samples, first.dtype) for p in pages)


def open_view(path: str, factor: int, method: str = "mean",
              cache_bytes: int = 64 << 20) -> VirtualTiff:
    """The view of the TIFF at ``path``, without a mount: ``.size`` and ``.read(offset, n)``.

    Raises ``tifffs.errors.TifffsError`` (``BrokenSource``, ``UnsupportedSource``) for
    files tifffs cannot serve, and ``OSError`` as the OS reports it.
    """
    return VirtualTiff(SourceTiff.open(path), factor, method, band_cache(cache_bytes))
