"""Real readers open the views through a real mount: libtiff (tiffinfo) and ImageJ 1.x.

Every view of the session mount (method mean, factors 2, 4, 8) is read in full by
``tiffinfo -D``, which must neither warn nor fail and must see the downsampled sizes.
ImageJ runs headless in one JVM for all files (``ImageJProbe.java``, see there why not a
``-batch`` macro) and must see the size, stack, type and calibration of each view that
follow from what it sees in the source, and the same pixels tifffile reads.
A missing tool fails the tests (never skips them): ``scripts/test`` installs them.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tifffile

from readers import ImageJReport, run_imagej
from tools import require

pytestmark = pytest.mark.mount

FACTORS = (2, 4, 8)
INSTALL_HINT = "run scripts/test, which installs libtiff-tools, imagej and Java"
#: Views checked with ImageJ at every factor: all kinds whose source ImageJ 1.x opens.
#: u16_zstd.tif: ImageJ cannot decode the Zstd source; its view is checked in
#: ``test_imagej_reads_view_of_a_source_it_cannot``. The reader matrix tests cover more.
IMAGEJ_NAMES = (
    "u16_multi_even.tif",  # ImageJ hyperstack description, unit um, z spacing 2.5
    "u16_single_odd.tif",  # calibrated by ResolutionUnit=CENTIMETER only
    "u8_multi_odd.tif",
    "f32_multi_even.tif",
    "ij_hyperstack.tif",  # 2 channels x 3 slices x 2 frames, composite, display ranges
    "f32_single_odd.tif",
    "rgb_u8_odd.tif",
    "rgb_u8_planar.tif",
    "u16_bigendian.tif",
    "u16_lzw_strips.tif",
    "u8_deflate_pred.tif",
    "u8_packbits.tif",
    "u8_single_even.tif",
    "run1/deeper/stack.TIFF",
    "broken/neighbour.tif",
)
IMAGEJ_UNDECODABLE = "u16_zstd.tif"
#: Units ImageJ shows for an image without a physical calibration.
NO_PHYSICAL_UNIT = {"", " ", "pixel", "pixels"}
PHOTOMETRIC_RGB = 2
TOOL_TIMEOUT = 120


# -- helpers shared by both readers
def is_checked_view(relative: Path) -> bool:
    """TIFF names outside ``broken/``, and the one good file in it."""
    if relative.suffix.lower() not in (".tif", ".tiff"):
        return False
    return relative.parts[0] != "broken" or relative.name == "neighbour.tif"


def tiff_files(root: Path) -> set[Path]:
    """Checked TIFF names under ``root``, relative to it.

    ``os.walk`` tolerates the EIO that stat of a broken view gives (``Path.rglob`` not).
    """
    found = set()
    for directory, _, files in os.walk(root, onerror=_raise):
        for name in files:
            relative = Path(directory, name).relative_to(root)
            if is_checked_view(relative):
                found.add(relative)
    return found


def _raise(error: OSError) -> None:
    raise error


def reduced(length: int, factor: int) -> int:
    """Pixels of a view along an axis of ``length`` source pixels: ceil(length / f)."""
    return -(-length // factor)


def source_page_sizes(path: Path) -> list[tuple[int, int]]:
    """(width, height) of every page of a TIFF, as tifffile reads it."""
    with tifffile.TiffFile(path) as tif:
        return [(page.imagewidth, page.imagelength) for page in tif.pages]


def reduced_sizes(path: Path, factor: int) -> list[tuple[int, int]]:
    """The (width, height) every page of the view of ``path`` must have."""
    return [(reduced(w, factor), reduced(h, factor)) for w, h in source_page_sizes(path)]


# -- libtiff
def tiffinfo_sizes(report: str) -> list[tuple[int, int]]:
    """(width, height) of every directory in the output of ``tiffinfo``."""
    return [(int(w), int(h))
            for w, h in re.findall(r"Image Width: (\d+) Image Length: (\d+)", report)]


#: ImageJ's private tags, carried over from ImageJ sources (display ranges, LUTs, labels)
IMAGEJ_TAG_WARNING = re.compile(r"TIFFReadDirectory: Warning, Unknown field with tag "
                                r"5083[89] \(0xc69[67]\) encountered\.")


def unexcused_warnings(stderr: str, source: Path) -> list[str]:
    """tiffinfo's complaints about a view, less the unknown-ImageJ-tag warnings that
    tiffinfo also gives for the source itself."""
    lines = stderr.splitlines()
    tiffinfo = require("tiffinfo", hint=INSTALL_HINT)
    source_lines = subprocess.run([tiffinfo, str(source)], capture_output=True,
                                  text=True, timeout=TOOL_TIMEOUT, check=False).stderr.splitlines()
    return [line for line in lines
            if not (IMAGEJ_TAG_WARNING.fullmatch(line) and line in source_lines)]


@pytest.mark.parametrize("factor", FACTORS)
def test_tiffinfo_reads_every_view_cleanly(mount, sources, factor):
    """``tiffinfo -D`` (reads all pixel data) exits 0 with an empty stderr on every view."""
    tiffinfo = require("tiffinfo", hint=INSTALL_HINT)
    root, _ = sources
    view_root = mount.path / f"x{factor}"
    names = tiff_files(view_root)
    assert names == tiff_files(root), "the view tree does not mirror the TIFFs of SOURCE"
    problems = []
    for name in sorted(names):
        result = subprocess.run([tiffinfo, "-D", str(view_root / name)], capture_output=True,
                                text=True, timeout=TOOL_TIMEOUT, check=False)
        if result.returncode != 0 or unexcused_warnings(result.stderr, root / name):
            problems.append(f"{name}: exit {result.returncode}, stderr {result.stderr!r}")
            continue
        expected = reduced_sizes(root / name, factor)
        seen = tiffinfo_sizes(result.stdout)
        if seen != expected:
            problems.append(f"{name}: tiffinfo sees (width, height) {seen}, "
                            f"expected {expected}")
    assert not problems, "\n".join(problems)


# -- ImageJ (the probe runner and its report are shared with the reader matrix)
@pytest.fixture(scope="module")
def imagej(mount, sources) -> dict[Path, ImageJReport | str]:
    """ImageJ's reports of the checked views at every factor and of their sources."""
    root, _ = sources
    names = [*IMAGEJ_NAMES, IMAGEJ_UNDECODABLE]
    paths = [root / name for name in IMAGEJ_NAMES]
    paths += [mount.path / f"x{f}" / name for f in FACTORS for name in names]
    return run_imagej(paths)


