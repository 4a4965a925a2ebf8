"""One big page (1 GiB in the full run): the daemon's memory while views of it are copied."""

from __future__ import annotations

from benchmarks import commands
from benchmarks.contenders import Context, Sample, contender

#: The views copied one after the other: a block method at three factors, a sorting
#: network, and a fit view (its bands are not aligned to the tiles' rows).
PAGE_VIEWS = ["x2", "x4", "x8", "x4-median", "fit1000"]
PAGE_CACHE_MB = 64


def _cp_views(ctx: Context, name: str) -> Sample:
    case = ctx.cases["page"]
    with ctx.scratch() as out, ctx.mount(case, PAGE_VIEWS, cache_mb=PAGE_CACHE_MB) as mnt:
        ctx.warm(case)
        seconds = sum(commands.run(["cp", mnt.path(view, name), out]) for view in PAGE_VIEWS)
        return Sample(seconds, daemon_mb=mnt.peak_rss_mb(), fds=mnt.open_fds())


@contender("page", "page-uncompressed", f"cp of {', '.join(PAGE_VIEWS)} of the uncompressed "
           f"page, one after the other, --cache-size {PAGE_CACHE_MB}M")
def uncompressed(ctx: Context) -> Sample:
    return _cp_views(ctx, "page.tif")


@contender("page", "page-tiles", "the same for the page in zlib tiles of 512 x 512")
def tiles(ctx: Context) -> Sample:
    return _cp_views(ctx, "tiles.tif")
