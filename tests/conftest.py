"""Fixtures: generated source trees and real FUSE mounts of them.

A mount runs the real command line in the foreground as a subprocess, is awaited by
polling ``os.path.ismount`` (a condition, with a timeout), and is always unmounted in
``finally``. A mount whose log shows an internal error or a traceback fails the test.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tifffile

from tools import mount_table

MOUNT_TIMEOUT = 20.0


def fusermount() -> str:
    """The unmount command of this machine."""
    for name in ("fusermount", "fusermount3"):
        if shutil.which(name):
            return name
    raise RuntimeError("neither fusermount nor fusermount3 found: install fuse3")


def is_mounted(mountpoint: Path) -> bool:
    """True while something is mounted there, also a dead FUSE mount (which
    ``os.path.ismount`` misses: its stat fails with ENOTCONN)."""
    target = os.path.realpath(mountpoint)
    return any(entry.point == target for entry in mount_table())


def unmount(mountpoint: Path) -> None:
    """Unmount, lazily if a reader still holds it; a no-op when nothing is mounted."""
    if is_mounted(mountpoint):
        result = subprocess.run([fusermount(), "-u", str(mountpoint)], capture_output=True,
                                check=False)
        if result.returncode != 0:
            subprocess.run([fusermount(), "-uz", str(mountpoint)], capture_output=True, check=False)


def wait_for(condition, timeout: float, what: str, process: subprocess.Popen | None = None,
             log: Path | None = None) -> None:
    """Poll ``condition`` until true; fail with the daemon's log if it dies or times out."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            text = log.read_text() if log and log.exists() else ""
            raise AssertionError(f"tifffs exited ({process.returncode}) before {what}:\n{text}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class Mount:
    """A running tifffs mount and its log."""

    def __init__(self, source: Path, mountpoint: Path, log: Path,
                 process: subprocess.Popen) -> None:
        self.source = source
        self.path = mountpoint
        self.log = log
        self.process = process

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


@contextlib.contextmanager
def mounted(source: Path, workdir: Path, *options: str,
            source_is_constant: bool = True) -> Iterator[Mount]:
    """Mount ``source`` with ``options`` in the foreground; always unmount afterwards.

    With ``source_is_constant``, the source tree must be byte-identical (content, mode,
    mtime) after the mount as before it.
    """
    before = tree_digest(source) if source_is_constant else None
    mountpoint = workdir / "mnt"
    mountpoint.mkdir(parents=True, exist_ok=True)
    log = workdir / "tifffs.log"
    if not any(o.startswith(("--index-dir", "--no-index")) or "index" in o for o in options):
        options = ("--index-dir", str(workdir / "index"), *options)  # private to the mount
    command = [sys.executable, "-m", "tifffs", str(source), str(mountpoint), "-f",
               "--log-file", str(log), *options]
    with open(workdir / "stderr.txt", "wb") as stderr:  # the daemon keeps its own copy
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        wait_for(lambda: os.path.ismount(mountpoint), MOUNT_TIMEOUT, "the mount", process, log)
        mount = Mount(source, mountpoint, log, process)
        yield mount
        assert process.poll() is None, f"tifffs died:\n{mount.log_text()}"
        text = mount.log_text()
        assert "Traceback" not in text and "internal error" not in text, text
    finally:
        unmount(mountpoint)
        try:
            process.wait(timeout=MOUNT_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            unmount(mountpoint)
    if before is not None:
        assert tree_digest(source) == before, "the source tree changed"


def tree_digest(root: Path) -> dict[str, str]:
    """sha256, mode and mtime of every file under ``root``: to prove it never changes."""
    digest = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            st = path.stat()
            digest[str(path.relative_to(root))] = (
                f"{hashlib.sha256(path.read_bytes()).hexdigest()} {st.st_mode:o} "
                f"{st.st_mtime_ns}")
    return digest


# -- generated sources
def write_stack(path: Path, array: np.ndarray, **kwargs) -> None:
    """Write ``array`` (pages, rows, columns[, samples]) as a multi-page TIFF."""
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs.setdefault("photometric", "minisblack")
    tifffile.imwrite(path, array, **kwargs)


def sample_array(dtype: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Random pixels over the whole range of integer types; dyadic floats (exact sums)."""
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return (rng.integers(-4096, 4096, shape) / 64).astype(dt)
    info = np.iinfo(dt)
    return rng.integers(info.min, info.max, shape, dtype=dt, endpoint=True)


#: name -> (dtype, shape, tifffile.imwrite keyword arguments)
SOURCE_KINDS = {
    "u8_single_even.tif": ("uint8", (512, 640), {}),
    "u8_multi_odd.tif": ("uint8", (3, 1001, 777), {}),
    "u16_single_odd.tif": ("uint16", (1001, 777), {"resolution": (2.0, 2.0),
                                                     "resolutionunit": "CENTIMETER"}),
    "u16_multi_even.tif": ("uint16", (4, 256, 320), {"imagej": True, "resolution": (1 / 0.25,
                           1 / 0.25), "metadata": {"unit": "um", "spacing": 2.5,
                                                   "axes": "ZYX"}}),
    "f32_single_odd.tif": ("float32", (333, 517), {}),
    "f32_multi_even.tif": ("float32", (3, 128, 96), {}),
    "rgb_u8_odd.tif": ("uint8", (2, 99, 101, 3), {"photometric": "rgb"}),
    "u16_lzw_strips.tif": ("uint16", (2, 301, 203), {"compression": "lzw",
                                                       "rowsperstrip": 7}),
    "u8_deflate_pred.tif": ("uint8", (2, 130, 150), {"compression": "zlib",
                            "predictor": True, "rowsperstrip": 16}),
    "u16_zstd.tif": ("uint16", (150, 170), {"compression": "zstd", "rowsperstrip": 32}),
    "u8_packbits.tif": ("uint8", (2, 100, 90), {"compression": "packbits",
                                                  "rowsperstrip": 10}),
    "u16_bigendian.tif": ("uint16", (2, 65, 67), {"byteorder": ">"}),
    "rgb_u8_planar.tif": ("uint8", (3, 90, 70), {"photometric": "rgb",
                                                  "planarconfig": "separate"}),
    "u16_tiled_edges.tif": ("uint16", (2, 300, 250), {"tile": (64, 48)}),
    "rgb_u8_tiled_zstd.tif": ("uint8", (130, 170, 3), {"tile": (32, 32), "compression": "zstd",
                                                       "photometric": "rgb"}),
    "rgb_u8_tiled_jpeg.tif": ("uint8", (120, 160, 3), {"tile": (64, 64),
                                                       "compression": "jpeg",
                                                       "photometric": "rgb"}),
    "u8_lzma.tif": ("uint8", (100, 90), {"compression": "lzma"}),
    "f32_deflate_float_predictor.tif": ("float32", (2, 100, 90), {"compression": "zlib",
                                                                 "predictor": 3}),
    "rgba_u8_webp.tif": ("uint8", (64, 80, 4), {"compression": "webp", "photometric": "rgb",
                                                "extrasamples": ["unassalpha"],
                                                "tile": (32, 32)}),
    "u8_jpeg2000.tif": ("uint8", (120, 160), {"compression": "jpeg2000", "tile": (64, 64)}),
    "u8_palette.tif": ("uint8", (50, 60), {"photometric": "palette",
                                           "colormap": np.arange(3 * 256, dtype=np.uint16)
                                           .reshape(3, 256) * 85}),
    "i8_odd.tif": ("int8", (2, 33, 35), {}),
    "i32_single.tif": ("int32", (50, 61), {}),
    "u32_single.tif": ("uint32", (47, 52), {}),
    "f16_single.tif": ("float16", (50, 60), {}),
    "f64_multi.tif": ("float64", (2, 41, 37), {}),
    "u8_bigtiff.tif": ("uint8", (3, 50, 60), {"bigtiff": True}),
    "rgb_u16_strips.tif": ("uint16", (2, 70, 66, 3), {"photometric": "rgb",
                                                      "rowsperstrip": 9}),
    "ome_czyx.ome.tif": ("uint16", (2, 3, 100, 120), {
        "ome": True, "metadata": {"axes": "CZYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5,
                                  "PhysicalSizeXUnit": "\u00b5m", "PhysicalSizeZ": 2.0,
                                  "Channel": {"Name": ["DAPI", "GFP"]}}}),
    "ij_hyperstack.tif": ("uint16", (2, 3, 2, 64, 80), {
        "imagej": True, "resolution": (2.0, 2.0),
        "metadata": {"axes": "TZCYX", "mode": "composite", "unit": "um", "spacing": 2.0,
                     "finterval": 3.0, "Ranges": (0, 1000, 10, 500),
                     "Labels": [f"label{i}" for i in range(12)]}}),
}


@pytest.fixture(scope="session")
def sources(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    """A source tree with every kind of the core, a subdirectory and a companion file."""
    root = tmp_path_factory.mktemp("source")
    arrays = {}
    for i, (name, (dtype, shape, kwargs)) in enumerate(SOURCE_KINDS.items()):
        array = sample_array(dtype, shape, seed=i)
        write_stack(root / name, array, **kwargs)
        arrays[name] = array
    with tifffile.TiffWriter(root / "ome_two_series.ome.tif", ome=True) as writer:
        writer.write(arrays["u16_multi_even.tif"], photometric="minisblack",
                     metadata={"axes": "ZYX", "PhysicalSizeX": 0.3, "PhysicalSizeY": 0.3})
        writer.write(arrays["u16_single_odd.tif"], photometric="minisblack")
    arrays["ome_two_series.ome.tif"] = None  # compared page by page
    sub = root / "run1" / "deeper"
    write_stack(sub / "stack.TIFF", arrays["u16_multi_even.tif"])
    arrays["run1/deeper/stack.TIFF"] = arrays["u16_multi_even.tif"]
    (root / "run1" / "notes.txt").write_text("acquisition notes\n")
    (root / "broken").mkdir()
    (root / "broken" / "not_a_tiff.tif").write_bytes(b"this is not a TIFF file at all")
    (root / "broken" / "empty.tif").write_bytes(b"")
    good = (root / "u8_single_even.tif").read_bytes()
    (root / "broken" / "truncated.tif").write_bytes(good[: len(good) // 2])
    (root / "broken" / "neighbour.tif").write_bytes(good)
    arrays["broken/neighbour.tif"] = arrays["u8_single_even.tif"]
    return root, arrays


@pytest.fixture(scope="session")
def mount(sources, tmp_path_factory) -> Iterator[Mount]:
    """One mount of the source tree with factors 2, 4, 8 (method mean) for the session."""
    root, _ = sources
    with mounted(root, tmp_path_factory.mktemp("mount")) as m:
        yield m


@pytest.fixture(scope="session")
def mount_nearest(sources, tmp_path_factory) -> Iterator[Mount]:
    root, _ = sources
    with mounted(root, tmp_path_factory.mktemp("mount_nearest"), "-o",
                 "method=nearest,factors=2:4:8") as m:
        yield m
