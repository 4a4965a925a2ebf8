"""End to end through a real FUSE mount: pixels, bytes, sizes, layout of the tree, errors."""

from __future__ import annotations

import errno
import itertools
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from conftest import SOURCE_KINDS
from reference import read_pages, reference_page
from tifffs import open_view

pytestmark = pytest.mark.mount

FACTORS = (2, 4, 8)
GOOD_FILES = [*SOURCE_KINDS, "ome_two_series.ome.tif", "run1/deeper/stack.TIFF",
              "broken/neighbour.tif"]


def _method_for(path: Path, method: str) -> str:
    """Palette images are always reduced with nearest (documented)."""
    with tifffile.TiffFile(path) as tif:
        return "nearest" if tif.pages.first.photometric == 3 else method


@pytest.mark.parametrize("name", GOOD_FILES)
@pytest.mark.parametrize("factor", FACTORS)
@pytest.mark.parametrize("method", ["mean", "nearest"])
def test_view_pixels_equal_reference(sources, mount, mount_nearest, name, factor, method):
    root, _ = sources
    view = (mount if method == "mean" else mount_nearest).path / f"x{factor}" / name
    source_pages = read_pages(root / name)
    view_pages = read_pages(view)
    assert len(view_pages) == len(source_pages)
    method = _method_for(root / name, method)
    for source_page, view_page in zip(source_pages, view_pages):
        expected = reference_page(source_page, factor, method)
        assert view_page.dtype == source_page.dtype
        np.testing.assert_array_equal(view_page, expected)


