"""Read-ahead advice: the file bytes of a band's source rows (``row_span``), and that
advising them brings exactly those into the page cache (what a render ahead of a
sequential reader does on a cold disk)."""

from __future__ import annotations

import itertools

import numpy as np
import tifffile

from conftest import wait_for
from tifffs.pixels import row_span
from tifffs.sources import open_source
from tools import evict, resident_bytes

HANG = 30.0


def test_row_span_of_strips_covers_exactly_the_rows(tmp_path):
    path = tmp_path / "strips.tif"
    tifffile.imwrite(path, np.zeros((3, 100, 50), np.uint16), photometric="minisblack",
                     rowsperstrip=7)
    source = open_source(str(path))
    try:
        page = source.pages[1]
        with tifffile.TiffFile(path) as tif:
            offsets = tif.pages[1].dataoffsets
        row_bytes = 50 * 2
        assert row_span(page, 0, 10, 30) == (offsets[1] + 3 * row_bytes, 20 * row_bytes)
        assert row_span(page, 0, 0, 100) == (offsets[0], 100 * row_bytes)
        assert row_span(page, 0, 30, 30) is None
    finally:
        source.close()


def test_row_span_of_compressed_tiles_covers_their_rows_of_tiles(tmp_path):
    path = tmp_path / "tiles.tif"
    data = np.random.default_rng(0).integers(0, 255, (100, 100), dtype=np.uint8)
    tifffile.imwrite(path, data, photometric="minisblack", tile=(32, 32), compression="zlib")
    source = open_source(str(path))
    try:
        with tifffile.TiffFile(path) as tif:
            offsets = np.array(tif.pages[0].dataoffsets)
            counts = np.array(tif.pages[0].databytecounts)
        rows_of_tiles = slice(1 * 4, 3 * 4)  # rows 40:70 lie in tile rows 1 and 2, 4 across
        begin = int(offsets[rows_of_tiles].min())
        end = int((offsets[rows_of_tiles] + counts[rows_of_tiles]).max())
        assert row_span(source.pages[0], 0, 40, 70) == (begin, end - begin)
    finally:
        source.close()


def test_advice_brings_just_those_rows_into_the_page_cache(tmp_path):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.ones((3, 1024, 1024), np.uint16), photometric="minisblack",
                     contiguous=True)
    source = open_source(str(path))
    try:
        evict(path)
        assert resident_bytes(path) < 64 << 10
        source.advise([row_span(source.pages[1], 0, 0, 512)])  # 1 MiB of the 6 MiB
        wait_for(lambda: resident_bytes(path) >= 1 << 20, HANG, "the advised rows cached")
        assert resident_bytes(path) < 2 << 20
    finally:
        source.close()


def test_spans_of_advice_merge_when_near_and_cover_every_byte():
    from tifffs.pixels import ADVICE_GAP_BYTES, MAX_ADVICE_BYTES, merged_spans

    near = [(1000, 100), (0, 500), (1100 + ADVICE_GAP_BYTES, 10)]  # unsorted, one gap
    assert merged_spans(near) == [(0, 1110 + ADVICE_GAP_BYTES)]
    far = [(0, 10), (10 + ADVICE_GAP_BYTES + 1, 10)]
    assert merged_spans(far) == far
    big = [(i * (16 << 20), 16 << 20) for i in range(6)]  # 96 MiB in a row
    merged = merged_spans(big)
    assert all(length <= MAX_ADVICE_BYTES for _, length in merged)
    assert merged[0][0] == 0 and sum(length for _, length in merged) == 96 << 20
    assert all(a + n == b for (a, n), (b, _) in itertools.pairwise(merged))


def test_the_advice_ahead_of_a_reader_of_small_pages_is_one_request(tmp_path, monkeypatch):
    from tifffs import open_view, pixels

    path = tmp_path / "frames.tif"
    tifffile.imwrite(path, np.ones((40, 64, 64), np.uint16), photometric="minisblack")
    calls: list[tuple[int, int]] = []
    real_fadvise = pixels.os.posix_fadvise

    def recording(fd, offset, length, advice):
        calls.append((offset, length))
        return real_fadvise(fd, offset, length, advice)

    monkeypatch.setattr(pixels.os, "posix_fadvise", recording)
    reader = open_view(str(path), view="x2")
    try:
        reader.view.prefetch_after((0, 0, 0), 4)  # renders 4 pages, advises the 12 after
        with tifffile.TiffFile(path) as tif:
            offsets = [tif.pages[i].dataoffsets[0] for i in (5, 16)]
        assert len(calls) == 1, calls
        (offset, length), = calls
        assert offset == offsets[0] and offset + length == offsets[1] + 64 * 64 * 2
    finally:
        reader.close()
