"""Whole-tree renders: --jobs 1 against --jobs 2, and a local dask.distributed cluster."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
from collections.abc import Iterator

from benchmarks import commands
from benchmarks.contenders import Context, Sample, Unavailable, contender

WORKERS = 2
READY_TIMEOUT = 120.0


def _render_tree(ctx: Context, *options: str) -> Sample:
    ctx.require("render --jobs")
    case = ctx.cases["stacks"]
    with ctx.scratch() as out:
        ctx.warm(case)
        return Sample(commands.run([sys.executable, "-m", "tifffs", "render", case.root,
                                    os.path.join(out, "x4"), "--view", "x4", *options]))


@contender("tree", "render-jobs1", "tifffs render STACKS OUT --view x4 --jobs 1")
def jobs1(ctx: Context) -> Sample:
    return _render_tree(ctx, "--jobs", "1")


@contender("tree", "render-jobs2", "tifffs render STACKS OUT --view x4 --jobs 2",
           baseline="render-jobs1")
def jobs2(ctx: Context) -> Sample:
    return _render_tree(ctx, "--jobs", "2")


@contender("tree", "render-dask", f"tifffs render --scheduler: dask scheduler + {WORKERS} dask "
           "worker processes (1 thread each) on 127.0.0.1", baseline="render-jobs2")
def on_dask(ctx: Context) -> Sample:
    ctx.require("render --jobs", "render --scheduler")
    address = getattr(ctx, "dask_address", None)
    if address is None:
        address = ctx.services.enter_context(local_cluster(ctx.workdir))
        ctx.dask_address = address  # type: ignore[attr-defined]  # one cluster per run
    return _render_tree(ctx, "--scheduler", address)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def local_cluster(workdir: str) -> Iterator[str]:
    """``dask scheduler`` and WORKERS ``dask worker`` processes; stopped on leaving."""
    dask = os.path.join(os.path.dirname(sys.executable), "dask")
    if not os.path.exists(dask) or importlib.util.find_spec("distributed") is None:
        raise Unavailable("dask.distributed is not installed (the bench extra installs it)")
    address = f"tcp://127.0.0.1:{_free_port()}"
    procs: list[subprocess.Popen] = []
    log = open(os.path.join(workdir, "dask.log"), "wb")  # noqa: SIM115  (closed below)
    try:
        procs.append(commands.start([dask, "scheduler", "--host", "127.0.0.1", "--port",
                                     address.rsplit(":", 1)[1], "--no-dashboard"],
                                    stderr=log, cwd=workdir))
        for i in range(WORKERS):
            procs.append(commands.start(
                [dask, "worker", address, "--nworkers", "1", "--nthreads", "1",
                 "--no-dashboard", "--name", f"bench-{i}", "--local-directory", workdir],
                stderr=log, cwd=workdir))
        _wait_for_workers(address, procs)
        yield address
    finally:
        for proc in reversed(procs):
            commands.stop(proc)
        log.close()


def _wait_for_workers(address: str, procs: list[subprocess.Popen]) -> None:
    from distributed import Client

    try:
        with Client(address, timeout=READY_TIMEOUT) as client:
            client.wait_for_workers(WORKERS, timeout=READY_TIMEOUT)
    except (OSError, TimeoutError) as exc:
        dead = [p.args[1] for p in procs if p.poll() is not None]
        raise commands.CommandError(f"the local dask cluster did not start ({exc}; exited: "
                                    f"{', '.join(dead) or 'none'}): see dask.log") from None
