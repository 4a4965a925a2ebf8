"""Helpers of the render and listing tests: the command, small source trees, and
comparing an output tree with a mount's view folder file by file."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import tifffile

from conftest import sample_array, write_stack

TIFFFS = [sys.executable, "-m", "tifffs"]
TEMP_SUFFIX = ".tifffs-part"
#: Generous: the machines that run the tests are often busy.
START_TIMEOUT = 120.0
SUMMARY = re.compile(r"(\d+) rendered, (\d+) copied, (\d+) up to date, (\d+) skipped, "
                     r"(\d+) failed; read .+, wrote .+ in [\d.]+ s")


def render(*args: str | Path, expect: int | None = 0, timeout: float = 300,
           **kwargs) -> subprocess.CompletedProcess:
    """Run ``tifffs render ARGS``; check its exit status and that it printed no traceback."""
    result = subprocess.run([*TIFFFS, "render", *map(str, args)], capture_output=True,
                            text=True, stdin=subprocess.DEVNULL, timeout=timeout, check=False,
                            **kwargs)
    assert "Traceback" not in result.stderr, result.stderr
    if expect is not None:
        assert result.returncode == expect, result.stderr
    return result


def summary(stderr: str) -> tuple[int, ...]:
    """(rendered, copied, up to date, skipped, failed) from the summary, the last line."""
    match = SUMMARY.search(stderr.strip().splitlines()[-1])
    assert match, stderr
    return tuple(int(n) for n in match.groups())


def make_tree(root: Path) -> Path:
    """A source tree with stacks in folders, a companion file, a name that is not UTF-8,
    links in and out of the tree, a link loop, a fifo, broken TIFFs and a JPEG 2000 one."""
    for i, shape in enumerate([(3, 130, 170), (1, 64, 48), (5, 97, 61)]):
        write_stack(root / f"stack{i}.tif", sample_array("uint16", shape, seed=i))
    write_stack(root / "run" / "deep" / "cells.TIFF", sample_array("uint8", (4, 80, 90), 7),
                compression="zlib")
    write_stack(root / "run" / "rgb.tiff", sample_array("uint8", (33, 45, 3), 8),
                photometric="rgb")
    # decoded in helper processes (tifffs.isolated), also on dask workers
    write_stack(root / "run" / "slide_j2k.tif", sample_array("uint8", (70, 90, 3), 10),
                photometric="rgb", compression="jpeg2000", tile=(32, 32))
    (root / "run" / "notes.txt").write_text("acquisition notes\n")
    # a name that is not UTF-8 (Latin-1 from an old acquisition PC)
    write_stack(root / "run" / os.fsdecode(b"caf\xe9.tif"), sample_array("uint8", (30, 20), 9))
    (root / "empty").mkdir()
    (root / "broken").mkdir()
    (root / "broken" / "not_a_tiff.tif").write_bytes(b"this is not a TIFF")
    good = (root / "stack0.tif").read_bytes()
    (root / "broken" / "truncated.tif").write_bytes(good[: len(good) // 2])
    outside = root.parent / f"{root.name}-outside"
    outside.mkdir(exist_ok=True)
    write_stack(outside / "secret.tif", np.zeros((8, 8), np.uint8))
    os.symlink(outside / "secret.tif", root / "link_out.tif")
    os.symlink("stack1.tif", root / "link_in.tif")
    os.symlink("run", root / "run_link")
    os.symlink("..", root / "run" / "loop")
    os.mkfifo(root / "fifo.tif")
    return root


def listing_folder(root: Path, files: int = 40, pages: int = 2) -> Path:
    """``root/many``: ``files`` small stacks ``f000.tif``..., a text file and a sub-folder."""
    folder = root / "many"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(files):
        tifffile.imwrite(folder / f"f{i:03d}.tif",
                         rng.integers(0, 65535, (pages, 32 + i % 5, 24), dtype=np.uint16),
                         photometric="minisblack")
    (folder / "notes.txt").write_text("notes\n")
    (folder / "sub").mkdir()
    return root


def tree_files(root: Path) -> dict[str, bytes | None]:
    """Every file under ``root`` (links followed as the mount follows them) -> its bytes,
    or None when reading it fails (the mount's EIO for a broken source)."""
    files: dict[str, bytes | None] = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder) / name
            try:
                files[str(path.relative_to(root))] = path.read_bytes()
            except OSError:
                files[str(path.relative_to(root))] = None
    return files


def assert_mirrors(output: Path, view_folder: Path) -> list[str]:
    """The output tree holds exactly the mount's readable files, byte for byte, and the
    same folders; returns the files that the mount cannot read (broken sources)."""
    expected = tree_files(view_folder)
    actual = tree_files(output)
    broken = sorted(name for name, data in expected.items() if data is None)
    assert sorted(actual) == sorted(n for n in expected if n not in broken)
    for name, data in actual.items():
        assert data == expected[name], name
    assert _folders(output) == _folders(view_folder)
    assert not leftovers(output)
    return broken


def _folders(root: Path) -> list[str]:
    return sorted(str(Path(f).relative_to(root)) for f, _, _ in os.walk(root))


def leftovers(root: Path) -> list[Path]:
    """Temporary files of tifffs render under ``root``."""
    return [p for p in root.rglob("*") if p.name.endswith(TEMP_SUFFIX)]
