"""Load: 16 threads read random ranges of many views through one mount, every byte
checked against ``tifffs.open_view`` in this process; the daemon's memory stays within
its band cache plus the work in flight. Then the daemon is killed mid-load, and the
next ``tifffs`` start on that mountpoint clears the stale mount.

CI runs the load for ``TIFFFS_LOAD_SECONDS`` (default 20) seconds; a long run::

    TIFFFS_LOAD_SECONDS=1800 scripts/test tests/test_load.py
"""

from __future__ import annotations

import errno
import os
import random
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import MOUNT_TIMEOUT, mounted, sample_array, unmount, wait_for, write_stack
from robustness import clear_mount, memory_kib
from tifffs import open_view

pytestmark = pytest.mark.mount

THREADS = 16
SECONDS = float(os.environ.get("TIFFFS_LOAD_SECONDS", "20"))
FACTORS = (2, 3)
CACHE_MIB = 8
#: Memory the daemon may use beyond its band cache: the bands being rendered by its
#: worker threads (source rows, float64 sums, output) and allocator slack.
WORK_ALLOWANCE_MIB = 192
HANG = 120.0  # seconds: only a hang detector
TIFFFS = [sys.executable, "-m", "tifffs"]

#: name -> (dtype, shape, tifffile.imwrite keyword arguments): ~45 MB of sources
LOAD_KINDS = {
    **{f"strips/u16_{i}.tif": ("uint16", (4, 512, 384), {"rowsperstrip": 64})
       for i in range(8)},
    **{f"lzw/u8_{i}.tif": ("uint8", (3, 600, 500), {"compression": "lzw",
                                                    "rowsperstrip": 16}) for i in range(6)},
    **{f"tiles/u16_{i}.tif": ("uint16", (2, 700, 650), {"tile": (128, 128),
                                                        "compression": "zstd"})
       for i in range(6)},
    **{f"rgb/rgb_{i}.tif": ("uint8", (2, 400, 300, 3), {"photometric": "rgb"})
       for i in range(4)},
    "f32_single.tif": ("float32", (1000, 900), {}),
    "u16_bigendian.tif": ("uint16", (3, 300, 310), {"byteorder": ">"}),
}


@pytest.fixture(scope="module")
def load_source(tmp_path_factory) -> tuple[Path, dict[tuple[str, int], bytes]]:
    """The source tree and, for each (file, factor), the bytes of its view."""
    root = tmp_path_factory.mktemp("load_source")
    expected = {}
    for i, (name, (dtype, shape, kwargs)) in enumerate(LOAD_KINDS.items()):
        write_stack(root / name, sample_array(dtype, shape, seed=100 + i), **kwargs)
        for factor in FACTORS:
            view = open_view(str(root / name), factor, "mean")
            expected[name, factor] = view.read(0, view.size)
    return root, expected


@dataclass
class LoadResult:
    reads: int = 0
    bytes: int = 0
    errors: list[str] = field(default_factory=list)


def _reader(mountpoint: Path, expected: dict[tuple[str, int], bytes], seed: int,
            stop: threading.Event, result: LoadResult, tolerate_errors: bool) -> None:
    """Random reads until ``stop``: files kept open or opened anew, every byte checked;
    with ``tolerate_errors`` (the daemon gets killed), an error or a read cut short ends
    the reader, wrong bytes still count.

    Most reads first drop the file's pages from the kernel's cache, so that they reach
    the daemon (and race with other threads' reads of the same pages).
    """
    rng = random.Random(seed)
    keys = sorted(expected)
    open_files: dict[tuple[str, int], int] = {}
    try:
        while not stop.is_set():
            key = rng.choice(keys)
            data = expected[key]
            try:
                fd = open_files.get(key)
                if fd is None:
                    fd = os.open(mountpoint / f"x{key[1]}" / key[0], os.O_RDONLY)
                    if rng.random() < 0.5:
                        open_files[key] = fd
                offset = rng.randrange(len(data))
                length = rng.choice([1, 100, 4096, 65536, 131072, 1 << 20])
                if rng.random() < 0.8:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                got = os.pread(fd, length, offset)
                if key not in open_files:
                    os.close(fd)
            except OSError as exc:
                if not tolerate_errors:
                    result.errors.append(f"{key}: {exc!r}")
                return  # after a kill: the mount is gone
            if got != data[offset:offset + length]:
                prefix = got == data[offset:offset + len(got)]
                if prefix and tolerate_errors:
                    return  # cut short by the kill: what came is right
                result.errors.append(f"{key} read({offset}, {length}): "
                                     f"{'short' if prefix else 'wrong'} ({len(got)} bytes)")
            result.reads += 1
            result.bytes += len(got)
    finally:
        for fd in open_files.values():
            try:
                os.close(fd)
            except OSError:
                pass


