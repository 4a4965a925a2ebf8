"""``tifffs render SOURCE OUTPUT``: the mount's bytes written to files, without a mount.

SOURCE a TIFF: OUTPUT a file (or ``-`` for stdout). SOURCE a folder: OUTPUT mirrors it
as the mount's view folder does (``tifffs.batch``). Outputs are written under temporary
names and renamed, and carry the source's mtime, so that a rerun skips what is done.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import signal
import stat
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, NoReturn

from tifffs.arith import ceil_div
from tifffs.batch import DEFAULT_SPLIT_BYTES, Job, Runner, walk
from tifffs.cluster import ClusterError, DaskPool
from tifffs.config import DEFAULT_METHOD, ConfigError, parse_cores, parse_method, parse_size
from tifffs.methods import METHODS
from tifffs.outputs import CHUNK_BYTES, new_run_token
from tifffs.pools import Pool, available_cores, local_pool
from tifffs.problems import printable
from tifffs.progress import Reporter
from tifffs.tasks import ViewSpec, describe, quiet_libraries, view_size
from tifffs.views import MAX_FACTOR, ViewError, is_inside, parse_view

STDOUT = "-"
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (``ConfigError``), not usage text and exit status 2."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{message} (see: tifffs render --help)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="tifffs render",
        description="Write the exact bytes that the mount serves: for one source TIFF, or "
                    "for every file of a source folder into an output folder that mirrors it. "
                    "A rerun skips outputs that are up to date (same size, source's mtime).")
    parser.add_argument("source", metavar="SOURCE", help="a TIFF file or a folder")
    parser.add_argument("output", metavar="OUTPUT",
                        help="file to write ('-' for stdout), or the folder for a folder")
    parser.add_argument("--view", help="one view by name, e.g. x4, x4z2, x8-max, fit1000")
    parser.add_argument("--factor", help="reduction factor (default 4), instead of --view")
    parser.add_argument("--method", help=f"{', '.join(METHODS)} (default {DEFAULT_METHOD})")
    parser.add_argument("--jobs", "-j", metavar="N",
                        help="cores to use on this machine: up to N files at once, each in "
                             "its own process, or one file's bands side by side (default: "
                             f"the number of cores, {available_cores()})")
    parser.add_argument("--scheduler", metavar="ADDRESS",
                        help="run on a dask.distributed cluster, e.g. tcp://sched:8786; "
                             "SOURCE and OUTPUT must be at the same paths on its workers")
    parser.add_argument("--use-levels", action="store_true",
                        help="start from a matching pyramid level (as the mount option)")
    parser.add_argument("--imagej-large", action="store_true",
                        help="views over 4 GiB in ImageJ's format (as the mount option)")
    parser.add_argument("--cache-size", help="memory for rendered bands per task "
                        "(default 64M)")
    parser.add_argument("--split-size", help="views larger than this are written by several "
                        f"tasks side by side (default {DEFAULT_SPLIT_BYTES >> 20}M)")
    parser.add_argument("--force", action="store_true",
                        help="write outputs that look up to date too (after changing options)")
    return parser


@dataclass(frozen=True)
class _Options:
    jobs: int
    scheduler: str | None
    split_bytes: int


def main(argv: list[str]) -> int:
    """``tifffs render``; returns the exit status (``ConfigError`` for invalid options)."""
    args = _parser().parse_args(argv)
    options = _options(args)
    # a cluster's worker threads each render one file, its bands one at a time; here one
    # task (a stream) renders on every core of --jobs, more share them (``_pool``)
    spec = dataclasses.replace(_spec(args), render_slots=1 if options.scheduler else
                               options.jobs)
    source, output = args.source, args.output
    if not os.path.exists(source):
        raise ConfigError(f"SOURCE {source} does not exist")
    try:
        with _terminate_like_interrupt():
            if os.path.isdir(source):
                return _render_tree(spec, options, source, output)
            if output == STDOUT:
                if options.scheduler is not None:
                    raise ConfigError("--scheduler writes files on the cluster: give an "
                                      "OUTPUT file or folder instead of '-'")
                return _stream(spec, source, sys.stdout.buffer)
            return _render_file(spec, options, source, output)
    except ClusterError as exc:
        print(f"tifffs: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # before the run (scanning SOURCE) or while streaming
        print("tifffs: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


@contextlib.contextmanager
def _terminate_like_interrupt() -> Iterator[None]:
    """SIGTERM (a batch system stopping the job) cleans up as Ctrl-C does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _spec(args: argparse.Namespace) -> ViewSpec:
    if args.view is not None and args.factor is not None:
        raise ConfigError("--view and --factor exclude each other: give one of them")
    method = DEFAULT_METHOD
    if args.method is not None:
        try:
            method = parse_method(args.method)
        except ConfigError as exc:
            raise ConfigError(f"--method: {exc}") from None
    if args.view is not None:
        name = args.view.strip()
        if any(sep in name for sep in ",: "):
            raise ConfigError(f"--view takes one view, not {args.view!r}: run tifffs render "
                              "once per view, each into its own OUTPUT")
        try:
            view = parse_view(name, method)
        except ViewError as exc:
            raise ConfigError(f"--view: {exc}") from None
        if args.method is not None and view.method != args.method:
            raise ConfigError(f"--method {args.method} does not apply to --view {name}, "
                              f"whose method is {view.method}")
    else:
        factor = args.factor if args.factor is not None else "4"
        if not factor.isdigit() or not 1 <= int(factor) <= MAX_FACTOR:
            raise ConfigError(f"invalid --factor {factor!r}: use an integer from 1 to "
                              f"{MAX_FACTOR}, e.g. --factor 4")
        name = f"x{int(factor)}-{method}"
    return ViewSpec(name, method, use_levels=args.use_levels, imagej_large=args.imagej_large,
                    cache_bytes=_size(args.cache_size, "--cache-size", 64 << 20),
                    force=args.force)


