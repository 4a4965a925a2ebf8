"""Where ``tifffs render`` runs its tasks on this machine: inline, or in worker processes.

A pool submits ``fn(*args)`` and hands back futures; ``tifffs.cluster`` provides the same
for a dask.distributed cluster.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Protocol


class Pool(Protocol):
    """What the coordinator needs from a pool."""

    #: how many tasks to keep submitted at once
    window: int

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any: ...

    def wait_any(self, futures: list[Any]) -> Iterable[Any]: ...

    def shutdown(self, cancel: list[Any]) -> None:
        """Stop; ``cancel`` lists submitted tasks that should not run any more."""


def available_cores() -> int:
    """The number of cores this process may run on (its CPU affinity: ``taskset``, a
    batch system's cpuset), which may be fewer than the machine has; where the system
    has no affinity (macOS), the machine's cores."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class InlinePool:
    """Runs each task at once in this process (``--jobs 1``, or a single task)."""

    window = 1

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        future: Future = Future()
        future.set_result(fn(*args))
        return future

    def wait_any(self, futures: list[Any]) -> Iterable[Any]:
        return futures

    def shutdown(self, cancel: list[Any]) -> None:
        pass


def _init_worker() -> None:
    # Ctrl-C on a terminal reaches the whole process group: a worker just ends (no
    # traceback) and the coordinator removes the temporary files of unfinished tasks
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class ProcessPool:
    """``workers`` processes on this machine, forked from a server that has already
    imported the renderer (quick to start, and no threads of this process inherited)."""

    def __init__(self, workers: int) -> None:
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(["tifffs.tasks", "tifffs.virtual"])
        self._workers = workers
        self.window = 2 * workers
        self._executor = self._new_executor()

    def _new_executor(self) -> ProcessPoolExecutor:
        """An executor whose workers have all started: a Ctrl-C that comes while a
        worker is still being made (its interpreter unpickling what it runs) would end
        that process with a traceback on the terminal; once started, a worker ends
        quietly (``_init_worker``)."""
        executor = ProcessPoolExecutor(self._workers, mp_context=self._context,
                                       initializer=_init_worker)
        for started in [executor.submit(os.getpid) for _ in range(self._workers)]:
            started.result()
        return executor

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        try:
            return self._executor.submit(fn, *args)
        except BrokenProcessPool:
            # a worker died (killed, out of memory): the tasks it took down have failed
            # with it; the rest of the run goes on in new processes
            self._executor.shutdown(wait=True)
            self._executor = self._new_executor()
            return self._executor.submit(fn, *args)

    def wait_any(self, futures: list[Any]) -> Iterable[Any]:
        return wait(futures, return_when=FIRST_COMPLETED).done

    def shutdown(self, cancel: list[Any]) -> None:
        self._executor.shutdown(wait=True, cancel_futures=bool(cancel))


def local_pool(workers: int) -> Pool:
    """A pool of ``workers`` processes, or none when one would do (saves starting them)."""
    return InlinePool() if workers <= 1 else ProcessPool(workers)
