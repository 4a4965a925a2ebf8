"""The plan of a view: its output pages, how each is made, and its byte layout. Pure.

From a source's description (and, for Z views and ``use_levels``, its series) it
decides for every output page which source pages it reduces, how (a plan kind), in
bands of how many rows, and builds the ``Layout`` that gives the exact file size.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction

from tifffs import area, downsample, metadata
from tifffs.arith import ceil_div
from tifffs.errors import UnsupportedSource
from tifffs.layout import Layout, OutputPage, build_layout, layout_size
from tifffs.methods import INTERPOLATING_METHODS
from tifffs.pages import FileDescription, SourcePage
from tifffs.series import SeriesInfo
from tifffs.stacks import z_blocks
from tifffs.views import View

#: A band reads at most about this many source bytes (one output row at least).
BAND_SOURCE_BYTES = 16 << 20
#: A band of a fit view of a tiled page spans about this many rows of tiles (each tile
#: is then decoded about 1.5 times: the rows of tiles two bands share, twice).
FIT_TILE_ROWS = 2
#: linear and lanczos resize whole pages: larger pages are refused.
MAX_WHOLE_PAGE_BYTES = 512 << 20


@dataclass(frozen=True, eq=False)
class BlockPlan:
    """Blocks of ``factor`` x ``factor`` (x the source pages) reduced by ``method``;
    ``nearest`` keeps the first pixel of each. ``level`` is a pyramid level to read
    instead of the source page, ``level_factor`` times smaller."""

    out: OutputPage
    sources: tuple[int, ...]  # several when the view reduces along Z
    band_rows: int
    factor: int
    method: str
    level: SourcePage | None = None
    level_factor: int = 1


@dataclass(frozen=True, eq=False)
class FitPlan:
    """Exact area averaging of one page to any size (``fit<n>`` views)."""

    out: OutputPage
    sources: tuple[int, ...]
    band_rows: int
    rows: downsample.AreaAxis
    columns: downsample.AreaAxis
    #: summed one column of tiles at a time (``fit_by_tile_columns``)
    by_tile_columns: bool = False


@dataclass(frozen=True, eq=False)
class WholePagePlan:
    """OpenCV's linear or Lanczos resize of a whole page: one band per page."""

    out: OutputPage
    sources: tuple[int, ...]
    band_rows: int
    method: str


PagePlan = BlockPlan | FitPlan | WholePagePlan


def band_bytes(plan: PagePlan) -> int:
    """Bytes of one full band of one plane of a page plan."""
    return plan.band_rows * plan.out.row_bytes


@dataclass(frozen=True, eq=False)
class ViewPlan:
    """Every output page of a view; the file's size and layout, computed when asked."""

    pages: tuple[PagePlan, ...]
    imagej_large: bool = False

    @functools.cached_property
    def layout(self) -> Layout:
        """Every offset and the header bytes (for reading)."""
        return build_layout([p.out for p in self.pages], imagej_large=self.imagej_large)

    @functools.cached_property
    def size(self) -> int:
        """The exact file size (for ``stat``: the IFDs are not encoded)."""
        if "layout" in self.__dict__:
            return self.layout.size
        return layout_size([p.out for p in self.pages], imagej_large=self.imagej_large)


def plan_view(description: FileDescription, view: View,
              series: Callable[[], SeriesInfo]) -> ViewPlan:
    """The plan of ``view`` of a source; ``series`` is called only when needed (Z views,
    ``use_levels``). Raises ``UnsupportedSource`` for views the source cannot give."""
    pages = description.pages
    groups = _page_groups(description, view, series)
    if view.use_levels:  # the levels differ from page to page
        plans = [_plan(pages, group, view, series) for group in groups]
    else:
        # alike pages share one plan but its sources (a stack of 20,000 pages: one plan,
        # one output page, whose IFD entries the layout then builds once)
        alike: dict[tuple, PagePlan] = {}
        plans = []
        for group in groups:
            key = tuple(pages[i].layout_key() for i in group)
            template = alike.get(key)
            if template is None:
                template = alike[key] = _plan(pages, group, view, series)
            plans.append(template if template.sources == group
                         else replace(template, sources=group))
    first = _with_file_metadata(plans[0].out, description, view, len(plans))
    plans[0] = replace(plans[0], out=first)
    return ViewPlan(tuple(plans), view.imagej_large)


