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
    if exact_integers_apply(rows.dtype, rows.shape[2], row_axis, col_axis):
        exact = ExactArea(rows.dtype, row_axis, col_axis, first, last)
        result = np.empty((last - first, col_axis.output, rows.shape[2]), dtype=rows.dtype)
        # both passes a few output rows at a time: every intermediate stays in the L2
        # cache and none is large
        chunk = max(1, _CHUNK_BYTES // (rows.shape[1] * rows.shape[2] * 4))
        for a in range(0, last - first, chunk):
            b = min(a + chunk, last - first)
            result[a:b] = exact.columns(exact.rows(rows, a, b))
        return result if out is None else _store(out, result)
    return _store(out, _original(rows, row_axis, col_axis, first, last))


def exact_integers_apply(dtype: np.dtype, samples: int, row_axis: AreaAxis,
                         col_axis: AreaAxis) -> bool:
    """Whether ``ExactArea`` computes this page (integers of up to 16 bits, up to 4
    samples, every weighted sum below 2**53)."""
    if np.dtype(dtype).newbyteorder("=") not in _SMALL_INTEGERS or samples > _OPENCV_SAMPLES:
        return False
    return _largest(dtype) * row_axis.source * col_axis.source < 2**53


def _largest(dtype: np.dtype) -> int:
    info = np.iinfo(dtype)
    return max(-int(info.min), int(info.max))


def _store(out: np.ndarray | None, result: np.ndarray) -> np.ndarray:
    if out is None:
        return result
    if out.shape != result.shape or out.dtype != result.dtype:
        raise ValueError(f"out must be {result.shape} {result.dtype}, not {out.shape} {out.dtype}")
    out[...] = result
    return out


class ExactArea:
    """The exact area average of output rows ``first:last`` of integers of up to 16 bits
    (``exact_integers_apply``), in two passes that may be called apart: ``rows`` (of any
    columns of the source rows, so a page can be summed a column of tiles at a time),
    then ``columns`` of the whole width, which rounds."""

    def __init__(self, dtype: np.dtype, row_axis: AreaAxis, col_axis: AreaAxis, first: int,
                 last: int) -> None:
        largest = _largest(dtype)
        self.dtype = np.dtype(dtype)
        # |row pass| <= largest * source rows; its intermediates <= largest * (rows + 2
        # outputs)
        self.row_type = (np.int32 if largest * (row_axis.source + 2 * row_axis.output) < 2**31
                         else np.float64)
        widest = ceil_div(col_axis.source, col_axis.output)  # source columns in one output
        self._sum_type = (np.int32 if widest * largest * row_axis.source < 2**31
                          else np.float64)
        self._total = float(row_axis.source * col_axis.source)
        self._by_rows = _Cuts(row_axis, first, last, self.row_type)
        self._by_columns = _Cuts(col_axis, 0, col_axis.output, np.float64)
        self._outputs = col_axis.output

    def rows(self, rows: np.ndarray, a: int = 0, b: int | None = None) -> np.ndarray:
        """The row pass of outputs ``a:b`` (of ``first:last``; all by default), as
        ``row_type`` (outputs, columns, samples); ``rows`` holds the source rows
        ``row_axis.source_range(first, last)`` of some columns."""
        b = len(self._by_rows.counts) if b is None else b
        return self._by_rows.sums(rows, a, b, self.row_type)

    def columns(self, sums: np.ndarray) -> np.ndarray:
        """Output pixels (rows, output columns, samples) of the row pass of every column,
        a few rows at a time (their intermediates stay in the L2 cache)."""
        out = np.empty((sums.shape[0], self._outputs, sums.shape[2]), dtype=self.dtype)
        chunk = max(1, _CHUNK_BYTES // (sums.shape[1] * sums.shape[2] * 4))
        for a in range(0, sums.shape[0], chunk):
            part = self._by_columns.sums(_transpose(sums[a:a + chunk]), 0, self._outputs,
                                         self._sum_type)
            np.divide(part, self._total, out=part)  # then floor(part / total + 1/2)
            np.add(part, 0.5, out=part)
            if self.dtype.kind == "i":  # casting truncates towards zero: floor for x >= 0
                np.floor(part, out=part)
            out[a:a + chunk] = _transpose(part.astype(self.dtype))
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
