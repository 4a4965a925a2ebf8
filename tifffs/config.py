"""Mount options: parsed once from the command line and ``-o`` into a frozen dataclass."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from tifffs.downsample import METHODS
from tifffs.views import View, views_for_factors

DEFAULT_FACTORS = (2, 4, 8)
DEFAULT_METHOD = "mean"
DEFAULT_CACHE_BYTES = 256 << 20
MAX_FACTOR = 1024
#: ``-o`` options that mount(8) and fstab pass but that mean nothing to tifffs.
IGNORED_MOUNT_OPTIONS = {"ro", "rw", "defaults", "auto", "noauto", "nofail", "_netdev",
                         "user", "users", "nouser", "exec", "noexec", "atime", "noatime",
                         "relatime", "strictatime", "nodiratime"}
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class ConfigError(ValueError):
    """An invalid option; the message says which and what is expected."""


@dataclass(frozen=True)
class MountConfig:
    """Everything a mount needs, validated."""

    source: str
    mountpoint: str
    factors: tuple[int, ...] = DEFAULT_FACTORS
    method: str = DEFAULT_METHOD
    cache_bytes: int = DEFAULT_CACHE_BYTES
    foreground: bool = False
    debug: bool = False
    log_file: str | None = None
    fuse_options: dict[str, str | bool] = field(default_factory=dict)

    @property
    def views(self) -> tuple[View, ...]:
        return views_for_factors(self.factors, self.method)


def parse_size(text: str) -> int:
    """``512M``, ``2G``, ``1048576`` -> bytes (binary units; a trailing ``B``/``iB`` is fine)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*", text.upper())
    if not match:
        raise ConfigError(f"invalid size {text!r}: use a number with K, M, G or T, e.g. 512M")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])


def parse_factors(text: str) -> tuple[int, ...]:
    """``2,4,8`` or ``2:4:8`` -> (2, 4, 8): distinct integers from 1 to MAX_FACTOR, in order."""
    factors: list[int] = []
    for part in re.split(r"[,:]", text):
        part = part.strip().lower().removeprefix("x")
        if not part.isdigit() or not 1 <= int(part) <= MAX_FACTOR:
            raise ConfigError(
                f"invalid factor {part!r} in {text!r}: use integers from 1 to {MAX_FACTOR}, "
                "e.g. --factors 2,4,8")
        if int(part) not in factors:
            factors.append(int(part))
    if not factors:
        raise ConfigError("no factors given: use e.g. --factors 2,4,8")
    return tuple(factors)


def parse_method(text: str) -> str:
    if text not in METHODS:
        raise ConfigError(f"invalid method {text!r}: choose one of {', '.join(METHODS)}")
    return text


def split_mount_options(options: list[str]) -> tuple[dict[str, str], dict[str, str | bool]]:
    """Split ``-o`` lists into tifffs settings and libfuse options.

    tifffs settings: ``factors``, ``method``, ``cache_size``, ``log_file``, ``debug``,
    ``foreground``. Options mount(8) adds (``rw``, ``noauto``, ...) are dropped; all
    others (``allow_other``, ``uid=``...) go to libfuse.
    """
    ours: dict[str, str] = {}
    fuse: dict[str, str | bool] = {}
    for group in options:
        for item in group.split(","):
            key, sep, value = item.strip().partition("=")
            key = key.strip()
            if not key:
                continue
            normal = key.replace("-", "_")
            if normal in ("factors", "method", "cache_size", "log_file", "debug", "foreground"):
                ours[normal] = value if sep else "1"
            elif key not in IGNORED_MOUNT_OPTIONS:
                fuse[key] = value if sep else True
    return ours, fuse