def method_for(page: SourcePage, method: str) -> str:
    """The method used for ``page``: averages of palette indices are meaningless
    colours, so palette pages use nearest (the most frequent, ``mode``, is fine); the
    median of a bilevel block is its mode (two levels, never a mean of the middle two)."""
    if page.bilevel_white is not None and method == "median":
        return "mode"
    return "nearest" if page.is_palette and method != "mode" else method


def _page_groups(description: FileDescription, view: View,
                 series: Callable[[], SeriesInfo]) -> list[tuple[int, ...]]:
    """Source pages of each output page: one each, or runs along Z."""
    count = len(description.pages)
    if view.z_factor == 1 or count == 1:
        return [(i,) for i in range(count)]
    if not description.uniform:
        raise UnsupportedSource("Z reduction needs pages of one shape and type")
    info = series()
    if info.stack_axes is not None and info.stack_shape is not None:
        return z_blocks(info.stack_axes, info.stack_shape, view.z_factor)
    return z_blocks("Q", (count,), view.z_factor)


def _plan(pages: tuple[SourcePage, ...], group: tuple[int, ...], view: View,
          series: Callable[[], SeriesInfo]) -> PagePlan:
    src = pages[group[0]]
    if view.fit is not None:
        return _fit_plan(src, group, view.fit)
    f = view.factor
    out = _output_page(src, ceil_div(src.width, f), ceil_div(src.height, f), Fraction(f),
                       Fraction(f))
    method = method_for(src, view.method)
    if method in INTERPOLATING_METHODS:
        if src.height * src.row_bytes > MAX_WHOLE_PAGE_BYTES:
            raise UnsupportedSource(f"page {src.index} is too large for {method} "
                                    "(it resizes whole pages); use a block method")
        return WholePagePlan(out, group, out.height, method)
    level_factor, level = _level_for(src, view, series) if len(group) == 1 else (1, None)
    reads = [level] if level is not None else [pages[i] for i in group]
    rows = _band_rows(reads, out, f // level_factor)
    return BlockPlan(out, group, rows, f, method, level, level_factor)


def _fit_plan(src: SourcePage, group: tuple[int, ...], longest: int) -> FitPlan:
    width, height = fit_size(src.width, src.height, longest)
    out = _output_page(src, width, height, Fraction(src.width, width),
                       Fraction(src.height, height))
    rows = downsample.AreaAxis(src.height, height)
    columns = downsample.AreaAxis(src.width, width)
    by_tile_columns = fit_by_tile_columns(src, rows, columns)
    if by_tile_columns:
        # a band holds its row sums (at most 8 bytes a sample) and one column of tiles
        sums_per_row = src.width * src.samples_per_row_pixel * 8
        band_rows = min(FIT_TILE_ROWS * src.segment_rows * height // src.height,
                        BAND_SOURCE_BYTES // sums_per_row)
    else:
        source_rows_per_row = ceil_div(src.height, height) + 1
        band_rows = BAND_SOURCE_BYTES // (source_rows_per_row * src.row_bytes)
    return FitPlan(out, group, max(1, min(height, band_rows)), rows, columns,
                   by_tile_columns)


def fit_by_tile_columns(src: SourcePage, rows: downsample.AreaAxis,
                        columns: downsample.AreaAxis) -> bool:
    """Whether a fit view of a page of compressed tiles is summed one column of tiles at
    a time (its exact integer path applies and it is not the page itself): a band then
    decodes each of its tiles once, and holds its row sums rather than its source rows."""
    return (src.tiled and not src.direct and src.bilevel_white is None
            and (rows.output, columns.output) != (src.height, src.width)
            and area.exact_integers_apply(src.dtype, src.samples_per_row_pixel, rows,
                                          columns))


def _level_for(src: SourcePage, view: View,
               series: Callable[[], SeriesInfo]) -> tuple[int, SourcePage | None]:
    """The most reduced pyramid level whose reduction k divides the factor."""
    if not view.use_levels:
        return 1, None
    levels = series().levels.get(src.index, ())
    usable = [(k, level) for k, level in levels if view.factor % k == 0]
    return max(usable, key=lambda item: item[0]) if usable else (1, None)


def _output_page(src: SourcePage, width: int, height: int, ratio_x: Fraction,
                 ratio_y: Fraction) -> OutputPage:
    return OutputPage(
        width=width, height=height, samples=src.samples, itemsize=src.dtype.itemsize,
        sampleformat=src.sampleformat, photometric=src.photometric,
        planar_separate=src.planar_separate, extrasamples=src.extrasamples,
        colormap=src.colormap, subfiletype=src.subfiletype,
        xresolution=metadata.scaled_resolution(src.xresolution, ratio_x),
        yresolution=metadata.scaled_resolution(src.yresolution, ratio_y),
        resolutionunit=src.resolutionunit)


def _with_file_metadata(first: OutputPage, description: FileDescription, view: View,
                        page_count: int) -> OutputPage:
    """Page 1 with the OME-XML of an OME source, else an ImageJ description and tags."""
    meta = description.metadata
    if meta.ome_xml and view.fit is None and view.z_factor == 1:
        ome = metadata.ome_xml_for_view(meta.ome_xml, view.factor)
        if ome:
            return replace(first, description=ome)
    if not description.uniform:
        return first  # ImageJ shows only stacks of equal pages
    src = description.pages[0]
    text = metadata.imagej_description(
        page_count, meta.imagej_description, src.resolutionunit,
        Fraction(src.width, first.width) if view.fit else Fraction(view.factor),
        Fraction(src.height, first.height) if view.fit else Fraction(view.factor),
        view.z_factor)
    return replace(first, description=text,
                   extra_tags=metadata.imagej_tags(meta.imagej_metadata()))


def reducible_by_segments(pages: Sequence[SourcePage], f: int) -> bool:
    """Whether blocks of ``f`` x ``f`` of ``pages`` (the slices of one output page) can
    be reduced one decoded segment at a time: compressed tiles, or strips too large for a
    band to hold as rows, laid out alike in every page, whose sides are multiples of
    ``f`` (or span the page), so that each block lies in one segment. Smaller strips are
    read as rows: one reduction a band beats one a strip."""
    page = pages[0]
    if not (page.tiled or page.segment_rows * page.row_bytes > 4 * BAND_SOURCE_BYTES):
        return False
    layout = (False, page.tiled, page.segment_rows, page.segment_width, page.width,
              page.height, None)
    return ((page.segment_rows % f == 0 or page.segment_rows >= page.height)
            and (page.segment_width % f == 0 or page.segment_width >= page.width)
            and all((p.direct, p.tiled, p.segment_rows, p.segment_width, p.width, p.height,
                     p.bilevel_white) == layout for p in pages))


def _band_rows(reads: list[SourcePage], out: OutputPage, f: int) -> int:
    """Output rows per band: bounded source bytes, whole segments when they are decoded
    (each segment is then decoded once). A band reduced one segment at a time holds one
    segment and its output rows, not its source rows: it may span a row of tiles of any
    width, or a strip of any size, up to 64 MiB of output rows."""
    src = reads[0]
    source_rows = max(f, BAND_SOURCE_BYTES // (src.row_bytes * len(reads)))
    if not src.direct:
        unit = math.lcm(src.segment_rows, f)
        if (unit * src.row_bytes <= 4 * BAND_SOURCE_BYTES
                or (reducible_by_segments(reads, f)
                    and min(unit // f, out.height) * out.row_bytes <= 4 * BAND_SOURCE_BYTES)):
            source_rows = max(1, source_rows // unit) * unit
    return max(1, min(out.height, source_rows // f))


def fit_size(width: int, height: int, longest: int) -> tuple[int, int]:
    """Size whose longest side is ``longest`` (never larger than the source), aspect kept,
    the other side rounded to the nearest pixel (halves up), at least 1."""
    if max(width, height) <= longest:
        return width, height
    if width >= height:
        return longest, max(1, (2 * height * longest + width) // (2 * width))
    return max(1, (2 * width * longest + height) // (2 * height)), longest
