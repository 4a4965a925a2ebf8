"""A time-lapse of thousands of small frames: what each band costs beside its pixels."""

from __future__ import annotations

from benchmarks.contenders import Context, Sample, contender, contender_and_fuse3
from benchmarks.stack import cp_view, loop

FACTOR = 2


@contender_and_fuse3("timelapse", "cp-x2", "cp MNT/x2/timelapse.tif (fresh mount, warm source)",
                     baseline="memmap-area", fuse3_note="reads of up to 1 MiB")
def cp_x2(ctx: Context, libfuse: int) -> Sample:
    return cp_view(ctx, f"x{FACTOR}", libfuse=libfuse, case_name="timelapse")


@contender("timelapse", "memmap-area", "tifffile.memmap + cv2.resize(INTER_AREA) loop, to a "
           "file")
def memmap_area(ctx: Context) -> Sample:
    return loop(ctx, "memmap-area", FACTOR, case_name="timelapse")
