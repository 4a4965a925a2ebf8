"""Where ``tifffs render`` runs its tasks on this machine: inline, or in worker processes.

A pool submits ``fn(*args)`` and hands back futures; ``tifffs.cluster`` provides the same
for a dask.distributed cluster.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.forkserver
import os
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
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


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


#: the signals that stop a run: Ctrl-C, and a batch system's SIGTERM (``tifffs render``
#: handles it as Ctrl-C)
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def _stop_deferred() -> Iterator[None]:
    """Run the block to its end before a Ctrl-C or SIGTERM that comes meanwhile takes
    effect, for blocks that must not be cut short: a KeyboardInterrupt in the middle of
    starting a worker would leave a process that this one neither knows nor waits for.
    (Only the main thread can set signal handlers; in another the block runs as it is.)"""
    if not _in_main_thread():
        yield
        return
    received: list[int] = []
    handlers = {signum: signal.signal(signum, lambda got, _frame: received.append(got))
                for signum in _STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(received):
            signal.raise_signal(signum)


def _start_fork_server() -> None:
    """Start the fork server (and multiprocessing's resource tracker) with Ctrl-C
    ignored. They inherit that, and so does each worker forked from the server until
    ``_init_worker`` runs: a Ctrl-C while one of them is still starting (importing,
    unpickling what it runs) would otherwise end it with a traceback on the terminal.
    (A Ctrl-C in the few milliseconds this takes is ignored by this process too.)
    Outside the main thread, which cannot set handlers, the executor starts the server
    as it needs it."""
    if not _in_main_thread():
        return
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        signal.signal(signal.SIGINT, handler)


class ProcessPool:
    """``workers`` processes on this machine, forked from a server that has already
    imported the renderer (quick to start, and no threads of this process inherited)."""

    def __init__(self, workers: int) -> None:
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(["tifffs.tasks", "tifffs.virtual"])
        _start_fork_server()
        self._workers = workers
        self.window = 2 * workers
        self._executor = self._new_executor()

    def _new_executor(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self._workers, mp_context=self._context,
                                   initializer=_init_worker)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        with _stop_deferred():  # submitting may start a worker
            try:
                return self._executor.submit(fn, *args)
            except BrokenProcessPool:
                # a worker died (killed, out of memory): the tasks it took down have
                # failed with it; the rest of the run goes on in new processes
                self._executor.shutdown(wait=True)
                self._executor = self._new_executor()
                return self._executor.submit(fn, *args)

    def wait_any(self, futures: list[Any]) -> Iterable[Any]:
        return wait(futures, return_when=FIRST_COMPLETED).done

    def shutdown(self, cancel: list[Any]) -> None:
        if cancel:
            # the run is abandoned: stop the workers now rather than letting them
            # finish (or, had Ctrl-C ended one that was waiting for a task, wait
            # forever for the queue's lock it held)
            for worker in multiprocessing.active_children():
                worker.terminate()
            self._executor.shutdown(wait=True, cancel_futures=True)
            return
        # every task has ended, so this is quick; a Ctrl-C meanwhile could land in one
        # of multiprocessing's finalizers, which would print it and go on as if unheard
        with _stop_deferred():
            self._executor.shutdown(wait=True)


def local_pool(workers: int) -> Pool:
    """A pool of ``workers`` processes, or none when one would do (saves starting them)."""
    return InlinePool() if workers <= 1 else ProcessPool(workers)
