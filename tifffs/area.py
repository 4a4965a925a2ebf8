"""Exact area averaging to any output size (fit views), separable: rows, then columns.

With every overlap scaled by the output length, the weights are integers; the weighted
sum ``S`` of each output pixel is then an integer, and the result is
``floor(S / total + 1/2)`` with ``total = source rows * source columns``.

Integers of up to 16 bits take a fast path whose every sum is an exact integer: the row
pass in int32 while ``source rows * M < 2**31`` (``M`` the type's largest magnitude; else
float64), the column pass in float64, exact while ``M * total < 2**53``. The order of
the additions therefore does not matter, and the rounding is exact: ``S / total`` in
float64 either is the half-integer tie itself or lies at least ``1 / (2 total)`` from
one, far more than float64's rounding. Other types keep the original code (float64,
whose order of additions their results depend on).
"""

from __future__ import annotations

import cv2
import numpy as np

from tifffs.arith import ceil_div

_SMALL_INTEGERS = {np.dtype(t) for t in ("uint8", "int8", "uint16", "int16")}
_OPENCV_SAMPLES = 4  # cv2.transpose: up to 4 channels
_CHUNK_BYTES = 1 << 21  # output rows per chunk: their row sums fill this (larger chunks
# take the GIL less often: two render threads make fit1000 1.6x faster than 256 KiB)


class AreaAxis:
    """Exact area weights from ``source`` to ``output`` pixels along one axis.

    Output pixel ``i`` covers source interval ``[i*s, (i+1)*s)`` with ``s = source /
    output``. Scaled by ``output``, every overlap is an integer and the weights of each
    output pixel sum to ``source``.
    """

    def __init__(self, source: int, output: int) -> None:
        self.source, self.output = source, output

    def source_range(self, first: int, last: int) -> tuple[int, int]:
        """Source pixels that output pixels ``first:last`` cover."""
        return (first * self.source) // self.output, ceil_div(last * self.source, self.output)

    def cuts(self, first: int, last: int) -> tuple[np.ndarray, np.ndarray]:
        """Where outputs ``first..last`` start: (source index relative to
        ``source_range(first, last)``, scaled offset into that pixel), each last - first + 1.
        """
        scaled = np.arange(first, last + 1, dtype=np.int64) * self.source
        return scaled // self.output - self.source_range(first, last)[0], scaled % self.output

    def taps(self, first: int, last: int) -> tuple[np.ndarray, np.ndarray]:
        """(source indices, integer weights), each (last - first, taps), for outputs."""
        start, stop = self.source_range(first, last)
        outputs = np.arange(first, last)[:, None]
        lo = (outputs * self.source) // self.output
        taps = ceil_div(self.source, self.output) + 1
        indices = np.minimum(lo + np.arange(taps)[None, :], stop - 1)
        overlap = (np.minimum((outputs + 1) * self.source, (indices + 1) * self.output)
                   - np.maximum(outputs * self.source, indices * self.output))
        weights = np.clip(overlap, 0, None)
        weights[:, 1:][indices[:, 1:] == indices[:, :-1]] = 0  # clamped duplicates
        return indices - start, weights


def area_resize(rows: np.ndarray, row_axis: AreaAxis, col_axis: AreaAxis, first: int,
                last: int, out: np.ndarray | None = None) -> np.ndarray:
    """Output rows ``first:last`` of the exact area average of a page.

    ``rows`` holds the source rows ``row_axis.source_range(first, last)`` and all
    columns. Integers of up to 16 bits are computed exactly and rounded half up; other
    types in float64 (integers then rounded half up and clipped). The result is written
    into ``out`` when given.
    """
    dtype = rows.dtype
    if dtype in _SMALL_INTEGERS and rows.shape[2] <= _OPENCV_SAMPLES:
        largest = max(-int(np.iinfo(dtype).min), int(np.iinfo(dtype).max))
        if largest * row_axis.source * col_axis.source < 2**53:
            result = _exact_integers(rows, row_axis, col_axis, first, last, largest)
            return result if out is None else _store(out, result)
    return _store(out, _original(rows, row_axis, col_axis, first, last))


def _store(out: np.ndarray | None, result: np.ndarray) -> np.ndarray:
    if out is None:
        return result
    if out.shape != result.shape or out.dtype != result.dtype:
        raise ValueError(f"out must be {result.shape} {result.dtype}, not {out.shape} {out.dtype}")
    out[...] = result
    return out


