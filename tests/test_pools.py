"""``tifffs render``'s worker processes and Ctrl-C: nothing started is left behind, no
process prints a traceback and no abandoned run waits for its tasks (the whole run under
Ctrl-C is in test_batch.py)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap

import pytest

from tifffs.pools import _stop_deferred


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_while_a_worker_starts_takes_effect_once_it_has_started(signum):
    steps = []
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)  # as render does
    try:
        with pytest.raises(KeyboardInterrupt), _stop_deferred():
            signal.raise_signal(signum)
            steps.append("the block ran to its end")
        assert steps == ["the block ran to its end"]
        assert signal.getsignal(signum) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGTERM, previous)


def _signal_sets(status: str) -> dict[str, int]:
    """The signal masks of a /proc/PID/status text (bit ``n - 1`` is signal ``n``)."""
    return {key: int(value, 16) for key, value in
            (line.split(":\t") for line in status.splitlines())
            if key in ("SigBlk", "SigIgn", "SigCgt")}


# run in a process of its own: its fork server lives as long as the process
_POOL_SCRIPT = textwrap.dedent("""
    import json, multiprocessing, pathlib, signal, time
    from concurrent.futures import ProcessPoolExecutor
    from tifffs.pools import ProcessPool

    def children(pid):
        return pathlib.Path(f"/proc/{pid}/task/{pid}/children").read_text().split()

    pool = ProcessPool(1)
    worker_status = pool.submit(pathlib.Path("/proc/self/status").read_text).result()
    [server] = [pid for pid in children(pathlib.os.getpid())
                if b"forkserver" in pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()]
    server_status = pathlib.Path(f"/proc/{server}/status").read_text()
    [worker] = children(server)
    # what any worker has from the server until tifffs's initializer runs
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("forkserver")) as plain:
        inherited = str(plain.submit(signal.getsignal, signal.SIGINT).result())
    task = pool.submit(time.sleep, 600)
    while not task.running():
        time.sleep(0.01)
    pool.shutdown(cancel=[task])

    finishing = ProcessPool(1)
    finishing.submit(time.sleep, 0).result()
    shutdown = finishing._executor.shutdown
    def interrupted_shutdown(*args, **kwargs):
        signal.raise_signal(signal.SIGINT)  # Ctrl-C as the run ends
        shutdown(*args, **kwargs)
    finishing._executor.shutdown = interrupted_shutdown
    try:
        finishing.shutdown(cancel=[])
        ended = "returned"
    except KeyboardInterrupt:
        ended = "KeyboardInterrupt"
    print(json.dumps({
        "worker": worker_status, "server": server_status, "inherited": inherited,
        "task": "cancelled" if task.cancelled() else type(task.exception()).__name__,
        "worker_gone": not pathlib.Path(f"/proc/{worker}").exists(),
        "finishing": ended, "left": len(multiprocessing.active_children())}))
""")


@pytest.fixture(scope="module")
def pool_run() -> dict:
    result = subprocess.run([sys.executable, "-c", _POOL_SCRIPT], capture_output=True,
                            text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_a_starting_worker_ignores_ctrl_c_and_a_started_one_ends_on_it(pool_run):
    sigint = 1 << (signal.SIGINT - 1)
    assert _signal_sets(pool_run["server"])["SigIgn"] & sigint
    assert pool_run["inherited"] == str(signal.SIG_IGN)
    worker = _signal_sets(pool_run["worker"])
    assert not (worker["SigIgn"] | worker["SigCgt"] | worker["SigBlk"]) & sigint


def test_an_abandoned_run_stops_its_workers_instead_of_waiting_for_their_tasks(pool_run):
    assert pool_run["task"] in ("cancelled", "BrokenProcessPool")
    assert pool_run["worker_gone"]


def test_a_ctrl_c_as_a_run_ends_is_neither_lost_nor_cuts_the_shutdown_short(pool_run):
    assert pool_run["finishing"] == "KeyboardInterrupt"
    assert pool_run["left"] == 0
