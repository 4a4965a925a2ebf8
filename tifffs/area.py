"""Exact area averaging to any output size (fit views), separable: rows, then columns.

With every overlap scaled by the output length and divided by ``gcd(source, output)``,
the weights are integers (each output's sum to ``source / gcd``); the weighted sum ``S``
of each output pixel is then an integer, and the result is ``floor(S / total + 1/2)``
with ``total`` the product of the two axes' weight sums.

Integers of up to 16 bits take a fast path: each pass is a product of small dense
matrices of these weights over windows of a few outputs' source pixels (``numpy.matmul``,
BLAS, outside the GIL). Every weight, product and partial sum of the row pass is an
integer of magnitude at most ``source rows / gcd * M`` (``M`` the type's largest
magnitude), computed in float32 where that is below ``2**24`` (else float64); those of
the column pass at most ``M * total``, in float64, which the fast path requires to be
below ``2**53``. The order of the additions therefore does not matter. The rounding is
exact too. ``S / total`` is either a half-integer (a tie) or at least ``1 / (2 total)``
from every half-integer, so ``y = S / total + 1 / (4 total)`` is at least
``1 / (4 total)`` from every half-integer, and the nearest integer to ``y`` is
``floor(S / total + 1/2)``. OpenCV computes ``y`` in float64 (``addWeighted``) with an
error of at most ``3 (M + 1) * 2**-53``, below that margin while
``12 (M + 1) total < 2**53``, and rounds it to the nearest integer of the output type in
the same pass; larger totals round in int64. Other types, and totals with
``M * total >= 2**53``, keep the original code (int64 for integers; float64, whose order
of additions their results depend on, for floats).
"""

from __future__ import annotations

import functools
import math

import cv2
import numpy as np

from tifffs.arith import ceil_div
from tifffs.scratch import Scratch

_SMALL_INTEGERS = {np.dtype(t) for t in ("uint8", "int8", "uint16", "int16")}
_OPENCV_DEPTHS = {np.dtype("uint8"): cv2.CV_8U, np.dtype("int8"): cv2.CV_8S,
                  np.dtype("uint16"): cv2.CV_16U, np.dtype("int16"): cv2.CV_16S}
_OPENCV_TRANSPOSES = {*_OPENCV_DEPTHS, np.dtype("float32"), np.dtype("float64")}  # native
_SAMPLES = 4  # more samples per pixel (damaged files): the original code
_CHUNK_BYTES = 1 << 21  # the intermediates of a chunk of rows or lines fill this: larger
# chunks take the GIL less often (fit1000 of the stack: 1 MiB 0.76 s, 2 MiB 0.69 s), but
# at 4 MiB (0.65 s) fit1000 of a 16384 x 32768 tiled page breaks its memory limit
_GROUP_OUTPUTS = 8  # outputs per matrix product, at most
_GROUP_PIXELS = 32  # and about this many source pixels per window
_BLOCK_PIXELS = 64  # a window too large to gather is summed this many pixels at a time


