"""Run commands and fresh-interpreter tasks, timed; remember what runs so it can be stopped."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 1800.0
_LIVE: dict[int, subprocess.Popen] = {}


class CommandError(RuntimeError):
    """A command that exited non-zero: its first line of stderr says why."""


def child_env() -> dict[str, str]:
    """Our environment, with this repository importable (``python -m benchmarks.tasks``)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
    return env


def start(argv: list[str], stdout: object = subprocess.DEVNULL,
          stderr: object = subprocess.PIPE, cwd: str | None = None,
          stdin: object = subprocess.DEVNULL) -> subprocess.Popen:
    """Start a process in its own process group and remember it until it is reaped."""
    proc = subprocess.Popen(argv, stdin=stdin, stdout=stdout, stderr=stderr,
                            cwd=cwd, env=child_env(), start_new_session=True)
    _LIVE[proc.pid] = proc
    return proc


def reap(proc: subprocess.Popen, stdin: bytes | None = None,
         timeout: float = TIMEOUT) -> tuple[str, str]:
    """Feed ``stdin`` to ``proc`` and wait for it (killing its group after ``timeout``);
    its stdout and stderr text."""
    try:
        out, err = proc.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        stop(proc)
        raise CommandError(f"{os.path.basename(str(proc.args[0]))} took over {timeout:.0f} s") \
            from None
    finally:
        forget(proc)
    return (out or b"").decode(errors="replace"), (err or b"").decode(errors="replace")


def run(argv: list[str]) -> float:
    """Run one command, stdout to /dev/null; its wall seconds. Raise CommandError on failure."""
    begin = time.perf_counter()
    proc = start(argv)
    _, err = reap(proc)
    seconds = time.perf_counter() - begin
    if proc.returncode:
        raise CommandError(f"{' '.join(argv[:2])}... exited {proc.returncode}: "
                           f"{first_line(err[-2000:])}")
    return seconds


def run_parallel(argvs: list[list[str]]) -> float:
    """Start every command at once; wall seconds until the last ends. All must succeed."""
    begin = time.perf_counter()
    procs = [start(argv) for argv in argvs]
    errors = []
    for proc in procs:
        _, err = reap(proc)
        if proc.returncode:
            errors.append(f"exited {proc.returncode}: {first_line(err)}")
    if errors:
        raise CommandError(f"{len(errors)} of {len(argvs)} failed; {errors[0]}")
    return time.perf_counter() - begin


def capture(argv: list[str], stdin: bytes = b"", cwd: str | None = None) -> tuple[int, str, str]:
    """Run a command with ``stdin``; its exit status, stdout and stderr."""
    proc = start(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=cwd)
    out, err = reap(proc, stdin)
    return proc.returncode, out, err


def task(name: str, **args: object) -> dict:
    """Run benchmarks.tasks ``name`` in a fresh interpreter; its JSON result."""
    # the arguments go on stdin: a list of 20,000 paths is too long for argv
    status, out, err = capture([sys.executable, "-m", "benchmarks.tasks", name],
                               json.dumps(args).encode(), cwd=REPO)
    try:
        result = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise CommandError(f"task {name} exited {status}: {first_line(err, last=True)}") \
            from None
    if "error" in result:
        raise CommandError(f"task {name}: {result['error']}")
    return result


def first_line(text: str, last: bool = False) -> str:
    """The first (or last) non-empty line of ``text``, shortened."""
    lines = [line for line in text.strip().splitlines() if line.strip()] or ["(no message)"]
    return (lines[-1] if last else lines[0])[:300]


def stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the process group, SIGKILL it after ``grace`` seconds; reap it."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 30.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    forget(proc)


def forget(proc: subprocess.Popen) -> None:
    """Stop tracking a process that its owner has reaped."""
    _LIVE.pop(proc.pid, None)


def stop_all() -> None:
    """Stop every process started here that is still running (on errors and signals)."""
    for proc in list(_LIVE.values()):
        stop(proc, grace=2.0)
