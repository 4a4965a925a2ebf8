"""The registry of contenders: name -> how to run it, and the context they run in.

A contender is a function of the :class:`Context` that measures once and returns one
:class:`Sample` per table entry it feeds (most feed one; the ImageJ run feeds two, since
both opens happen in one JVM). Scenario modules register theirs with :func:`contender`.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from benchmarks import commands
from benchmarks.data import Case
from benchmarks.mount import Mount

SCENARIOS = ("stack", "imagej", "page", "timelapse", "files", "flat", "tree")
SCENARIO_MODULES = ("benchmarks.stack", "benchmarks.page", "benchmarks.timelapse",
                    "benchmarks.listing", "benchmarks.tree")


@dataclass
class Sample:
    """One measurement: seconds, and the daemon's peak RSS / open descriptors if any."""

    s: float
    daemon_mb: float | None = None
    fds: int | None = None
    rss_mb: float | None = None


class Unavailable(Exception):
    """The contender cannot run with this tifffs or on this machine (the message says why)."""


class Skipped(Exception):
    """The contender was not run by choice or for want of privilege (e.g. cold: not root)."""


@dataclass(frozen=True)
class Entry:
    """A row of the table: what was measured, and the entry it is compared with."""

    scenario: str
    name: str
    label: str
    baseline: str | None = None

    @property
    def key(self) -> str:
        """The entry as results and targets name it: "scenario/name"."""
        return f"{self.scenario}/{self.name}"


@dataclass(frozen=True)
class Contender:
    """A way of doing a scenario's work: ``run`` measures once, feeding ``entries``."""

    scenario: str
    name: str
    run: Callable[[Context], dict[str, Sample]]
    entries: tuple[Entry, ...] = field(default_factory=tuple)

    def selected(self, patterns: list[str]) -> bool:
        """True when no pattern is given or one matches the scenario, name or both."""
        keys = (self.scenario, self.name, f"{self.scenario}/{self.name}",
                *(e.name for e in self.entries))
        return not patterns or any(fnmatch.fnmatch(k, p) for p in patterns for k in keys)


REGISTRY: list[Contender] = []


def contender(scenario: str, name: str, label: str, baseline: str | None = None,
              more: tuple[tuple[str, str, str | None], ...] = ()) -> Callable:
    """Register ``fn(ctx) -> Sample | {entry: Sample}`` as contender ``name``.

    ``more`` names further entries the function feeds: (name, label, baseline).
    """
    def register(fn: Callable[[Context], Sample | dict[str, Sample]]) -> Callable:
        def run(ctx: Context) -> dict[str, Sample]:
            result = fn(ctx)
            return {name: result} if isinstance(result, Sample) else result

        entries = (Entry(scenario, name, label, baseline),
                   *(Entry(scenario, n, lab, base) for n, lab, base in more))
        REGISTRY.append(Contender(scenario, name, run, entries))
        return fn
    return register


def contender_and_fuse3(scenario: str, name: str, label: str, baseline: str | None = None,
                        fuse3_note: str = "") -> Callable:
    """Register ``fn(ctx, libfuse) -> Sample`` twice, both against ``baseline``: as contender
    ``name`` run with libfuse 2, then as ``name-fuse3`` run with libfuse 3, labelled "the
    same with --libfuse 3", followed by " (fuse3_note)" when a note is given."""
    fuse3_label = "the same with --libfuse 3" + (f" ({fuse3_note})" if fuse3_note else "")

    def register(fn: Callable[[Context, int], Sample]) -> Callable:
        contender(scenario, name, label, baseline)(lambda ctx: fn(ctx, 2))
        contender(scenario, f"{name}-fuse3", fuse3_label, baseline)(lambda ctx: fn(ctx, 3))
        return fn
    return register


def all_contenders() -> list[Contender]:
    """Every registered contender, in scenario order (importing the scenario modules)."""
    import importlib

    for module in SCENARIO_MODULES:
        importlib.import_module(module)
    return sorted(REGISTRY, key=lambda c: SCENARIOS.index(c.scenario))


class Context:
    """What contenders share: the data, a scratch folder, what tifffs supports, caches."""

    def __init__(self, cases: dict[str, Case], workdir: str, features: set[str]) -> None:
        self.cases = cases
        self.workdir = workdir
        self.features = features
        self.services = contextlib.ExitStack()  # long-lived helpers (the dask cluster)
        self.can_drop_caches = (os.geteuid() == 0
                                and os.access("/proc/sys/vm/drop_caches", os.W_OK))

    def require(self, *features: str) -> None:
        """Raise Unavailable unless the installed tifffs has every one of ``features``."""
        missing = [f for f in features if f not in self.features]
        if missing:
            raise Unavailable(f"this tifffs has no {', '.join(missing)}")

    def mount(self, case: Case, views: list[str], cache_mb: int | None = None,
              index_dir: str | None = None, libfuse: int = 2) -> Mount:
        """A fresh mount of ``case`` with ``views``; its own empty index unless given one;
        with libfuse 3 (``--libfuse 3``) if asked."""
        options = ["--factors", "4", "--views", ",".join(views)]
        if libfuse == 3:
            self.require("--libfuse")
            options += ["--libfuse", "3"]
        if cache_mb is not None:
            options += ["--cache-size", f"{cache_mb}M"]
        if "--index-dir" in self.features:
            options += ["--index-dir", index_dir or tempfile.mkdtemp(prefix="index-",
                                                                     dir=self.workdir)]
        return Mount(case.root, self.workdir, options)

    @contextlib.contextmanager
    def scratch(self, prefix: str = "out-") -> Iterator[str]:
        """A fresh folder on the data disk, removed afterwards."""
        path = tempfile.mkdtemp(prefix=prefix, dir=self.workdir)
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def warm(self, case: Case) -> None:
        """Read every source file now, so it is in the page cache (this VM evicts idle pages)."""
        buffer = bytearray(8 << 20)
        for path in case.files:
            with open(path, "rb", buffering=0) as fh:
                while fh.readinto(buffer):
                    pass

    def drop_caches(self) -> None:
        """Empty the page cache, dentries and inodes; Skipped unless root."""
        if not self.can_drop_caches:
            raise Skipped("skipped: not root (cold runs need /proc/sys/vm/drop_caches)")
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as fh:
            fh.write("3")

    def task(self, name: str, **args: object) -> Sample:
        """A fresh-interpreter baseline from benchmarks.tasks: its time and peak RSS."""
        result = commands.task(name, **args)
        return Sample(result["s"], rss_mb=result.get("rss_mb"))