def opened(reports: dict[Path, ImageJReport | str], path: Path) -> ImageJReport:
    """The report of ``path``; fail with ImageJ's error if it could not open it."""
    report = reports[path]
    assert isinstance(report, ImageJReport), f"ImageJ cannot open {path}: {report}"
    return report


def expected_bit_depth(path: Path) -> int:
    """ImageJ's bit depth for the pixels of a TIFF: 8, 16, 32 or 24 for 8-bit RGB."""
    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        samples, dtype, photometric = page.samplesperpixel, page.dtype, page.photometric
    if photometric == PHOTOMETRIC_RGB and samples == 3 and dtype == np.uint8:
        return 24
    assert samples == 1 and dtype in (np.uint8, np.uint16, np.float32), \
        f"{path}: no ImageJ type for {samples} samples of {dtype}"
    return dtype.itemsize * 8


def tifffile_slice_sums(path: Path) -> list[list[int | float]]:
    """Per page, the sum of each channel (samples last or planar), exact for integers."""
    sums = []
    with tifffile.TiffFile(path) as tif:
        for page in tif.pages:
            pixels = page.asarray()
            if "S" in page.axes:
                pixels = np.moveaxis(pixels, page.axes.index("S"), -1)
            else:
                pixels = pixels[..., np.newaxis]
            channels = pixels.reshape(-1, pixels.shape[-1])
            if channels.dtype.kind == "f":
                sums.append([float(s) for s in channels.astype(np.float64).sum(axis=0)])
            else:
                sums.append([int(s) for s in channels.astype(np.int64).sum(axis=0)])
    return sums


