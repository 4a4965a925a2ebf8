"""Describing sources without a mount: the lean IFD reader gives exactly tifffile's
description wherever it answers, and broken trailing pages are cut off, not fatal."""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile

from conftest import SOURCE_KINDS, sample_array, write_stack
from tifffs import lean
from tifffs.describe import _describe_with_tifffile, describe
from tifffs.errors import BrokenSource
from tifffs.pages import FileDescription


def _both(path: Path) -> tuple[FileDescription | None, FileDescription]:
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        return lean.read_description(fd, size), _describe_with_tifffile(fd, size, path.name)
    finally:
        os.close(fd)


@pytest.mark.parametrize("name", sorted(SOURCE_KINDS))
def test_the_lean_reader_describes_as_tifffile_does(tmp_path, name):
    dtype, shape, kwargs = SOURCE_KINDS[name]
    path = tmp_path / name
    write_stack(path, sample_array(dtype, shape, seed=3), **kwargs)
    quick, reference = _both(path)
    if quick is None:  # not a plain file: tifffile describes it (JPEG's YCbCr tags...)
        assert name == "rgb_u8_tiled_jpeg.tif"
        return
    assert quick.metadata == reference.metadata
    assert [p.to_json() for p in quick.pages] == [p.to_json() for p in reference.pages]
    again = FileDescription.from_bytes(quick.to_bytes())  # and it survives the index
    assert [p.to_json() for p in again.pages] == [p.to_json() for p in quick.pages]
    # the index's text holds each kind of page once, then where each page lies: together
    # they are each page's to_json
    data = quick.to_bytes()
    stored = json.loads(data if data[:1] == b"{" else zlib.decompress(data))
    rebuilt = [{**stored["kinds"][kind], "index": index, "ifd_offset": ifd_offset,
                "offsets": offsets, "bytecounts": bytecounts}
               for kind, index, ifd_offset, offsets, bytecounts in stored["pages"]]
    assert rebuilt == json.loads(json.dumps([p.to_json() for p in quick.pages]))
    assert len(stored["kinds"]) == len({p.layout_key() for p in quick.pages})


def _three_pages_with_page_2_past_the_end() -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.arange(3 * 16 * 16, dtype=np.uint8).reshape(3, 16, 16),
                     photometric="minisblack")
    data = bytearray(buffer.getvalue())
    with tifffile.TiffFile(io.BytesIO(bytes(data))) as tif:
        at = tif.pages[2].tags["StripOffsets"].valueoffset
    struct.pack_into("<I", data, at, 10**7)
    return bytes(data)


def test_a_broken_page_after_good_ones_cuts_the_file_there(tmp_path):
    path = tmp_path / "broken_third.tif"
    path.write_bytes(_three_pages_with_page_2_past_the_end())
    for description in _both(path):
        assert description is not None
        assert len(description.pages) == 2
        assert "page 2" in description.truncated and "past the end" in description.truncated


def test_a_broken_first_page_is_a_broken_source(tmp_path):
    data = bytearray(_three_pages_with_page_2_past_the_end())
    with tifffile.TiffFile(io.BytesIO(bytes(data))) as tif:
        at = tif.pages[0].tags["StripOffsets"].valueoffset
    struct.pack_into("<I", data, at, 10**7)
    path = tmp_path / "broken_first.tif"
    path.write_bytes(bytes(data))
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(BrokenSource, match="past the end"):
            describe(fd, os.fstat(fd).st_size, path.name)
    finally:
        os.close(fd)


@pytest.mark.timeout(60)  # the old code followed the loop for minutes
@pytest.mark.parametrize("name, pages", [("ifd_loop_self.tif", 1), ("ifd_loop_short.tif", 3),
                                         ("ifd_loop_after_100.tif", 130)])
