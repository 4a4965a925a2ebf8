"""Run the contenders: interleaved repetitions, fresh processes and mounts, then report.

``scripts/bench [--quick] [--only GLOB,...] [--out DIR] [--reps N] [--docs]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from benchmarks import commands, data, machine, report
from benchmarks.contenders import (
    SCENARIOS,
    Contender,
    Context,
    Skipped,
    Unavailable,
    all_contenders,
)
from benchmarks.mount import fusermount

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def log(message: str) -> None:
    """A progress line on stderr."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench", description="Benchmark tifffs side by side with its baselines: "
        "medians, ratios, targets met or not; writes JSON, markdown and a plot.")
    parser.add_argument("--quick", action="store_true",
                        help="small data and one repetition: a smoke run of a few minutes")
    parser.add_argument("--only", metavar="GLOB,...",
                        help="scenarios or contenders to run, e.g. stack,flat/ls-*,render-*")
    parser.add_argument("--out", metavar="DIR", default=RESULTS,
                        help="where the dated result files go (default benchmarks/results)")
    parser.add_argument("--reps", type=int, metavar="N",
                        help="repetitions (default 3, or 1 with --quick)")
    parser.add_argument("--data-dir", metavar="DIR", default=data.default_data_dir(),
                        help="where generated data is kept and reused "
                             "(default ~/.cache/tifffs-bench)")
    parser.add_argument("--docs", action="store_true",
                        help="also refresh docs/performance.md's table and docs/performance.svg")
    parser.add_argument("--list", action="store_true", help="list the contenders and exit")
    args = parser.parse_args(argv)
    args.reps = args.reps or (1 if args.quick else 3)
    if args.reps < 1:
        parser.error("--reps must be at least 1")
    args.patterns = [p.strip() for p in (args.only or "").split(",") if p.strip()]
    return args


def run_one(contender: Contender, ctx: Context, results: dict[str, report.Result]) -> None:
    """Measure ``contender`` once; record its samples, or why it did not run."""
    mine = [results[e.key] for e in contender.entries]
    if any(r.status in ("unavailable", "skipped") for r in mine):
        return  # the same answer every repetition
    try:
        samples = contender.run(ctx)
    except (Unavailable, Skipped) as exc:
        for result in mine:
            result.status = "unavailable" if isinstance(exc, Unavailable) else "skipped"
            result.note = str(exc)
        log(f"  {contender.scenario}/{contender.name}: {mine[0].status}: {exc}")
        return
    except Exception as exc:  # noqa: BLE001  (one failed contender must not stop the run)
        for result in mine:
            result.errors.append(f"{type(exc).__name__}: {exc}"[:400])
        log(f"  {contender.scenario}/{contender.name}: ERROR {type(exc).__name__}: {exc}")
        return
    for name, sample in samples.items():
        results[f"{contender.scenario}/{name}"].samples.append(sample)
        daemon = f"  daemon {sample.daemon_mb:.0f} MB" if sample.daemon_mb else ""
        fds = f"  {sample.fds} fds" if sample.fds is not None else ""
        log(f"  {contender.scenario}/{name}: {sample.s:.3f} s{daemon}{fds}")


def run_rounds(contenders: list[Contender], ctx: Context, reps: int,
               results: dict[str, report.Result]) -> None:
    """Repetition 1 of everything, then 2, ...; each scenario's order rotates every time."""
    for rep in range(reps):
        log(f"repetition {rep + 1} of {reps}")
        for scenario in SCENARIOS:
            group = [c for c in contenders if c.scenario == scenario]
            shift = rep % len(group) if group else 0
            for contender in group[shift:] + group[:shift]:
                run_one(contender, ctx, results)


def unmount_leftovers(data_dir: str) -> None:
    """Lazily unmount mounts a killed earlier run left under ``data_dir``."""
    with open("/proc/self/mounts") as fh:
        points = [line.split()[1] for line in fh]
    for point in points:
        if point.startswith(os.path.join(data_dir, "run-")):
            log(f"unmounting a leftover of an earlier run: {point}")
            subprocess.run([fusermount(), "-uz", point], capture_output=True, check=False)


def measure(args: argparse.Namespace, contenders: list[Contender]) -> tuple[dict, dict]:
    """Prepare data and context, run every repetition, clean up; (results, meta)."""
    mode = "quick" if args.quick else "full"
    data_dir = os.path.abspath(os.path.expanduser(args.data_dir))
    os.makedirs(data_dir, exist_ok=True)
    unmount_leftovers(data_dir)
    meta = {"mode": mode, "reps": args.reps, "only": args.only, **machine.describe()}
    features = machine.features()
    cases = data.prepare(data_dir, mode, log)
    meta["cases"] = {name: case.title for name, case in cases.items()}
    meta["features"] = sorted(features)
    results = {e.key: report.Result(e) for c in contenders for e in c.entries}
    workdir = tempfile.mkdtemp(prefix="run-", dir=data_dir)  # the data's disk
    ctx = Context(cases, workdir, features)
    meta["cold"] = ("drop_caches (root)" if ctx.can_drop_caches
                    else "skipped: not root")
    started = time.monotonic()
    try:
        with ctx.services:
            run_rounds(contenders, ctx, args.reps, results)
    finally:
        commands.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    meta["seconds"] = round(time.monotonic() - started, 1)
    meta["load_at_end"] = os.getloadavg()[0]
    return results, meta


def main(argv: list[str]) -> int:
    """The bench: 0 when every contender ran or said why not; 1 when one broke."""
    args = parse_args(argv)
    contenders = [c for c in all_contenders() if c.selected(args.patterns)]
    if args.list:
        for c in all_contenders():
            for e in c.entries:
                print(f"{e.key:26} {e.label}")
        return 0
    if not contenders:
        print(f"bench: --only {args.only} matches no contender (see --list)", file=sys.stderr)
        return 2

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    try:
        results, meta = measure(args, contenders)
    except KeyboardInterrupt:
        print("bench: interrupted; mounts and processes stopped", file=sys.stderr)
        return 130
    except (OSError, commands.CommandError) as exc:  # data generation, the data folder
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    written = report.write(list(results.values()), meta, args.out, docs=args.docs)
    print(report.markdown(list(results.values()), meta))
    for path in written:
        print(f"wrote {path}")
    broken = [r for r in results.values() if r.errors]
    for r in broken:
        print(f"bench: {r.key} failed: {r.errors[0]}", file=sys.stderr)
    return 1 if broken else 0
