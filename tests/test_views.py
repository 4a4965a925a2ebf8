"""Named views: every method, Z reduction and fit views, against plain references."""

from __future__ import annotations

import io
import subprocess
import sys
from collections import Counter

import cv2
import numpy as np
import pytest
import tifffile

from conftest import mounted
from reference import read_pages
from tifffs import downsample, open_view
from tifffs.plan import fit_size
from tifffs.views import ViewError, parse_view

VIEWS = ("x2,x3-max,x4-min,x2-median,x3-mode,x4-linear,x4-lanczos,x2z2,x3z2-max,"
         "x2z3-median,x2z2-nearest,fit40,fit1000")


# -- references: one output pixel at a time, from the flattened block
def _round_half_up(total: int, count: int) -> int:
    return (2 * total + count) // (2 * count)


def _reduce_values(values: np.ndarray, method: str, dtype: np.dtype):
    if method == "max":
        return np.nan if dtype.kind == "f" and np.isnan(values).any() else values.max()
    if method == "min":
        return np.nan if dtype.kind == "f" and np.isnan(values).any() else values.min()
    if method == "mode":
        counts = Counter(values.tolist())
        best = max(counts.values())
        return min(v for v, c in counts.items() if c == best)
    ordered = sorted(values.tolist())
    if method == "median":
        if dtype.kind == "f" and np.isnan(values).any():
            return np.nan
        low, high = ordered[(len(ordered) - 1) // 2], ordered[len(ordered) // 2]
        return (low + high) / 2 if dtype.kind == "f" else low + -(-(high - low) // 2)
    if method == "mean":
        if dtype.kind == "f":
            return float(np.sum(values, dtype=np.float64)) / len(values)
        return _round_half_up(sum(int(v) for v in values), len(values))
    raise ValueError(method)


def reference_blocks(slices: list[np.ndarray], f: int, method: str) -> np.ndarray:
    """Reduce f x f x len(slices) blocks, one block at a time."""
    h, w, c = slices[0].shape
    dtype = slices[0].dtype
    if method == "nearest":
        return slices[0][::f, ::f]
    out = np.empty((-(-h // f), -(-w // f), c), dtype=dtype)
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            for k in range(c):
                values = np.concatenate([s[i * f:(i + 1) * f, j * f:(j + 1) * f, k].ravel()
                                         for s in slices])
                out[i, j, k] = _reduce_values(values, method, dtype)
    return out


def reference_fit(page: np.ndarray, height: int, width: int) -> np.ndarray:
    """Exact area average: repeat each pixel height x width times, sum blocks of H x W."""
    h, w, c = page.shape
    big = np.repeat(np.repeat(page.astype(np.int64), height, axis=0), width, axis=1)
    sums = big.reshape(height, h, width, w, c).sum(axis=(1, 3))
    return ((2 * sums + h * w) // (2 * h * w)).astype(page.dtype)


# -- pure kernels
@pytest.mark.parametrize("method", ["max", "min", "median", "mode", "mean"])
@pytest.mark.parametrize("dtype", ["uint8", "int16", "uint32", "int64", "float32"])
@pytest.mark.parametrize("factor,depth", [(2, 1), (3, 1), (2, 3), (4, 2)])
def test_block_methods_match_the_reference(method, dtype, factor, depth):
    rng = np.random.default_rng(factor * 10 + depth)
    dt = np.dtype(dtype)
    if dt.kind == "f":
        slices = [(rng.integers(-50, 50, (11, 13, 2)) / 4).astype(dt) for _ in range(depth)]
        slices[0][3, 4, 1] = np.nan
    else:
        info = np.iinfo(dt)
        choices = np.array([info.min, info.max, 0, 1, 2, 3], dtype=dt)
        slices = [rng.choice(choices, (11, 13, 2)) for _ in range(depth)]
    result = downsample.reduce_blocks(slices, factor, method)
    expected = reference_blocks(slices, factor, method)
    assert result.dtype == dt
    np.testing.assert_array_equal(result, expected)


def test_mode_ties_go_to_the_smallest_value():
    block = np.array([[[5], [3]], [[5], [3]]], dtype=np.uint8)
    assert downsample.reduce_blocks([block], 2, "mode")[0, 0, 0] == 3


def test_median_of_an_even_count_rounds_half_up():
    block = np.array([[[1], [2]], [[4], [9]]], dtype=np.int16)  # middle 2 and 4 -> 3
    assert downsample.reduce_blocks([block], 2, "median")[0, 0, 0] == 3
    block = np.array([[[1], [2]], [[3], [9]]], dtype=np.int16)  # 2 and 3 -> 2.5 -> 3
    assert downsample.reduce_blocks([block], 2, "median")[0, 0, 0] == 3


@pytest.mark.parametrize("shape,size", [((60, 45, 1), 40), ((45, 60, 3), 40), ((7, 100, 1), 33),
                                        ((30, 20, 1), 50)])
def test_area_resize_matches_the_exact_reference(shape, size):
    page = np.random.default_rng(size).integers(0, 65535, shape, dtype=np.uint16)
    width, height = fit_size(shape[1], shape[0], size)
    rows = downsample.AreaAxis(shape[0], height)
    cols = downsample.AreaAxis(shape[1], width)
    result = np.concatenate([  # in bands of 3 output rows, as the mount renders
        downsample.area_resize(page[slice(*rows.source_range(a, min(a + 3, height)))], rows,
                               cols, a, min(a + 3, height))
        for a in range(0, height, 3)])
    np.testing.assert_array_equal(result, reference_fit(page, height, width))


def test_fit_size_keeps_aspect_and_never_enlarges():
    assert fit_size(2000, 1000, 1000) == (1000, 500)
    assert fit_size(1000, 2001, 1000) == (500, 1000)  # 499.75 -> 500
    assert fit_size(300, 200, 1000) == (300, 200)
    assert fit_size(10000, 3, 1000) == (1000, 1)  # 0.3 -> at least 1


@pytest.mark.parametrize("name", ["x", "x0", "x4-cubic", "x4z2-linear", "fit0", "y4", "x4z"])
def test_invalid_view_names_are_explained(name):
    with pytest.raises(ViewError, match="invalid view"):
        parse_view(name, "mean")


def test_views_grammar():
    plain, named = parse_view("x4", "max"), parse_view("x4-max", "mean")
    assert (plain.factor, plain.method) == (named.factor, named.method) == (4, "max")
    view = parse_view("x8z2-nearest", "mean")
    assert (view.factor, view.z_factor, view.method) == (8, 2, "nearest")
    assert parse_view("fit1000", "mean").fit == 1000


# -- through a mount
@pytest.fixture(scope="module")
def views_mount(tmp_path_factory):
    root = tmp_path_factory.mktemp("views_source")
    rng = np.random.default_rng(7)
    arrays = {
        "stack.tif": rng.integers(0, 65535, (5, 61, 47), dtype=np.uint16),
        "labels.tif": rng.integers(0, 4, (3, 40, 50), dtype=np.uint8),
        "rgb.tif": rng.integers(0, 255, (33, 41, 3), dtype=np.uint8),
        "float.tif": (rng.integers(-100, 100, (4, 30, 30)) / 8).astype(np.float32),
    }
    for name, array in arrays.items():
        tifffile.imwrite(root / name, array, photometric="rgb" if array.ndim == 3 and
                         array.shape[-1] == 3 else "minisblack", resolution=(4.0, 4.0),
                         resolutionunit="CENTIMETER")
    hyperstack = rng.integers(0, 4095, (2, 5, 2, 30, 40), dtype=np.uint16)  # TZCYX
    tifffile.imwrite(root / "hyper.tif", hyperstack, imagej=True, resolution=(2.0, 2.0),
                     metadata={"axes": "TZCYX", "unit": "um", "spacing": 1.5})
    arrays["hyper.tif"] = hyperstack
    with mounted(root, tmp_path_factory.mktemp("views_mount"), "--views", VIEWS) as mount:
        yield mount, arrays


@pytest.mark.mount
def test_mount_lists_the_named_views(views_mount):
    mount, _ = views_mount
    names = sorted(p.name for p in mount.path.iterdir() if not p.name.startswith("."))
    assert names == sorted(VIEWS.split(","))


@pytest.mark.mount
@pytest.mark.parametrize("view", ["x2", "x3-max", "x4-min", "x2-median", "x3-mode",
                                  "x2z2-nearest"])
@pytest.mark.parametrize("name", ["stack.tif", "labels.tif", "rgb.tif", "float.tif"])
def test_block_views_equal_the_reference(views_mount, view, name):
    mount, _ = views_mount
    spec = parse_view(view, "mean")
    source = read_pages(mount.source / name)
    result = read_pages(mount.path / view / name)
    groups = [source[i:i + spec.z_factor] for i in range(0, len(source), spec.z_factor)]
    assert len(result) == len(groups)
    for got, slices in zip(result, groups):
        np.testing.assert_array_equal(got, reference_blocks(slices, spec.factor, spec.method))


@pytest.mark.mount
@pytest.mark.parametrize("view", ["x4-linear", "x4-lanczos"])
@pytest.mark.parametrize("name", ["stack.tif", "rgb.tif", "float.tif"])
def test_interpolating_views_equal_opencv_resize_of_the_page(views_mount, view, name):
    mount, _ = views_mount
    flag = cv2.INTER_LINEAR if view.endswith("linear") else cv2.INTER_LANCZOS4
    for source, got in zip(read_pages(mount.source / name), read_pages(mount.path / view / name),
                           strict=True):
        h, w = -(-source.shape[0] // 4), -(-source.shape[1] // 4)
        expected = cv2.resize(source, (w, h), interpolation=flag).reshape(h, w, -1)
        np.testing.assert_array_equal(got, expected)


@pytest.mark.mount
@pytest.mark.parametrize("view", ["x2z2", "x3z2-max", "x2z3-median"])
def test_z_views_reduce_slices_of_the_same_channel_and_time(views_mount, view):
    mount, arrays = views_mount
    spec = parse_view(view, "mean")
    hyper = arrays["hyper.tif"]  # T, Z, C, Y, X
    with tifffile.TiffFile(mount.path / view / "hyper.tif") as tif:
        got = tif.series[0].asarray()
        meta = tif.imagej_metadata
    z_out = -(-hyper.shape[1] // spec.z_factor)
    assert got.shape[:3] == (2, z_out, 2)
    assert (meta["frames"], meta["slices"], meta["channels"]) == (2, z_out, 2)
    assert meta["spacing"] == pytest.approx(1.5 * spec.z_factor)
    for t in range(2):
        for c in range(2):
            for z in range(z_out):
                slices = [hyper[t, k, c][:, :, None] for k in
                          range(z * spec.z_factor, min((z + 1) * spec.z_factor, 5))]
                expected = reference_blocks(slices, spec.factor, spec.method)[:, :, 0]
                np.testing.assert_array_equal(got[t, z, c], expected)


@pytest.mark.mount
def test_fit_views_equal_exact_area_average_with_scaled_pixel_size(views_mount):
    mount, _ = views_mount
    source = read_pages(mount.source / "stack.tif")
    with tifffile.TiffFile(mount.path / "fit40" / "stack.tif") as tif:
        got = [p.asarray()[:, :, None] for p in tif.pages]
        x_num, x_den = tif.pages.first.tags["XResolution"].value
        y_num, y_den = tif.pages.first.tags["YResolution"].value
    width, height = fit_size(47, 61, 40)
    assert (height, width) == (40, 31)
    for page, view in zip(source, got, strict=True):
        np.testing.assert_array_equal(view, reference_fit(page, height, width))
    assert x_num / x_den == pytest.approx(4.0 * 31 / 47)
    assert y_num / y_den == pytest.approx(4.0 * 40 / 61)
    # an image already small enough is served at its own size
    np.testing.assert_array_equal(tifffile.imread(mount.path / "fit1000" / "stack.tif"),
                                  tifffile.imread(mount.source / "stack.tif"))


@pytest.mark.mount
def test_view_metadata_scales_pixel_size_by_the_factor(views_mount):
    mount, _ = views_mount
    with tifffile.TiffFile(mount.path / "x3-max" / "stack.tif") as tif:
        x_num, x_den = tif.pages.first.tags["XResolution"].value
        assert tif.imagej_metadata["unit"] == "cm"
    assert x_num / x_den == pytest.approx(4.0 / 3)


@pytest.mark.mount
def test_render_writes_named_views(views_mount, tmp_path):
    mount, _ = views_mount
    for view in ("x2z2", "fit40", "x3-mode"):
        out = tmp_path / f"{view}.tif"
        subprocess.run([sys.executable, "-m", "tifffs", "render", str(mount.source / "hyper.tif"),
                        str(out), "--view", view], check=True)
        assert out.read_bytes() == (mount.path / view / "hyper.tif").read_bytes()
        view_object = open_view(str(mount.source / "hyper.tif"), view=view)
        assert view_object.size == out.stat().st_size


def test_invalid_view_at_mount_time_is_named(tmp_path):
    result = subprocess.run([sys.executable, "-m", "tifffs", str(tmp_path), str(tmp_path / "m"),
                             "--views", "x4,x4-blur"], capture_output=True, text=True, check=False)
    assert result.returncode != 0
    assert "x4-blur" in result.stderr and "unknown method" in result.stderr


@pytest.mark.mount
def test_imagej_opens_z_fit_and_method_views(views_mount):
    from readers import run_imagej

    mount, _ = views_mount
    source = mount.source / "hyper.tif"
    views = {view: mount.path / view / "hyper.tif" for view in ("x2z2", "x3z2-max", "fit1000",
                                                                 "x4-lanczos", "x3-mode")}
    views["fit40"] = mount.path / "fit40" / "stack.tif"
    reports = run_imagej([source, *views.values()])
    src = reports[source]
    assert not isinstance(src, str), src
    for view, path in views.items():
        report = reports[path]
        assert not isinstance(report, str), f"{view}: {report}"
        with tifffile.TiffFile(path) as tif:
            height, width = tif.pages.first.shape[:2]
        assert (report.width, report.height) == (width, height), view
        assert report.bit_depth == 16
        if path.name == "hyper.tif":
            spec = parse_view(view, "mean")
            assert (report.channels, report.frames) == (2, 2), view
            assert report.slices == -(-5 // spec.z_factor), view
            assert report.unit == src.unit
            assert report.pixel_depth == pytest.approx(src.pixel_depth * spec.z_factor)
            ratio = 1 if spec.fit else spec.factor
            assert report.pixel_width == pytest.approx(src.pixel_width * ratio), view
    fit = reports[views["fit40"]]
    assert fit.unit == "cm" and fit.pixel_width == pytest.approx(0.25 * 47 / 31)


@pytest.mark.mount
def test_use_levels_starts_from_matching_pyramid_levels(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    rng = np.random.default_rng(3)
    full = rng.integers(0, 4000, (2, 256, 200), dtype=np.uint16)
    # the scanner's own levels differ from our block means: mean + 1
    half = (reference_blocks([full[0][:, :, None]], 2, "mean")[:, :, 0] + 1,
            reference_blocks([full[1][:, :, None]], 2, "mean")[:, :, 0] + 1)
    quarter = tuple(p[::2, ::2] for p in half)
    with tifffile.TiffWriter(source / "pyramid.ome.tif", ome=True) as writer:
        writer.write(full, subifds=2, photometric="minisblack", metadata={"axes": "ZYX"})
        writer.write(np.stack(half), subfiletype=1, photometric="minisblack")
        writer.write(np.stack(quarter), subfiletype=1, photometric="minisblack")
    with mounted(source, tmp_path / "levels", "--views", "x2,x4-nearest,x8",
                 "--use-levels") as mount:
        x2 = read_pages(mount.path / "x2" / "pyramid.ome.tif")
        x4 = read_pages(mount.path / "x4-nearest" / "pyramid.ome.tif")
        x8 = read_pages(mount.path / "x8" / "pyramid.ome.tif")
    assert len(x2) == len(x4) == len(x8) == 2
    for z in range(2):
        np.testing.assert_array_equal(x2[z][:, :, 0], half[z])  # the level itself
        np.testing.assert_array_equal(x4[z][:, :, 0], quarter[z])
        np.testing.assert_array_equal(  # the 4x level, reduced 2x more
            x8[z], reference_blocks([quarter[z][:, :, None]], 2, "mean"))
    plain = open_view(str(source / "pyramid.ome.tif"), 2, "mean").read(0, 1 << 30)
    with tifffile.TiffFile(io.BytesIO(plain)) as tif:  # by default: from full resolution
        np.testing.assert_array_equal(tif.pages[0].asarray(),
                                      reference_blocks([full[0][:, :, None]], 2, "mean")[:, :, 0])
