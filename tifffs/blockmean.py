"""Exact block means of 8- and 16-bit integers with OpenCV, where float32 is provably exact.

For the whole blocks of a page: ``cv2.add`` sums the ``f`` row phases of every slice into
float32 (``dtype=CV_32F``), then ``cv2.resize(INTER_AREA)`` by ``f`` along the columns,
whose integer-factor path sums each run of ``f`` values and multiplies by
``float32(1/f)``. Every partial sum is an integer of magnitude at most
``|S| <= n * M`` (``n = z * f * f`` values, ``M`` the largest magnitude of the type), so:

* While ``n * M <= 2**24`` all sums are exact. For ``f`` a power of two, ``1/f`` and the
  product are exact too: OpenCV returns ``S / f`` exactly.
* Otherwise the product carries at most two float32 roundings: ``|x*f - S| <=
  |S| * (2u + u*u)`` with ``u = 2**-24``, below 1/2 while ``|S| < 2**22``; then
  ``rint(x * f)`` (in float64, where ``x * f`` is exact) recovers ``S``.

For ``f = 2`` and one slice of uint8, uint16 or int16 with 1, 3 or 4 samples, OpenCV's
own 2x2 area path on the integers is used instead: it computes ``(a + b + c + d + 2) >> 2``
(``v_rshr_pack<2>``), which is ``floor(S / 4 + 1/2)`` exactly, also for negative sums
(arithmetic shift). Since that is a property of OpenCV's code rather than of its
documentation, it is checked once per type on a probe of every residue at both ends of
the range; a build that rounds otherwise falls back to the float32 path.

From the exact ``S`` the mean is ``floor(S / n + 1/2)``: when ``n`` is a power of two and
``n * (M + 1) <= 2**24``, ``S / n + 1/2`` is exact in float32; otherwise in float64 the
quotient either is the exact half-integer tie or lies at least ``1 / (2n)`` from one,
far beyond float64's rounding, so ``floor`` is exact. OpenCV's own integer rounding
(ties to even) is never used. The ragged edge blocks are left to the caller.
"""

from __future__ import annotations

from functools import cache

import cv2
import numpy as np

_EXACT_TYPES = {np.dtype(t) for t in ("uint8", "int8", "uint16", "int16")}
#: float32 row sums per chunk. Large: each OpenCV call gives up the GIL once, and two
#: render threads and the FUSE thread share it (a whole 2048 x 2048 band in one chunk:
#: cp of x4 of the light-sheet stack 0.29-0.31 s, against 0.35-0.36 s with 512 KiB).
_CHUNK_BYTES = 1 << 22
_MAX_SAMPLES = 4
_HALVING_TYPES = {np.dtype(t) for t in ("uint8", "uint16", "int16")}
_HALVING_SAMPLES = (1, 3, 4)  # OpenCV's vectorised 2x2 path: other counts round to even


def _power_of_two(n: int) -> bool:
    return n & (n - 1) == 0


@cache
def _largest_magnitude(dtype: np.dtype) -> int:
    info = np.iinfo(dtype)
    return max(-int(info.min), int(info.max))


def applies(dtype: np.dtype, factor: int, depth: int, samples: int) -> bool:
    """Whether ``mean_whole_blocks`` is exact for this type, factor and number of slices."""
    if dtype not in _EXACT_TYPES or samples > _MAX_SAMPLES or factor * depth < 2:
        return False
    largest = factor * factor * depth * _largest_magnitude(dtype)
    return largest <= 2**24 if _power_of_two(factor) else largest < 2**22


