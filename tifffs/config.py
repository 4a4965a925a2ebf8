"""Mount options: parsed once from the command line and ``-o`` into a frozen dataclass."""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass, field, replace

from tifffs.methods import METHODS
from tifffs.views import (
    MAX_FACTOR,
    View,
    ViewError,
    looks_like_view_name,
    parse_view,
    views_for_factors,
)

DEFAULT_FACTORS = (2, 4, 8)
DEFAULT_METHOD = "mean"
DEFAULT_CACHE_BYTES = 256 << 20
#: ``-o`` options that mount(8) and fstab pass but that mean nothing to tifffs.
IGNORED_MOUNT_OPTIONS = {"ro", "rw", "defaults", "auto", "noauto", "nofail", "_netdev",
                         "user", "users", "nouser", "exec", "noexec", "atime", "noatime",
                         "relatime", "strictatime", "nodiratime"}
#: The ``-o`` settings of tifffs, as written in ``-o`` (with ``=``: it takes a value).
MOUNT_SETTINGS = ("foreground", "factors=", "views=", "method=", "use_levels",
                  "imagej_large", "cache_size=", "index_dir=", "no_index", "render_threads=",
                  "libfuse=", "log_file=", "debug")
_SETTING_NAMES = frozenset(setting.rstrip("=") for setting in MOUNT_SETTINGS)
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class ConfigError(ValueError):
    """An invalid option; the message says which and what is expected."""


@dataclass(frozen=True)
class MountConfig:
    """Everything a mount needs, validated."""

    source: str
    mountpoint: str
    factors: tuple[int, ...] | None = None  # None: the default, unless views are named
    view_names: tuple[str, ...] = ()
    method: str = DEFAULT_METHOD
    use_levels: bool = False
    imagej_large: bool = False
    cache_bytes: int = DEFAULT_CACHE_BYTES
    foreground: bool = False
    debug: bool = False
    log_file: str | None = None
    index_dir: str | None = None  # None: $XDG_CACHE_HOME/tifffs or ~/.cache/tifffs
    no_index: bool = False
    libfuse: int = 2  # 3: mfusepy over libfuse 3 (readdirplus, 1 MiB reads)
    render_threads: int | None = None  # None: one per core this process may run on
    fuse_options: dict[str, str | bool] = field(default_factory=dict)

    @property
    def views(self) -> tuple[View, ...]:
        """The factor views, then the named views (each name once)."""
        factors = self.factors
        if factors is None and not self.view_names:
            factors = DEFAULT_FACTORS
        views = list(views_for_factors(factors or (), self.method))
        for name in self.view_names:
            if name not in {v.name for v in views}:
                views.append(parse_view(name, self.method))
        return tuple(replace(v, use_levels=self.use_levels, imagej_large=self.imagej_large)
                     for v in views)


#: The largest band of uncompressed rows: it reads at most 16 MiB of source rows (x1 views
#: keep them all). Bands of compressed strips or tiles cover whole rows of them, and may
#: reach 64 MiB.
LARGEST_BAND_BYTES = 16 << 20


def cache_size_at_least_a_band(size: int) -> tuple[int, str | None]:
    """``size``, and a message when it is smaller than the largest band: the cache then
    keeps only the band read last (so a sequential reader still renders each band once)."""
    if size >= LARGEST_BAND_BYTES:
        return size, None
    return size, (f"--cache-size {size} bytes is less than the largest band "
                  f"({LARGEST_BAND_BYTES >> 20}M): larger bands are kept one at a time")


def check_source(source: str) -> None:
    """Raise ``ConfigError`` saying what to do unless ``source`` is a directory."""
    if not os.path.isdir(source):
        what = "does not exist" if not os.path.exists(source) else "is not a directory"
        raise ConfigError(f"SOURCE {source} {what}: give the directory of your TIFFs")


