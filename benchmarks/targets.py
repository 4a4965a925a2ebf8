"""The targets of issues 9, 10 and 12, as data: what is compared with what, and the limit.

A target is met when ``measured / baseline <= max_ratio``. ``measured`` and ``baseline``
name entries as "scenario/entry"; a number as baseline is an absolute limit in the
metric's unit. The metric is the median of the entry's runs for times ("s"), and the
largest value over its runs for peaks ("daemon_mb", "fds").
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from benchmarks import listing, page, stack

BUDGET_MB = 150  # the daemon's own memory beside its band cache


@dataclass(frozen=True)
class Target:
    """``measured`` at most ``max_ratio`` times ``baseline`` (an entry or a number)."""

    issue: int
    text: str
    measured: str
    baseline: str | float
    max_ratio: float
    metric: str = "s"


def _fuse3(target: Target) -> Target:
    """``target`` for the measured contender's ``--libfuse 3`` variant (``NAME-fuse3``)."""
    return replace(target, text=f"{target.text} (--libfuse 3)",
                   measured=f"{target.measured}-fuse3")


def _and_fuse3(target: Target) -> tuple[Target, Target]:
    """``target``, then the same for the ``--libfuse 3`` variant."""
    return target, _fuse3(target)


_CP_X4_MEAN = Target(10, "cp x4 mean <= 1.0x memmap + INTER_AREA", "stack/cp-x4-mean",
                     "stack/memmap-area", 1.0)

TARGETS: tuple[Target, ...] = (
    # issue 10: render at memory speed
    _CP_X4_MEAN,
    Target(10, "cp x4 nearest <= 1.2x memmap [::4, ::4]", "stack/cp-x4-nearest",
           "stack/memmap-slice", 1.2),
    _fuse3(_CP_X4_MEAN),
    Target(10, "cold cp x4 mean <= 1.0x cold cat of the source", "stack/cold-cp-x4-mean",
           "stack/cold-cat", 1.0),
    Target(10, "render x4-median <= 3x render x4", "stack/render-x4-median", "stack/render-x4",
           3.0),
    Target(10, "render x4-mode <= 3x render x4", "stack/render-x4-mode", "stack/render-x4",
           3.0),
    Target(10, "render fit1000 <= 3x render x4", "stack/render-fit1000", "stack/render-x4",
           3.0),
    Target(10, f"8 readers of 8 views: daemon peak <= {BUDGET_MB} MB + cache "
           f"({stack.READERS_CACHE_MB} MB)", "stack/8-readers",
           BUDGET_MB + stack.READERS_CACHE_MB, 1.0, "daemon_mb"),
    Target(10, "ImageJ opens x4 in <= 1/8 of the original's time", "imagej/imagej-x4",
           "imagej/imagej-original", 1 / 8),
    Target(10, f"one big page, uncompressed: daemon peak <= {BUDGET_MB} MB + cache "
           f"({page.PAGE_CACHE_MB} MB)", "page/page-uncompressed",
           BUDGET_MB + page.PAGE_CACHE_MB, 1.0, "daemon_mb"),
    Target(10, f"one big page in zlib tiles: daemon peak <= {BUDGET_MB} MB + cache "
           f"({page.PAGE_CACHE_MB} MB)", "page/page-tiles",
           BUDGET_MB + page.PAGE_CACHE_MB, 1.0, "daemon_mb"),
    # issue 9: many files, the index, descriptors
    *_and_fuse3(Target(9, "10 folders: ls -lR x4 after touching <= 1.0x tifffile scan",
                       "files/ls-lR-touched", "files/tifffile-scan", 1.0)),
    *_and_fuse3(Target(9, "10 folders: ls -lR x4, index present <= 10x ls -lR SOURCE",
                       "files/ls-lR-indexed", "files/ls-lR-source", 10.0)),
    *_and_fuse3(Target(9, "10 folders: cp -r x4 <= 1.2x tifffile + OpenCV loop",
                       "files/cp-r-x4", "files/loop-write", 1.2)),
    *_and_fuse3(Target(9, "one folder: ls -l x4, index present <= 10x ls -l SOURCE",
                       "flat/ls-l-indexed", "flat/ls-l-source", 10.0)),
    *_and_fuse3(Target(9, "one folder: first listing ever <= 1.0x tifffile scan",
                       "flat/ls-l-first", "flat/tifffile-scan", 1.0)),
    *_and_fuse3(Target(9, "one folder: find x4 -type f <= 5x find SOURCE", "flat/find-x4",
                       "flat/find-source", 5.0)),
    Target(9, "one folder: idle daemon after the first listing <= 32 descriptors",
           "flat/ls-l-first", 32, 1.0, "fds"),
    Target(9, f"one folder: daemon peak <= {BUDGET_MB} MB + cache ({listing.CACHE_MB} MB)",
           "flat/ls-l-first", BUDGET_MB + listing.CACHE_MB, 1.0, "daemon_mb"),
    # issue 12: whole trees
    Target(12, "tree render: --jobs 2 at least 1.7x faster than --jobs 1", "tree/render-jobs2",
           "tree/render-jobs1", 1 / 1.7),
    Target(12, "tree render on 2 local dask workers <= 1.3x --jobs 2", "tree/render-dask",
           "tree/render-jobs2", 1.3),
)
