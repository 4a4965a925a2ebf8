"""Every sample size tifffile decodes is served (issue 11 item 1).

Sources from tifffile, libtiff (``tiffcp``, ``fax2tiff``), ImageMagick and GDAL
(``sample_kinds.py``): bilevel pages (uncompressed, PackBits, CCITT RLE, G3, G4, fill
order 2, MinIsWhite and MinIsBlack, palette), 2- to 24-bit packed integers and
old-style JPEG. For every view, three ways agree: the bytes read through a real mount,
the bytes of ``tifffs.open_view(...).read``, and a reference computed with numpy from
``tifffile``'s decoding of the source.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tifffile

import sample_kinds
from conftest import Mount, mounted
from reference import reference_area, reference_blocks, reference_page
from tifffs import open_view

pytestmark = pytest.mark.mount

VIEWS = ("x2", "x3", "x4-nearest", "x3-max", "x2-min", "x3-median", "x4-mode", "fit100")
FIT = 100

#: what each writer wrote: (bits per sample, compression, fill order)
WRITTEN = {
    "tifffile/bilevel_default_2pages.tif": (1, 1, 1),
    "tifffile/bilevel_minisblack_packbits.tif": (1, 32773, 1),
    "tifffile/gray_2bit.tif": (2, 1, 1),
    "tifffile/gray_4bit_miniswhite.tif": (4, 1, 1),
    "tifffile/gray_10bit.tif": (10, 1, 1),
    "tifffile/gray_12bit_2pages.tif": (12, 1, 1),
    "tifffile/rgb_14bit.tif": (14, 1, 1),
    "tiffcp/g3_1d_2pages.tif": (1, 3, 1),
    "tiffcp/g3_2d.tif": (1, 3, 1),
    "tiffcp/g4_2pages.tif": (1, 4, 1),
    "tiffcp/g4_fillorder2.tif": (1, 4, 2),
    "tiffcp/bilevel_fillorder2_rows7.tif": (1, 1, 2),
    "fax2tiff/g3_class_f.tif": (1, 3, 2),
    "magick/monochrome.tif": (1, 1, 1),
    "magick/group4.tif": (1, 4, 1),
    "magick/fax.tif": (1, 3, 1),
    "gdal/nbits1.tif": (1, 1, 1),
    "gdal/nbits1_palette.tif": (1, 1, 1),
    "gdal/nbits1_ccittrle.tif": (1, 2, 1),
    "gdal/nbits1_ccittfax3.tif": (1, 3, 1),
    "gdal/nbits1_ccittfax4_tiled.tif": (1, 4, 1),
    "gdal/nbits4.tif": (4, 1, 1),
    "gdal/nbits12_lzw.tif": (12, 5, 1),
    "gdal/nbits24.tif": (24, 1, 1),
    "ojpeg/ojpeg_rgb.tif": (8, 6, 1),
    "ojpeg/ojpeg_gray.tif": (8, 6, 1),
}
NAMES = sorted(WRITTEN)


@pytest.fixture(scope="session")
def packed_tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("packed-source")
    kinds = sample_kinds.build(root, tmp_path_factory.mktemp("packed-scratch"))
    assert sorted(kinds) == NAMES
    return root


@pytest.fixture(scope="session")
def packed_mount(packed_tree, tmp_path_factory) -> Iterator[Mount]:
    with mounted(packed_tree, tmp_path_factory.mktemp("packed-mount"), "--views",
                 ",".join(VIEWS)) as m:
        yield m


@pytest.mark.parametrize("name", NAMES)
def test_source_is_what_its_writer_wrote(packed_tree, name):
    with tifffile.TiffFile(packed_tree / name) as tif:
        page = tif.pages.first
        written = (page.bitspersample, int(page.compression), int(page.fillorder))
        assert written == WRITTEN[name]
        assert ("palette" in name) == (int(page.photometric) == sample_kinds.PALETTE)
        assert ("2pages" in name) == (len(tif.pages) == 2)


# -- the reference
def _fit_shape(height: int, width: int) -> tuple[int, int]:
    if max(height, width) <= FIT:
        return height, width
    if width >= height:
        return max(1, round(height * FIT / width + 1e-9)), FIT
    return FIT, max(1, round(width * FIT / height + 1e-9))


def expected_page(pixels: np.ndarray, photometric: int, grey: bool,
                  view: str) -> np.ndarray:
    """What tifffs must serve for one source page as ``served_pages`` gives it."""
    if view.startswith("fit"):
        return reference_area(pixels, *_fit_shape(*pixels.shape[:2]))
    name, _, method = view.partition("-")
    factor, method = int(name[1:]), method or "mean"
    if photometric == sample_kinds.PALETTE and method != "mode":
        method = "nearest"
    if grey and method == "median":
        method = "mode"  # documented: a bilevel median is the mode (two levels)
    if method in ("max", "min", "median", "mode"):
        return reference_blocks([pixels], factor, method)
    return reference_page(pixels, factor, method)


# -- three ways
def _view_pages(data: bytes) -> list[tifffile.TiffPage]:
    return list(tifffile.TiffFile(io.BytesIO(data)).pages)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("view", VIEWS)
def test_view_equals_reference_three_ways(packed_tree, packed_mount, name, view):
    mounted_bytes = (packed_mount.path / view / name).read_bytes()
    reader = open_view(str(packed_tree / name), view=view)
    assert reader.read(0, reader.size) == mounted_bytes
    served = sample_kinds.served_pages(packed_tree / name)
    pages = _view_pages(mounted_bytes)
    assert len(pages) == len(served)
    for i, (page, (pixels, photometric, grey)) in enumerate(zip(pages, served)):
        where = f"{view}/{name} page {i}"
        want = expected_page(pixels, photometric, grey, view)
        got = page.asarray().reshape(want.shape)
        assert got.dtype == want.dtype, where
        np.testing.assert_array_equal(got, want, err_msg=where)
        assert int(page.photometric) == photometric, where
        assert page.bitspersample == 8 * want.dtype.itemsize, where
        if grey and view not in ("x2", "x3", f"fit{FIT}"):  # not mean or area
            assert set(np.unique(got)) <= {0, 255}, f"{where}: two levels"


@pytest.mark.parametrize("name", ["gdal/nbits1_palette.tif"])
def test_one_bit_palette_keeps_its_colours(packed_tree, packed_mount, name):
    """A 1-bit palette is served as an 8-bit palette: its two colours, then black."""
    with tifffile.TiffFile(packed_tree / name) as tif:
        source = tif.pages.first.colormap
    with tifffile.TiffFile(packed_mount.path / "x2" / name) as tif:
        colormap = tif.pages.first.colormap
    assert colormap.shape == (3, 256)
    np.testing.assert_array_equal(colormap[:, :2], source)
    assert not colormap[:, 2:].any()


def test_bilevel_mean_is_the_fraction_of_white(packed_tree):
    """MinIsWhite and MinIsBlack sources of one picture give the same grey."""
    picture = sample_kinds.bilevel((40, 50), 11)
    white = packed_tree.parent / "white-is-zero.tif"
    black = packed_tree.parent / "black-is-zero.tif"
    tifffile.imwrite(white, ~picture, photometric="miniswhite")
    tifffile.imwrite(black, picture, photometric="minisblack")
    views = [open_view(str(p), 4, "mean") for p in (white, black)]
    first, second = (tifffile.imread(io.BytesIO(v.read(0, v.size))) for v in views)
    np.testing.assert_array_equal(first, second)
    block = picture[:4, :4]
    assert first[0, 0] == (2 * 255 * int(block.sum()) + 16) // 32
