"""The text of ``.tifffs/stats`` and the read counters, on their own."""

from __future__ import annotations

import threading

from tifffs.cache import CacheStats
from tifffs.stats import ReadCounters, format_stats


def _fields(text: str) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in text.splitlines() if not line.startswith("error "))


def test_format_stats_lists_counters_then_one_line_per_failing_file():
    counters = ReadCounters()
    counters.add(opens=2, reads=5, bytes_served=4096, getattrs=9, listed_attributes=6)
    bands = CacheStats(hits=7, misses=3, evictions=1, weight=1024, entries=2)
    text = format_stats(counters, bands, 1 << 20, {"/b.tif": 1, "/a c.tif": 2},
                        more={"sources_open": 4})
    assert text.endswith("\n")
    fields = _fields(text)
    assert int(fields.pop("uptime_seconds")) >= 0
    assert fields == {"opens": "2", "getattrs": "9", "listed_attributes": "6", "reads": "5", "bytes_served": "4096",
                      "sources_open": "4",
                      "band_cache_hits": "7", "band_cache_misses": "3",
                      "band_cache_evictions": "1", "band_cache_bytes": "1024",
                      "band_cache_capacity_bytes": "1048576", "band_cache_entries": "2",
                      "errors": "3"}
    assert text.splitlines()[-2:] == ["error 2 /a c.tif", "error 1 /b.tif"]


def test_errors_total_counts_files_no_longer_listed():
    text = format_stats(ReadCounters(), CacheStats(), 0, {"/a.tif": 1}, errors_total=40)
    assert _fields(text)["errors"] == "40"
    assert "error 1 /a.tif" in text.splitlines()


def test_read_counters_add_is_thread_safe():
    counters = ReadCounters()

    def work():
        for _ in range(2000):
            counters.add(reads=1, bytes_served=3)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (counters.reads, counters.bytes_served) == (8000, 24000)
