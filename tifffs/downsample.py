"""Downsampling kernels: pure numpy and OpenCV, no I/O.

Arrays are ``(rows, columns, samples)``; every sample (channel) is reduced on its own.
A *block* is ``f x f`` pixels of one slice, or ``f x f x z`` voxels of ``z`` consecutive
slices; blocks at the right, bottom (and last-slice) edges hold only the pixels that
exist.

* ``nearest``: the first pixel of every block, ``slice0[::f, ::f]``.
* ``mean``: the mean of the block. Integers are summed exactly (no overflow for any
  integer type) and rounded to the nearest integer, ties upward (towards +infinity):
  ``floor(sum / n + 1/2)``. Floats are summed in float64 and rounded once to the source
  type; a NaN in a block gives NaN, as do +inf and -inf together.
* ``max``, ``min``: the largest or smallest value of the block; NaN wins.
* ``median``: the middle value of the sorted block; for an even count, the mean of the
  two middle values (integers rounded as for ``mean``). A NaN in a block gives NaN.
* ``mode``: the most frequent value of the block; ties go to the smallest value.
* ``linear``, ``lanczos``: OpenCV ``cv2.resize`` of the whole page to the output size
  with ``INTER_LINEAR`` or ``INTER_LANCZOS4``. Types OpenCV cannot resize (int8,
  (u)int32, (u)int64, float16) are resized as float64 and rounded half up, clipped to
  the type's range.
* ``area`` (fit views): exact area averaging to any output size, see ``area_resize``.

How, with the same results bit for bit (tests/test_kernels_exact.py):

* ``mean`` of 8- and 16-bit integers: OpenCV sums the whole blocks in float32 where that
  is provably exact (``blockmean``); the ragged edges and all other types in numpy.
* ``median`` and ``mode`` of integers: comparator networks over planes of block values
  (``sortnet``), for blocks of up to 48 (median) or 128 (mode) values; floats (NaN)
  and larger blocks: numpy's sort of each block.
* ``area``: integer weights, exact sums (``tifffs.area``).
"""

from __future__ import annotations

from collections.abc import Iterator

import cv2
import numpy as np

from tifffs import blockmean, sortnet
from tifffs.area import AreaAxis, area_resize  # noqa: F401  (re-exported)
from tifffs.arith import ceil_div
from tifffs.methods import METHODS  # noqa: F401  (re-exported)

_CV2_INTERPOLATION = {"linear": cv2.INTER_LINEAR, "lanczos": cv2.INTER_LANCZOS4}
_CV2_RESIZABLE = {np.dtype(t) for t in ("uint8", "uint16", "int16", "float32", "float64")}
_MIN_OPENCV_PIXELS = 64  # smaller pages: numpy alone is as quick
_OPENCV_SAMPLES = 4  # samples per pixel that one OpenCV call resizes
_NETWORK_CHUNK_BYTES = 1 << 22  # planes of one chunk of block rows: fewer, larger
# numpy calls take the GIL less often (two render threads: x4-mode 10 % faster than with
# 2 MiB, 25 % than with 1 MiB; 8 MiB is slower again)
# Largest block for a comparator network; beyond, numpy's (SIMD) sort of each block wins
_NETWORK_LIMIT = {"median": 48, "mode": 128}


def output_length(length: int, factor: int) -> int:
    """Number of output pixels along an axis of ``length`` source pixels: ceil(length / f)."""
    return ceil_div(length, factor)


def nearest(rows: np.ndarray, factor: int) -> np.ndarray:
    """Keep every ``factor``-th column of rows that are already every ``factor``-th row."""
    return rows[:, ::factor]


def reduce_blocks(slices: list[np.ndarray], factor: int, method: str,
                  out: np.ndarray | None = None) -> np.ndarray:
    """Reduce every ``factor x factor x len(slices)`` block of equally shaped slices.

    ``method`` is one of ``mean``, ``max``, ``min``, ``median``, ``mode``; the result has
    ``ceil(rows / f)`` rows, ``ceil(columns / f)`` columns and the input's dtype. It is
    written into ``out`` when given (an array of that shape and type).
    """
    if method == "mean":
        return _mean(slices, factor, out)
    if method in ("max", "min"):
        result = _extreme(slices, factor, np.maximum if method == "max" else np.minimum)
    elif method in ("median", "mode"):
        return _gathered(slices, factor, method, out)
    else:
        raise ValueError(f"{method!r} is not a block method")
    if out is None:
        return result
    out[...] = result
    return out


def mean(block_rows: np.ndarray, factor: int, out: np.ndarray | None = None) -> np.ndarray:
    """Mean of every ``factor x factor`` block of one slice (see the module docstring)."""
    return _mean([block_rows], factor, out)


