"""In-process baselines, each run in a fresh interpreter by the runner.

``python -m benchmarks.tasks NAME < JSON_ARGS`` imports what the task needs, starts the
clock, runs it, and prints one JSON line: ``{"s": seconds, "rss_mb": VmHWM}`` (or
``{"error": ...}``). Interpreter start and imports are not timed.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

Task = Callable[[dict[str, Any]], Callable[[], None]]
TASKS: dict[str, Task] = {}


def task(name: str) -> Callable[[Task], Task]:
    """Register a task: a function of its arguments returning the function to time."""
    def register(fn: Task) -> Task:
        TASKS[name] = fn
        return fn
    return register


def _pages(path: str) -> Iterator[Any]:
    """Every page of an uncompressed stack, read in place through a memory map."""
    import tifffile

    stack = tifffile.memmap(path, mode="r")
    yield from stack.reshape((-1, *stack.shape[-2:]))


def _area(f: int) -> Callable[[Any], Any]:
    """A page reduced ``f``-fold by cv2.resize INTER_AREA (OpenCV imported now, untimed)."""
    import cv2

    def reduce(page: Any) -> Any:
        h, w = page.shape
        return cv2.resize(page, (-(-w // f), -(-h // f)), interpolation=cv2.INTER_AREA)
    return reduce


def _write_loop(args: dict[str, Any], reduce: Callable[[Any], Any]) -> Callable[[], None]:
    files, out = args["files"], args["out"]

    def run() -> None:
        with open(out, "wb") as fh:
            for path in files:
                fh.writelines(memoryview(reduce(page)) for page in _pages(path))
    return run


@task("memmap-area")
def memmap_area(args: dict[str, Any]) -> Callable[[], None]:
    """tifffile.memmap, cv2.resize INTER_AREA per page, results written to one file."""
    return _write_loop(args, _area(args["factor"]))


@task("memmap-slice")
def memmap_slice(args: dict[str, Any]) -> Callable[[], None]:
    """tifffile.memmap, page[::f, ::f] per page (copied contiguous), written to one file."""
    import numpy as np

    f = args["factor"]
    return _write_loop(args, lambda page: np.ascontiguousarray(page[::f, ::f]))


@task("tifffile-scan")
def tifffile_scan(args: dict[str, Any]) -> Callable[[], None]:
    """TiffFile of every file and the shape of every page: what a listing must learn."""
    import tifffile

    files = args["files"]

    def run() -> None:
        for path in files:
            with tifffile.TiffFile(path) as tif:
                for page in tif.pages:
                    page.shape  # noqa: B018  (parsing the IFD is the work)
    return run


@task("loop-write")
def loop_write(args: dict[str, Any]) -> Callable[[], None]:
    """Read each file (tifffile), INTER_AREA each page (OpenCV), write the tree (tifffile)."""
    import numpy as np
    import tifffile

    root, rels, out = args["root"], args["relfiles"], args["out"]
    reduce = _area(args["factor"])

    def run() -> None:
        for rel in rels:
            stack = tifffile.imread(os.path.join(root, rel))
            small = np.stack([reduce(page) for page in stack])
            target = os.path.join(out, rel)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            tifffile.imwrite(target, small, photometric="minisblack")
    return run


@task("render")
def render(args: dict[str, Any]) -> Callable[[], None]:
    """``tifffs render SOURCE OUT --view V``, in this process (tifffs imported untimed)."""
    import contextlib
    import io

    from tifffs import cli, rendering  # noqa: F401  (cli imports the renderer lazily)

    argv = ["render", args["source"], args["out"], "--view", args["view"]]

    def run() -> None:
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            status = cli.main(argv)
        if status:
            raise RuntimeError(err.getvalue().strip() or f"tifffs render exited {status}")
    return run


def _vm_hwm_mb() -> float | None:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


def main(argv: list[str]) -> int:
    """Run one task; print its JSON result line."""
    # arguments come on stdin: 20,000 paths are more than one argv string may hold
    name, args = argv[0], json.loads(sys.stdin.read())
    try:
        import numpy  # noqa: F401  (every task needs it: imported before the clock)

        timed = TASKS[name](args)
        begin = time.perf_counter()
        timed()
        result: dict[str, Any] = {"s": time.perf_counter() - begin, "rss_mb": _vm_hwm_mb()}
    except Exception as exc:  # noqa: BLE001  (the runner marks the entry as an error)
        result = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
