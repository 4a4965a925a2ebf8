"""Scenarios on many small files: listings with and without the index, find, cp -r."""

from __future__ import annotations

import os
import sys
import time

from benchmarks import commands
from benchmarks.contenders import Context, Sample, contender, contender_and_fuse3
from benchmarks.data import Case

FACTOR = 4
CACHE_MB = 256  # passed explicitly, so that the memory target's limit is known
DIR = "{dir}"  # in a command: the folder it works on (MNT/x4, or SOURCE for baselines)


def _index_dir(ctx: Context, name: str) -> str:
    path = os.path.join(ctx.workdir, f"index-{name}")
    os.makedirs(path, exist_ok=True)
    return path


def _prime(ctx: Context, case: Case, index_dir: str) -> None:
    """Bring ``index_dir`` up to date for ``case`` (untimed): tifffs index, else a listing."""
    if "index" in ctx.features:
        views = ["--factors", "4", "--views", "x4"] if "index --views" in ctx.features else []
        commands.run([sys.executable, "-m", "tifffs", "index", case.root,
                      "--index-dir", index_dir, *views])
        return
    with ctx.mount(case, ["x4"], CACHE_MB, index_dir) as mnt:
        commands.run(["ls", "-lR", mnt.path("x4")])


def _in(argv: list[str], folder: str) -> list[str]:
    """``argv`` with its DIR arguments replaced by ``folder``."""
    return [folder if a == DIR else a for a in argv]


def _on_mount(ctx: Context, case: Case, argv: list[str], libfuse: int,
              index_dir: str | None = None) -> Sample:
    """``argv`` on MNT/x4 of a new mount (warm source); its time, then the idle daemon's
    memory and descriptors."""
    with ctx.mount(case, ["x4"], CACHE_MB, index_dir, libfuse) as mnt:
        ctx.warm(case)
        seconds = commands.run(_in(argv, mnt.path("x4")))
        return Sample(seconds, daemon_mb=mnt.peak_rss_mb(), fds=mnt.open_fds())


def _indexed(ctx: Context, case: Case, argv: list[str], libfuse: int) -> Sample:
    """``argv`` on a new mount whose index is up to date."""
    ctx.require("--index-dir")
    index_dir = _index_dir(ctx, case.name)
    _prime(ctx, case, index_dir)
    return _on_mount(ctx, case, argv, libfuse, index_dir)


def _source(ctx: Context, case: Case, argv: list[str]) -> Sample:
    """``argv`` on the source folder, warm."""
    ctx.warm(case)
    return Sample(commands.run(_in(argv, case.root)))


def _scan(ctx: Context, case: Case) -> Sample:
    ctx.warm(case)
    return ctx.task("tifffile-scan", files=case.files)


def _touch(case: Case) -> None:
    """Give every source a new mtime, so that no index entry matches it any more."""
    stamp = time.time_ns()
    for i, path in enumerate(case.files):
        os.utime(path, ns=(stamp + i, stamp + i))


# -- 500 files of 5 x 256 x 256 in 10 folders --------------------------------------------
@contender_and_fuse3("files", "ls-lR-touched", "ls -lR MNT/x4 right after every source was "
                     "touched (stale index)", baseline="tifffile-scan")
def files_touched(ctx: Context, libfuse: int) -> Sample:
    """``ls -lR`` of x4 on a new mount right after every source was touched."""
    case = ctx.cases["files"]
    index_dir = _index_dir(ctx, f"files-touched-{libfuse}")
    if "--index-dir" in ctx.features:
        _prime(ctx, case, index_dir)
    _touch(case)
    return _on_mount(ctx, case, ["ls", "-lR", DIR], libfuse, index_dir)


@contender("files", "tifffile-scan", "tifffile: TiffFile + every page's shape, one process")
def files_scan(ctx: Context) -> Sample:
    return _scan(ctx, ctx.cases["files"])


@contender_and_fuse3("files", "ls-lR-indexed", "ls -lR MNT/x4 on a new mount, index up to "
                     "date", baseline="ls-lR-source", fuse3_note="listings carry attributes")
def files_indexed(ctx: Context, libfuse: int) -> Sample:
    return _indexed(ctx, ctx.cases["files"], ["ls", "-lR", DIR], libfuse)


@contender("files", "ls-lR-source", "ls -lR SOURCE")
def files_ls_source(ctx: Context) -> Sample:
    return _source(ctx, ctx.cases["files"], ["ls", "-lR", DIR])


@contender_and_fuse3("files", "cp-r-x4", "cp -r MNT/x4 (fresh mount)", baseline="loop-write")
def files_cp(ctx: Context, libfuse: int) -> Sample:
    with ctx.scratch() as out:
        return _on_mount(ctx, ctx.cases["files"], ["cp", "-r", DIR, out], libfuse)


@contender("files", "loop-write", "tifffile.imread + cv2.resize(INTER_AREA) + tifffile.imwrite "
           "of every file, one process")
def files_loop(ctx: Context) -> Sample:
    case = ctx.cases["files"]
    with ctx.scratch() as out:
        ctx.warm(case)
        return ctx.task("loop-write", root=case.root, relfiles=list(case.relfiles),
                        out=os.path.join(out, "x4"), factor=FACTOR)


# -- 20,000 files of 2 x 64 x 64 in one folder --------------------------------------------
@contender_and_fuse3("flat", "ls-l-indexed", "ls -l MNT/x4 on a new mount, index up to date",
                     baseline="ls-l-source", fuse3_note="listings carry attributes")
def flat_indexed(ctx: Context, libfuse: int) -> Sample:
    return _indexed(ctx, ctx.cases["flat"], ["ls", "-l", DIR], libfuse)


@contender("flat", "ls-l-source", "ls -l SOURCE")
def flat_ls_source(ctx: Context) -> Sample:
    return _source(ctx, ctx.cases["flat"], ["ls", "-l", DIR])


@contender_and_fuse3("flat", "ls-l-first", "ls -l MNT/x4, the first listing ever (empty "
                     "index)", baseline="tifffile-scan")
def flat_first(ctx: Context, libfuse: int) -> Sample:
    return _on_mount(ctx, ctx.cases["flat"], ["ls", "-l", DIR], libfuse)


@contender("flat", "tifffile-scan", "tifffile: TiffFile + every page's shape, one process")
def flat_scan(ctx: Context) -> Sample:
    return _scan(ctx, ctx.cases["flat"])


@contender_and_fuse3("flat", "find-x4", "find MNT/x4 -type f on a new mount, index up to "
                     "date", baseline="find-source")
def flat_find(ctx: Context, libfuse: int) -> Sample:
    return _indexed(ctx, ctx.cases["flat"], ["find", DIR, "-type", "f"], libfuse)


@contender("flat", "find-source", "find SOURCE -type f")
def flat_find_source(ctx: Context) -> Sample:
    return _source(ctx, ctx.cases["flat"], ["find", DIR, "-type", "f"])