def _output(slices: list[np.ndarray], factor: int, out: np.ndarray | None) -> np.ndarray:
    height, width, samples = slices[0].shape
    shape = (output_length(height, factor), output_length(width, factor), samples)
    if out is None:
        return np.empty(shape, dtype=slices[0].dtype)
    if out.shape != shape or out.dtype != slices[0].dtype:
        raise ValueError(f"out must be {shape} {slices[0].dtype}, not {out.shape} {out.dtype}")
    return out


def interpolate(page: np.ndarray, height: int, width: int, method: str) -> np.ndarray:
    """A whole page resized to ``height x width`` with OpenCV's linear or Lanczos filter."""
    interpolation = _CV2_INTERPOLATION[method]
    dtype = page.dtype
    work = page if dtype in _CV2_RESIZABLE else page.astype(np.float64)
    # OpenCV takes a few samples at a time (a damaged file may declare 51,007 of them)
    parts = [cv2.resize(np.ascontiguousarray(work[:, :, first:first + _OPENCV_SAMPLES]),
                        (width, height), interpolation=interpolation).reshape(height, width, -1)
             for first in range(0, work.shape[2], _OPENCV_SAMPLES)]
    resized = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=2)
    if work.dtype == dtype:
        return resized
    if dtype.kind == "f":
        return resized.astype(dtype)
    info = np.iinfo(dtype)
    return np.clip(np.floor(resized + 0.5), info.min, info.max).astype(dtype)


