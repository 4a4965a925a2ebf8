"""What bounds the daemon's memory beyond the band cache: the render pool (in process, and
its size through a mount)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import tifffile

from conftest import mounted, sample_array, wait_for, write_stack
from tifffs import open_view
from tifffs.cache import LruCache
from tifffs.errors import BrokenSource
from tifffs.render import RenderPool
from tools import mount_stats

WAIT = 10.0  # seconds: only a hang detector


def _whole_view(path, view: str) -> bytes:
    """Every byte of ``view`` of the file at ``path``, read at once through ``open_view``."""
    with open_view(str(path), view=view) as opened:
        return opened.read(0, opened.size)


def _count_decodes(monkeypatch) -> list[int]:
    """The index of every strip or tile decoded from now on."""
    from tifffs import pixels

    decoded: list[int] = []
    real_decoded = pixels._decoded

    def counting(page, decode, chunk, index):
        decoded.append(index)
        return real_decoded(page, decode, chunk, index)

    monkeypatch.setattr(pixels, "_decoded", counting)
    return decoded


def _count_renders(monkeypatch) -> list[int]:
    """The (first) source page of every band a view renders from now on, alone or in a
    stack of whole pages (a stack that fails is rendered again band by band)."""
    from tifffs import virtual

    renders: list[int] = []
    real_render_band, real_render_stack = virtual.render_band, virtual.render_stack

    def counting(source, plan, plane, band, scratch):
        renders.append(plan.sources[0])
        return real_render_band(source, plan, plane, band, scratch)

    def counting_stack(source, plans, plane, scratch):
        bands = real_render_stack(source, plans, plane, scratch)
        renders.extend(plan.sources[0] for plan in plans)
        return bands

    monkeypatch.setattr(virtual, "render_band", counting)
    monkeypatch.setattr(virtual, "render_stack", counting_stack)
    return renders


def _count_stacks(monkeypatch) -> list[int]:
    """The number of pages of every stack a view renders from now on."""
    from tifffs import virtual

    stacks: list[int] = []
    real_render_stack = virtual.render_stack

    def counting(source, plans, plane, scratch):
        stacks.append(len(plans))
        return real_render_stack(source, plans, plane, scratch)

    monkeypatch.setattr(virtual, "render_stack", counting)
    return stacks


def _record_preads(monkeypatch) -> list[int]:
    """The size of every ``os.pread`` and ``os.preadv`` of a source from now on."""
    from tifffs import pixels

    sizes: list[int] = []
    real_pread, real_preadv = os.pread, os.preadv

    def recording_pread(fd, size, offset):
        sizes.append(size)
        return real_pread(fd, size, offset)

    def recording_preadv(fd, buffers, offset, *flags):
        sizes.append(sum(memoryview(b).nbytes for b in buffers))
        return real_preadv(fd, buffers, offset, *flags)

    monkeypatch.setattr(pixels.os, "pread", recording_pread)
    monkeypatch.setattr(pixels.os, "preadv", recording_preadv)
    return sizes


def _record_slots(monkeypatch) -> list[dict]:
    """For every render slot taken from now on, the bytes each of its scratch buffers then
    held: numbers for rows of source pixels, names for a kernel's intermediates."""
    held: list[dict] = []
    real_run = RenderPool.run

    def recording_run(self, render):
        def with_scratch(scratch):
            try:
                return render(scratch)
            finally:
                held.append(scratch.sizes())
        return real_run(self, with_scratch)

    monkeypatch.setattr(RenderPool, "run", recording_run)
    return held


def test_at_most_slots_bands_render_at_once_each_with_its_own_buffers():
    pool = RenderPool(slots=2)
    running, peak, arrived, lock = [0], [0], [0], threading.Lock()
    gate = threading.Event()
    seen_scratch: set[int] = set()

    def render(scratch) -> np.ndarray:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            seen_scratch.add(id(scratch))
        assert gate.wait(WAIT), "the test did not open the gate"
        with lock:
            running[0] -= 1
        return np.zeros(1)

    def arrive_and_run() -> None:
        with lock:
            arrived[0] += 1
        pool.run(render)

    threads = [threading.Thread(target=arrive_and_run) for _ in range(8)]
    for thread in threads:
        thread.start()
    # the gate stays shut until both slots are busy and every render has asked for one
    wait_for(lambda: running[0] == 2 and arrived[0] == 8, WAIT, "both slots busy")
    gate.set()
    for thread in threads:
        thread.join(WAIT)
    assert not any(thread.is_alive() for thread in threads)
    assert peak[0] == 2
    assert len(seen_scratch) == 2  # two sets of buffers, reused by all eight renders


