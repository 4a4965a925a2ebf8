"""Statistics of a running mount, as the text of ``MOUNTPOINT/.tifffs/stats``."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from tifffs.cache import CacheStats

STATS_DIR = "/.tifffs"
STATS_FILE = "/.tifffs/stats"


@dataclass
class ReadCounters:
    """Counters of the requests a mount served; ``add`` is thread-safe."""

    started: float = field(default_factory=time.monotonic)
    opens: int = 0
    getattrs: int = 0
    listed_attributes: int = 0  # attributes passed on by listings (readdirplus)
    reads: int = 0
    bytes_served: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, opens: int = 0, reads: int = 0, bytes_served: int = 0,
            getattrs: int = 0, listed_attributes: int = 0) -> None:
        with self._lock:
            self.opens += opens
            self.getattrs += getattrs
            self.listed_attributes += listed_attributes
            self.reads += reads
            self.bytes_served += bytes_served


def format_stats(counters: ReadCounters, bands: CacheStats, band_capacity: int,
                 errors_per_file: dict[str, int], errors_total: int | None = None,
                 more: dict[str, int] | None = None) -> str:
    """The stats file: ``name value`` lines, then one ``error <count> <file>`` per file.

    ``errors_total`` (``ProblemLog.errors_total``) also counts files no longer listed;
    without it, the total is that of the files listed. ``more`` adds ``name value`` lines.
    """
    if errors_total is None:
        errors_total = sum(errors_per_file.values())
    lines = [
        f"uptime_seconds {time.monotonic() - counters.started:.0f}",
        f"opens {counters.opens}",
        f"getattrs {counters.getattrs}",
        f"listed_attributes {counters.listed_attributes}",
        f"reads {counters.reads}",
        f"bytes_served {counters.bytes_served}",
        f"band_cache_hits {bands.hits}",
        f"band_cache_misses {bands.misses}",
        f"band_cache_evictions {bands.evictions}",
        f"band_cache_bytes {bands.weight}",
        f"band_cache_capacity_bytes {band_capacity}",
        f"band_cache_entries {bands.entries}",
        *(f"{name} {value}" for name, value in (more or {}).items()),
        f"errors {errors_total}",
    ]
    lines += [f"error {count} {path}" for path, count in sorted(errors_per_file.items())]
    return "\n".join(lines) + "\n"