class AreaAxis:
    """Exact area weights from ``source`` to ``output`` pixels along one axis.

    Output pixel ``i`` covers source interval ``[i*s, (i+1)*s)`` with ``s = source /
    output``. Scaled by ``output``, every overlap is an integer and the weights of each
    output pixel sum to ``source``.
    """

    def __init__(self, source: int, output: int) -> None:
        self.source, self.output = source, output

    @property
    def weight_sum(self) -> int:
        """What each output's integer weights sum to, the overlaps divided by
        ``gcd(source, output)``."""
        return self.source // math.gcd(self.source, self.output)

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
                last: int, out: np.ndarray | None = None,
                scratch: Scratch | None = None) -> np.ndarray:
    """Output rows ``first:last`` of the exact area average of a page.

    ``rows`` holds the source rows ``row_axis.source_range(first, last)`` and all
    columns. Integers of up to 16 bits are computed exactly and rounded half up; other
    types in float64 (integers then rounded half up and clipped). The result is written
    into ``out`` when given; ``scratch`` holds the intermediates (reused from call to call).
    """
    if exact_integers_apply(rows.dtype, rows.shape[2], row_axis, col_axis):
        exact = ExactArea(rows.dtype, row_axis, col_axis, first, last, scratch)
        result = np.empty((last - first, col_axis.output, rows.shape[2]), dtype=rows.dtype)
        # both passes a few output rows at a time: every intermediate stays in the L2
        # cache and none is large; whole groups of the row pass where they fit (a group
        # split between chunks reads its window once per chunk)
        chunk = max(1, _CHUNK_BYTES // (rows.shape[1] * rows.shape[2] * 4))
        group = exact.row_group
        chunk = chunk - chunk % group if chunk >= group else chunk
        for a in range(0, last - first, chunk):
            b = min(a + chunk, last - first)
            exact.columns(exact.rows(rows, a, b), out=result[a:b])
        return result if out is None else _store(out, result)
    return _store(out, _original(rows, row_axis, col_axis, first, last))


def exact_integers_apply(dtype: np.dtype, samples: int, row_axis: AreaAxis,
                         col_axis: AreaAxis) -> bool:
    """Whether ``ExactArea`` computes this page exactly: integers of up to 16 bits, up to
    4 samples, and a total small enough for float64 (see the module docstring)."""
    if np.dtype(dtype).newbyteorder("=") not in _SMALL_INTEGERS or samples > _SAMPLES:
        return False
    return _largest(dtype) * row_axis.weight_sum * col_axis.weight_sum < 2**53


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
    then ``columns`` of the whole width, which rounds.
    The module docstring says why every sum is exact.
    """

    def __init__(self, dtype: np.dtype, row_axis: AreaAxis, col_axis: AreaAxis, first: int,
                 last: int, scratch: Scratch | None = None) -> None:
        largest = _largest(dtype)
        self._scratch = scratch or Scratch()
        self.dtype = np.dtype(dtype)
        self._by_rows = _windows(row_axis.source, row_axis.output, first, last)
        self._by_columns = _windows(col_axis.source, col_axis.output, 0, col_axis.output)
        self.row_type = np.float32 if row_axis.weight_sum * largest < 2**24 else np.float64
        self._total = row_axis.weight_sum * col_axis.weight_sum
        self._outputs = col_axis.output

    @property
    def row_group(self) -> int:
        """Outputs that the row pass sums together (its chunks best hold whole groups)."""
        return self._by_rows.group

    def rows(self, rows: np.ndarray, a: int = 0, b: int | None = None) -> np.ndarray:
        """The row pass of outputs ``a:b`` (of ``first:last``; all by default), as
        ``row_type`` (outputs, columns, samples), valid until the next call; ``rows``
        holds the source rows ``row_axis.source_range(first, last)`` of some columns."""
        b = self._by_rows.outputs if b is None else b
        flat = rows.reshape(rows.shape[0], -1)
        sums = self._by_rows.apply(flat, a, b, self.row_type, self._scratch)
        return sums.reshape(b - a, *rows.shape[1:])

    def columns(self, sums: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Output pixels (rows, output columns, samples) of the row pass of every column,
        a few lines at a time (their intermediates stay small); written into ``out`` when
        given."""
        rows, width, samples = sums.shape
        # one line per row and sample: (rows * samples, columns)
        lines = sums.transpose(0, 2, 1).reshape(rows * samples, width)
        direct = out is not None and samples == 1 and out.flags.c_contiguous
        pixels = (out.reshape(rows, self._outputs) if out is not None and direct
                  else np.empty((rows * samples, self._outputs), dtype=self.dtype))
        chunk = max(1, _CHUNK_BYTES // (width * 8))  # float64 sums of each line
        for a in range(0, len(lines), chunk):
            part = lines[a:a + chunk]
            # transposed, the column pass is a row pass: BLAS is fastest with the lines
            # as the long side of its products, and gathering rows copies whole lines
            across = _transposed(part, self._scratch.array("area lines", part.shape[::-1],
                                                           part.dtype))
            sums_across = self._by_columns.apply(across, 0, self._outputs, np.float64,
                                                 self._scratch, name="area column sums")
            rounded = self._scratch.array("area rounded", sums_across.shape, self.dtype)
            round_half_up(sums_across, self._total, rounded)
            _transposed(rounded, pixels[a:a + chunk])
        result = pixels.reshape(rows, samples, -1).transpose(0, 2, 1)
        if out is None:
            return result
        if not direct:
            out[...] = result
        return out


def _transposed(source: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``source`` (2D) transposed into ``out``: by OpenCV where it takes the arrays (much
    faster than numpy's strided copy)."""
    if (source.dtype in _OPENCV_TRANSPOSES and source.strides[1] == source.itemsize
            and out.flags.c_contiguous):
        written = cv2.transpose(source, dst=out)
        if written is out or np.shares_memory(written, out):
            return out
    np.copyto(out, source.T)
    return out


@functools.lru_cache(maxsize=8)  # a 40,000-pixel axis holds a few MiB of weights
def _windows(source: int, output: int, first: int, last: int) -> _Windows:
    """The windows of outputs ``first:last`` of an axis: the rows of a band, or all the
    columns of a page; kept, since every page of a stack has the same bands."""
    return _Windows(AreaAxis(source, output), first, last)


class _Windows:
    """Outputs ``first:last`` of one axis as products of small dense matrices: group
    ``k`` of ``group`` consecutive outputs is ``weights[k] @ source[index[k]]``, over a
    window of ``length`` source pixels (the same for every group; pixels outside a
    group's own weigh 0). Weights are the overlaps divided by ``gcd(source, output)``;
    each output's sum to ``axis.weight_sum``."""

    def __init__(self, axis: AreaAxis, first: int, last: int) -> None:
        taps, overlaps = axis.taps(first, last)
        divisor = axis.source // axis.weight_sum
        self.outputs = last - first
        # a group's window spans about group * ratio + 2 pixels, of which each output
        # uses about ratio + 2: a few outputs per product keep the waste small
        self.group = max(1, min(_GROUP_OUTPUTS, _GROUP_PIXELS * axis.output // axis.source))
        groups = ceil_div(self.outputs, self.group)
        used = overlaps > 0
        firsts = np.arange(0, self.outputs, self.group)
        starts = taps[firsts, 0]
        ends = np.maximum.reduceat(np.where(used, taps, -1).max(axis=1), firsts) + 1
        self.length = int((ends - starts).max())
        start, stop = axis.source_range(first, last)
        self.index = np.minimum(starts[:, None] + np.arange(self.length), stop - start - 1)
        # the nonzero weights, by (group, output in group, pixel in window): the dense
        # matrices are made from them in the types and layouts the passes use
        output, tap = np.nonzero(used)
        group = output // self.group
        self._places = (group, output % self.group, taps[output, tap] - starts[group])
        self._values = overlaps[output, tap] // divisor
        self._shape = (groups, self.group, self.length)
        self._typed: dict[np.dtype, np.ndarray] = {}

    def _weights(self, dtype: type) -> np.ndarray:
        """The weights of each group, (groups, group, length), in ``dtype``."""
        key = np.dtype(dtype)
        if key not in self._typed:
            weights = np.zeros(self._shape, dtype=dtype)
            weights[self._places] = self._values
            self._typed[key] = weights
        return self._typed[key]

    def apply(self, source: np.ndarray, a: int, b: int, dtype: type, scratch: Scratch,
              name: str = "area sums") -> np.ndarray:
        """Outputs ``a:b`` along the first axis of ``source`` (pixels, values), in
        ``dtype``, as (outputs, values) in ``scratch``'s buffer ``name``: whole groups a few at a time (the
        windows gathered stay small), the others (a group cut by ``a`` or ``b``, or too
        large to gather) one at a time."""
        values = source.shape[1]
        result = scratch.array(name, (b - a, values), dtype)
        window_bytes = self.length * values * np.dtype(dtype).itemsize
        step = max(1, _CHUNK_BYTES // window_bytes)
        g = a // self.group
        while g * self.group < b:
            h = min(g + step, ceil_div(b, self.group))
            lo, hi = max(a, g * self.group), min(b, h * self.group)
            if (lo, hi) == (g * self.group, h * self.group) and window_bytes <= _CHUNK_BYTES:
                windows = _gather(source, self.index[g:h], 0, dtype, scratch)
                np.matmul(self._weights(dtype)[g:h], windows,
                          out=result[lo - a:hi - a].reshape(h - g, self.group, values))
            else:
                for k in range(g, h):
                    top = max(lo, k * self.group)
                    bottom = min(hi, (k + 1) * self.group)
                    self._apply_one(source, k, top - k * self.group, bottom - k * self.group,
                                    dtype, result[top - a:bottom - a])
            g = h
        return result

    def _apply_one(self, source: np.ndarray, group: int, first: int, last: int, dtype: type,
                   into: np.ndarray) -> None:
        """Outputs ``first:last`` of one group into ``into``: its window is a range of
        pixels, summed a block of values and of pixels at a time."""
        start = int(self.index[group, 0])
        stop = int(self.index[group, -1]) + 1  # clamped at the end: the rest weighs 0
        weights = self._weights(dtype)[group, first:last]
        itemsize = np.dtype(dtype).itemsize
        pixels = min(stop - start, _BLOCK_PIXELS)
        block = max(1, _CHUNK_BYTES // (pixels * itemsize))
        for left in range(0, source.shape[1], block):
            right = min(left + block, source.shape[1])
            out = into[:, left:right]
            for top in range(start, stop, pixels):
                bottom = min(top + pixels, stop)
                part = np.matmul(weights[:, top - start:bottom - start],
                                 source[top:bottom, left:right].astype(dtype))
                if top == start:
                    out[...] = part
                else:  # every partial sum is within the bound of the whole: exact
                    out += part


def round_half_up(sums: np.ndarray, total: int, out: np.ndarray) -> None:
    """``out = floor(sums / total + 1/2)`` of integer sums held exactly in float64
    (``sums`` may be overwritten): for totals up to ``2**53 / (12 (M + 1))`` as OpenCV's
    rounding to the nearest of ``sums / total + 1 / (4 total)`` (the module docstring
    says why that is exact), else in int64."""
    if 12 * (_largest(out.dtype) + 1) * total < 2**53 and out.ndim == 2 and out.dtype.isnative:
        cv2.addWeighted(sums, 1 / total, sums, 0.0, 0.25 / total, dst=out,
                        dtype=_OPENCV_DEPTHS[out.dtype])
        return
    exact = sums.astype(np.int64)  # |sums| <= M * total < 2**53: exact
    exact *= 2
    exact += total
    np.floor_divide(exact, 2 * total, out=exact)
    np.copyto(out, exact, casting="unsafe")


def _gather(source: np.ndarray, index: np.ndarray, axis: int, dtype: type,
            scratch: Scratch) -> np.ndarray:
    """``source`` taken at ``index`` along ``axis``, as ``dtype``, in ``scratch``."""
    shape = (*source.shape[:axis], *index.shape, *source.shape[axis + 1:])
    # mode "clip" (every index is in range): with "raise", numpy takes into a copy of out
    taken = np.take(source, index, axis=axis, mode="clip",
                    out=scratch.array("area taken", shape, source.dtype))
    windows = scratch.array("area windows", shape, dtype)
    np.copyto(windows, taken)
    return windows


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
