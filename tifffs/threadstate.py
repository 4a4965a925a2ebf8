"""Keeping one Python thread state per libfuse worker thread.

libfuse's worker threads are not Python threads. For each callback from such a thread
ctypes makes a new Python thread state (``PyGILState_Ensure``) and deletes it when the
callback returns, so every FUSE request paid for a thread state, and thread-local data
lived for one request only. A worker that holds one more reference to its thread state
(``PyGILState_Ensure`` without a ``PyGILState_Release``) keeps it for its lifetime, and
later callbacks only count references: an ``ls -l`` of 20,000 files through the mount
took 1.8 s instead of 2.0 s.

libfuse ends a worker when more than ten are idle (after a burst of parallel requests);
its kept state (about 20 KiB, plus the 256 KiB scratch buffer of ``pixels`` if it read
rows with gaps) is then never freed. So at most ``MAX_KEPT`` threads keep theirs over
the life of the process: at most about 9 MiB. A burst of parallel requests may reach
the cap at once (libfuse starts a worker per waiting request); workers started after
that make a state per request again, as without this module.
"""

from __future__ import annotations

import ctypes
import threading

#: Threads that may keep their thread state, over the life of the process.
MAX_KEPT = 32

_this_thread = threading.local()
_lock = threading.Lock()
_kept = 0


def keep_thread_state() -> None:
    """Keep the calling thread's Python thread state after the current callback returns
    (once per thread, for at most ``MAX_KEPT`` threads). Harmless on a Python thread,
    whose state Python deletes when the thread ends whatever its references."""
    global _kept
    if getattr(_this_thread, "kept", False):
        return
    with _lock:
        if _kept >= MAX_KEPT:
            return
        _kept += 1
    ctypes.pythonapi.PyGILState_Ensure()
    _this_thread.kept = True


def threads_kept() -> int:
    """How many threads have kept their state (for the stats file and tests)."""
    with _lock:
        return _kept
