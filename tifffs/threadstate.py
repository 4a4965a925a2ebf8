"""Keeping one Python thread state per long-lived libfuse worker thread.

libfuse's worker threads are not Python threads. For each callback from such a thread
ctypes makes a new Python thread state (``PyGILState_Ensure``) and deletes it when the
callback returns, so every FUSE request paid for a thread state, and thread-local data
lived for one request only. A worker that holds one more reference to its thread state
(``PyGILState_Ensure`` without a ``PyGILState_Release``) keeps it for its lifetime, and
later callbacks only count references: an ``ls -l`` of 20,000 files through the mount
took 1.54-1.78 s instead of 1.90-2.10 s.

libfuse ends a worker when more than ten are idle, and a burst of parallel requests
starts a worker per waiting request; an ended worker's kept state (about 20 KiB, plus
the 256 KiB scratch buffer of ``pixels`` if it read rows with gaps) is never freed. So a
worker keeps its state only once it has served ``KEEP_AFTER`` requests (the workers of
a burst end before that), and at most ``MAX_KEPT`` workers ever do: at most about 9 MiB.
"""

from __future__ import annotations

import ctypes
import threading

#: Requests a thread serves before it keeps its state.
KEEP_AFTER = 32
#: Threads that may keep their thread state, over the life of the process.
MAX_KEPT = 32
#: Threads (by native id) counted at most; more are forgotten at once.
_MAX_COUNTED = 4096

_this_thread = threading.local()
_lock = threading.Lock()
_served: dict[int, int] = {}  # requests served by threads that keep no state yet
_kept = 0


def keep_thread_state() -> None:
    """Count a request served by the calling thread; on its ``KEEP_AFTER``-th, keep the
    thread's Python thread state after the current callback returns (for at most
    ``MAX_KEPT`` threads). Harmless on a Python thread, whose state Python deletes when
    the thread ends whatever its references."""
    global _kept
    if _kept >= MAX_KEPT or getattr(_this_thread, "kept", False):
        return  # (read without the lock: at worst one more request is counted)
    thread = threading.get_native_id()
    with _lock:
        served = _served.get(thread, 0) + 1
        if served < KEEP_AFTER or _kept >= MAX_KEPT:
            if len(_served) >= _MAX_COUNTED:
                _served.clear()  # ids of ended threads; the rest count again
            _served[thread] = served
            return
        _served.pop(thread, None)  # none when the first request already keeps it
        _kept += 1
    ctypes.pythonapi.PyGILState_Ensure()
    _this_thread.kept = True


def threads_kept() -> int:
    """How many threads have kept their state (for the stats file and tests)."""
    with _lock:
        return _kept
