"""The guard against JPEG segments whose header claims far more pixels than their strip
or tile holds (``tifffs.jpegcheck``): such a segment is refused before libjpeg-turbo
fills gigabytes for it; every frame an encoder writes, and one a little taller than its
strip (which tifffile crops), still decodes."""

from __future__ import annotations

import io
import resource
import struct
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st

from crafted import jpeg_claiming_a_huge_frame, tifffile_bytes
from tifffs import open_view
from tifffs.errors import BrokenSource
from tifffs.jpegcheck import Frame, frame, oversized

HANG = 120.0  # seconds: only a hang detector


def _first_segment(data: bytes) -> bytes:
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        page = tif.pages.first
        return data[page.dataoffsets[0]:page.dataoffsets[0] + page.databytecounts[0]]


@pytest.mark.parametrize("shape, options, expected", [
    ((48, 64), {"tile": (16, 32)}, Frame(16, 32, 1, 8)),
    ((48, 64, 3), {"tile": (16, 16), "photometric": "rgb"}, Frame(16, 16, 3, 8)),
    ((48, 64), {"rowsperstrip": 16}, Frame(16, 64, 1, 8)),
])
def test_frame_of_what_tifffile_writes(shape, options, expected):
    options.setdefault("photometric", "minisblack")
    pixels = np.arange(np.prod(shape), dtype=np.uint8).reshape(shape)
    segment = _first_segment(tifffile_bytes(pixels, compression="jpeg", **options))
    assert frame(segment) == expected
    assert oversized(segment, 16 * 16) is None


def test_not_jpeg_or_no_frame_is_left_to_the_decoder():
    assert frame(b"") is None
    assert frame(b"\xff\xd8") is None
    assert frame(b"\xff\xd8\xff\xdb\x00\x04\x00\x00\xff\xda") is None  # scan before a frame
    assert frame(b"GIF89a") is None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_give_a_frame_or_none(tail):
    found = frame(b"\xff\xd8" + tail)
    assert found is None or isinstance(found.decoded_bytes, int)


def test_huge_frame_is_refused_before_it_fills_memory(tmp_path):
    limit = 3 << 30  # so that showing the harm cannot take the machine's memory
    claim = 40000  # 1.6 GB, under that limit
    decode = ("import io, resource, sys, tifffile\n"
              "data = sys.stdin.buffer.read()\n"
              "try:\n    tifffile.imread(io.BytesIO(data))\nexcept Exception:\n    pass\n"
              "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n")

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    filled = subprocess.run([sys.executable, "-c", decode],
                            input=jpeg_claiming_a_huge_frame(claim), check=True,
                            capture_output=True, timeout=HANG, preexec_fn=limited)
    assert int(filled.stdout) > 1 << 20, "the input no longer makes libjpeg fill memory"

    for side in (claim, 65000):

        peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        path = tmp_path / f"huge{side}.tif"
        path.write_bytes(jpeg_claiming_a_huge_frame(side))
        view = open_view(str(path), 2)
        with pytest.raises(BrokenSource, match=f"claims {side} x {side} pixels, far more "
                                               "than the 16 x 16"):
            view.read(0, view.size)
        grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before
        assert grown_kib < 100 << 10, f"this process grew by {grown_kib >> 10} MiB"


def test_frame_a_little_taller_than_its_strip_is_cropped_as_tifffile_does(tmp_path):
    pixels = np.arange(48 * 64, dtype=np.uint8).reshape(48, 64)
    data = bytearray(tifffile_bytes(pixels, compression="jpeg", rowsperstrip=16))
    with tifffile.TiffFile(io.BytesIO(bytes(data))) as tif:
        start = int(tif.pages.first.dataoffsets[0])
    sof = data.index(b"\xff\xc0", start)
    struct.pack_into(">H", data, sof + 5, 32)  # 32 rows in a strip of 16
    path = tmp_path / "taller.tif"
    path.write_bytes(bytes(data))
    view = open_view(str(path), view="x1-nearest")
    served = tifffile.imread(io.BytesIO(view.read(0, view.size)))
    np.testing.assert_array_equal(served, tifffile.imread(path))