def test_renders_ahead_queue_at_most_two_per_slot_and_drop_the_rest():
    pool = RenderPool(slots=2)
    gate = threading.Event()
    accepted = [pool.submit(lambda: gate.wait(5)) for _ in range(10)]
    try:
        assert accepted.count(True) == 4 and accepted[4:] == [False] * 6
    finally:
        gate.set()
        pool.shutdown()


def test_a_buffer_grows_once_and_is_reused():
    from tifffs.scratch import ScratchBuffer

    buffer = ScratchBuffer()
    first = buffer.array((64, 128, 1), np.dtype("<u2"))
    data = buffer.data
    second = buffer.array((32, 128, 1), np.dtype("<u2"))
    assert buffer.data is data and np.shares_memory(first, second)


def test_read_ahead_starts_after_four_bands_and_survives_slightly_out_of_order_reads():
    from tifffs.readahead import SequentialReadAhead

    strategy = SequentialReadAhead(depth=2)
    band_bytes = 1 << 18
    asked = [strategy.after_read(i * band_bytes, (i + 1) * band_bytes, (0, 0, i))
             for i in range(4)]
    assert asked == [0, 0, 0, 2] and strategy.stats.runs_started == 1
    # the kernel's concurrent read-ahead: a request a little behind the last one
    assert strategy.after_read(3 * band_bytes + 4096, 4 * band_bytes, (0, 0, 3)) == 2
    assert strategy.after_read(5 * band_bytes, 6 * band_bytes, (0, 0, 5)) == 2
    # a jump elsewhere (a look at another page) starts over
    assert strategy.after_read(100 * band_bytes, 101 * band_bytes, (0, 0, 100)) == 0


def test_shutdown_renders_the_queued_bands_their_readers_wait_for():
    """A band queued ahead holds its key in the cache: a reader waiting for it gets it
    even when the pool shuts down meanwhile (a cancelled task would leave it waiting)."""
    pool = RenderPool(slots=1)
    cache: LruCache[str] = LruCache(10)
    gate = threading.Event()
    assert pool.submit(lambda: gate.wait(WAIT))  # the only thread is busy
    cache.prefetch("band", lambda: "rendered", pool.submit)
    got: list[str] = []
    # daemon threads: were the reader left waiting, the test fails instead of hanging
    reader = threading.Thread(target=lambda: got.append(cache.get("band", lambda: "own")),
                              daemon=True)
    reader.start()
    wait_for(lambda: cache.stats().misses == 1, WAIT, "the reader to wait")
    stopping = threading.Thread(target=pool.shutdown, daemon=True)
    stopping.start()
    gate.set()
    reader.join(WAIT)
    stopping.join(WAIT)
    assert got == ["rendered"]
    assert not stopping.is_alive()


def test_by_default_one_slot_per_core_this_process_may_run_on():
    """Not os.cpu_count(): a daemon confined to one core (taskset, a batch system's
    cpuset) renders one band at a time instead of one per core of the machine."""
    assert RenderPool().slots == len(os.sched_getaffinity(0))
    program = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
               "from tifffs.render import RenderPool; print(RenderPool().slots)")
    confined = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                              check=True)
    assert confined.stdout.strip() == "1", confined


@pytest.mark.parametrize("options, slots", [((), None), (("--render-threads", "1"), 1),
                                            (("-o", "render_threads=3"), 3)])
def test_render_threads_option_sets_the_slots_of_a_mount(tmp_path, options, slots):
    source = tmp_path / "src"
    write_stack(source / "stack.tif", sample_array("uint16", (3, 300, 200)))
    with mounted(source, tmp_path / "work", *options) as mount:
        stats = mount_stats(mount)
        assert stats["render_threads"] == (slots or len(os.sched_getaffinity(0))), stats
        expected = open_view(str(source / "stack.tif"), view="x4")
        try:
            assert mount.path.joinpath("x4", "stack.tif").read_bytes() == expected.read(
                0, expected.size)
        finally:
            expected.close()