@pytest.mark.parametrize("name", GOOD_FILES)
def test_view_keeps_page_structure(sources, mount, name):
    root, _ = sources
    with tifffile.TiffFile(root / name) as src, tifffile.TiffFile(mount.path / "x4" / name) as view:
        assert view.byteorder == "<" and view.pages.first.compression == 1
        assert not view.is_bigtiff
        for s, v in zip(src.pages, view.pages, strict=True):
            assert (v.imagewidth, v.imagelength) == (-(-s.imagewidth // 4),
                                                     -(-s.imagelength // 4))
            for attribute in ("samplesperpixel", "planarconfig", "sampleformat",
                              "bitspersample"):
                assert getattr(v, attribute) == getattr(s, attribute), attribute
            # JPEG's YCbCr is decoded to RGB, and served so
            assert v.photometric == (2 if s.photometric == 6 else s.photometric)


def test_ifds_precede_contiguous_pixel_data(mount):
    with tifffile.TiffFile(mount.path / "x2" / "u8_multi_odd.tif") as tif:
        ifd_offsets = [page.offset for page in tif.pages]
        data = [(page.dataoffsets[0], sum(page.databytecounts)) for page in tif.pages]
    assert max(ifd_offsets) < data[0][0]
    for (offset, size), (next_offset, _) in itertools.pairwise(data):
        assert offset + size == next_offset


def test_stack_shape_and_calibration(sources, mount):
    view = mount.path / "x4" / "u16_multi_even.tif"
    with tifffile.TiffFile(view) as tif:
        assert tif.is_imagej
        assert tif.series[0].shape == (4, 64, 80)
        meta = tif.imagej_metadata
        assert meta["images"] == 4 and meta["unit"] == "um" and meta["spacing"] == 2.5
        x_num, x_den = tif.pages.first.tags["XResolution"].value
        assert x_den / x_num == pytest.approx(0.25 * 4)  # pixel size x factor


def test_resolution_unit_only_source_gets_imagej_unit(mount):
    with tifffile.TiffFile(mount.path / "x2" / "u16_single_odd.tif") as tif:
        assert tif.imagej_metadata["unit"] == "cm"
        assert tif.pages.first.tags["ResolutionUnit"].value == 3
        x_num, x_den = tif.pages.first.tags["XResolution"].value
        assert x_num / x_den == pytest.approx(2.0 / 2)


@pytest.mark.parametrize("name", GOOD_FILES)
def test_size_is_exact_and_bytes_equal_render(sources, mount, mount_nearest, name):
    root, _ = sources
    for mnt, method in ((mount, "mean"), (mount_nearest, "nearest")):
        for factor in FACTORS:
            view = mnt.path / f"x{factor}" / name
            data = view.read_bytes()
            assert os.stat(view).st_size == len(data)
            rendered = open_view(str(root / name), factor, method)
            assert rendered.size == len(data)
            assert rendered.read(0, rendered.size) == data


@pytest.mark.parametrize("method", ["mean", "nearest"])
def test_render_command_writes_the_mounted_bytes(sources, mount, mount_nearest, tmp_path,
                                                 method):
    root, _ = sources
    mnt = mount if method == "mean" else mount_nearest
    for name in ("u16_multi_even.tif", "rgb_u8_odd.tif", "u16_lzw_strips.tif"):
        out = tmp_path / f"{method}-{Path(name).stem}.tif"
        subprocess.run([sys.executable, "-m", "tifffs", "render", str(root / name), str(out),
                        "--factor", "4", "--method", method], check=True)
        assert out.read_bytes() == (mnt.path / "x4" / name).read_bytes()


@pytest.mark.parametrize("name", ["u8_multi_odd.tif", "u16_lzw_strips.tif",
                                  "rgb_u8_planar.tif"])
def test_random_reads_equal_slices_of_the_whole_file(mount, name):
    view = mount.path / "x2" / name
    whole = view.read_bytes()
    with tifffile.TiffFile(view) as tif:
        pixel_start = tif.pages.first.dataoffsets[0]
    rng = random.Random(name)
    reads = [(pixel_start - 10, 20), (pixel_start - 1, 2), (len(whole) - 1, 1),
             (len(whole) - 5, 100), (0, 8), (len(whole), 10)]
    while len(reads) < 200:
        offset = rng.randrange(len(whole))
        reads.append((offset, rng.choice([1, 7, 4096, 65536, 300000, len(whole)])))
    fd = os.open(view, os.O_RDONLY)
    try:
        for offset, length in reads:
            assert os.pread(fd, length, offset) == whole[offset:offset + length], (offset,
                                                                                   length)
    finally:
        os.close(fd)


def test_tree_mirrors_source_with_companion_files(sources, mount):
    root, _ = sources
    assert sorted(os.listdir(mount.path)) == [".tifffs", "x2", "x4", "x8"]
    for factor in FACTORS:
        assert sorted(os.listdir(mount.path / f"x{factor}")) == sorted(os.listdir(root))
    notes = mount.path / "x8" / "run1" / "notes.txt"
    assert notes.read_text() == "acquisition notes\n"
    st, source_st = os.stat(notes), os.stat(root / "run1" / "notes.txt")
    assert st.st_mtime == source_st.st_mtime
    assert st.st_mode == source_st.st_mode  # mode bits mirrored: copies act like the source's
    assert os.stat(mount.path / "x4" / "u8_multi_odd.tif").st_blksize >= 256 * 1024
    assert os.statvfs(mount.path).f_namemax > 0


def test_cp_r_copies_a_view_tree(sources, mount, tmp_path):
    _, arrays = sources
    target = tmp_path / "run1_small"
    subprocess.run(["cp", "-r", str(mount.path / "x4" / "run1"), str(target)], check=True)
    assert (target / "notes.txt").read_text() == "acquisition notes\n"
    copied = tifffile.imread(target / "deeper" / "stack.TIFF")
    expected = np.stack([reference_page(p, 4, "mean") for p in arrays["run1/deeper/stack.TIFF"]])
    np.testing.assert_array_equal(copied, expected)


@pytest.mark.parametrize("action", ["open_write", "create", "mkdir", "unlink", "rename",
                                    "truncate", "chmod", "rmdir", "symlink"])
def test_writes_fail_with_erofs(mount, action):
    view = mount.path / "x4" / "u8_multi_odd.tif"
    actions = {
        "open_write": lambda: os.open(view, os.O_WRONLY),
        "create": lambda: os.open(mount.path / "x4" / "new.tif", os.O_CREAT | os.O_WRONLY),
        "mkdir": lambda: os.mkdir(mount.path / "x4" / "newdir"),
        "unlink": lambda: os.unlink(view),
        "rename": lambda: os.rename(view, mount.path / "x4" / "renamed.tif"),
        "truncate": lambda: os.truncate(view, 0),
        "chmod": lambda: os.chmod(view, 0o644),
        "rmdir": lambda: os.rmdir(mount.path / "x4" / "run1"),
        "symlink": lambda: os.symlink("u8_multi_odd.tif", mount.path / "x4" / "link.tif"),
    }
    with pytest.raises(OSError) as excinfo:
        actions[action]()
    assert excinfo.value.errno == errno.EROFS


@pytest.mark.parametrize("name", ["not_a_tiff.tif", "empty.tif", "truncated.tif"])
def test_broken_source_gives_eio_and_one_log_line(sources, mount, name):
    root, arrays = sources
    view = mount.path / "x4" / "broken" / name
    for attempt in range(3):
        for operation in (os.stat, lambda p: Path(p).read_bytes()):
            with pytest.raises(OSError) as excinfo:
                operation(view)
            assert excinfo.value.errno == errno.EIO
    lines = [line for line in mount.log_text().splitlines() if str(root / "broken" / name) in line]
    assert len(lines) == 1, lines
    assert "EIO" in lines[0] and "ERROR" in lines[0]
    neighbour = tifffile.imread(mount.path / "x4" / "broken" / "neighbour.tif")
    np.testing.assert_array_equal(neighbour,
                                  reference_page(arrays["broken/neighbour.tif"], 4, "mean"))


def test_stats_file_counts_reads_and_errors(sources, mount):
    root, _ = sources
    (mount.path / "x8" / "u8_single_even.tif").read_bytes()
    with pytest.raises(OSError):
        (mount.path / "x8" / "broken" / "empty.tif").read_bytes()
    assert ".tifffs" in os.listdir(mount.path)
    stats = dict(line.split(" ", 1) for line in
                 (mount.path / ".tifffs" / "stats").read_text().splitlines())
    assert int(stats["reads"]) > 0 and int(stats["bytes_served"]) > 0
    assert int(stats["band_cache_misses"]) > 0
    assert int(stats["band_cache_bytes"]) <= int(stats["band_cache_capacity_bytes"])
    errors = [line for line in (mount.path / ".tifffs" / "stats").read_text().splitlines()
              if line.startswith("error ") and line.endswith(str(root / "broken" / "empty.tif"))]
    assert len(errors) == 1 and int(errors[0].split()[1]) >= 1


@pytest.mark.parametrize("name", ["ome_czyx.ome.tif", "ome_two_series.ome.tif"])
def test_ome_xml_is_rewritten_for_the_view_and_valid(sources, mount, name):
    import ome_types
    root, _ = sources
    with tifffile.TiffFile(root / name) as src, tifffile.TiffFile(mount.path / "x4" / name) as view:
        assert view.is_ome
        source_ome = ome_types.from_xml(src.pages.first.description)
        view_ome = ome_types.from_xml(view.pages.first.description, validate=True)
        assert [s.shape[:-2] for s in view.series] == [s.shape[:-2] for s in src.series]
        for source_image, view_image, series in zip(source_ome.images, view_ome.images,
                                                    view.series, strict=True):
            sp, vp = source_image.pixels, view_image.pixels
            assert (vp.size_x, vp.size_y) == (-(-sp.size_x // 4), -(-sp.size_y // 4))
            assert series.shape[-2:] == (vp.size_y, vp.size_x)
            for axis in ("x", "y"):
                source_size = getattr(sp, f"physical_size_{axis}")
                view_size = getattr(vp, f"physical_size_{axis}")
                assert view_size == (None if source_size is None
                                     else pytest.approx(source_size * 4))
            assert vp.physical_size_z == sp.physical_size_z
            assert [c.name for c in vp.channels] == [c.name for c in sp.channels]
            assert len(vp.tiff_data_blocks) == len(sp.tiff_data_blocks)


def test_imagej_hyperstack_keeps_dimensions_mode_ranges_and_labels(sources, mount):
    root, _ = sources
    with tifffile.TiffFile(root / "ij_hyperstack.tif") as src, \
            tifffile.TiffFile(mount.path / "x2" / "ij_hyperstack.tif") as view:
        source_meta, view_meta = src.imagej_metadata, view.imagej_metadata
        assert view.series[0].shape == (2, 3, 2, 32, 40)
        for key in ("images", "channels", "slices", "frames", "hyperstack", "mode", "unit",
                    "spacing", "finterval", "Ranges", "Labels"):
            assert view_meta[key] == source_meta[key], key
