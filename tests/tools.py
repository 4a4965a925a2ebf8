"""The programs and mounts the tests drive: one place to find a tool or read the mount
table. A missing tool fails the test (never a skip): scripts/test installs them all."""

from __future__ import annotations

import re
import shutil
from typing import NamedTuple

INSTALL_HINT = "run scripts/test, which installs it"


class MissingTool(AssertionError):
    """A program the tests need is not installed."""


def require(name: str, error: type[AssertionError] = MissingTool) -> str:
    """The path of the program ``name``; raise ``error`` (a failure) when it is missing."""
    path = shutil.which(name)
    if path is None:
        raise error(f"{name} not found: {INSTALL_HINT}")
    return path


class MountEntry(NamedTuple):
    source: str
    point: str
    type: str
    options: tuple[str, ...]


def mount_table() -> list[MountEntry]:
    """/proc/self/mounts, with the octal escapes of its fields undone."""
    def unescape(field: str) -> str:
        return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)

    entries = []
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) >= 4:
                entries.append(MountEntry(unescape(fields[0]), unescape(fields[1]), fields[2],
                                          tuple(fields[3].split(","))))
    return entries
