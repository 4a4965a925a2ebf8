"""Reused scratch memory: growable byte buffers whose arrays are views.

Work of the same size, band after band, then touches no new memory. On many VMs touching
new memory costs more than the work itself, and in a process of several threads handing
it back to the system (glibc's trimming) slows the other threads too.
"""

from __future__ import annotations

import math
from collections.abc import Hashable

import numpy as np


class ScratchBuffer:
    """A growable byte buffer whose arrays are views: each array is valid until the next
    one taken from the same buffer."""

    def __init__(self) -> None:
        self.data = np.empty(0, dtype=np.uint8)

    def array(self, shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
        dtype = np.dtype(dtype)
        nbytes = math.prod(shape) * dtype.itemsize
        if self.data.size < nbytes:
            self.data = np.empty(nbytes, dtype=np.uint8)
        return self.data[:nbytes].view(dtype).reshape(shape)


class Scratch:
    """The buffers of one render slot, by key: a number for each slice of source rows, a
    name for each intermediate of a kernel."""

    def __init__(self) -> None:
        self._buffers: dict[Hashable, ScratchBuffer] = {}

    def buffer(self, key: Hashable) -> ScratchBuffer:
        if key not in self._buffers:
            self._buffers[key] = ScratchBuffer()
        return self._buffers[key]

    def array(self, key: Hashable, shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
        """An array of buffer ``key``, valid until the next one taken from it."""
        return self.buffer(key).array(shape, dtype)

    def holds(self, array: np.ndarray) -> bool:
        """Whether ``array`` may lie in one of the buffers."""
        return any(np.may_share_memory(array, b.data) for b in self._buffers.values())

    def sizes(self) -> dict[Hashable, int]:
        """Bytes held by each buffer, by key."""
        return {key: b.data.size for key, b in self._buffers.items()}
