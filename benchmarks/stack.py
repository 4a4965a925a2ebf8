"""Scenarios on the light-sheet stack: cp of views, cold reads, renders, 8 readers, ImageJ."""

from __future__ import annotations

import os
import shutil

from benchmarks import commands
from benchmarks.contenders import Context, Sample, Unavailable, contender, contender_and_fuse3

FACTOR = 4
READER_VIEWS = ["x2", "x4", "x8", "x2-max", "x4-max", "x8-max", "x4-min", "x4-nearest"]
READERS_CACHE_MB = 64
IMAGEJ_JAR = "/usr/share/java/ij.jar"
IMAGEJ_PROBE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ImageJTimes.java")


def cp_view(ctx: Context, view: str, cold: bool = False, libfuse: int = 2,
            case_name: str = "stack") -> Sample:
    """``cp`` of ``view`` of a case's file through a fresh mount (warm source unless
    ``cold``)."""
    case = ctx.cases[case_name]
    with ctx.scratch() as out, ctx.mount(case, [view], libfuse=libfuse) as mnt:
        if cold:
            ctx.drop_caches()
        else:
            ctx.warm(case)
        seconds = commands.run(["cp", mnt.path(view, case.relfiles[0]), out])
        return Sample(seconds, daemon_mb=mnt.peak_rss_mb(), fds=mnt.open_fds())


def loop(ctx: Context, task: str, factor: int = FACTOR, case_name: str = "stack") -> Sample:
    """An in-process baseline ``task`` over a case's files (warm), writing one file."""
    case = ctx.cases[case_name]
    with ctx.scratch() as out:
        ctx.warm(case)
        return ctx.task(task, files=case.files, out=os.path.join(out, "result.raw"),
                        factor=factor)


@contender_and_fuse3("stack", "cp-x4-mean", "cp MNT/x4/stack.tif (fresh mount, warm source)",
                     baseline="memmap-area", fuse3_note="reads of up to 1 MiB")
def cp_mean(ctx: Context, libfuse: int) -> Sample:
    return cp_view(ctx, "x4", libfuse=libfuse)


@contender("stack", "memmap-area", "tifffile.memmap + cv2.resize(INTER_AREA) loop, to a file")
def memmap_area(ctx: Context) -> Sample:
    return loop(ctx, "memmap-area")


@contender("stack", "cp-x4-nearest", "cp MNT/x4-nearest/stack.tif (fresh mount, warm)",
           baseline="memmap-slice")
def cp_nearest(ctx: Context) -> Sample:
    return cp_view(ctx, "x4-nearest")


@contender("stack", "memmap-slice", "tifffile.memmap [::4, ::4] loop, to a file")
def memmap_slice(ctx: Context) -> Sample:
    return loop(ctx, "memmap-slice")


@contender("stack", "cold-cp-x4-mean", "cp MNT/x4/stack.tif after drop_caches",
           baseline="cold-cat")
def cold_cp(ctx: Context) -> Sample:
    return cp_view(ctx, "x4", cold=True)


@contender("stack", "cold-cat", "cat SOURCE/stack.tif after drop_caches")
def cold_cat(ctx: Context) -> Sample:
    ctx.drop_caches()
    return Sample(commands.run(["cat", *ctx.cases["stack"].files]))


def _render(ctx: Context, view: str) -> Sample:
    case = ctx.cases["stack"]
    with ctx.scratch() as out:
        ctx.warm(case)
        return ctx.task("render", source=case.files[0], out=os.path.join(out, "view.tif"),
                        view=view)


@contender("stack", "render-x4", "tifffs render --view x4 (mean), in-process, warm")
def render_x4(ctx: Context) -> Sample:
    return _render(ctx, "x4")


def _register_render(view: str) -> None:
    contender("stack", f"render-{view}", f"tifffs render --view {view}, in-process, warm",
              baseline="render-x4")(lambda ctx: _render(ctx, view))


for _view in ("x4-median", "x4-mode", "fit1000"):
    _register_render(_view)


@contender("stack", "8-readers", f"8 cat at once of 8 views ({', '.join(READER_VIEWS)}), "
           f"--cache-size {READERS_CACHE_MB}M")
def readers(ctx: Context) -> Sample:
    case = ctx.cases["stack"]
    with ctx.mount(case, READER_VIEWS, cache_mb=READERS_CACHE_MB) as mnt:
        ctx.warm(case)
        seconds = commands.run_parallel(
            [["cat", mnt.path(view, case.relfiles[0])] for view in READER_VIEWS])
        return Sample(seconds, daemon_mb=mnt.peak_rss_mb(), fds=mnt.open_fds())


def _imagej_opens(paths: list[str]) -> list[float]:
    if not shutil.which("java") or not os.path.exists(IMAGEJ_JAR):
        raise Unavailable("needs java and the imagej package's ij.jar (scripts/test installs "
                          "them)")
    status, out, err = commands.capture(["java", "-Djava.awt.headless=true", "-Xmx4g", "-cp",
                                         IMAGEJ_JAR, IMAGEJ_PROBE, *paths])
    lines = [line.split("\t") for line in out.splitlines()]
    times = [float(fields[2]) for fields in lines if fields[0] == "OPEN"]
    if status or len(times) != len(paths):
        failed = [fields[1] for fields in lines if fields[0] == "FAIL"]
        why = f"could not open {failed[0]}" if failed else commands.first_line(err)
        raise commands.CommandError(f"ImageJ (exit {status}): {why}")
    return times


@contender("imagej", "imagej-x4", "ImageJ 1.x IJ.openImage of MNT/x4/stack.tif (fresh "
           "mount), after the original in the same JVM", baseline="imagej-original",
           more=(("imagej-original", ("ImageJ 1.x IJ.openImage of the original (warm; a "
                                      "first open of it discarded as warm-up)"), None),))
def imagej(ctx: Context) -> dict[str, Sample]:
    case = ctx.cases["stack"]
    with ctx.mount(case, ["x4"]) as mnt:
        ctx.warm(case)
        source = case.files[0]
        _, original, view = _imagej_opens([source, source, mnt.path("x4", case.relfiles[0])])
        daemon = mnt.peak_rss_mb()
    return {"imagej-original": Sample(original), "imagej-x4": Sample(view, daemon_mb=daemon)}
