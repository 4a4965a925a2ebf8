"""The downsampling kernels against the reference, without a mount."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st

from reference import reference_page
from tifffs import downsample, open_view

INTEGER_TYPES = ["uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64"]


def _extremes(dtype: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Values near both ends of the type's range, where sums overflow narrow types."""
    info = np.iinfo(dtype)
    rng = np.random.default_rng(seed)
    choices = np.array([info.min, info.min + 1, info.max - 1, info.max, 0], dtype=dtype)
    return rng.choice(choices, size=shape)


@pytest.mark.parametrize("dtype", INTEGER_TYPES)
@pytest.mark.parametrize("factor", [2, 3, 4, 8])
def test_mean_is_exact_for_integers_without_overflow(dtype, factor):
    page = _extremes(dtype, (37, 29, 2), seed=factor)
    result = downsample.mean(page, factor)
    assert result.dtype == page.dtype
    np.testing.assert_array_equal(result, reference_page(page, factor, "mean"))


def test_mean_ties_round_up():
    page = np.array([[[1], [2]], [[1], [2]]], dtype=np.uint8)  # mean 1.5
    assert downsample.mean(page, 2)[0, 0, 0] == 2
    negative = np.array([[[-1], [-2]], [[-1], [-2]]], dtype=np.int16)  # mean -1.5
    assert downsample.mean(negative, 2)[0, 0, 0] == -1


def test_mean_edge_blocks_average_only_existing_pixels():
    page = np.zeros((5, 5, 1), dtype=np.uint16)
    page[4, :, 0] = 100  # the bottom edge block row has a single source row
    result = downsample.mean(page, 4)
    assert result.shape == (2, 2, 1)
    assert result[1, 0, 0] == 100 and result[1, 1, 0] == 100 and result[0, 0, 0] == 0


def test_mean_float_nan_propagates_and_type_is_kept():
    page = np.ones((4, 4, 1), dtype=np.float32)
    page[0, 0, 0] = np.nan
    result = downsample.mean(page, 2)
    assert result.dtype == np.float32
    assert np.isnan(result[0, 0, 0]) and result[1, 1, 0] == 1.0


@settings(max_examples=200, deadline=None)
@given(height=st.integers(1, 40), width=st.integers(1, 40), samples=st.integers(1, 4),
       factor=st.integers(1, 9), dtype=st.sampled_from(["uint8", "int16", "uint16",
                                                         "float32", "float64"]),
       seed=st.integers(0, 2**16))
def test_mean_matches_reference_for_any_shape(height, width, samples, factor, dtype, seed):
    rng = np.random.default_rng(seed)
    if dtype.startswith("float"):
        page = (rng.integers(-1000, 1000, (height, width, samples)) / 8).astype(dtype)
    else:
        info = np.iinfo(dtype)
        page = rng.integers(info.min, info.max, (height, width, samples), dtype=dtype,
                            endpoint=True)
    result = downsample.mean(page, factor)
    assert result.shape == (-(-height // factor), -(-width // factor), samples)
    np.testing.assert_array_equal(result, reference_page(page, factor, "mean"))


def test_nearest_keeps_top_left_of_each_block():
    page = np.arange(7 * 9).reshape(7, 9, 1)
    np.testing.assert_array_equal(downsample.nearest(page[::3], 3), page[::3, ::3])


@pytest.mark.parametrize("method", ["mean", "median", "max", "mode", "nearest"])
def test_float_special_values_give_the_documented_pixels_without_warnings(tmp_path, method):
    """NaN, a signalling NaN, +inf with -inf and sums beyond float64 give NaN and inf
    pixels (docs/reference.md), and no RuntimeWarning on the daemon's stderr."""
    page = np.ones((4, 8), dtype=np.float64)
    page[0, 0], page[0, 1] = np.inf, -np.inf                  # block (0, 0)
    page[0, 2] = np.frombuffer(np.uint64(0x7FF4000000000000).tobytes(), np.float64)[0]
    page[0:2, 4:6] = np.finfo(np.float64).max                  # block (0, 2)
    path = tmp_path / "special.tif"
    tifffile.imwrite(path, page)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        view = open_view(str(path), 2, method)
        try:
            data = view.read(0, view.size)
        finally:
            view.close()
    result = tifffile.imread(io.BytesIO(data))
    assert result.shape == (2, 4) and result.dtype == np.float64
    if method == "mean":
        assert np.isnan(result[0, 0]) and np.isnan(result[0, 1]) and result[0, 2] == np.inf
        assert result[1, 3] == 1.0


@pytest.mark.parametrize("samples", [1, 3, 5, 300])
@pytest.mark.parametrize("method", ["linear", "lanczos"])
def test_interpolation_resizes_each_sample_as_opencv_does_one_alone(samples, method):
    """OpenCV's Python binding takes fewer than 255 samples per pixel (scripts/fuzz made
    a page of 51,007): every sample comes out as OpenCV's resize of that sample alone."""
    import cv2

    flag = {"linear": cv2.INTER_LINEAR, "lanczos": cv2.INTER_LANCZOS4}[method]
    page = np.random.default_rng(samples).integers(0, 255, (37, 29, samples)).astype(np.uint8)
    got = downsample.interpolate(page, 12, 10, method)
    assert got.shape == (12, 10, samples)
    for k in range(samples):
        expected = cv2.resize(np.ascontiguousarray(page[:, :, k]), (10, 12), interpolation=flag)
        assert np.array_equal(got[:, :, k], expected)
