"""Views and the path layout of the mount: ``/<view>/<path relative to SOURCE>``. Pure.

The root holds one directory per view (``x2``, ``x4-max``, ``x4z2``, ``fit1000``...);
each mirrors the source tree. Files named ``*.tif``/``*.tiff`` (any case) are served as
views, other regular files unchanged.

View names::

    x<f>[z<zf>][-<method>]   factor f in Y and X (and zf along Z), e.g. x4, x4-max, x4z2
    fit<n>                   longest side n pixels, aspect kept, area-averaged
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from tifffs.methods import INTERPOLATING_METHODS, METHODS

TIFF_SUFFIXES = (".tif", ".tiff")
_TIFF_SUFFIXES_BYTES = tuple(s.encode() for s in TIFF_SUFFIXES)
MAX_FACTOR = 1024
MAX_FIT = 1 << 20
_FACTOR_VIEW = re.compile(r"x(\d+)(?:z(\d+))?(?:-([a-z]+))?")
_FIT_VIEW = re.compile(r"fit(\d+)")


@dataclass(frozen=True)
class View:
    """A top-level directory of the mount: how its files are made from their sources."""

    name: str
    method: str  # "area" for fit views
    factor: int = 1  # reduction in Y and X (factor views)
    z_factor: int = 1  # reduction along Z
    fit: int | None = None  # longest side in pixels (fit views)
    use_levels: bool = False  # start from a pyramid level that matches the factor
    imagej_large: bool = False  # views over 4 GiB in ImageJ's format instead of BigTIFF


class ViewError(ValueError):
    """An invalid view name; the message says what is expected."""


def parse_view(name: str, default_method: str) -> View:
    """The view named ``name`` (``x4``, ``x4-max``, ``x8z2-nearest``, ``fit1000``)."""
    match = _FACTOR_VIEW.fullmatch(name)
    if match:
        factor, z_factor = int(match.group(1)), int(match.group(2) or 1)
        method = match.group(3) or default_method
        if not 1 <= factor <= MAX_FACTOR or not 1 <= z_factor <= MAX_FACTOR:
            raise ViewError(f"invalid view {name!r}: factors go from 1 to {MAX_FACTOR}")
        if method not in METHODS:
            raise ViewError(f"invalid view {name!r}: unknown method {method!r} (choose "
                            f"from {', '.join(METHODS)})")
        if z_factor > 1 and method in INTERPOLATING_METHODS:
            raise ViewError(f"invalid view {name!r}: Z reduction works with block methods "
                            f"only, not {method}")
        return View(name, method, factor=factor, z_factor=z_factor)
    match = _FIT_VIEW.fullmatch(name)
    if match and 1 <= int(match.group(1)) <= MAX_FIT:
        return View(name, "area", fit=int(match.group(1)))
    raise ViewError(f"invalid view {name!r}: use x<factor>[z<factor>][-<method>] or "
                    "fit<pixels>, e.g. x4, x4-max, x4z2, fit1000")


def looks_like_view_name(name: str) -> bool:
    """True for a name shaped like a view's (``x4``, ``x4z2-max``, ``fit1000``), valid
    or not."""
    return bool(_FACTOR_VIEW.fullmatch(name) or _FIT_VIEW.fullmatch(name))


def views_for_factors(factors: tuple[int, ...], method: str) -> tuple[View, ...]:
    """One view ``x<f>`` per factor."""
    return tuple(View(f"x{f}", method, factor=f) for f in factors)


def is_tiff_name(name: str | bytes) -> bool:
    """True for names that are served as downsampled views."""
    if isinstance(name, bytes):
        return name.lower().endswith(_TIFF_SUFFIXES_BYTES)
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