def parse_size(text: str) -> int:
    """``512M``, ``2G``, ``1048576`` -> bytes (binary units; a trailing ``B``/``iB`` is fine)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*", text.upper())
    if not match:
        raise ConfigError(f"invalid size {text!r}: use a number with K, M, G or T, e.g. 512M")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])


def parse_factors(text: str) -> tuple[int, ...]:
    """``2,4,8`` or ``2:4:8`` -> (2, 4, 8): distinct integers from 1 to MAX_FACTOR, in order."""
    factors: list[int] = []
    for item in _list_items(text, "factor", "--factors 2,4,8"):
        digits = item.lower().removeprefix("x")
        if not digits.isdigit() or not 1 <= int(digits) <= MAX_FACTOR:
            where = f" in {text!r}" if item != text.strip() else ""
            raise ConfigError(
                f"invalid factor {item!r}{where}: use integers from 1 to {MAX_FACTOR}, "
                "e.g. --factors 2,4,8")
        if int(digits) not in factors:
            factors.append(int(digits))
    return tuple(factors)


def parse_views(text: str, method: str) -> tuple[str, ...]:
    """``x4,x4-max,fit1000`` (or ``:``-separated) -> view names, each checked."""
    names = tuple(_list_items(text, "view", "--views x4,x4-max,x4z2,fit1000"))
    for name in names:
        try:
            parse_view(name, method)
        except ViewError as exc:
            raise ConfigError(str(exc)) from None
    return names


def _list_items(text: str, what: str, example: str) -> list[str]:
    """The items of a ``,``- or ``:``-separated list; an empty list or item is refused
    (it would otherwise mean the default, or nothing)."""
    items = [item.strip() for item in re.split(r"[,:]", text)]
    if not any(items):
        raise ConfigError(f"no {what}s given: use e.g. {example}")
    if not all(items):
        raise ConfigError(f"empty {what} in {text!r} (two separators in a row, or one at "
                          f"an end): use e.g. {example}")
    return items


def parse_libfuse(text: str) -> int:
    """The libfuse major version to mount with: 2 or 3."""
    if text.strip() not in ("2", "3"):
        raise ConfigError(f"invalid libfuse {text!r}: choose 2 (fusepy, the default) or 3 "
                          "(mfusepy: listings with attributes, larger reads)")
    return int(text)


def parse_cores(text: str, what: str, option: str) -> int:
    """A number of cores (``what``, given with ``option``): an integer from 1 up."""
    if not text.strip().isdigit() or int(text) < 1:
        raise ConfigError(f"invalid {what} {text!r}: use a number of cores from 1 up, "
                          f"e.g. {option} 4")
    return int(text)


def parse_render_threads(text: str) -> int:
    """How many bands render at once (``--render-threads``)."""
    return parse_cores(text, "render threads", "--render-threads")


def parse_method(text: str) -> str:
    if text not in METHODS:
        raise ConfigError(f"invalid method {text!r}: choose one of {', '.join(METHODS)}")
    return text


def split_mount_options(options: list[str]) -> tuple[dict[str, str], dict[str, str | bool]]:
    """Split ``-o`` lists into tifffs settings (``MOUNT_SETTINGS``) and libfuse options.

    Options mount(8) adds (``rw``, ``noauto``, ...) are dropped; all others
    (``allow_other``, ``uid=``...) go to libfuse. ``-o factors=2,4`` is refused: the
    comma ends the setting (lists take ``:`` inside ``-o``).
    """
    ours: dict[str, str] = {}
    fuse: dict[str, str | bool] = {}
    for group in options:
        items = group.split(",")
        for position, item in enumerate(items):
            key, sep, value = item.strip().partition("=")
            key = key.strip()
            if not key:
                continue
            normal = key.replace("-", "_")
            if normal in _SETTING_NAMES:
                if normal in ("factors", "views") and sep:
                    _refuse_comma_list(normal, value.strip(), items[position + 1:])
                ours[normal] = value if sep else "1"
            elif key not in IGNORED_MOUNT_OPTIONS:
                fuse[key] = value if sep else True
    return ours, fuse


def _refuse_comma_list(name: str, value: str, rest: list[str]) -> None:
    """Refuse ``-o factors=2,4``, whose ``4`` would go to libfuse as an unknown option."""
    run = list(itertools.takewhile(_is_list_item, (item.strip() for item in rest)))
    if run:
        listed = [value, *run]
        raise ConfigError(f"-o {name}={','.join(listed)}: inside -o, separate {name} with "
                          f"':' ({name}={':'.join(listed)})")


def _is_list_item(item: str) -> bool:
    """True for a bare factor or view name: an item of a list, not a libfuse option."""
    return item.isdigit() or looks_like_view_name(item.lower())
