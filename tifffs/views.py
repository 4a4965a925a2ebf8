"""Path layout of the mount: ``/<view>/<path relative to SOURCE>``. Pure.

The root holds one directory per view (``x2``, ``x4``, ...); each mirrors the source
tree. Files named ``*.tif``/``*.tiff`` (any case) are served as views, other regular
files unchanged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

TIFF_SUFFIXES = (".tif", ".tiff")


@dataclass(frozen=True)
class View:
    """A top-level directory of the mount: sources reduced ``factor`` times by ``method``."""

    name: str
    factor: int
    method: str


def views_for_factors(factors: tuple[int, ...], method: str) -> tuple[View, ...]:
    """One view ``x<f>`` per factor."""
    return tuple(View(f"x{f}", f, method) for f in factors)


def is_tiff_name(name: str) -> bool:
    """True for names that are served as downsampled views."""
    return name.lower().endswith(TIFF_SUFFIXES)


@dataclass(frozen=True)
class MountPath:
    """A path inside the mount: the root, or a view and a path relative to SOURCE."""

    view: View | None
    relative: str  # "" for the view's top directory

    @property
    def is_root(self) -> bool:
        return self.view is None


def parse_mount_path(path: str, views: dict[str, View]) -> MountPath | None:
    """Split ``/x4/a/b.tif`` into (view x4, ``a/b.tif``); None if no such view or bad path."""
    parts = [p for p in path.split("/") if p]
    if not parts:
        return MountPath(None, "")
    view = views.get(parts[0])
    if view is None or any(p in (".", "..") for p in parts[1:]):
        return None
    return MountPath(view, "/".join(parts[1:]))


def source_path(root: str, relative: str) -> str:
    """The path in SOURCE for a path relative to it."""
    return os.path.join(root, relative) if relative else root


def is_inside(real_path: str, real_root: str) -> bool:
    """True when the resolved ``real_path`` lies within the resolved ``real_root``."""
    return real_path == real_root or real_path.startswith(real_root.rstrip(os.sep) + os.sep)