def assert_same_sums(imagej_sums: list[list[int | float]],
                     numpy_sums: list[list[int | float]]) -> None:
    """Integer sums equal; float sums equal up to summation order (relative 1e-9)."""
    assert len(imagej_sums) == len(numpy_sums)
    for page, (ours, theirs) in enumerate(zip(imagej_sums, numpy_sums)):
        assert len(ours) == len(theirs), f"page {page}: channels {ours} vs {theirs}"
        for a, b in zip(ours, theirs):
            if isinstance(a, int) and isinstance(b, int):
                assert a == b, f"page {page}: ImageJ sums {ours}, tifffile {theirs}"
            else:
                assert math.isclose(a, b, rel_tol=1e-9), \
                    f"page {page}: ImageJ sums {ours}, tifffile {theirs}"


imagej_cases = pytest.mark.parametrize(
    "name, factor", [(name, f) for name in IMAGEJ_NAMES for f in FACTORS])


@pytest.mark.imagej
@imagej_cases
def test_imagej_sees_size_stack_and_type(imagej, mount, sources, name, factor):
    """ceil(W/f) x ceil(H/f), one slice per page, the source's dimensions and bit depth."""
    root, _ = sources
    view = opened(imagej, mount.path / f"x{factor}" / name)
    source = opened(imagej, root / name)
    sizes = reduced_sizes(root / name, factor)
    assert (view.width, view.height) == sizes[0]
    assert view.stack_size == len(sizes)
    assert (view.channels, view.slices, view.frames) == \
        (source.channels, source.slices, source.frames)
    assert view.bit_depth == source.bit_depth == expected_bit_depth(root / name)


@pytest.mark.imagej
@imagej_cases
def test_imagej_sees_scaled_calibration(imagej, mount, sources, name, factor):
    """The source's unit, f times its pixel width and height, its z spacing."""
    root, _ = sources
    view = opened(imagej, mount.path / f"x{factor}" / name)
    source = opened(imagej, root / name)
    if source.unit in NO_PHYSICAL_UNIT:
        assert view.unit in NO_PHYSICAL_UNIT, \
            f"view has unit {view.unit!r}, source none ({source.unit!r})"
    else:
        assert view.unit == source.unit
    assert math.isclose(view.pixel_width, factor * source.pixel_width, rel_tol=1e-9)
    assert math.isclose(view.pixel_height, factor * source.pixel_height, rel_tol=1e-9)
    assert math.isclose(view.pixel_depth, source.pixel_depth, rel_tol=1e-9)


@pytest.mark.imagej
@imagej_cases
def test_imagej_sees_the_pixels_tifffile_reads(imagej, mount, name, factor):
    """Sum of every slice (and channel) in ImageJ equals numpy's sum of the view's page."""
    path = mount.path / f"x{factor}" / name
    assert_same_sums(opened(imagej, path).slice_sums, tifffile_slice_sums(path))


@pytest.mark.imagej
@pytest.mark.parametrize("factor", FACTORS)
def test_imagej_reads_view_of_a_source_it_cannot(imagej, mount, sources, factor):
    """The view of a Zstd source (ImageJ 1.x has no Zstd decoder) is plain and readable."""
    root, _ = sources
    path = mount.path / f"x{factor}" / IMAGEJ_UNDECODABLE
    view = opened(imagej, path)
    sizes = reduced_sizes(root / IMAGEJ_UNDECODABLE, factor)
    assert (view.width, view.height, view.stack_size) == (*sizes[0], len(sizes))
    assert view.bit_depth == expected_bit_depth(root / IMAGEJ_UNDECODABLE)
    assert_same_sums(view.slice_sums, tifffile_slice_sums(path))