def _options(args: argparse.Namespace) -> _Options:
    if args.jobs is not None and args.scheduler is not None:
        raise ConfigError("--jobs and --scheduler exclude each other: the cluster's workers "
                          "decide how many files run at once")
    jobs = available_cores()
    if args.jobs is not None:
        jobs = parse_cores(args.jobs, "--jobs", "--jobs")
    split = _size(args.split_size, "--split-size", DEFAULT_SPLIT_BYTES)
    if split < 1 << 20:
        raise ConfigError("--split-size must be at least 1M")
    return _Options(jobs, args.scheduler, split)


def _size(text: str | None, option: str, default: int) -> int:
    if text is None:
        return default
    try:
        return parse_size(text)
    except ConfigError as exc:
        raise ConfigError(f"{option}: {exc}") from None


def _stream(spec: ViewSpec, source: str, out: BinaryIO) -> int:
    """Write the view to stdout, a pipe or a device: in order, no temporary file."""
    quiet_libraries()
    try:
        with spec.open(source) as view:
            for offset in range(0, view.size, CHUNK_BYTES):
                out.writelines(view.read_pieces(offset, CHUNK_BYTES))
            out.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())  # no error at exit's flush
        print("tifffs: the reader of the output closed it before the end", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001  (one line, never a traceback)
        print(f"tifffs: {source}: {describe(exc)}", file=sys.stderr)
        return 1
    return 0


def _render_file(spec: ViewSpec, options: _Options, source: str, output: str) -> int:
    if os.path.isdir(output):
        output = os.path.join(output, os.path.basename(source))
    if os.path.exists(output) and not stat.S_ISREG(os.stat(output).st_mode):
        with open(output, "wb") as device:  # /dev/null, a fifo: nothing to rename over
            return _stream(spec, source, device)
    folder = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(folder):
        raise ConfigError(f"the folder of OUTPUT, {folder}, does not exist: create it with "
                          f"mkdir -p {folder}")
    if os.path.exists(output) and os.path.samefile(source, output):
        raise ConfigError("OUTPUT is SOURCE itself: tifffs never writes over a source")
    jobs = [Job(source, output, render=True)]
    spec, pool = _pool(spec, options, jobs)
    return _run(spec, pool, jobs, Reporter(1, bar=False), options)


def _render_tree(spec: ViewSpec, options: _Options, source: str, output: str) -> int:
    if output == STDOUT:
        raise ConfigError("OUTPUT '-' (stdout) takes one file: give a folder for a folder")
    if os.path.exists(output) and not os.path.isdir(output):
        raise ConfigError(f"OUTPUT {output} is a file: give a folder for the folder SOURCE")
    parent = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(parent):
        raise ConfigError(f"the folder of OUTPUT, {parent}, does not exist: create it with "
                          f"mkdir -p {parent}")
    if is_inside(os.path.realpath(output), os.path.realpath(source)):
        raise ConfigError("OUTPUT lies inside SOURCE: tifffs never writes into a source "
                          "tree, choose a folder outside it")
    cluster = DaskPool(options.scheduler) if options.scheduler is not None else None
    tree = walk(source, output)  # after connecting: a wrong address creates no folders
    reporter = Reporter(len(tree.jobs) + len(tree.failures))
    for path, why in tree.skipped:
        reporter.skip(path, why)
    for failure in tree.failures:
        reporter.add(failure)
    spec, pool = (spec, cluster) if cluster is not None else _pool(spec, options, tree.jobs)
    status = _run(spec, pool, tree.jobs, reporter, options)
    print(reporter.summary(interrupted=status == EXIT_INTERRUPTED), file=sys.stderr)
    return status


def _pool(spec: ViewSpec, options: _Options, jobs: list[Job]) -> tuple[ViewSpec, Pool]:
    """The cluster of ``--scheduler``, else processes on this machine; ``spec`` with the
    render slots of each task."""
    if options.scheduler is not None:
        return spec, DaskPool(options.scheduler)
    workers, slots = share_cores(options.jobs, _task_estimate(spec, jobs, options))
    return dataclasses.replace(spec, render_slots=slots), local_pool(workers)


def share_cores(jobs: int, tasks: int) -> tuple[int, int]:
    """(worker processes, bands each renders at once) for ``--jobs`` cores and ``tasks``
    tasks: one process per task up to ``jobs``, and the cores left over render bands
    side by side (one big file gets every core, ``--jobs 1`` uses one)."""
    workers = max(1, min(jobs, tasks))
    return workers, max(1, jobs // workers)


def _run(spec: ViewSpec, pool: Pool, jobs: list[Job], reporter: Reporter,
         options: _Options) -> int:
    """Run ``jobs`` in ``pool``, which it shuts down; the exit status."""
    try:
        try:
            Runner(pool, spec, new_run_token(), reporter, options.split_bytes).run(jobs)
        finally:
            reporter.close()
    except KeyboardInterrupt:
        reporter.line("tifffs: interrupted; unfinished outputs were removed")
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001  (the pool itself failed: one line, no traceback)
        reporter.line(printable(
            f"tifffs: error: the run stopped ({type(exc).__name__}: {exc}); the outputs "
            "written are complete: run the same command again to resume"))
        return 1
    return 1 if reporter.failures else 0


def _task_estimate(spec: ViewSpec, jobs: list[Job], options: _Options) -> int:
    """About how many tasks ``jobs`` make, up to ``options.jobs``: more workers would idle
    (and starting them costs more than rendering a view of a few hundred MB)."""
    count = 0
    for job in jobs:
        count += _tasks_of(spec, job, options.split_bytes)
        if count >= options.jobs:
            break
    return count


def _tasks_of(spec: ViewSpec, job: Job, split_bytes: int) -> int:
    """The tasks ``Runner`` makes of ``job``: range tasks for a view larger than
    ``split_bytes`` (only a source that large can have one), else one."""
    try:
        if not job.render or os.stat(job.source).st_size < split_bytes:
            return 1
        return max(1, ceil_div(view_size(spec, job.source), split_bytes))
    except Exception:  # noqa: BLE001  (the task reports it)
        return 1
