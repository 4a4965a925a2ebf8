"""Starting tifffs helper processes: a fresh ``python -I`` running one function of tifffs."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from typing import Any

#: Run by ``python -I``: no current folder or PYTHON* variables on the path; the
#: folder that holds this tifffs is added when it is not there already. Signals are
#: unblocked first: a helper started from a libfuse thread inherits that thread's mask,
#: which blocks SIGTERM and SIGINT.
_BOOTSTRAP = ("import signal; signal.pthread_sigmask(signal.SIG_SETMASK, ()); "
              "import sys, importlib; root = sys.argv[1]; "
              "root in sys.path or sys.path.insert(0, root); "
              "module, _, function = sys.argv[2].partition(':'); "
              "getattr(importlib.import_module(module), function)(*sys.argv[3:])")


def start_helper(target: str, *args: str, **popen: Any) -> subprocess.Popen:
    """Start ``target`` (``"tifffs.module:function"``, called with the string ``args``)
    in a new interpreter of this Python, with this tifffs, in a session of its own
    (Ctrl-C on a terminal reaches the daemon only). ``popen``: ``subprocess.Popen``'s
    other arguments (the standard streams, ``pass_fds``...)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return subprocess.Popen([sys.executable, "-I", "-c", _BOOTSTRAP, root, target, *args],
                            start_new_session=True, **popen)


def wait_or_kill(process: subprocess.Popen, seconds: float) -> int:
    """``process``'s exit status, killing it if it has not exited within ``seconds``
    (negative: the signal that ended it)."""
    try:
        return process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def signal_name(status: int) -> str:
    """The name of the signal that ended a process (``status`` is negative)."""
    with contextlib.suppress(ValueError):
        return signal.Signals(-status).name
    return f"signal {-status}"
