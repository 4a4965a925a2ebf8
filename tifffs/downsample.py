"""Downsampling kernels: pure numpy, no I/O.

Arrays are ``(rows, columns, samples)``; every sample (channel) is reduced on its own.

* ``nearest`` keeps the top-left pixel of every ``f x f`` block: ``a[::f, ::f]``.
* ``mean`` averages each ``f x f`` block; blocks at the right and bottom edges average
  only the pixels that exist. Integers are summed exactly (no overflow for any integer
  type) and rounded to the nearest integer, ties upward (towards +infinity), i.e.
  ``floor(sum / n + 1/2)``. Floats are summed in float64 and rounded once to the source
  type; a NaN anywhere in a block gives NaN, as do +inf and -inf in the same block.
"""

from __future__ import annotations

import numpy as np

METHODS = ("mean", "nearest")


def output_length(length: int, factor: int) -> int:
    """Number of output pixels along an axis of ``length`` source pixels: ceil(length / f)."""
    return -(-length // factor)


def nearest(rows: np.ndarray, factor: int) -> np.ndarray:
    """Keep every ``factor``-th column of rows that are already every ``factor``-th row."""
    return rows[:, ::factor]


def mean(block_rows: np.ndarray, factor: int) -> np.ndarray:
    """Mean of every ``factor x factor`` block of ``block_rows`` (rows, columns, samples).

    The result has ``ceil(rows / f)`` rows and ``ceil(columns / f)`` columns and the
    dtype of the input.
    """
    if factor == 1:
        return block_rows
    dtype = block_rows.dtype
    accumulator = _accumulator_dtype(dtype, factor)
    sums = _block_sums(block_rows, factor, accumulator)
    counts = _block_counts(block_rows.shape[0], block_rows.shape[1], factor)
    if dtype.kind == "f":
        return (sums / counts).astype(dtype)
    if accumulator == np.dtype(object):
        result = (2 * sums + counts) // (2 * counts)
    else:
        counts = counts.astype(accumulator)
        result = (2 * sums + counts) // (2 * counts)
    return result.astype(dtype)


def _accumulator_dtype(dtype: np.dtype, factor: int) -> np.dtype:
    """Smallest fast type that holds ``2 * sum + count`` of a block exactly."""
    if dtype.kind == "f":
        return np.dtype(np.float64)
    info = np.iinfo(dtype)
    block = factor * factor
    largest = 2 * block * max(abs(info.min), info.max) + block
    for candidate in (np.int32, np.int64):
        if largest <= np.iinfo(candidate).max:
            return np.dtype(candidate)
    return np.dtype(object)  # 64-bit integers: exact Python integers, slower


def _block_sums(a: np.ndarray, factor: int, accumulator: np.dtype) -> np.ndarray:
    # rows first: add the f row phases into one array, then the f column phases
    rows = a[0::factor].astype(accumulator)
    for phase in range(1, factor):
        part = a[phase::factor]
        rows[: part.shape[0]] += part
    sums = rows[:, 0::factor].copy()
    for phase in range(1, factor):
        part = rows[:, phase::factor]
        sums[:, : part.shape[1]] += part
    return sums


def _block_counts(height: int, width: int, factor: int) -> np.ndarray:
    """Pixels per block, shape (out_rows, out_columns, 1); smaller at the edges."""
    row_counts = np.full(output_length(height, factor), factor, dtype=np.int64)
    row_counts[-1] = height - factor * (row_counts.size - 1)
    col_counts = np.full(output_length(width, factor), factor, dtype=np.int64)
    col_counts[-1] = width - factor * (col_counts.size - 1)
    if row_counts[-1] == factor and col_counts[-1] == factor:
        return np.full((1, 1, 1), factor * factor, dtype=np.int64)
    return (row_counts[:, None] * col_counts[None, :])[:, :, None]
