"""A time-lapse of thousands of small frames: what each band costs beside its pixels."""

from __future__ import annotations

import os

from benchmarks import commands
from benchmarks.contenders import Context, Sample, contender, contender_and_fuse3

FACTOR = 2


@contender_and_fuse3("timelapse", "cp-x2", "cp MNT/x2/timelapse.tif (fresh mount, warm source)",
                     baseline="memmap-area", fuse3_note="reads of up to 1 MiB")
def cp_x2(ctx: Context, libfuse: int) -> Sample:
    case = ctx.cases["timelapse"]
    with ctx.scratch() as out, ctx.mount(case, [f"x{FACTOR}"], libfuse=libfuse) as mnt:
        ctx.warm(case)
        seconds = commands.run(["cp", mnt.path(f"x{FACTOR}", case.relfiles[0]), out])
        return Sample(seconds, daemon_mb=mnt.peak_rss_mb(), fds=mnt.open_fds())


@contender("timelapse", "memmap-area", "tifffile.memmap + cv2.resize(INTER_AREA) loop, to a "
           "file")
def memmap_area(ctx: Context) -> Sample:
    case = ctx.cases["timelapse"]
    with ctx.scratch() as out:
        ctx.warm(case)
        return ctx.task("memmap-area", files=case.files, out=os.path.join(out, "result.raw"),
                        factor=FACTOR)
