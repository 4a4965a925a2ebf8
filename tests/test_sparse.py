"""Strips and tiles never written: offset or byte count 0, as GDAL writes the blocks of
zeros of a ``SPARSE_OK`` file (real GDAL files are in the reader matrix). GDAL and
tifffile read them as zeros (tifffile but for a page of a single strip, which it reads at
offset 0: the file's header as pixels); every view must too. Uncompressed strips once
served the file's header as pixels."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tifffile

from reference import decoded_page, reference_area, reference_blocks, served_pixels
from tifffs import open_view
from tifffs.views import parse_view


def _unwrite(path, segments: list[int], *, keep_count: bool = False) -> None:
    """Set these strips' or tiles' offsets (and byte counts) to 0 on every page."""
    with tifffile.TiffFile(path, mode="r+b") as tif:
        for page in tif.pages:
            kind = "Tile" if page.is_tiled else "Strip"
            names = [f"{kind}Offsets"] + ([] if keep_count else [f"{kind}ByteCounts"])
            for name in names:
                values = list(page.tags[name].value)
                for segment in segments:
                    values[segment] = 0
                page.tags[name].overwrite(values)


def _source(tmp_path, kind: str):
    rng = np.random.default_rng(5)
    path = tmp_path / f"{kind}.tif"
    if kind == "strips":
        tifffile.imwrite(path, rng.integers(1, 60000, (2, 64, 48), dtype=np.uint16),
                         rowsperstrip=8, photometric="minisblack")
        _unwrite(path, [1, 2, 6])
    elif kind == "strips_offset_only":  # byte count kept: the offset alone says it
        tifffile.imwrite(path, rng.integers(1, 250, (64, 48), dtype=np.uint8),
                         rowsperstrip=8, photometric="minisblack")
        _unwrite(path, [3], keep_count=True)
    elif kind == "planar_separate":
        tifffile.imwrite(path, rng.integers(1, 250, (3, 40, 30), dtype=np.uint8),
                         rowsperstrip=8, photometric="rgb", planarconfig="separate")
        _unwrite(path, [0, 7, 14])
    elif kind == "whole_page":  # the only strip of a page larger than the whole file
        tifffile.imwrite(path, rng.integers(1, 60000, (300, 200), dtype=np.uint16),
                         photometric="minisblack")
        with tifffile.TiffFile(path) as tif:
            pixels_start = tif.pages.first.dataoffsets[0]
        _unwrite(path, [0])
        with open(path, "r+b") as f:  # the IFD stays, the pixels are gone
            f.truncate(pixels_start)
    elif kind == "zlib_tiles":
        tifffile.imwrite(path, rng.integers(1, 60000, (64, 96), dtype=np.uint16),
                         tile=(16, 32), compression="zlib", photometric="minisblack")
        _unwrite(path, [1, 4])
    return path


@pytest.mark.parametrize("view", ["x1", "x2", "x3-nearest", "x4-nearest", "x2-max",
                                  "fit13"])
@pytest.mark.parametrize("kind", ["strips", "strips_offset_only", "planar_separate",
                                  "whole_page", "zlib_tiles"])
def test_segments_never_written_are_zeros_in_every_view(tmp_path, kind, view):
    path = _source(tmp_path, kind)
    with tifffile.TiffFile(path) as tif:
        if kind == "whole_page":  # tifffile reads a single strip at offset 0 nonetheless
            page = tif.pages.first
            sources = [np.zeros((page.imagelength, page.imagewidth, 1), page.dtype)]
        else:
            sources = [served_pixels(page)[0] for page in tif.pages]
    assert all((source == 0).sum() >= 128 for source in sources)  # written: 1 and up
    opened = open_view(str(path), view=view)
    try:
        served = opened.read(0, opened.size)
    finally:
        opened.close()
    with tifffile.TiffFile(io.BytesIO(served)) as tif:
        pages = tif.pages
        assert len(pages) == len(sources)
        parsed = parse_view(view, "mean")
        for page, source in zip(pages, sources):
            got = decoded_page(page)
            if parsed.fit is not None:
                expected = reference_area(source, got.shape[0], got.shape[1])
            elif parsed.method == "nearest":
                expected = source[::parsed.factor, ::parsed.factor]
            else:
                expected = reference_blocks([source], parsed.factor, parsed.method)
            assert np.array_equal(got, expected)
