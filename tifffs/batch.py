"""Rendering a whole tree: ``tifffs render SOURCE_FOLDER OUTPUT_FOLDER``.

OUTPUT mirrors SOURCE as a view folder of the mount does: TIFFs (``*.tif``, ``*.tiff``,
any case) rendered, other regular files copied, folders created, links followed only
when they stay inside SOURCE and do not lead to a folder above them; fifos, sockets and
devices left out. One task per file, or per range of bytes of a file whose view is
larger than the split size, runs in a ``tifffs.pools`` pool or on a dask cluster.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tifffs.outputs import Stamp, create, discard, finish, is_up_to_date, temp_path
from tifffs.pools import Pool
from tifffs.problems import printable
from tifffs.progress import Reporter
from tifffs.tasks import (
    FAILED,
    RENDERED,
    UP_TO_DATE,
    Outcome,
    ViewSpec,
    copy_file,
    describe,
    render_file,
    render_range,
    view_size,
)
from tifffs.views import is_inside, is_tiff_name

#: Views larger than this are written by several tasks, each a range of this many bytes.
DEFAULT_SPLIT_BYTES = 256 << 20


@dataclass(frozen=True)
class Job:
    """One source file and its output."""

    source: str
    final: str
    render: bool  # a view of a TIFF; else a copy


@dataclass
class Tree:
    """What a walk found: the files to write, and the entries left out or unreadable."""

    jobs: list[Job] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why)
    failures: list[Outcome] = field(default_factory=list)


def walk(source_root: str, output_root: str) -> Tree:
    """Find the files under ``source_root`` and create the mirrored folders."""
    tree = Tree()
    real_root = os.path.realpath(source_root)
    stack = [(source_root, output_root, [real_root])]
    while stack:
        folder, out_folder, above = stack.pop()
        try:
            os.makedirs(out_folder, exist_ok=True)
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda e: e.name)
        except OSError as exc:
            tree.failures.append(Outcome(folder, FAILED, error=describe(exc)))
            continue
        subfolders = []
        for entry in entries:
            kind = _kind(entry, real_root, above)
            out = os.path.join(out_folder, entry.name)
            if kind == "folder":
                subfolders.append((entry.path, out, [*above, os.path.realpath(entry.path)]))
            elif kind == "file":
                tree.jobs.append(Job(entry.path, out, is_tiff_name(entry.name)))
            else:
                tree.skipped.append((entry.path, kind))
        stack.extend(reversed(subfolders))
    return tree


def _kind(entry: os.DirEntry, real_root: str, above: list[str]) -> str:
    """``folder``, ``file``, or why the entry is left out (as the mount leaves it out)."""
    try:
        if entry.is_symlink():
            target = os.path.realpath(entry.path)
            if not is_inside(target, real_root):
                return "a link leading out of SOURCE"
            if entry.is_dir() and any(is_inside(d, target) for d in above):
                return "a link to a folder that contains it"
        if entry.is_dir():
            return "folder"
        if entry.is_file():
            return "file"
    except OSError as exc:
        return describe(exc)
    return "neither a regular file nor a folder (a fifo, socket, device or dangling link)"


@dataclass
class _Split:
    """A large view written by several range tasks into one temporary file."""

    job: Job
    stamp: Stamp
    temp: str
    size: int
    remaining: int
    error: str = ""


@dataclass(frozen=True)
class _Task:
    fn: Callable[..., Outcome]
    args: tuple[Any, ...]
    source: str
    temp: str
    split: _Split | None = None


class Runner:
    """Submits the tasks of a list of jobs to a pool, at most ``pool.window`` at a time,
    and reports each file's outcome; on an interrupt removes every temporary file."""

    def __init__(self, pool: Pool, spec: ViewSpec, token: str, reporter: Reporter,
                 split_bytes: int = DEFAULT_SPLIT_BYTES) -> None:
        self.pool = pool
        self.spec = spec
        self.token = token
        self.reporter = reporter
        self.split_bytes = split_bytes
        self._pending: dict[Any, _Task] = {}
        self._temps: set[str] = set()  # of tasks submitted and not yet collected

    def run(self, jobs: list[Job]) -> None:
        """Write every job's output; raises KeyboardInterrupt after cleaning up."""
        try:
            for task in self._tasks(jobs):
                while len(self._pending) >= self.pool.window:
                    self._collect()
                self._temps.add(task.temp)
                self._pending[self.pool.submit(task.fn, *task.args)] = task
            while self._pending:
                self._collect()
        except BaseException:
            try:
                self.pool.shutdown(cancel=list(self._pending))
            finally:  # also on a second Ctrl-C while the workers stop
                for temp in self._temps:
                    discard(temp)
            raise
        self.pool.shutdown(cancel=[])

    def _tasks(self, jobs: list[Job]) -> Iterator[_Task]:
        for job in jobs:
            temp = temp_path(job.final, self.token)
            if not job.render:
                yield _Task(copy_file, (job.source, job.final, temp, self.spec.force),
                            job.source, temp)
            elif self._large(job.source):
                yield from self._split(job, temp)
            else:
                yield _Task(render_file, (self.spec, job.source, job.final, temp), job.source,
                            temp)

    def _large(self, source: str) -> bool:
        try:
            return os.stat(source).st_size >= self.split_bytes
        except OSError:
            return False  # the task reports it

    def _split(self, job: Job, temp: str) -> Iterator[_Task]:
        """Range tasks for a large view, or its outcome when there is nothing to do."""
        try:
            stamp = Stamp.of(job.source)
            size = view_size(self.spec, job.source)
            if not self.spec.force and is_up_to_date(job.final, stamp, size):
                self.reporter.add(Outcome(job.source, UP_TO_DATE))
                return
            if size <= self.split_bytes:
                yield _Task(render_file, (self.spec, job.source, job.final, temp), job.source,
                            temp)
                return
            starts = range(0, size, self.split_bytes)
            split = _Split(job, stamp, temp, size, remaining=len(starts))
            self._temps.add(temp)
            os.close(create(temp, size))
        except Exception as exc:  # noqa: BLE001  (one file: reported, the run goes on)
            self.reporter.add(Outcome(job.source, FAILED, error=describe(exc)))
            return
        for start in starts:
            end = min(start + self.split_bytes, size)
            yield _Task(render_range, (self.spec, job.source, stamp, temp, start, end),
                        job.source, temp, split)

    def _collect(self) -> None:
        for future in self.pool.wait_any(list(self._pending)):
            task = self._pending.pop(future)
            try:
                outcome = future.result()
            except Exception as exc:  # noqa: BLE001  (the worker died or refused the task)
                outcome = Outcome(task.source, FAILED, error=printable(
                    f"its worker failed ({type(exc).__name__}: {exc}): run again to retry it"))
                discard(task.temp)
            if task.split is None:
                self._temps.discard(task.temp)
                self.reporter.add(outcome)
            else:
                self._range_done(task.split, outcome)

    def _range_done(self, split: _Split, outcome: Outcome) -> None:
        split.remaining -= 1
        if outcome.action == FAILED and not split.error:
            split.error = outcome.error
        if split.remaining:
            return
        self._temps.discard(split.temp)
        if not split.error:
            try:
                finish(split.temp, split.job.final, split.stamp)
                self.reporter.add(Outcome(split.job.source, RENDERED, split.stamp.size,
                                          split.size))
                return
            except OSError as exc:
                split.error = describe(exc)
        discard(split.temp)
        self.reporter.add(Outcome(split.job.source, FAILED, error=split.error))