def test_without_cpu_affinity_the_machines_cores(monkeypatch):
    """Where the system has no sched_getaffinity (macOS), the machine's cores."""
    from tifffs.pools import available_cores

    monkeypatch.delattr(os, "sched_getaffinity")
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert available_cores() == 6 and RenderPool().slots == 6


def test_compressed_neighbours_are_read_a_bounded_run_at_a_time(tmp_path, monkeypatch):
    """A row of tiles of a slide scan holds tens of MB of compressed bytes: each render
    slot reads at most MAX_RUN_BYTES of neighbouring tiles at once (or one tile larger
    than that), and the pixels are those of an unbounded read."""
    from tifffs import pixels

    path = tmp_path / "tiled.tif"
    write_stack(path, sample_array("uint16", (2, 256, 512)), tile=(64, 64), compression="zlib")
    whole = open_view(str(path), 2, "mean")
    try:
        expected = whole.read(0, whole.size)
    finally:
        whole.close()
    monkeypatch.setattr(pixels, "MAX_RUN_BYTES", 16 << 10)
    sizes = _record_preads(monkeypatch)
    view = open_view(str(path), 2, "mean")
    try:
        assert view.read(0, view.size) == expected
    finally:
        view.close()
    tiles = tifffile.TiffFile(path).pages[0].databytecounts
    runs = [s for s in sizes if s > 4096]  # the IFD reads are a few KiB
    assert runs and max(runs) <= max(16 << 10, max(tiles)), (max(runs), max(tiles))
    assert len(runs) > 2 * 256 // 64  # more than one read per row of tiles


