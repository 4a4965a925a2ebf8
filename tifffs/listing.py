"""A folder's listing as the FUSE adapters pass it on: names, types and inode numbers.

The columns are plain lists, so that a folder of 20,000 files costs no object per name:
the adapters hand each name (bytes, as the source's file system has it) to libfuse's
filler with its type and inode number, nothing else.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

#: The mode of "." and "..": readdir passes no attributes for them.
NO_ATTRIBUTES = 0


class Entry(NamedTuple):
    """One name of a listing, with the attributes ``readdir`` passes on (type, inode)."""

    name: str
    attributes: dict[str, Any] | None


@dataclass(slots=True)
class Listing:
    """The names of a folder of the mount, "." and ".." first, with the type
    (``st_mode``, ``NO_ATTRIBUTES`` for the two) and inode number of each."""

    names: list[bytes]
    modes: list[int]
    inodes: list[int]

    @classmethod
    def with_dots(cls, names: list[bytes], modes: list[int], inodes: list[int]) -> Listing:
        """The listing of these names, after "." and ".."."""
        return cls([b".", b"..", *names], [NO_ATTRIBUTES] * 2 + modes, [0, 0, *inodes])

    def __len__(self) -> int:
        return len(self.names)

    def attributes(self, position: int) -> dict[str, Any] | None:
        """The type and inode number of the name at ``position`` (None for "." and "..")."""
        mode = self.modes[position]
        return None if mode == NO_ATTRIBUTES else {"st_mode": mode,
                                                   "st_ino": self.inodes[position]}

    def __iter__(self) -> Iterator[Entry]:
        """The entries with their names decoded (os.fsdecode)."""
        for position, name in enumerate(self.names):
            yield Entry(os.fsdecode(name), self.attributes(position))
