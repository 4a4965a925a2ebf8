"""Median and mode of many small blocks at once, with comparator networks over planes.

A block's ``n`` values are held as ``n`` equally shaped arrays ("planes"): plane ``k``
holds value ``k`` of every block. A comparator ``(i, j)`` puts the smaller of planes
``i`` and ``j`` in ``i`` and the larger in ``j``, for every block at once, with one
``np.minimum`` and one ``np.maximum`` over whole planes. Batcher's odd-even merge sort
network sorts every block; for the median only the comparators that reach the middle
positions run, and those whose other output is never read become a single min or max.

Only ``min`` and ``max`` move values, so integers come out exactly as sorting would give
them. Floats are not sorted here: NaN makes ``min``/``max`` spread rather than order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import lru_cache

import cv2
import numpy as np

# a step of a network: (i, j, keep) with keep "both", "min" (only i is read later) or "max"
Step = tuple[int, int, str]


def _merge(first: int, length: int, stride: int) -> Iterator[tuple[int, int]]:
    """Odd-even merge of the two sorted halves of positions ``first + stride * k``."""
    double = 2 * stride
    if double < length:
        yield from _merge(first, length, double)
        yield from _merge(first + stride, length, double)
        for i in range(first + stride, first + length - stride, double):
            yield i, i + stride
    else:
        yield first, first + stride


def _sort(first: int, length: int) -> Iterator[tuple[int, int]]:
    if length > 1:
        half = length // 2
        yield from _sort(first, half)
        yield from _sort(first + half, half)
        yield from _merge(first, length, 1)


@lru_cache(maxsize=64)
def sorting_network(n: int) -> tuple[tuple[int, int], ...]:
    """Comparators that sort ``n`` values: Batcher's network for the next power of two,
    without the comparators that touch positions ``>= n`` (as if those held +infinity)."""
    size = 1 << max(0, (n - 1).bit_length())
    return tuple((i, j) for i, j in _sort(0, size) if j < n)


@lru_cache(maxsize=64)
def selection_network(n: int, wanted: tuple[int, ...]) -> tuple[Step, ...]:
    """The steps of ``sorting_network(n)`` that the sorted positions ``wanted`` depend on."""
    needed = set(wanted)
    steps: list[Step] = []
    for i, j in reversed(sorting_network(n)):
        low, high = i in needed, j in needed
        if low or high:
            steps.append((i, j, "both" if low and high else "min" if low else "max"))
            needed.update((i, j))
    return tuple(reversed(steps))


@lru_cache(maxsize=64)
def _full_sort(n: int) -> tuple[Step, ...]:
    return tuple((i, j, "both") for i, j in sorting_network(n))


def _run(planes: np.ndarray, steps: Sequence[Step]) -> list[int]:
    """Apply ``steps`` in place to ``planes[:-1]`` (``planes[-1]`` is scratch); return,
    for each sorted position, the index of the plane that holds it."""
    work, spare = list(range(len(planes) - 1)), len(planes) - 1
    for i, j, keep in steps:
        a, b = planes[work[i]], planes[work[j]]
        if keep == "both":
            np.minimum(a, b, out=planes[spare])
            np.maximum(a, b, out=b)
            work[i], spare = spare, work[i]
        elif keep == "min":
            np.minimum(a, b, out=a)
        else:
            np.maximum(a, b, out=b)
    return work


def median(planes: np.ndarray, out: np.ndarray) -> None:
    """out = the middle value of every block of integer ``planes[:-1]`` (``planes[-1]``
    is scratch; all are overwritten); for an even count, the two middle values' mean
    rounded half up, computed without overflow."""
    n = len(planes) - 1
    low_at, high_at = (n - 1) // 2, n // 2
    work = _run(planes, selection_network(n, tuple(sorted({low_at, high_at}))))
    low, high = planes[work[low_at]], planes[work[high_at]]
    if low_at == high_at:
        np.copyto(out, low)
        return
    # low + ceil((high - low) / 2), the difference taken as unsigned
    unsigned = np.dtype(f"u{low.dtype.itemsize}")
    low, high = low.view(unsigned), high.view(unsigned)
    np.subtract(high, low, out=high)
    half = np.right_shift(high, 1)
    np.bitwise_and(high, 1, out=high)
    half += high
    half += low
    np.copyto(out, half.view(out.dtype))


def mode(planes: np.ndarray, out: np.ndarray) -> None:
    """out = the most frequent value of every block of integer ``planes[:-1]``
    (``planes[-1]`` is scratch; all are overwritten); ties go to the smallest value."""
    n = len(planes) - 1
    work = _run(planes, _full_sort(n))
    flat = planes.reshape(len(planes), -1)  # (n + 1, values): each plane contiguous
    best = flat[work[0]].copy()
    counter = np.uint8 if n < 256 else np.uint32
    run = np.ones(best.shape, dtype=counter)
    longest = run.copy()
    same = np.empty(best.shape, dtype=bool)
    longer = np.empty(best.shape, dtype=bool)
    copy = _masked_copy(best.dtype)
    for k in range(1, n):
        value = flat[work[k]]
        np.equal(value, flat[work[k - 1]], out=same)
        np.multiply(run, same.view(np.uint8), out=run)  # a new value starts a run of one
        run += 1
        # strictly longer: of equally long runs the first, the smallest value, stays
        np.greater(run, longest, out=longer)
        np.maximum(longest, run, out=longest)
        copy(value, longer, best)
    np.copyto(out, best.reshape(out.shape))


def _masked_copy(dtype: np.dtype):
    """dst[mask] = src for 1-D arrays: OpenCV's copyTo where it takes the type (numpy's
    masked copy slows down on unpredictable masks)."""
    as_opencv = {1: np.uint8, 2: np.uint16, 4: np.int32}.get(dtype.itemsize)
    if as_opencv is None:
        return lambda src, mask, dst: np.copyto(dst, src, where=mask)

    def copy(src: np.ndarray, mask: np.ndarray, dst: np.ndarray) -> None:
        # bit patterns only: signed and unsigned of one width copy alike
        cv2.copyTo(src.view(as_opencv)[None], mask.view(np.uint8)[None],
                   dst=dst.view(as_opencv)[None])
    return copy
