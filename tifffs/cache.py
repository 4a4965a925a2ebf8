"""A thread-safe LRU cache bounded by weight, that computes each missing key once.

Concurrent ``get`` calls for a key that is being computed wait for that computation
instead of starting their own. Exceptions are not cached; every waiter gets a copy of
the computing thread's exception, chained to it.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

V = TypeVar("V")
log = logging.getLogger("tifffs")


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    weight: int = 0
    entries: int = 0


class _Pending:
    """A computation in flight: a gate held by its owner until the value is there
    (a lock is much cheaper to make than an Event, and a cache miss makes one).

    A prefetch reserves its key before its task runs; if the task is dropped the entry
    is ``abandoned`` and its waiters compute the value themselves.
    """

    def __init__(self) -> None:
        self._gate = threading.Lock()
        self._gate.acquire()
        self.value: object = None
        self.error: BaseException | None = None
        self.abandoned = False
        self.ended = False

    def wait(self) -> None:
        with self._gate:  # each waiter passes the open gate in turn
            pass

    def finish(self) -> None:
        self._gate.release()


def _fresh(error: BaseException) -> BaseException:
    """A new instance of ``error`` for one waiting thread, caused by ``error``.

    Raising one instance in several threads makes them write its ``__traceback__`` at
    once, so each would report frames of the others (and keep them alive).
    """
    try:
        fresh = copy.copy(error)
    except Exception:  # noqa: BLE001  (a class that cannot be rebuilt: share, keep the type)
        return error
    fresh.__cause__ = error
    return fresh


class LruCache(Generic[V]):
    """LRU mapping of keys to values whose total ``weigh(value)`` stays <= ``capacity``.

    A value heavier than the capacity is kept alone, until the next one comes.
    """

    def __init__(self, capacity: int, weigh: Callable[[V], int] = lambda value: 1) -> None:
        self.capacity = capacity
        self._weigh = weigh
        self._lock = threading.Lock()
        self._items: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self._pending: dict[Hashable, _Pending] = {}
        self._stats = CacheStats()

    def get(self, key: Hashable, compute: Callable[[], V]) -> V:
        """The value of ``key``, computed by ``compute()`` if missing (once for all callers)."""
        while True:
            with self._lock:
                item = self._items.get(key)
                if item is not None:
                    self._items.move_to_end(key)
                    self._stats.hits += 1
                    return item[0]
                self._stats.misses += 1
                pending = self._pending.get(key)
                if pending is None:
                    pending = self._pending[key] = _Pending()
                    break
            pending.wait()
            if pending.error is not None:
                raise _fresh(pending.error)
            if not pending.abandoned:
                return pending.value  # type: ignore[return-value]
        return self._compute(key, pending, compute)

    def _compute(self, key: Hashable, pending: _Pending, compute: Callable[[], V]) -> V:
        """Compute the value of ``key`` that ``pending`` reserved, keep it, open the gate
        (whatever happens: its waiters never wait for ever)."""
        try:
            value = compute()
            pending.value = value
            self._store(key, value)
            return value
        except BaseException as exc:
            pending.error = exc
            raise
        finally:
            self._end(key, pending)

    def reserve(self, keys: Iterable[Hashable]) -> list[tuple[Hashable, _Pending]]:
        """Mark as in flight those of ``keys`` that are neither held nor in flight (their
        readers then wait for them), for a caller that computes several values at once.
        It must end each (key, pending) pair returned with ``keep``, ``fail`` or
        ``abandon``."""
        reserved = []
        with self._lock:
            for key in keys:
                if key not in self._items and key not in self._pending:
                    reserved.append((key, self._pending.setdefault(key, _Pending())))
        return reserved

    def keep(self, key: Hashable, pending: _Pending, value: V) -> None:
        """Keep the value of ``key`` computed for ``pending``; its waiters get it."""
        pending.value = value
        try:
            self._store(key, value)
        finally:
            self._end(key, pending)

    def fail(self, key: Hashable, pending: _Pending, error: BaseException) -> None:
        """End the computation of ``key`` with ``error``, which its waiters raise."""
        pending.error = error
        self._end(key, pending)

    def abandon(self, key: Hashable, pending: _Pending) -> None:
        """Give up computing ``key``: its waiters compute it themselves."""
        pending.abandoned = True
        self._end(key, pending)

    def _end(self, key: Hashable, pending: _Pending) -> None:
        """Open ``pending``'s gate, once: a second end (an exception between two calls)
        must not remove another computation of the same key."""
        with self._lock:
            if pending.ended:
                return
            pending.ended = True
            if self._pending.get(key) is pending:
                del self._pending[key]
        pending.finish()

    def prefetch(self, key: Hashable, compute: Callable[[], V],
                 submit: Callable[[Callable[[], None]], bool]) -> None:
        """Have ``submit`` compute ``key`` in the background unless it is held or in flight.

        The key counts as in flight from now on, so that repeated prefetches and readers
        of it wait for this one computation instead of starting their own. ``submit``
        returns False when it dropped the task. Errors of a prefetch are logged (debug)
        and raised to the readers waiting for it; a later ``get`` computes again.
        """
        with self._lock:
            if key in self._items or key in self._pending:
                return
            pending = self._pending[key] = _Pending()

        def run() -> None:
            try:
                self._compute(key, pending, compute)
            except Exception as exc:  # noqa: BLE001  (the reader that needs it will see it)
                log.debug("prefetch of %r failed: %s", key, exc)

        if not submit(run):
            self.abandon(key, pending)

    def peek(self, key: Hashable) -> V | None:
        """The value of ``key`` if held (no counters, no computing), else None."""
        with self._lock:
            item = self._items.get(key)
            return None if item is None else item[0]

    def discard(self, key: Hashable) -> None:
        """Forget the value of ``key``, if held (not a computation under way)."""
        with self._lock:
            self._forget(key)

    def _forget(self, key: Hashable) -> None:
        """Drop the value of ``key``, if held, and its weight (the lock is held)."""
        old = self._items.pop(key, None)
        if old is not None:
            self._stats.weight -= old[1]

    def put(self, key: Hashable, value: V) -> None:
        """Keep ``value`` for ``key`` (replacing any)."""
        self._store(key, value)

    def _store(self, key: Hashable, value: V) -> None:
        """Keep ``value`` (replacing any value of ``key``: two threads may compute one
        key), evicting the least recently used; a value heavier than the whole capacity
        is kept alone (readers of it go on hitting it)."""
        weight = self._weigh(value)
        with self._lock:
            self._forget(key)
            self._items[key] = (value, weight)
            self._stats.weight += weight
            while self._stats.weight > self.capacity and len(self._items) > 1:
                _, (_, dropped) = self._items.popitem(last=False)
                self._stats.weight -= dropped
                self._stats.evictions += 1

    def stats(self) -> CacheStats:
        """A snapshot of the counters."""
        with self._lock:
            return CacheStats(self._stats.hits, self._stats.misses, self._stats.evictions,
                              self._stats.weight, len(self._items))