def mean_whole_blocks(slices: list[np.ndarray], factor: int, out: np.ndarray) -> None:
    """Write into ``out`` (out_rows, out_columns, samples) the mean of every whole block.

    ``slices`` are (rows, columns, samples) with rows and columns multiples of ``factor``;
    ``applies`` must hold.
    """
    f, depth = factor, len(slices)
    height, width, samples = slices[0].shape
    out_rows, out_cols = height // f, width // f
    if f == 2 and depth == 1 and _halves_exactly(out.dtype, samples):
        result = _opencv_area(slices[0], out_cols, out_rows, out)
        if not np.may_share_memory(result, out):
            np.copyto(out, result.reshape(out.shape))
        return
    n = f * f * depth
    exact32 = _power_of_two(n) and n * (_largest_magnitude(out.dtype) + 1) <= 2**24
    chunk = max(1, min(out_rows, _CHUNK_BYTES // (width * samples * 4)))
    sums = np.empty((chunk, width * samples), dtype=np.float32)
    means = np.empty((chunk, out_cols, samples), dtype=np.float32)
    for first in range(0, out_rows, chunk):
        last = min(first + chunk, out_rows)
        # row phase p of every block row, as (rows, columns * samples) views of the source
        terms = [s[first * f + phase:last * f:f].reshape(last - first, width * samples)
                 for s in slices for phase in range(f)]
        rows = cv2.add(terms[0], terms[1], dst=sums[: last - first], dtype=cv2.CV_32F)
        for term in terms[2:]:
            rows = cv2.add(rows, term, dst=rows, dtype=cv2.CV_32F)
        if f == 1:
            block = rows.reshape(last - first, out_cols, samples)
        else:
            block = _column_sums(rows.reshape(last - first, width, samples), f,
                                 means[: last - first])
        _round(block, f, n, exact32, out[first:last])


@cache
def _halves_exactly(dtype: np.dtype, samples: int) -> bool:
    """Whether OpenCV's 2x2 area reduction of this type is floor(S / 4 + 1/2)."""
    if dtype not in _HALVING_TYPES or samples not in _HALVING_SAMPLES:
        return False
    info = np.iinfo(dtype)
    rng = np.random.default_rng(0)
    near_ends = np.concatenate([np.arange(info.min, info.min + 8),
                                np.arange(info.max - 7, info.max + 1)])
    rows, cols = 64, 259  # output pixels: OpenCV's vector loop and its scalar tail
    probe = rng.choice(near_ends, (2 * rows, 2 * cols, samples)).astype(dtype)
    probe[rows:] = rng.integers(info.min, info.max, probe[rows:].shape, endpoint=True)
    sums = probe.astype(np.int64).reshape(rows, 2, cols, 2, samples).sum(axis=(1, 3))
    return bool((_opencv_area(probe, cols, rows).reshape(sums.shape) == (sums + 2) // 4).all())


def _opencv_area(page: np.ndarray, width: int, height: int,
                 out: np.ndarray | None = None) -> np.ndarray:
    """cv2.resize(INTER_AREA) of (rows, columns, samples), into ``out`` when OpenCV can."""
    if page.shape[2] == 1:  # OpenCV takes and gives one channel as 2-D
        page, out = page[:, :, 0], None if out is None else out[:, :, 0]
    dst = out if out is not None and out.flags.c_contiguous else None
    return cv2.resize(page, (width, height), dst=dst, interpolation=cv2.INTER_AREA)


def _column_sums(rows: np.ndarray, f: int, dst: np.ndarray) -> np.ndarray:
    """float32(sum of every f columns) * float32(1 / f): OpenCV's integer-factor area path."""
    size = (dst.shape[1], dst.shape[0])
    if rows.shape[2] == 1:  # OpenCV takes and gives one channel as 2-D
        result = cv2.resize(rows[:, :, 0], size, dst=dst[:, :, 0], interpolation=cv2.INTER_AREA)
    else:
        result = cv2.resize(rows, size, dst=dst, interpolation=cv2.INTER_AREA)
    return result.reshape(dst.shape)


def _round(means: np.ndarray, f: int, n: int, exact32: bool, out: np.ndarray) -> None:
    """out = floor(S / n + 1/2) from means = float32(S * float32(1 / f))."""
    signed = out.dtype.kind == "i"
    if exact32:  # S / f exact, scaling by a power of two and adding 1/2 exact
        np.multiply(means, np.float32(f / n), out=means)
        np.add(means, np.float32(0.5), out=means)
        if signed:  # casting truncates towards zero, which is floor only for x >= 0
            np.floor(means, out=means)
        np.copyto(out, means, casting="unsafe")
        return
    sums = np.multiply(means, float(f), dtype=np.float64)
    np.rint(sums, out=sums)
    np.divide(sums, float(n), out=sums)
    np.add(sums, 0.5, out=sums)
    if signed:
        np.floor(sums, out=sums)
    np.copyto(out, sums, casting="unsafe")
