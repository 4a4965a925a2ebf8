"""Which source pages make each output page of a view that also reduces along Z. Pure."""

from __future__ import annotations

import math

import numpy as np

from tifffs.arith import ceil_div
from tifffs.errors import UnsupportedSource

#: A lone page axis with one of these letters is not a Z axis (channels, samples, time).
_NOT_Z = "CSTE"


def z_axis(axes: str) -> int:
    """Position of the Z axis among the page axes (``TZC``, ``Q``...); raise if none."""
    if "Z" in axes:
        return axes.index("Z")
    if len(axes) == 1 and axes not in _NOT_Z:
        return 0  # a plain stack of pages
    raise UnsupportedSource(f"no Z axis among the page axes {axes!r}: Z reduction needs a "
                            "z-stack")


def z_blocks(axes: str, shape: tuple[int, ...], z_factor: int) -> list[tuple[int, ...]]:
    """For each output page, in order, the source page indices whose slices it reduces.

    ``axes``/``shape`` describe the page axes of the stack (e.g. ``TZC``, (2, 5, 3)),
    pages stored in C order. The Z axis is cut into runs of ``z_factor`` consecutive
    slices of the same channel and time point; the last run keeps the slices that exist.
    """
    z = z_axis(axes)
    index = np.moveaxis(np.arange(math.prod(shape)).reshape(shape), z, -1)
    out_shape = list(shape)
    out_shape[z] = ceil_div(shape[z], z_factor)
    blocks = []
    for position in np.ndindex(*out_shape):
        run = position[z]
        others = position[:z] + position[z + 1:]
        slices = index[others][run * z_factor:(run + 1) * z_factor]
        blocks.append(tuple(int(i) for i in slices))
    return blocks