@pytest.mark.parametrize("view, use_levels", [("x2z2", False), ("x2", True)])
def test_views_that_read_series_stop_where_the_chain_loops(tmp_path, name, pages, view,
                                                          use_levels):
    """tifffile follows some looping chains without end (scripts/fuzz: 850,000 pages of a
    4 KB file), so its series are not read past where tifffs stops: views that need them
    (Z runs, --use-levels) serve the pages before the loop, as the others do."""
    from crafted import broken_files
    from tifffs import open_view

    path = tmp_path / name
    path.write_bytes(broken_files()[name])
    with open_view(str(path), view=view, use_levels=use_levels) as opened:
        served = opened.read(0, opened.size)
    assert len(served) == opened.size
    with tifffile.TiffFile(io.BytesIO(served)) as tif:
        assert len(tif.pages) == (-(-pages // 2) if view == "x2z2" else pages)


def test_a_tag_whose_value_lies_in_the_header_is_left_to_tifffile(tmp_path):
    """tifffile drops a tag whose value would lie inside the 8-byte header; the lean
    reader gives up on it rather than read the header as the value (scripts/fuzz)."""
    from crafted import gray8

    path = tmp_path / "resolution_in_header.tif"
    path.write_bytes(gray8(t282=(5, 1, 0)))  # XResolution, a RATIONAL at offset 0
    lean_description, tifffile_description = _both(path)
    assert lean_description is None
    assert tifffile_description.pages[0].xresolution is None


def test_the_index_form_keeps_pages_of_several_kinds_and_refuses_damage(tmp_path):
    """Each kind of page is stored once and each page as its place: a file whose pages
    alternate between two kinds (a pyramid's levels, say) comes back page for page; a
    stored description that is damaged, or names a kind it lacks, is refused (the file
    is then described anew), never read as other pages."""
    path = tmp_path / "two_kinds.tif"
    with tifffile.TiffWriter(path) as tif:
        for i in range(6):
            side = 64 if i % 2 == 0 else 32
            tif.write(sample_array("uint16", (side, side), seed=i), photometric="minisblack")
    fd = os.open(path, os.O_RDONLY)
    try:
        description = describe(fd, os.fstat(fd).st_size, path.name)
    finally:
        os.close(fd)
    data = description.to_bytes()
    stored = json.loads(data if data[:1] == b"{" else zlib.decompress(data))
    assert len(stored["kinds"]) == 2 and [p[0] for p in stored["pages"]] == [0, 1] * 3
    again = FileDescription.from_bytes(data)
    assert [p.to_json() for p in again.pages] == [p.to_json() for p in description.pages]
    assert again.layout_key() == description.layout_key()
    damaged_entries = [data[: len(data) // 2], b"{}"]
    for kind in (2, -1, True, "0", 0.0):  # kinds that are not there, or not numbers
        stored["pages"][3][0] = kind
        damaged_entries.append(json.dumps(stored).encode())
    for damaged in damaged_entries:
        with pytest.raises(ValueError, match="not a tifffs description"):
            FileDescription.from_bytes(damaged)


@pytest.mark.parametrize("offsets, bytecounts", [
    (b"\x08", (100,)),  # a damaged tag read as bytes
    ("8", (100,)),
    ((8.0,), (100,)),
    ((-8,), (100,)),
    ((8,), (True,)),
    (np.array([8.5]), (100,)),
    ((8, 108), (100, 100)),  # two segments where the page has one
])
def test_segment_tables_that_are_not_whole_numbers_are_refused(tmp_path, offsets,
                                                               bytecounts):
    """A one-strip page (the common case, checked without numpy) refuses the same
    damaged offsets and byte counts as a page of many segments."""
    from tifffs.page_rules import with_segments

    path = tmp_path / "one.tif"
    write_stack(path, sample_array("uint8", (1, 8, 8)))
    fd = os.open(path, os.O_RDONLY)
    try:
        page = describe(fd, os.fstat(fd).st_size, path.name).pages[0]
    finally:
        os.close(fd)
    assert page.offsets.size == 1
    with pytest.raises(BrokenSource, match="strip or tile offsets"):
        with_segments(page, 0, 8, offsets, bytecounts, 1 << 20)
    placed = with_segments(page, 3, 8, (200,), (0,), 1 << 20)  # never written: zeros
    assert (placed.index, int(placed.offsets[0]), int(placed.bytecounts[0])) == (3, 0, 0)
    assert placed.offsets.dtype == np.uint64
