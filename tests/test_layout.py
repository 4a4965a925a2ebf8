"""The byte layout, without a mount: offsets, BigTIFF beyond 4 GiB, ImageJ's large format."""

from __future__ import annotations

import io
import struct
from fractions import Fraction
from pathlib import Path

import pytest
import tifffile

from tifffs.layout import CLASSIC_LIMIT, OutputPage, build_layout

DESCRIPTION = "ImageJ=1.11a\nimages=70\nslices=70\n"  # as tifffs.metadata writes it


def _pages(count: int, side: int, description: str | None = DESCRIPTION) -> list[OutputPage]:
    page = OutputPage(width=side, height=side, samples=1, itemsize=1, sampleformat=1,
                      photometric=1, planar_separate=False)
    pages = [page] * count
    pages[0] = OutputPage(**{**page.__dict__, "description": description})
    return pages


def _sparse_file(path: Path, head: bytes, size: int) -> Path:
    """The view's header and IFDs, then holes: enough for readers of metadata."""
    with open(path, "wb") as out:
        out.write(head)
        out.truncate(size)
    return path


def test_small_views_are_classic_tiff_with_contiguous_pages(tmp_path):
    layout = build_layout(_pages(3, 100))
    assert layout.head[:4] == b"II*\0" and not layout.bigtiff
    assert layout.page_offsets == tuple(layout.pixel_start + i * 100 * 100 for i in range(3))
    assert layout.pixel_start % 4096 == 0
    assert layout.size == layout.pixel_start + 3 * 100 * 100
    with tifffile.TiffFile(_sparse_file(tmp_path / "v.tif", layout.head, layout.size)) as tif:
        assert [p.dataoffsets[0] for p in tif.pages] == list(layout.page_offsets)


def test_views_over_4_gib_are_bigtiff(tmp_path):
    layout = build_layout(_pages(70, 8000))
    assert layout.size > CLASSIC_LIMIT and layout.bigtiff
    assert struct.unpack("<2sHHH", layout.head[:8]) == (b"II", 43, 8, 0)
    with tifffile.TiffFile(_sparse_file(tmp_path / "v.tif", layout.head, layout.size)) as tif:
        assert tif.is_bigtiff and len(tif.pages) == 70
        assert tif.pages[69].dataoffsets[0] == layout.page_offsets[69] > CLASSIC_LIMIT


def test_imagej_large_format_has_one_ifd_and_contiguous_data(tmp_path):
    layout = build_layout(_pages(70, 8000), imagej_large=True)
    assert not layout.bigtiff and layout.head[:4] == b"II*\0"
    assert layout.size == layout.pixel_start + 70 * 8000 * 8000 > CLASSIC_LIMIT
    with tifffile.TiffFile(_sparse_file(tmp_path / "v.tif", layout.head, layout.size)) as tif:
        assert len(tif.pages) == 1
        assert tif.is_imagej and tif.series[0].shape == (70, 8000, 8000)
        assert tif.series[0].dataoffset == layout.pixel_start


def test_imagej_large_needs_an_imagej_description():
    layout = build_layout(_pages(70, 8000, description=None), imagej_large=True)
    assert layout.bigtiff


@pytest.mark.parametrize("value,expected", [
    (Fraction(1, 21), (1, 21)),
    (Fraction(10**12, 7), (2**32 - 1, 1)),  # beyond RATIONAL: clamped
    (Fraction(1, 3 * 10**10), (1, 2**32 - 1)),
    (Fraction(10**9 + 7, 3), None),  # approximated
    (Fraction(2, 3) / 7, (2, 21)),
])
def test_rational_resolution_fits_32_bits(value, expected):
    page = OutputPage(width=10, height=10, samples=1, itemsize=2, sampleformat=1,
                      photometric=1, planar_separate=False, xresolution=value,
                      yresolution=value, resolutionunit=3)
    layout = build_layout([page])
    with tifffile.TiffFile(io.BytesIO(layout.head + bytes(layout.size - len(layout.head)))) as tif:
        numerator, denominator = tif.pages.first.tags["XResolution"].value
    assert numerator < 2**32 and denominator < 2**32
    if expected is None:
        assert abs(Fraction(numerator, denominator) / value - 1) < 1e-9
    else:
        assert (numerator, denominator) == expected


@pytest.mark.parametrize("side", [40, 9000])  # classic TIFF; BigTIFF past 4 GiB
def test_pages_shared_by_alike_pages_lay_out_as_copies_do(side):
    """A plan gives alike pages one output page object (a stack of 20,000 pages: its IFD
    entries built once); the bytes are those of distinct, equal pages."""
    from dataclasses import replace

    shared = _pages(70, side)
    copies = [shared[0]] + [replace(page) for page in shared[1:]]
    assert len({id(page) for page in shared}) == 2 and len({id(p) for p in copies}) == 70
    one, other = build_layout(shared), build_layout(copies)
    assert (one.head, one.page_offsets, one.size, one.bigtiff) == \
        (other.head, other.page_offsets, other.size, other.bigtiff)
    assert one.bigtiff == (side == 9000)