# -- mean, max, min: accumulate the f phases of rows, then of columns
def _mean(slices: list[np.ndarray], factor: int, out: np.ndarray | None) -> np.ndarray:
    height, width, samples = slices[0].shape
    if factor == 1 and len(slices) == 1:
        if out is None:
            return slices[0]
        out[...] = slices[0]
        return out
    f = factor
    full_h, full_w = height - height % f, width - width % f
    if (full_h * full_w < _MIN_OPENCV_PIXELS * f * f
            or not blockmean.applies(slices[0].dtype, f, len(slices), samples)):
        result = _exact_mean(slices, f)
        return result if out is None else _copy_into(out, result)
    out = _output(slices, f, out)
    blockmean.mean_whole_blocks([s[:full_h, :full_w] for s in slices], f,
                                out[: full_h // f, : full_w // f])
    if full_h < height:  # the ragged bottom and right edges, exactly in numpy
        out[full_h // f:] = _exact_mean([s[full_h:] for s in slices], f)
    if full_w < width:
        out[: full_h // f, full_w // f:] = _exact_mean([s[:full_h, full_w:] for s in slices], f)
    return out


def _copy_into(out: np.ndarray, result: np.ndarray) -> np.ndarray:
    if out.shape != result.shape or out.dtype != result.dtype:
        raise ValueError(f"out must be {result.shape} {result.dtype}, not {out.shape} {out.dtype}")
    out[...] = result
    return out


def _exact_mean(slices: list[np.ndarray], factor: int) -> np.ndarray:
    """The mean of every block in numpy, exact for every type (the reference semantics)."""
    dtype = slices[0].dtype
    height, width = slices[0].shape[:2]
    accumulator = _accumulator_dtype(dtype, factor * factor * len(slices))
    sums = _block_accumulate(slices[0], factor, accumulator, np.add)
    for more in slices[1:]:
        sums += _block_accumulate(more, factor, accumulator, np.add)
    counts = _block_counts(height, width, factor) * len(slices)
    if dtype.kind == "f":
        return (sums / counts).astype(dtype)
    if accumulator != np.dtype(object):
        counts = counts.astype(accumulator)
    return ((2 * sums + counts) // (2 * counts)).astype(dtype)


def _extreme(slices: list[np.ndarray], factor: int, combine: np.ufunc) -> np.ndarray:
    result = _block_accumulate(slices[0], factor, slices[0].dtype, combine)
    for more in slices[1:]:
        combine(result, _block_accumulate(more, factor, more.dtype, combine), out=result)
    return result


def _accumulator_dtype(dtype: np.dtype, block: int) -> np.dtype:
    """Smallest fast type that holds ``2 * sum + count`` of a block of ``block`` values."""
    if dtype.kind == "f":
        return np.dtype(np.float64)
    info = np.iinfo(dtype)
    largest = 2 * block * max(abs(int(info.min)), int(info.max)) + block
    for candidate in (np.int32, np.int64):
        if largest <= np.iinfo(candidate).max:
            return np.dtype(candidate)
    return np.dtype(object)  # 64-bit integers: exact Python integers, slower


def _block_accumulate(a: np.ndarray, factor: int, accumulator: np.dtype,
                      combine: np.ufunc) -> np.ndarray:
    rows = a[0::factor].astype(accumulator)
    for phase in range(1, factor):
        part = a[phase::factor]
        combine(rows[: part.shape[0]], part, out=rows[: part.shape[0]])
    result = rows[:, 0::factor].copy()
    for phase in range(1, factor):
        part = rows[:, phase::factor]
        combine(result[:, : part.shape[1]], part, out=result[:, : part.shape[1]])
    return result


def _block_counts(height: int, width: int, factor: int) -> np.ndarray:
    """Pixels per block, shape (out_rows, out_columns, 1); smaller at the edges."""
    row_counts = np.full(output_length(height, factor), factor, dtype=np.int64)
    row_counts[-1] = height - factor * (row_counts.size - 1)
    col_counts = np.full(output_length(width, factor), factor, dtype=np.int64)
    col_counts[-1] = width - factor * (col_counts.size - 1)
    if row_counts[-1] == factor and col_counts[-1] == factor:
        return np.full((1, 1, 1), factor * factor, dtype=np.int64)
    return (row_counts[:, None] * col_counts[None, :])[:, :, None]


# -- median, mode: gather each block's values along a last axis
def _regions(height: int, width: int, factor: int) -> Iterator[tuple[slice, slice, int, int]]:
    """Source regions whose blocks all have the same shape: (rows, columns, bh, bw)."""
    full_h, full_w = height - height % factor, width - width % factor
    for rows, bh in ((slice(0, full_h), factor), (slice(full_h, height), height % factor)):
        for cols, bw in ((slice(0, full_w), factor), (slice(full_w, width), width % factor)):
            if rows.stop > rows.start and cols.stop > cols.start:
                yield rows, cols, bh, bw


def _gathered(slices: list[np.ndarray], factor: int, method: str,
              out: np.ndarray | None) -> np.ndarray:
    height, width, samples = slices[0].shape
    out = _output(slices, factor, out)
    for rows, cols, bh, bw in _regions(height, width, factor):
        regions = [a[rows, cols] for a in slices]
        oh, ow = regions[0].shape[0] // bh, regions[0].shape[1] // bw
        target = out[rows.start // factor:, cols.start // factor:][:oh, :ow]
        # floats sort: min and max would spread a NaN rather than order it
        if out.dtype.kind != "f" and len(regions) * bh * bw <= _NETWORK_LIMIT[method]:
            _by_network(regions, bh, bw, method, target)
            continue
        reducer = _median if method == "median" else _mode
        blocks = [r.reshape(oh, bh, ow, bw, samples).transpose(0, 2, 4, 1, 3)
                  .reshape(oh, ow, samples, bh * bw) for r in regions]
        target[...] = reducer(np.concatenate(blocks, axis=-1) if len(blocks) > 1 else blocks[0])
    return out


def _by_network(regions: list[np.ndarray], bh: int, bw: int, method: str,
                out: np.ndarray) -> None:
    """Median or mode of integer blocks: planes of a few block rows at a time, sorted by
    ``sortnet`` (exactly what sorting each block gives)."""
    oh, ow, samples = out.shape
    n = len(regions) * bh * bw
    per_row = (n + 1) * ow * samples * out.dtype.itemsize
    chunk = max(1, min(oh, _NETWORK_CHUNK_BYTES // per_row))
    planes = np.empty((n + 1, chunk, ow, samples), dtype=out.dtype)
    reducer = sortnet.median if method == "median" else sortnet.mode
    for first in range(0, oh, chunk):
        last = min(first + chunk, oh)
        for z, region in enumerate(regions):
            values = region[first * bh:last * bh].reshape(last - first, bh, ow, bw, samples)
            target = planes[z * bh * bw:(z + 1) * bh * bw, : last - first]
            np.copyto(target.reshape(bh, bw, last - first, ow, samples),
                      values.transpose(1, 3, 0, 2, 4))
        reducer(planes[:, : last - first], out[first:last])


def _median(values: np.ndarray) -> np.ndarray:
    ordered = np.sort(values, axis=-1)
    n = ordered.shape[-1]
    low, high = ordered[..., (n - 1) // 2], ordered[..., n // 2]
    if ordered.dtype.kind == "f":
        result = ((low.astype(np.float64) + high) / 2).astype(ordered.dtype)
        result[np.isnan(ordered).any(axis=-1)] = np.nan
        return result
    # low + ceil((high - low) / 2): exact, no overflow (differences as unsigned)
    unsigned = np.dtype(f"u{ordered.dtype.itemsize}")
    difference = high.astype(unsigned) - low.astype(unsigned)
    half = difference // 2 + difference % 2
    return (low.astype(unsigned) + half).astype(ordered.dtype)


def _mode(values: np.ndarray) -> np.ndarray:
    ordered = np.sort(values, axis=-1)
    n = ordered.shape[-1]
    index = np.arange(n)
    starts = np.ones(ordered.shape, dtype=bool)
    starts[..., 1:] = ordered[..., 1:] != ordered[..., :-1]
    run_start = np.maximum.accumulate(np.where(starts, index, 0), axis=-1)
    run_length = index - run_start + 1
    # argmax finds the first longest run: the smallest of the most frequent values
    best = np.argmax(run_length, axis=-1)
    return np.take_along_axis(ordered, best[..., None], axis=-1)[..., 0]
