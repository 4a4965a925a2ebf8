"""LruCache on its own: one computation per key under concurrency, eviction by weight,
errors passed to every waiter as an exception of its own."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import wait_for
from tifffs.cache import LruCache
from tifffs.errors import BrokenSource

WAIT = 10.0  # seconds: only a hang detector


def _concurrent_gets(cache: LruCache, key: object, compute, threads: int) -> list:
    """``threads`` calls of ``cache.get(key, compute)`` that all start while the first
    computation is blocked; the outcome of each (value or exception), in no order."""
    release = threading.Event()
    entered = threading.Event()

    def blocked_compute():
        entered.set()
        assert release.wait(WAIT), "the test did not release the computation"
        return compute()

    def call():
        try:
            return cache.get(key, blocked_compute)
        except BaseException as exc:  # noqa: BLE001  (the outcome under test)
            return exc

    with ThreadPoolExecutor(threads) as pool:
        first = pool.submit(call)
        assert entered.wait(WAIT)
        others = [pool.submit(call) for _ in range(threads - 1)]
        # every other caller has become a waiter once the miss counter says so
        wait_for(lambda: cache.stats().misses == threads, WAIT, "every caller to wait")
        release.set()
        return [f.result(timeout=WAIT) for f in [first, *others]]


def test_a_key_is_computed_once_for_all_concurrent_callers():
    cache: LruCache[str] = LruCache(10)
    calls = []

    def compute():
        calls.append(1)
        return "value"

    results = _concurrent_gets(cache, "k", compute, threads=8)
    assert results == ["value"] * 8
    assert len(calls) == 1
    assert cache.get("k", lambda: "other") == "value"
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.entries) == (1, 8, 1)


def test_errors_reach_every_waiter_as_a_fresh_exception_and_are_not_cached():
    cache: LruCache[str] = LruCache(10)

    def fail():
        raise BrokenSource("truncated strip")

    results = _concurrent_gets(cache, "k", fail, threads=6)
    assert all(isinstance(r, BrokenSource) for r in results)
    assert all(str(r) == "truncated strip" for r in results)
    assert len({id(r) for r in results}) == 6, "one instance raised in several threads"
    owner = [r for r in results if r.__cause__ is None]
    assert len(owner) == 1
    assert all(r.__cause__ is owner[0] for r in results if r is not owner[0])
    assert cache.get("k", lambda: "now it works") == "now it works"


def test_an_oserror_keeps_its_errno_for_waiters():
    cache: LruCache[str] = LruCache(10)

    def fail():
        raise FileNotFoundError(2, "No such file", "/src/a.tif")

    results = _concurrent_gets(cache, "k", fail, threads=3)
    for result in results:
        assert isinstance(result, FileNotFoundError)
        assert (result.errno, result.filename) == (2, "/src/a.tif")


def test_eviction_by_weight_drops_the_least_recently_used():
    cache: LruCache[bytes] = LruCache(10, weigh=len)
    cache.get("a", lambda: b"aaaa")
    cache.get("b", lambda: b"bbbb")
    cache.get("a", lambda: b"----")  # a is now the most recent
    cache.get("c", lambda: b"cccc")  # 12 > 10: b goes
    assert cache.stats().evictions == 1
    assert cache.get("a", lambda: b"new") == b"aaaa"
    assert cache.get("b", lambda: b"new") == b"new"  # a, c, b: c goes (a was read)
    stats = cache.stats()
    assert (stats.weight, stats.entries, stats.evictions) == (7, 2, 2)
    assert cache.get("a", lambda: b"----") == b"aaaa"
    assert cache.get("c", lambda: b"again") == b"again"


def test_a_key_put_while_it_is_computed_is_weighed_once():
    """A size a helper passes on (``put``) while a stat computes the same key."""
    cache: LruCache[bytes] = LruCache(100, weigh=len)

    def compute() -> bytes:
        cache.put("a", b"from a helper")
        return b"computed"

    assert cache.get("a", compute) == b"computed"
    stats = cache.stats()
    assert (stats.weight, stats.entries) == (len(b"computed"), 1)


def test_a_value_heavier_than_the_capacity_is_kept_alone_until_the_next():
    """A cache smaller than one band still keeps the band read last, so a sequential
    reader's many small reads of it render it once."""
    cache: LruCache[bytes] = LruCache(4, weigh=len)
    assert cache.get("small", lambda: b"12") == b"12"
    assert cache.get("big", lambda: b"0123456789") == b"0123456789"
    assert cache.stats().entries == 1
    assert cache.get("big", lambda: b"again") == b"0123456789"
    assert cache.get("next", lambda: b"abcdefghij") == b"abcdefghij"
    assert cache.get("big", lambda: b"again") == b"again"


def _queue(tasks: list) -> object:
    """A pool's ``submit`` that queues every task (runs it when the test says)."""
    def submit(task) -> bool:
        tasks.append(task)
        return True
    return submit


