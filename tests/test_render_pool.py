"""What bounds the daemon's memory beyond the band cache: the render pool (no mount)."""

from __future__ import annotations

import threading

import numpy as np

from tifffs.render import RenderPool


def test_at_most_slots_bands_render_at_once_each_with_its_own_buffers():
    pool = RenderPool(slots=2)
    running, peak, lock = [0], [0], threading.Lock()
    gate = threading.Event()
    seen_buffers: set[int] = set()

    def render(buffers) -> np.ndarray:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            seen_buffers.add(id(buffers))
        gate.wait(5)
        with lock:
            running[0] -= 1
        return np.zeros(1)

    threads = [threading.Thread(target=pool.run, args=(render,)) for _ in range(8)]
    for thread in threads:
        thread.start()
    gate.set()
    for thread in threads:
        thread.join(10)
    assert peak[0] == 2
    assert len(seen_buffers) == 2  # two buffer sets, reused by all eight renders


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
    from tifffs.render import _RowBuffer

    buffer = _RowBuffer()
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
