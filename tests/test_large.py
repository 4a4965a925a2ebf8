"""Views over 4 GiB: BigTIFF by default, ImageJ's own format with --imagej-large."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tifffile

from conftest import mounted

pytestmark = pytest.mark.mount

PAGES, SIDE = 70, 8000  # 70 x 64 MB = 4.48 GB > 4 GiB, stored sparse but the last page
PROBE = Path(__file__).with_name("ImageJVirtualProbe.java")
IMAGEJ_JAR = "/usr/share/java/ij.jar"


@pytest.fixture(scope="module")
def large_source(tmp_path_factory) -> tuple[Path, np.ndarray]:
    root = tmp_path_factory.mktemp("large")
    stack = tifffile.memmap(root / "large.tif", shape=(PAGES, SIDE, SIDE), dtype=np.uint8,
                            photometric="minisblack")
    last = np.random.default_rng(0).integers(0, 255, (SIDE, SIDE), dtype=np.uint8)
    stack[-1] = last
    stack.flush()
    del stack
    return root, last


def _last_page_bytes(view: Path, data_offset: int) -> np.ndarray:
    with open(view, "rb") as handle:
        handle.seek(data_offset + (PAGES - 1) * SIDE * SIDE)
        return np.frombuffer(handle.read(SIDE * SIDE), dtype=np.uint8).reshape(SIDE, SIDE)


@pytest.mark.parametrize("imagej_large", [False, True])
def test_views_over_4_gib(large_source, tmp_path, imagej_large):
    root, last = large_source
    options = ["--views", "x1-nearest"] + (["--imagej-large"] if imagej_large else [])
    before = (root / "large.tif").stat()
    # not hashed before and after like smaller sources: 4.5 GB would take most of the time
    with mounted(root, tmp_path, *options, source_is_constant=False) as mount:
        view = mount.path / "x1-nearest" / "large.tif"
        assert view.stat().st_size > 2**32
        with tifffile.TiffFile(view) as tif:
            assert tif.is_bigtiff != imagej_large
            assert len(tif.pages) == (1 if imagej_large else PAGES)
            assert tif.series[0].shape == (PAGES, SIDE, SIDE)
            offset = tif.pages.first.dataoffsets[0]
        np.testing.assert_array_equal(_last_page_bytes(view, offset), last)
        if imagej_large:
            java = shutil.which("java")
            assert java, "java is missing: run scripts/test"
            result = subprocess.run([java, "-Xmx512m", "-Djava.awt.headless=true", "-cp",
                                     IMAGEJ_JAR, str(PROBE), str(view)], capture_output=True,
                                    text=True, timeout=300, check=False)
            assert result.returncode == 0, result.stdout + result.stderr
            width, height, slices, total = map(int, result.stdout.split()[-4:])
            assert (width, height, slices) == (SIDE, SIDE, PAGES)
            assert total == int(last.sum(dtype=np.int64))
    after = (root / "large.tif").stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


WIDE = 44032  # RGB: a row of 512 x 512 tiles decodes to 67.6 MB, more than a band's 64 MiB


@pytest.fixture(scope="module")
def wide_slide(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A slide scan as wide as those of a 60,000-pixel scanner, in JPEG tiles of 512."""
    root = tmp_path_factory.mktemp("wide")
    y, x = np.ogrid[:512, :WIDE]
    rgb = np.empty((512, WIDE, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = (x // 7 + y) % 256, (x // 3 + 0 * y) % 256, \
        (y * 2 + x // 11) % 256
    tifffile.imwrite(root / "slide.tif", rgb, tile=(512, 512),
                     compression="jpeg", photometric="rgb")
    return root, tifffile.imread(root / "slide.tif")


def test_views_of_a_slide_wider_than_a_band(wide_slide, tmp_path):
    """Every block view of such a slide once failed on its first band (EIO); x2 is the
    exact mean of the decoded pixels, x8-max their maximum, x4-nearest every fourth,
    fit1000 their exact area average (summed one column of tiles at a time)."""
    from reference import reference_area

    root, pixels = wide_slide
    with mounted(root, tmp_path, "--views", "x2,x8-max,x4-nearest,fit1000") as mount:
        x2 = tifffile.imread(mount.path / "x2" / "slide.tif")
        x4_nearest = tifffile.imread(mount.path / "x4-nearest" / "slide.tif")
        x8_max = tifffile.imread(mount.path / "x8-max" / "slide.tif")
        fit = tifffile.imread(mount.path / "fit1000" / "slide.tif")
    sums = pixels.astype(np.uint16).reshape(256, 2, WIDE // 2, 2, 3).sum(axis=(1, 3))
    np.testing.assert_array_equal(x2, ((sums + 2) // 4).astype(np.uint8))
    np.testing.assert_array_equal(x8_max, pixels.reshape(64, 8, WIDE // 8, 8, 3).max(axis=(1, 3)))
    np.testing.assert_array_equal(x4_nearest, pixels[::4, ::4])
    assert fit.shape == (12, 1000, 3)
    np.testing.assert_array_equal(fit, reference_area(pixels, 12, 1000))
