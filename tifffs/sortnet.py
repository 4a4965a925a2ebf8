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

from functools import lru_cache
from typing import Iterator, Sequence

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


def _run(work: list[np.ndarray], spare: np.ndarray, steps: Sequence[Step]) -> None:
    """Apply ``steps`` in place to the writable planes ``work``; ``spare`` is scratch."""
    for i, j, keep in steps:
        a, b = work[i], work[j]
        if keep == "both":
            np.minimum(a, b, out=spare)
            np.maximum(a, b, out=b)
            work[i], spare = spare, a
        elif keep == "min":
            np.minimum(a, b, out=a)
        else:
            np.maximum(a, b, out=b)


def median(planes: np.ndarray, out: np.ndarray) -> None:
    """out = the middle value of every block of integer ``planes[:-1]`` (``planes[-1]``
    is scratch; all are overwritten); for an even count, the two middle values' mean
    rounded half up, computed without overflow."""
    work, n = list(planes[:-1]), len(planes) - 1
    low_at, high_at = (n - 1) // 2, n // 2
    _run(work, planes[-1], selection_network(n, tuple(sorted({low_at, high_at}))))
    low, high = work[low_at], work[high_at]
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
    work, n = list(planes[:-1]), len(planes) - 1
    _run(work, planes[-1], tuple((i, j, "both") for i, j in sorting_network(n)))
    np.copyto(out, work[0])
    counter = np.uint8 if n < 256 else np.uint32
    run = np.ones(out.shape, dtype=counter)
    longest = run.copy()
    same = np.empty(out.shape, dtype=bool)
    longer = np.empty(out.shape, dtype=bool)
    for previous, value in zip(work, work[1:]):
        np.equal(value, previous, out=same)
        np.multiply(run, same, out=run)  # a new value starts a run of one
        run += 1
        # strictly longer: of equally long runs the first, the smallest value, stays
        np.greater(run, longest, out=longer)
        np.maximum(longest, run, out=longest)
        np.copyto(out, value, where=longer)