def _start_readers(mountpoint: Path, expected: dict, stop: threading.Event,
                   tolerate_errors: bool = False) -> tuple[list[threading.Thread],
                                                           list[LoadResult]]:
    results = [LoadResult() for _ in range(THREADS)]
    threads = [threading.Thread(target=_reader, daemon=True, name=f"load {i}",
                                args=(mountpoint, expected, i, stop, results[i],
                                      tolerate_errors)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    return threads, results


def _join(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.join(HANG)
    stuck = [t.name for t in threads if t.is_alive()]
    assert not stuck, f"readers stuck (deadlock or hang): {stuck}"


def _stats(mountpoint: Path) -> dict[str, str]:
    lines = (mountpoint / ".tifffs" / "stats").read_text().splitlines()
    return dict(line.split(" ", 1) for line in lines if not line.startswith("error "))


@pytest.mark.timeout(SECONDS + 600)  # the suite's 600 s would end a long run early
def test_random_reads_from_16_threads_are_exact_and_memory_stays_bounded(load_source,
                                                                          tmp_path):
    root, expected = load_source
    with mounted(root, tmp_path, "--factors", ",".join(map(str, FACTORS)),
                 "--cache-size", f"{CACHE_MIB}M") as mount:
        pid = mount.process.pid
        # the daemon's own footprint: every codec loaded, one view read
        for name in LOAD_KINDS:
            (mount.path / "x2" / name).read_bytes()
        baseline = memory_kib(pid)["VmRSS"]
        stop = threading.Event()
        threads, results = _start_readers(mount.path, expected, stop)
        peak_rss = 0
        deadline = time.monotonic() + SECONDS
        while time.monotonic() < deadline and all(t.is_alive() for t in threads):
            peak_rss = max(peak_rss, memory_kib(pid)["VmRSS"])
            time.sleep(0.2)
        stop.set()
        _join(threads)
        errors = [e for r in results for e in r.errors]
        assert not errors, errors[:10]
        reads = sum(r.reads for r in results)
        assert reads > THREADS, "the load did not run"
        stats = _stats(mount.path)
        assert int(stats["reads"]) > reads // 4, "the reads did not reach the daemon"
        assert int(stats["band_cache_evictions"]) > 0, "the cache never filled: no churn"
        assert int(stats["band_cache_bytes"]) <= int(stats["band_cache_capacity_bytes"])
        assert int(stats["errors"]) == 0
        grown_mib = (memory_kib(pid)["VmHWM"] - baseline) >> 10
        print(f"{reads} reads, {sum(r.bytes for r in results) >> 20} MiB in {SECONDS:.0f} s; "
              f"daemon RSS {baseline >> 10} MiB before, peak {peak_rss >> 10} MiB sampled, "
              f"VmHWM +{grown_mib} MiB")
        assert grown_mib < CACHE_MIB + WORK_ALLOWANCE_MIB, \
            f"the daemon's peak memory grew by {grown_mib} MiB"


def test_sigkill_mid_load_then_restart_clears_the_stale_mount(load_source, tmp_path):
    root, expected = load_source
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    log = tmp_path / "first.log"
    daemon = subprocess.Popen([*TIFFFS, str(root), str(mountpoint), "-f", "--factors",
                               ",".join(map(str, FACTORS)), "--cache-size", f"{CACHE_MIB}M",
                               "--log-file", str(log)],
                              stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    held = None
    try:
        wait_for(lambda: os.path.ismount(mountpoint), MOUNT_TIMEOUT, "the mount", daemon, log)
        held = os.open(mountpoint / "x2" / "f32_single.tif", os.O_RDONLY)  # never closed
        stop = threading.Event()
        threads, results = _start_readers(mountpoint, expected, stop, tolerate_errors=True)
        wait_for(lambda: sum(r.reads for r in results) > 200, HANG, "reads before the kill")
        daemon.kill()
        daemon.wait()
        _join(threads)  # every reader gets an error at once, none hangs
        stop.set()
        assert not [e for r in results for e in r.errors]
        with pytest.raises(OSError) as excinfo:
            os.listdir(mountpoint)
        assert excinfo.value.errno == errno.ENOTCONN
        # a file still open on the dead mount: a plain unmount is refused (busy)
        result = subprocess.run([*TIFFFS, str(root), str(mountpoint), "--factors",
                                 ",".join(map(str, FACTORS)), "--log-file",
                                 str(tmp_path / "second.log")],
                                capture_output=True, text=True, stdin=subprocess.DEVNULL,
                                timeout=MOUNT_TIMEOUT, check=False)
        assert result.returncode == 0, result.stderr
        assert "cleared a stale tifffs mount" in result.stderr
        name = "tiles/u16_0.tif"
        assert (mountpoint / "x3" / name).read_bytes() == expected[name, 3]
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        if held is not None:
            try:
                os.close(held)
            except OSError:  # ENOTCONN: its mount died
                pass
        unmount(mountpoint)
        clear_mount(mountpoint)  # the stale one, if it was not cleared
    assert not os.path.ismount(mountpoint)