def _exact_integers(rows: np.ndarray, row_axis: AreaAxis, col_axis: AreaAxis, first: int,
                    last: int, largest: int) -> np.ndarray:
    """Both passes a few output rows at a time, the columns pass on the transposed rows
    pass: every intermediate stays in the L2 cache and none is large."""
    # |row pass| <= largest * source rows; its intermediates <= largest * (rows + 2 outputs)
    row_type = (np.int32 if largest * (row_axis.source + 2 * row_axis.output) < 2**31
                else np.float64)
    widest = ceil_div(col_axis.source, col_axis.output)  # source columns wholly in one output
    sum_type = np.int32 if widest * largest * row_axis.source < 2**31 else np.float64
    total = float(row_axis.source * col_axis.source)
    by_rows = _Cuts(row_axis, first, last, row_type)
    by_columns = _Cuts(col_axis, 0, col_axis.output, np.float64)
    out = np.empty((last - first, col_axis.output, rows.shape[2]), dtype=rows.dtype)
    chunk = max(1, _CHUNK_BYTES // (rows.shape[1] * rows.shape[2] * 4))
    for a in range(0, last - first, chunk):
        b = min(a + chunk, last - first)
        part = by_rows.sums(rows, a, b, row_type)
        sums = by_columns.sums(_transpose(part), 0, col_axis.output, sum_type)
        np.divide(sums, total, out=sums)  # then floor(sums / total + 1/2)
        np.add(sums, 0.5, out=sums)
        if rows.dtype.kind == "i":  # casting truncates towards zero: floor only for x >= 0
            np.floor(sums, out=sums)
        out[a:b] = _transpose(sums.astype(rows.dtype))
    return out


class _Cuts:
    """Where the outputs of one axis start, prepared once for every chunk of outputs."""

    def __init__(self, axis: AreaAxis, first: int, last: int, dtype: type) -> None:
        self.starts, fractions = axis.cuts(first, last)
        self.counts = np.diff(self.starts)
        self.clamped = np.minimum(self.starts, axis.source_range(first, last)[1]
                                  - axis.source_range(first, last)[0] - 1)
        self.fractions = fractions.astype(dtype)
        self.scale, self.dtype = dtype(axis.output), dtype

    def sums(self, source: np.ndarray, a: int, b: int, sum_type: type) -> np.ndarray:
        """Outputs ``a:b`` as ``Q(i + 1) - Q(i)``, where ``Q(i) = scale * (sum of
        source[:starts[i]]) + fractions[i] * source[starts[i]]`` is the integral up to
        output ``i``'s start: ``counts[i]`` whole rows times ``scale``, plus and minus
        the two partial rows."""
        starts, counts = self.starts[a:b], self.counts[a:b]
        # mixed-type arithmetic is slow in numpy: convert each gathered row once
        edges = np.take(source, self.clamped[a:b + 1], axis=0).astype(sum_type)
        sums = edges[:-1].copy()
        for k in range(1, int(counts.max())):
            more = np.flatnonzero(counts > k)
            if more.size == counts.size:
                sums += source[starts + k].astype(sum_type)
            else:
                sums[more] += source[starts[more] + k]
        if sum_type is not self.dtype:
            sums, edges = sums.astype(self.dtype), edges.astype(self.dtype)
        sums *= self.scale
        edges *= self.fractions[a:b + 1].reshape((-1,) + (1,) * (source.ndim - 1))
        sums -= edges[:-1]
        sums += edges[1:]
        return sums


def _transpose(a: np.ndarray) -> np.ndarray:
    """Swap the first two axes of (rows, columns, samples), with OpenCV's blocked copy."""
    if a.shape[2] == 1:
        return cv2.transpose(a[:, :, 0])[:, :, None]
    return cv2.transpose(a).reshape(a.shape[1], a.shape[0], a.shape[2])


def _original(rows: np.ndarray, row_axis: AreaAxis, col_axis: AreaAxis, first: int,
              last: int) -> np.ndarray:
    """The original computation, kept where the fast path does not apply: its order of
    float64 additions defines the results of floats and wide integers."""
    dtype = rows.dtype
    exact = dtype.kind in "iu" and dtype.itemsize <= 2
    work = np.int64 if exact else np.float64
    row_index, row_weight = row_axis.taps(first, last)
    acc = np.zeros((last - first, rows.shape[1], rows.shape[2]), dtype=work)
    for tap in range(row_index.shape[1]):
        acc += row_weight[:, tap, None, None] * rows[row_index[:, tap]].astype(work)
    col_index, col_weight = col_axis.taps(0, col_axis.output)
    out = np.zeros((acc.shape[0], col_axis.output, acc.shape[2]), dtype=work)
    for tap in range(col_index.shape[1]):
        out += col_weight[None, :, tap, None] * acc[:, col_index[:, tap]]
    total = row_axis.source * col_axis.source
    if exact:
        return ((2 * out + total) // (2 * total)).astype(dtype)
    if dtype.kind == "f":
        return (out / total).astype(dtype)
    info = np.iinfo(dtype)
    return np.clip(np.floor(out / total + 0.5), info.min, info.max).astype(dtype)