def test_prefetch_computes_in_the_background_and_drops_its_errors():
    cache: LruCache[str] = LruCache(10)
    submitted: list = []
    cache.prefetch("k", lambda: "ahead", _queue(submitted))
    assert len(submitted) == 1
    submitted[0]()
    assert cache.get("k", lambda: "late") == "ahead"
    cache.prefetch("k", lambda: "again", _queue(submitted))
    assert len(submitted) == 1  # held: nothing submitted

    def fail():
        raise BrokenSource("bad")

    cache.prefetch("bad", fail, _queue(submitted))
    submitted[-1]()  # the error is only logged
    with pytest.raises(BrokenSource):
        cache.get("bad", fail)


def test_a_queued_prefetch_is_submitted_once_and_readers_wait_for_it():
    """A sequential reader asks for the same bands ahead after every read: while the
    first request waits in the pool's queue, the key is in flight, so no second task
    is queued and a reader of it waits for that one computation."""
    cache: LruCache[str] = LruCache(10)
    submitted: list = []
    calls = []

    def compute():
        calls.append(1)
        return "ahead"

    for _ in range(3):
        cache.prefetch("k", compute, _queue(submitted))
    assert len(submitted) == 1
    with ThreadPoolExecutor(1) as readers:
        reader = readers.submit(cache.get, "k", lambda: "computed by the reader")
        wait_for(lambda: cache.stats().misses == 1, WAIT, "the reader to wait")
        assert not reader.done()
        submitted[0]()
        assert reader.result(timeout=WAIT) == "ahead"
    assert len(calls) == 1


def test_a_dropped_prefetch_leaves_the_key_to_its_readers():
    """Also a reader that began to wait for the reserved key before the pool dropped
    the task: it computes the value itself."""
    cache: LruCache[str] = LruCache(10)
    with ThreadPoolExecutor(1) as readers:
        early: list = []

        def full_pool(task) -> bool:
            early.append(readers.submit(cache.get, "k", lambda: "computed by the reader"))
            wait_for(lambda: cache.stats().misses == 1, WAIT, "the reader to wait")
            return False

        cache.prefetch("k", lambda: "never", full_pool)
        assert early[0].result(timeout=WAIT) == "computed by the reader"
    assert cache.get("k", lambda: "again") == "computed by the reader"
    cache.prefetch("j", lambda: "never", lambda task: False)
    assert cache.get("j", lambda: "computed by the reader") == "computed by the reader"


def test_reserved_keys_are_waited_for_and_ended_by_keep_fail_or_abandon():
    """A caller that computes several values at once reserves the keys no one holds or
    computes; their readers wait for it, then get the value, the error, or (abandoned)
    compute it themselves."""
    cache: LruCache[str] = LruCache(10)
    cache.get("held", lambda: "already")
    reserved = cache.reserve(["held", "a", "b", "c", "a"])
    assert [key for key, _ in reserved] == ["a", "b", "c"]
    assert cache.reserve(["a", "b"]) == []  # in flight: no one else reserves them
    outcomes: dict[str, object] = {}

    def read(key: str) -> None:
        try:
            outcomes[key] = cache.get(key, lambda: f"{key} computed by its reader")
        except BrokenSource as exc:
            outcomes[key] = exc

    readers = [threading.Thread(target=read, args=(key,), daemon=True) for key in "abc"]
    (_, a), (_, b), (_, c) = reserved
    error = BrokenSource("page 2: damaged")
    try:
        for reader in readers:
            reader.start()
        # "held" missed once; each reader misses once, then waits
        wait_for(lambda: cache.stats().misses == 4, WAIT, "the readers to wait")
        assert not outcomes
    finally:
        cache.keep("a", a, "a value")
        cache.fail("b", b, error)
        cache.abandon("c", c)
        for reader in readers:
            reader.join(WAIT)
    assert outcomes["a"] == "a value"
    assert isinstance(outcomes["b"], BrokenSource) and outcomes["b"].__cause__ is error
    assert outcomes["c"] == "c computed by its reader"
    assert cache.peek("a") == "a value" and cache.peek("b") is None


def test_a_value_that_cannot_be_kept_still_releases_its_waiters():
    """If keeping a value fails (here its weight cannot be taken), the key's computation
    still ends: its readers are not left waiting for ever, and a later read computes it
    again (found by review of the runs' keep, fail and abandon)."""
    def weigh(value: str) -> int:
        if value == "unweighable":
            raise ValueError("no weight")
        return 1

    cache: LruCache[str] = LruCache(10, weigh=weigh)
    [(key, pending)] = cache.reserve(["k"])
    with pytest.raises(ValueError):
        cache.keep(key, pending, "unweighable")
    cache.abandon(key, pending)  # a second end of the same computation changes nothing
    [(_, again)] = cache.reserve(["k"])  # no longer in flight (a get would not wait)
    cache.keep(key, again, "fine")
    assert cache.get("k", lambda: "computed") == "fine"
    [(j, first)] = cache.reserve(["j"])
    cache.abandon(j, first)
    [(_, second)] = cache.reserve(["j"])  # a new computation of the same key
    cache.abandon(j, first)  # a late second end of the first must not remove it
    assert cache.reserve(["j"]) == []
    cache.abandon(j, second)
