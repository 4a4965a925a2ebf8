"""The fast kernels equal the independent references bit for bit: OpenCV block means,
comparator-network medians and modes, and the exact area sums of fit views.

Data covers each type's full range, its extremes, blocks whose mean lies on or next to a
rounding tie, and ragged edges; factors 2-8 and 16, one to three slices.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reference import reference_area, reference_blocks
from tifffs import area, blockmean, downsample, sortnet

SMALL = ["uint8", "int8", "uint16", "int16"]
INTEGERS = SMALL + ["uint32", "int32", "uint64", "int64"]
FACTORS = [2, 3, 4, 5, 6, 7, 8, 16]


def _random(dtype: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)


def _extremes(dtype: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    info = np.iinfo(dtype)
    choices = np.array([info.min, info.min + 1, info.max - 1, info.max, 0], dtype=dtype)
    return rng.choice(choices, size=shape)


def _near_ties(dtype: str, shape: tuple[int, int, int], factor: int, depth: int,
               rng: np.random.Generator) -> list[np.ndarray]:
    """Slices whose every whole block sums to n*k + r, r at or next to n/2 (a tie or the
    closest non-ties), with k near either end of the type's range."""
    info = np.iinfo(dtype)
    n = factor * factor * depth
    oh, ow = shape[0] // factor, shape[1] // factor
    base = rng.choice([int(info.max) - 1, int(info.min), int(info.max) // 3], (oh, ow, shape[2]))
    extra = np.clip(rng.choice([n // 2 - 1, n // 2, n // 2 + 1, (n - 1) // 2], base.shape), 0, n)
    # pixel p of a block (over all its slices) holds base + 1 while p < extra
    position = np.arange(n).reshape(depth, factor, factor)
    values = base[:, :, :, None, None, None] + (position < extra[..., None, None, None])
    values = values.transpose(3, 0, 4, 1, 5, 2).reshape(depth, oh * factor, ow * factor,
                                                         shape[2])
    slices = [_random(dtype, shape, rng) for _ in range(depth)]
    for z in range(depth):
        slices[z][: oh * factor, : ow * factor] = np.clip(values[z], info.min, info.max)
    return slices


# -- mean: OpenCV where float32 is provably exact
@pytest.mark.parametrize("dtype", SMALL)
@pytest.mark.parametrize("factor", FACTORS)
@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("samples", [1, 2, 3, 4])
def test_opencv_mean_equals_the_reference(dtype, factor, depth, samples):
    rng = np.random.default_rng(factor * 7 + depth + 100 * samples)
    shape = (factor * 9 + factor // 2 + 1, factor * 11 + 1, samples)  # ragged edges
    for make in (_random, _extremes):
        slices = [make(dtype, shape, rng) for _ in range(depth)]
        result = downsample.reduce_blocks(slices, factor, "mean")
        np.testing.assert_array_equal(result, reference_blocks(slices, factor, "mean"))
    slices = _near_ties(dtype, shape, factor, depth, rng)
    np.testing.assert_array_equal(downsample.reduce_blocks(slices, factor, "mean"),
                                  reference_blocks(slices, factor, "mean"))


@pytest.mark.parametrize("dtype,factor,depth", [
    (dtype, factor, depth) for dtype in SMALL for factor in FACTORS for depth in (1, 2)
    if blockmean.applies(np.dtype(dtype), factor, depth, 1)])
def test_opencv_whole_blocks_alone_are_exact(dtype, factor, depth):
    """The OpenCV path on its own, wherever it claims to apply, on the largest sums."""
    rng = np.random.default_rng(factor + 100 * depth)
    info = np.iinfo(dtype)
    shape = (factor * 20, factor * 24, 1)
    for fill in (info.max, info.min):
        slices = [np.full(shape, fill, dtype=dtype)] * depth
        out = np.empty((20, 24, 1), dtype=dtype)
        blockmean.mean_whole_blocks(slices, factor, out)
        assert (out == fill).all()
    for slices in ([_random(dtype, shape, rng) for _ in range(depth)],
                   _near_ties(dtype, shape, factor, depth, rng)):
        out = np.empty((20, 24, 1), dtype=dtype)
        blockmean.mean_whole_blocks(slices, factor, out)
        np.testing.assert_array_equal(out, reference_blocks(slices, factor, "mean"))


@pytest.mark.parametrize("factor,depth", [(3, 1), (4, 1), (4, 2)])
def test_opencv_whole_blocks_are_exact_across_chunks(factor, depth, monkeypatch):
    """A page taller than one chunk of row sums (here 3 output rows, the last chunk
    ragged) gives what one chunk gives."""
    rng = np.random.default_rng(factor + depth)
    shape = (factor * 20, factor * 24, 1)
    monkeypatch.setattr(blockmean, "_CHUNK_BYTES", 3 * shape[1] * 4)
    slices = [_random("uint16", shape, rng) for _ in range(depth)]
    out = np.empty((20, 24, 1), dtype=np.uint16)
    blockmean.mean_whole_blocks(slices, factor, out)
    np.testing.assert_array_equal(out, reference_blocks(slices, factor, "mean"))


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16"])
@pytest.mark.parametrize("samples", [1, 2, 3, 4])
def test_halving_by_opencv_is_exact_wherever_the_probe_allows_it(dtype, samples):
    """x2 means of one slice use OpenCV's integer 2x2 path when its probe passed."""
    rng = np.random.default_rng(samples)
    page = _near_ties(dtype, (130, 262, samples), 2, 1, rng)[0]
    expected = reference_blocks([page], 2, "mean")
    np.testing.assert_array_equal(downsample.mean(page, 2), expected)
    out = np.empty(expected.shape, dtype=dtype)
    blockmean.mean_whole_blocks([page[:130, :262]], 2, out)
    np.testing.assert_array_equal(out, expected)


def test_opencv_mean_applies_to_the_common_cases():
    for dtype in ("uint8", "uint16", "int16"):
        for factor in (2, 3, 4, 5, 6, 7, 8, 16):
            assert blockmean.applies(np.dtype(dtype), factor, 1, 1)
        assert blockmean.applies(np.dtype(dtype), 4, 2, 3)
    assert not blockmean.applies(np.dtype("uint16"), 9, 1, 1)  # 81 * 65535 >= 2**22
    assert not blockmean.applies(np.dtype("uint32"), 2, 1, 1)
    assert not blockmean.applies(np.dtype("float32"), 2, 1, 1)


def test_mean_out_parameter_is_filled_and_returned():
    page = np.random.default_rng(1).integers(0, 65535, (64, 70, 1), dtype=np.uint16)
    out = np.empty((16, 18, 1), dtype=np.uint16)
    assert downsample.reduce_blocks([page], 4, "mean", out=out) is out
    np.testing.assert_array_equal(out, reference_blocks([page], 4, "mean"))
    with pytest.raises(ValueError):
        downsample.reduce_blocks([page], 4, "mean", out=np.empty((16, 17, 1), np.uint16))


# -- median and mode: comparator networks over planes
@pytest.mark.parametrize("n", list(range(1, 40)) + [64, 100, 256])
def test_the_networks_sort_every_zero_one_sequence(n):
    """A comparator network sorts everything if it sorts every 0-1 sequence (Knuth);
    checked on all of them for small n, on random ones above."""
    network = sortnet.sorting_network(n)
    rng = np.random.default_rng(n)
    if n <= 16:
        bits = (np.arange(2**n)[None, :] >> np.arange(n)[:, None]) & 1
    else:
        bits = rng.integers(0, 2, (n, 4096))
    planes = [row.copy() for row in bits.astype(np.uint8)]
    for i, j in network:
        planes[i], planes[j] = np.minimum(planes[i], planes[j]), np.maximum(planes[i], planes[j])
    np.testing.assert_array_equal(np.array(planes), np.sort(bits, axis=0))


@pytest.mark.parametrize("method", ["median", "mode"])
@pytest.mark.parametrize("dtype", INTEGERS)
@pytest.mark.parametrize("factor,depth", [(2, 1), (3, 1), (4, 1), (5, 1), (6, 1), (7, 1),
                                          (8, 1), (16, 1), (2, 2), (3, 3), (4, 2)])
def test_network_median_and_mode_equal_the_reference(method, dtype, factor, depth):
    rng = np.random.default_rng(factor * 10 + depth)
    shape = (factor * 5 + factor // 2 + 1, factor * 6 + 1, 2)
    info = np.iinfo(dtype)
    few = np.array([info.min, info.max, 0, 1, 2], dtype=dtype)  # repeats: mode ties
    for slices in ([_random(dtype, shape, rng) for _ in range(depth)],
                   [rng.choice(few, shape) for _ in range(depth)]):
        result = downsample.reduce_blocks(slices, factor, method)
        assert result.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(result, reference_blocks(slices, factor, method))


@settings(max_examples=150, deadline=None)
@given(height=st.integers(1, 45), width=st.integers(1, 45), samples=st.integers(1, 5),
       factor=st.integers(1, 9), depth=st.integers(1, 3), method=st.sampled_from(
           ["mean", "median", "mode"]), dtype=st.sampled_from(SMALL + ["int32"]),
       distinct=st.integers(1, 300), seed=st.integers(0, 2**16))
def test_any_shape_matches_the_reference(height, width, samples, factor, depth, method, dtype,
                                         distinct, seed):
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype)
    choices = rng.integers(info.min, info.max, distinct, dtype=dtype, endpoint=True)
    slices = [rng.choice(choices, (height, width, samples)) for _ in range(depth)]
    result = downsample.reduce_blocks(slices, factor, method)
    np.testing.assert_array_equal(result, reference_blocks(slices, factor, method))


def test_float_median_and_mode_keep_nan_rules():
    page = np.arange(36, dtype=np.float32).reshape(6, 6, 1) / 4
    page[0, 0, 0] = np.nan
    median = downsample.reduce_blocks([page], 3, "median")
    assert np.isnan(median[0, 0, 0]) and median[1, 1, 0] == np.median(page[3:, 3:, 0])
    mode = downsample.reduce_blocks([page], 3, "mode")
    assert mode[0, 0, 0] == page[0, 1, 0]  # all distinct: the smallest number, not NaN


# -- fit views: exact area sums
@pytest.mark.parametrize("dtype", SMALL)
@pytest.mark.parametrize("shape,size", [((60, 45, 1), (40, 30)), ((45, 60, 3), (30, 40)),
                                        ((7, 100, 1), (2, 33)), ((97, 89, 2), (13, 61)),
                                        ((128, 128, 1), (100, 100)), ((50, 50, 4), (49, 1)),
                                        ((33, 200, 1), (33, 7))])
def test_area_resize_equals_the_reference(dtype, shape, size):
    rng = np.random.default_rng(sum(shape) + sum(size))
    height, width = size
    rows, cols = area.AreaAxis(shape[0], height), area.AreaAxis(shape[1], width)
    for page in (_random(dtype, shape, rng), _extremes(dtype, shape, rng)):
        expected = reference_area(page, height, width)
        whole = area.area_resize(page, rows, cols, 0, height)
        np.testing.assert_array_equal(whole, expected)
        bands = [area.area_resize(page[slice(*rows.source_range(a, min(a + 3, height)))],
                                  rows, cols, a, min(a + 3, height))
                 for a in range(0, height, 3)]
        np.testing.assert_array_equal(np.concatenate(bands), expected)


@pytest.mark.parametrize("dtype", [">u2", ">i2"])
def test_area_resize_of_big_endian_pages_equals_the_reference(dtype):
    # big-endian results are rounded in int64 and transposed by numpy, not OpenCV
    rng = np.random.default_rng(5)
    native = _random(np.dtype(dtype).newbyteorder("=").name, (97, 89, 2), rng)
    rows, cols = area.AreaAxis(97, 13), area.AreaAxis(89, 61)
    got = area.area_resize(native.astype(dtype), rows, cols, 0, 13)
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got, reference_area(native, 13, 61))


@pytest.mark.parametrize("dtype", SMALL)
@pytest.mark.parametrize("chunk_bytes", [1 << 20, 1024])
@pytest.mark.parametrize("shape,size", [((1021, 50, 1), (10, 7)), ((1021, 50, 3), (10, 7)),
                                        ((64, 1021, 2), (60, 9)), ((600, 23, 1), (599, 5))])
def test_area_resize_of_wide_windows_in_small_blocks_equals_the_reference(
        monkeypatch, dtype, chunk_bytes, shape, size):
    # 1021 rows (a prime) over 10 outputs: the row sums need float64 and one output's
    # window (103 rows) is summed in pieces; a 1 KiB chunk sums every window a few
    # values at a time
    monkeypatch.setattr(area, "_CHUNK_BYTES", chunk_bytes)
    rng = np.random.default_rng(sum(shape) + chunk_bytes)
    height, width = size
    rows, cols = area.AreaAxis(shape[0], height), area.AreaAxis(shape[1], width)
    if shape[0] == 1021 and np.dtype(dtype).itemsize == 2:
        assert area.ExactArea(np.dtype(dtype), rows, cols, 0, height).row_type is np.float64
    for page in (_random(dtype, shape, rng), _extremes(dtype, shape, rng)):
        expected = reference_area(page, height, width)
        np.testing.assert_array_equal(area.area_resize(page, rows, cols, 0, height), expected)
        bands = [area.area_resize(page[slice(*rows.source_range(a, min(a + 4, height)))],
                                  rows, cols, a, min(a + 4, height))
                 for a in range(0, height, 4)]
        np.testing.assert_array_equal(np.concatenate(bands), expected)


@pytest.mark.parametrize("shape,dtype,size", [((2048, 2048, 1), "uint16", (1000, 1000)),
                                              ((600, 3000, 3), "uint8", (100, 500)),
                                              ((64, 48000, 3), "uint8", (43, 32000))])
def test_area_resize_intermediates_stay_within_the_chunk_size(shape, dtype, size):
    from tifffs.scratch import Scratch

    page = _random(dtype, shape, np.random.default_rng(3))
    rows, cols = area.AreaAxis(shape[0], size[0]), area.AreaAxis(shape[1], size[1])
    scratch = Scratch()
    got = area.area_resize(page, rows, cols, 0, size[0], scratch=scratch)
    np.testing.assert_array_equal(got, area._original(page, rows, cols, 0, size[0]))
    held = scratch.sizes()
    assert held and max(held.values()) <= 2 * area._CHUNK_BYTES < page.nbytes, held


def test_the_fast_area_path_takes_the_totals_whose_sums_float64_holds_exactly():
    uint16 = np.dtype("uint16")
    coprime = area.AreaAxis(400_009, 1000)  # weight sum 400,009: 65535 * total > 2**53
    assert not area.exact_integers_apply(uint16, 1, coprime, coprime)  # the original code
    reducible = area.AreaAxis(400_000, 1000)  # weight sum 400: total 160,000
    assert area.exact_integers_apply(uint16, 1, reducible, reducible)
    assert area.exact_integers_apply(np.dtype("uint8"), 1, coprime, coprime)


@pytest.mark.parametrize("dtype", SMALL)
@pytest.mark.parametrize("total", [65_536, 9_999_991, 10**10 + 1, (2**53 // 65_535) - 1])
def test_sums_next_to_ties_round_half_up_at_every_total(dtype, total):
    # the largest totals ((2M + 1) * 2 * total > 2**53) need integer rounding: float64's
    # S / total + 1/2 puts some of these uint16 sums on the wrong side
    rng = np.random.default_rng(total)
    info = np.iinfo(dtype)
    results = rng.integers(info.min + 1, info.max, 2000, endpoint=True)
    # S / total + 1/2 within 1 / (2 total) of k: ties themselves where total is even
    sums = [((2 * k - 1) * total + d) // 2 for k in results.tolist() for d in (-1, 0, 1)]
    expected = np.array([(2 * s + total) // (2 * total) for s in sums], dtype=dtype)
    out = np.empty((len(sums) // 3, 3), dtype=dtype)  # lines of output pixels
    area.round_half_up(np.array(sums, dtype=np.float64).reshape(out.shape), total, out)
    np.testing.assert_array_equal(out.reshape(-1), expected)


def test_area_resize_of_random_shapes_equals_the_reference():
    # sides of 1 pixel, outputs as large as the source, ratios near 1 and far from it
    rng = np.random.default_rng(2026)
    for _ in range(60):
        dtype = SMALL[rng.integers(len(SMALL))]
        height, width = (int(rng.choice([1, 2, 3, 7, 64, 257, 1021])) for _ in range(2))
        samples = int(rng.integers(1, 5))
        out_h, out_w = int(rng.integers(1, height + 1)), int(rng.integers(1, width + 1))
        page = _random(dtype, (height, width, samples), rng)
        rows, cols = area.AreaAxis(height, out_h), area.AreaAxis(width, out_w)
        expected = reference_area(page, out_h, out_w)
        np.testing.assert_array_equal(area.area_resize(page, rows, cols, 0, out_h), expected,
                                      err_msg=f"{dtype} {page.shape} -> {out_h} x {out_w}")


def test_area_resize_of_a_constant_page_is_that_constant():
    for dtype in SMALL:
        info = np.iinfo(dtype)
        for value in (info.min, info.max):
            page = np.full((300, 257, 1), value, dtype=dtype)
            rows, cols = area.AreaAxis(300, 117), area.AreaAxis(257, 100)
            assert (area.area_resize(page, rows, cols, 0, 117) == value).all()