@pytest.mark.parametrize("with_buffer", [False, True])
def test_runs_of_compressed_bytes_take_one_run_of_memory_at_a_time(tmp_path, monkeypatch,
                                                                    with_buffer):
    """A row of tiles is read a run of neighbours at a time: into the render slot's run
    buffer, reused run after run (never larger than MAX_RUN_BYTES), or, without one, into
    new memory, the run before let go of before the next is read (not once that read
    has returned). The tiles are tifffile's either way."""
    import threading
    import weakref

    from tifffs import pixels
    from tifffs.scratch import ScratchBuffer
    from tifffs.sources import open_source

    class Run(bytearray):  # a run that can be watched (bytes cannot be)
        pass

    path = tmp_path / "tiled.tif"
    data = sample_array("uint16", (256, 512))
    write_stack(path, data, tile=(64, 64), compression="zlib")
    monkeypatch.setattr(pixels, "MAX_RUN_BYTES", 16 << 10)
    real_read_run = pixels._read_run
    earlier: dict[int, list[weakref.ref]] = {}  # by thread
    held_at_a_read: list[int] = []  # runs in new memory still alive at each such read

    def watching_read_run(fd, size, offset, runs):
        if runs is not None:
            return real_read_run(fd, size, offset, runs)
        fresh = earlier.setdefault(threading.get_ident(), [])
        held_at_a_read.append(sum(run() is not None for run in fresh))
        run = Run(real_read_run(fd, size, offset, None))
        fresh.append(weakref.ref(run))
        return run

    monkeypatch.setattr(pixels, "_read_run", watching_read_run)
    source = open_source(str(path))
    buffer = ScratchBuffer() if with_buffer else None
    try:
        page = source.pages[0]
        for seg_y in range(256 // 64):
            for left, width, tile in source.segment_row(page, 0, seg_y, 64, runs=buffer):
                top = seg_y * 64
                assert np.array_equal(tile[:, :width, 0], data[top:top + 64, left:left + width])
    finally:
        source.close()
    if with_buffer:
        assert not held_at_a_read and 0 < buffer.data.size <= 16 << 10  # MAX_RUN_BYTES
    else:
        assert len(held_at_a_read) > 256 // 64 and max(held_at_a_read) == 0, held_at_a_read


@pytest.mark.parametrize("kind, view", [
    ("ragged", "x4"), ("ragged", "x2-median"), ("ragged", "x4-mode"), ("ragged", "x4-max"),
    ("sparse", "x2"), ("big_endian", "x4"), ("separate", "x2"), ("z", "x2z2"),
])
def test_compressed_tiles_reduce_one_tile_at_a_time(tmp_path, monkeypatch, kind, view):
    """A band of compressed tiles whose sides are multiples of the factor is reduced tile
    by tile: the pixels equal the independent reference, and the slot's row buffers are
    never used (it holds one decoded tile, not a row of tiles), nor any but its run
    buffer, which holds at most MAX_RUN_BYTES of compressed bytes."""
    from reference import reference_blocks
    from tifffs import pixels
    from tifffs.views import parse_view

    rng = np.random.default_rng(7)
    shape = {"separate": (2, 3, 96, 130), "z": (4, 96, 130)}.get(kind, (2, 100, 130))
    data = rng.integers(0, 7, shape).astype(np.uint16)  # few values: modes and medians tie
    options = {"tile": (32, 64), "compression": "zlib"}
    if kind == "sparse":  # the tiles left unwritten below read as zeros
        data[:, 32:64] = 0
    if kind == "big_endian":
        options["byteorder"] = ">"
    if kind == "separate":
        options.update(planarconfig="separate", photometric="rgb")
    path = tmp_path / f"{kind}.tif"
    write_stack(path, data, **options)
    if kind == "sparse":  # the second row of tiles never written: offset and count 0
        with tifffile.TiffFile(path, mode="r+b") as tif:
            for page in tif.pages:
                for name in ("TileOffsets", "TileByteCounts"):
                    tag = page.tags[name]
                    values = list(tag.value)
                    values[3:6] = [0, 0, 0]
                    tag.overwrite(values)
    parsed = parse_view(view, "mean")
    used = _record_slots(monkeypatch)
    served = _whole_view(path, view)
    rows = [size for sizes in used for key, size in sizes.items() if isinstance(key, int)]
    others = [size for sizes in used for key, size in sizes.items()
              if isinstance(key, str) and key != "runs"]
    runs = [sizes.get("runs", 0) for sizes in used]
    assert used and sum(rows) == 0 and sum(others) == 0, used
    assert 0 < max(runs) <= pixels.MAX_RUN_BYTES, used  # compressed bytes, a run at a time
    pages = tifffile.TiffFile(io.BytesIO(served)).pages
    with tifffile.TiffFile(path) as tif:
        sources = [p.asarray() for p in tif.pages]
    if kind == "separate":
        sources = [np.moveaxis(s, 0, -1) for s in sources]
    else:
        sources = [s[:, :, None] for s in sources]
    groups = [sources[i:i + 2] for i in range(0, len(sources), 2)] if kind == "z" else \
        [[s] for s in sources]
    assert len(pages) == len(groups)
    for page, group in zip(pages, groups):
        expected = reference_blocks(group, parsed.factor, parsed.method)
        got = page.asarray()
        got = np.moveaxis(got, 0, -1) if kind == "separate" else got.reshape(expected.shape)
        assert np.array_equal(got, expected), kind


@pytest.mark.parametrize("damage", ["jpeg_tiles_said_16_bit", "zlib_tiles_said_ccitt"])
@pytest.mark.parametrize("view", ["x2", "x4-median"])
def test_tiles_that_decode_to_another_type_are_cast_as_tifffile_casts_them(
        tmp_path, damage, view):
    """A damaged page whose tiles decode to another type than its tags say (found by
    scripts/fuzz) is served in the page's type with tifffile's values, at the view's
    exact size: the tile-by-tile path once served the decoded bytes as they came, a
    shorter band that shifted every byte after it."""
    from reference import reference_blocks
    from tifffs.views import parse_view

    rng = np.random.default_rng(3)
    path = tmp_path / f"{damage}.tif"
    if damage == "jpeg_tiles_said_16_bit":  # JPEG tiles decode to uint8 whatever the tags
        tifffile.imwrite(path, rng.integers(0, 255, (2, 64, 64)).astype(np.uint8),
                         tile=(32, 32), compression="jpeg")
        tag, value = "BitsPerSample", 16
    else:  # the CCITT decoder makes uint8 bitmaps of the 16-bit page's zlib bytes
        tifffile.imwrite(path, rng.integers(0, 7, (2, 64, 64)).astype(np.uint16),
                         tile=(32, 32), compression="zlib")
        tag, value = "Compression", 3
    with tifffile.TiffFile(path, mode="r+b") as tif:
        for page in tif.pages:
            page.tags[tag].overwrite(value)
    with tifffile.TiffFile(path) as tif:
        sources = [page.asarray() for page in tif.pages]
    assert sources[0].dtype == np.uint16
    parsed = parse_view(view, "mean")
    with open_view(str(path), view=view) as opened:
        served = opened.read(0, opened.size)
    assert len(served) == opened.size
    pages = tifffile.TiffFile(io.BytesIO(served)).pages
    assert len(pages) == len(sources)
    for page, source in zip(pages, sources):
        expected = reference_blocks([source[:, :, None]], parsed.factor, parsed.method)
        assert np.array_equal(page.asarray(), expected[:, :, 0])


def test_a_band_of_the_wrong_size_is_refused_not_served(tmp_path, monkeypatch):
    """Whatever makes a kernel return another shape or type than the layout holds, the
    read fails with the file's error instead of serving bytes that shift the rest of
    the file (the fault is injected: the kernel is made to return uint8)."""
    from tifffs import downsample

    path = tmp_path / "stack.tif"
    write_stack(path, sample_array("uint16", (2, 64, 64)))
    real_reduce = downsample.reduce_blocks
    monkeypatch.setattr(downsample, "reduce_blocks",
                        lambda *args, **kw: real_reduce(*args, **kw).astype(np.uint8))
    opened = open_view(str(path), view="x2")
    try:
        with pytest.raises(BrokenSource, match="page 0: its pixels decode to uint8"):
            opened.read(0, opened.size)
    finally:
        opened.close()


@pytest.mark.parametrize("view", ["x2", "x4-median", "x8-max", "x2z2", "x1", "x2-nearest",
                                  "x4z2-nearest"])
def test_rows_of_tiles_larger_than_a_band_are_reduced_tile_by_tile(tmp_path, monkeypatch,
                                                                   view):
    """A slide scan whose row of 512 x 512 tiles holds more than a band's budget (60,000
    RGB pixels a row: 92 MB): its bands are whole rows of tiles, reduced tile by tile, so
    each tile is decoded once and the pixels equal the reference. The first band of such
    a slide once failed ("out must be (8, 8, 3)"): it began at a row of tiles, so it was
    reduced tile by tile, but it held fewer rows than one tile. The band budget is
    lowered here so that a small file is as wide, in bands, as that slide. At x1 a row of
    tiles would make too large a band: its bands are a few rows, read row by row."""
    from reference import reference_blocks
    from tifffs import plan
    from tifffs.views import parse_view

    # a row of tiles holds 32 x 480 bytes: more than the 4 budgets a band may span
    monkeypatch.setattr(plan, "BAND_SOURCE_BYTES", 2 << 10)
    data = sample_array("uint8", (4, 96, 160, 3), seed=5)
    path = tmp_path / "wide.tif"
    write_stack(path, data, tile=(32, 32), compression="zlib", photometric="rgb")
    decoded = _count_decodes(monkeypatch)
    parsed = parse_view(view, "mean")
    served = _whole_view(path, view)
    pages_read = 4 // parsed.z_factor if parsed.method == "nearest" else 4  # first slices
    tiles = pages_read * (96 // 32) * (160 // 32)
    if parsed.factor > 1:
        assert len(decoded) == tiles, (len(decoded), tiles)  # each tile once
    else:
        assert len(decoded) > tiles
    pages = [p.asarray() for p in tifffile.TiffFile(io.BytesIO(served)).pages]
    groups = [list(data[i:i + parsed.z_factor]) for i in range(0, 4, parsed.z_factor)]
    assert len(pages) == len(groups)
    for page, group in zip(pages, groups):
        expected = (group[0][::parsed.factor, ::parsed.factor] if parsed.method == "nearest"
                    else reference_blocks(group, parsed.factor, parsed.method))
        assert np.array_equal(page, expected)


@pytest.mark.parametrize("kind", ["uint16", "int16", "rgb", "ragged", "sparse", "big_endian",
                                  "separate"])
def test_fit_views_of_tiles_sum_one_column_of_tiles_at_a_time(tmp_path, monkeypatch, kind):
    """A fit view of compressed tiles is summed a column of tiles at a time: the pixels
    equal the exact reference, across bands that begin and end inside rows of tiles; a
    slot never holds a band's source rows (only its row sums and one column of tiles);
    and each tile is decoded at most twice (a row of tiles two bands share). Before, a
    band of a 60,000-pixel-wide slide was one output row: each tile decoded 8 times."""
    from reference import reference_area

    rng = np.random.default_rng(11)
    height, width, fit = 300, 1280, 290  # 1280 -> 290 x 68: a band spans 2 rows of tiles
    dtype = {"int16": np.int16, "rgb": np.uint8}.get(kind, np.uint16)
    info = np.iinfo(dtype)
    shape = {"rgb": (height, width, 3), "separate": (3, height, width)}.get(
        kind, (height, width))
    data = rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
    options = {"tile": (32, 64), "compression": "zlib"}
    if kind == "ragged":
        data = data[:290, :1250]
    if kind == "big_endian":
        options["byteorder"] = ">"
    if kind in ("rgb", "separate"):
        options.update(photometric="rgb", planarconfig="contig" if kind == "rgb" else
                       "separate")
    if kind == "sparse":
        data[64:96] = 0
    path = tmp_path / f"{kind}.tif"
    write_stack(path, data[None], **options)
    if kind == "sparse":  # the third row of tiles never written: offset and count 0
        with tifffile.TiffFile(path, mode="r+b") as tif:
            for name in ("TileOffsets", "TileByteCounts"):
                tag = tif.pages[0].tags[name]
                values = list(tag.value)
                values[40:60] = [0] * 20
                tag.overwrite(values)
    decoded = _count_decodes(monkeypatch)
    held = _record_slots(monkeypatch)
    opened = open_view(str(path), view=f"fit{fit}")
    try:
        band_rows = opened.view.plan.pages[0].band_rows
        served = opened.read(0, opened.size)
    finally:
        opened.close()
    source = data if kind != "separate" else np.moveaxis(data, 0, -1)
    source = source.reshape(source.shape[0], source.shape[1], -1)
    rows, columns = source.shape[:2]
    with tifffile.TiffFile(io.BytesIO(served)) as tif:
        got = tif.pages[0].asarray()
    if kind == "separate":
        got = np.moveaxis(got, 0, -1)
    assert got.shape[:2] == ((2 * rows * fit + columns) // (2 * columns), fit)
    expected = reference_area(source, *got.shape[:2])
    assert np.array_equal(got.reshape(expected.shape), expected), kind
    planes = 3 if kind == "separate" else 1
    tiles = planes * -(-rows // 32) * -(-columns // 64)
    assert got.shape[0] > 2 * band_rows  # several bands
    assert tiles < len(decoded) <= 2 * tiles, (len(decoded), tiles)
    source_rows = -(-rows * band_rows // got.shape[0]) * source[0].nbytes // planes
    rows_held = [sum(n for key, n in sizes.items() if isinstance(key, int)) for sizes in held]
    assert held and max(rows_held) < source_rows, (max(rows_held), source_rows)


@pytest.mark.parametrize("view", ["x2z2", "fit100"])
def test_rows_of_tiles_walked_side_by_side_share_one_run_budget(tmp_path, monkeypatch,
                                                                 view):
    """Rows of tiles decoded side by side (the slices of a Z view, the rows of tiles of a
    fit band) each read runs of compressed bytes that many times smaller: a slot holds
    at most MAX_RUN_BYTES of them, whatever the view."""
    from tifffs import pixels

    path = tmp_path / "tiled.tif"
    write_stack(path, sample_array("uint16", (2, 256, 512)), tile=(64, 64), compression="zlib")
    whole = open_view(str(path), view=view)
    try:
        expected = whole.read(0, whole.size)
    finally:
        whole.close()
    monkeypatch.setattr(pixels, "MAX_RUN_BYTES", 32 << 10)
    sizes = _record_preads(monkeypatch)
    view_file = open_view(str(path), view=view)
    try:
        assert view_file.read(0, view_file.size) == expected
    finally:
        view_file.close()
    tiles = tifffile.TiffFile(path).pages[0].databytecounts
    runs = [s for s in sizes if s > 4096]  # the IFD reads are a few KiB
    assert runs and max(runs) <= max(16 << 10, max(tiles)), (max(runs), max(tiles))


@pytest.mark.parametrize("rows_per_strip", [96, 32])
@pytest.mark.parametrize("view", ["x2", "x3", "x4-median", "x4-nearest", "x2z2"])
def test_strips_larger_than_a_band_are_decoded_once(tmp_path, monkeypatch, rows_per_strip,
                                                    view):
    """A page in one compressed strip (as some writers make them: 150 MB of zlib for a
    12288 x 12288 image) was decoded once per band, 10 times, two at a time: x4 took
    3.8 s and 970 MB, now 0.8 s and 500 MB. Strips too large for a band's rows are
    reduced one at a time, like tiles, when their sides are multiples of the factor (or
    span the page); other strips are read as rows. The band budget is lowered here so
    that a small file's strips are that large."""
    from reference import reference_blocks
    from tifffs import plan
    from tifffs.views import parse_view

    # a strip of 32 rows holds 32 x 480 bytes: more than the 4 budgets a band may span;
    # x2 of 96 rows makes 48 x 240 bytes: within them
    monkeypatch.setattr(plan, "BAND_SOURCE_BYTES", 3 << 10)
    data = sample_array("uint8", (4, 96, 160, 3), seed=6)
    path = tmp_path / "strips.tif"
    write_stack(path, data, rowsperstrip=rows_per_strip, compression="zlib",
                photometric="rgb")
    decoded = _count_decodes(monkeypatch)
    parsed = parse_view(view, "mean")
    served = _whole_view(path, view)
    pages_read = 4 // parsed.z_factor if parsed.method == "nearest" else 4
    strips = pages_read * (96 // rows_per_strip)
    if rows_per_strip % parsed.factor == 0 or rows_per_strip >= 96:
        assert len(decoded) == strips, (len(decoded), strips)  # each strip once
    else:  # blocks of 3 rows straddle strips of 32: read as rows, some strips twice
        assert len(decoded) > strips
    pages = [p.asarray() for p in tifffile.TiffFile(io.BytesIO(served)).pages]
    groups = [list(data[i:i + parsed.z_factor]) for i in range(0, 4, parsed.z_factor)]
    assert len(pages) == len(groups)
    for page, group in zip(pages, groups):
        expected = (group[0][::parsed.factor, ::parsed.factor] if parsed.method == "nearest"
                    else reference_blocks(group, parsed.factor, parsed.method))
        assert np.array_equal(page, expected)


def test_small_bands_render_in_runs_in_one_slot(tmp_path, monkeypatch):
    """A time-lapse of many small pages makes many small bands: each renders with the
    small bands after it (up to RUN_BYTES of output) in one slot, so a reader pays one
    hand-over a run, not a band. A damaged page inside a run fails only its own reads,
    and is not kept: a later read tries it again."""
    from tifffs import virtual

    data = sample_array("uint16", (300, 128, 128), seed=9)
    path = tmp_path / "timelapse.tif"
    write_stack(path, data, compression="zlib")
    with tifffile.TiffFile(path) as tif:  # page 40's strip: bytes that do not inflate
        offset, count = tif.pages[40].dataoffsets[0], tif.pages[40].databytecounts[0]
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(b"\xff" * count)
    renders = _count_renders(monkeypatch)
    slots = _record_slots(monkeypatch)
    opened = open_view(str(path), view="x2")
    try:
        layout = opened.view.layout
        page_bytes = 64 * 64 * 2
        per_run = virtual.RUN_BYTES // page_bytes  # bands of one page each
        first = opened.read(layout.page_offsets[0], page_bytes)
        assert np.array_equal(np.frombuffer(first, np.uint16).reshape(64, 64),
                              ((data[0].reshape(64, 2, 64, 2).sum(axis=(1, 3),
                                                                  dtype=np.int64) + 2) // 4))
        assert len(slots) == 1 and renders == list(range(per_run))
        opened.read(layout.page_offsets[per_run - 1], page_bytes)  # held already
        assert len(slots) == 1
        opened.read(layout.page_offsets[per_run], page_bytes)  # its run holds page 40
        assert len(slots) == 2 and 40 < 2 * per_run
        for _ in range(2):
            with pytest.raises(BrokenSource):
                opened.read(layout.page_offsets[40], page_bytes)
        assert renders.count(40) == 3  # in a run, then each read anew
        after = opened.read(layout.page_offsets[41], page_bytes)  # kept from that run
        assert len(after) == page_bytes and renders.count(41) == 1
    finally:
        opened.close()


@pytest.mark.parametrize("compression", [None, "zlib"])
@pytest.mark.parametrize("view", ["x2", "x4-max", "x4-min", "x2-median", "x4-mode",
                                  "x4-nearest", "x3-nearest"])
def test_runs_of_whole_small_pages_render_as_one_stack(tmp_path, monkeypatch, view,
                                                       compression):
    """A run of small pages alike renders as one stack of rows with one kernel call
    (fewer calls: cp of the bench's time-lapse 0.76 -> 0.62 s). The pixels are those of
    the documented semantics, page by page."""
    from reference import reference_blocks
    from tifffs.views import parse_view

    data = sample_array("uint16", (40, 48, 70), seed=4)  # 48 rows: whole blocks of 2, 3, 4
    path = tmp_path / "frames.tif"
    write_stack(path, data, compression=compression)
    stacks = _count_stacks(monkeypatch)
    parsed = parse_view(view, "mean")
    opened = open_view(str(path), view=view)
    try:
        served = opened.read(0, opened.size)
        # kept bands of one stack share no memory: the cache weighs what each holds
        first, second = opened.view._band(0, 0, 0), opened.view._band(1, 0, 0)
        assert first.base is None and not np.shares_memory(first, second)
    finally:
        opened.close()
    assert stacks and max(stacks) > 1, stacks
    pages = [p.asarray() for p in tifffile.TiffFile(io.BytesIO(served)).pages]
    assert len(pages) == len(data)
    f = parsed.factor
    for page, source in zip(pages, data):
        expected = (source[::f, ::f] if parsed.method == "nearest"
                    else reference_blocks([source[:, :, None]], f, parsed.method)[:, :, 0])
        assert np.array_equal(page, expected)


@pytest.mark.parametrize("view", ["x4", "x4-median"])
def test_pages_whose_blocks_would_span_two_pages_render_one_by_one(tmp_path, monkeypatch,
                                                                  view):
    from reference import reference_blocks
    from tifffs.views import parse_view

    data = sample_array("uint16", (30, 50, 64), seed=5)  # 50 rows: a ragged block row
    path = tmp_path / "frames.tif"
    write_stack(path, data)
    stacks = _count_stacks(monkeypatch)
    renders = _count_renders(monkeypatch)
    parsed = parse_view(view, "mean")
    served = _whole_view(path, view)
    assert stacks == [] and sorted(renders) == list(range(30))
    for page, source in zip(tifffile.TiffFile(io.BytesIO(served)).pages, data):
        expected = reference_blocks([source[:, :, None]], 4, parsed.method)[:, :, 0]
        assert np.array_equal(page.asarray(), expected)


@pytest.mark.parametrize("view", ["fit8", "x32"])
def test_a_run_reads_a_bounded_amount_of_source(tmp_path, monkeypatch, view):
    """Small bands of large frames (a fit or x32 view) make runs bounded by the source
    they read, not only by their output: a read of 64 bytes of one frame renders at most
    RUN_SOURCE_BYTES of frames, not hundreds of them (found by review: 200 frames of
    1024 x 1024, 3.5 s for 64 bytes)."""
    from tifffs import virtual

    data = sample_array("uint16", (60, 256, 256), seed=12)  # 128 KiB a frame
    path = tmp_path / "frames.tif"
    write_stack(path, data)
    renders = _count_renders(monkeypatch)
    opened = open_view(str(path), view=view)
    try:
        got = opened.read(opened.view.layout.page_offsets[20], 64)
    finally:
        opened.close()
    assert len(got) == 64
    most = virtual.RUN_SOURCE_BYTES // (256 * 256 * 2)
    assert renders[0] == 20 and 1 < len(renders) <= most, renders


def test_a_cache_smaller_than_a_run_still_renders_each_band_once(tmp_path, monkeypatch):
    """A run keeps at most a quarter of the band cache, so that a sequential reader finds
    the run's bands still there (found by review: with --cache-size 64K, 2,000 bands of
    1 KiB were rendered 355,221 times)."""
    from tifffs.sources import open_source
    from tifffs.views import parse_view
    from tifffs.virtual import band_cache, open_source_view

    path = tmp_path / "frames.tif"
    write_stack(path, sample_array("uint8", (2000, 64, 64), seed=13))
    renders = _count_renders(monkeypatch)
    pool = RenderPool(2)
    opened = open_source_view(open_source(str(path)), parse_view("x2", "mean"),
                              band_cache(64 << 10), pool)
    try:
        reader = opened.reader()
        served = b"".join(reader.read(offset, 128 << 10)
                          for offset in range(0, opened.size, 128 << 10))
        assert len(served) == opened.size
    finally:
        pool.shutdown()
        opened.source.close()
    assert sorted(renders) == list(range(2000))
