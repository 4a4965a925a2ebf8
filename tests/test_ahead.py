"""Describing a large new folder ahead of its listing's stats, in a helper process (issue 9)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import tifffile

from conftest import mounted, wait_for
from tifffs import ahead, indexing
from tifffs.errors import TifffsError
from tifffs.index import FILE_NAME, Index
from tifffs.indexing import index_command
from tifffs.setup import build_tree
from tifffs.spawn import start_helper
from tifffs.views import parse_view
from tools import mount_stats

X4 = parse_view("x4", "mean")
HELPER = "tifffs.ahead:serve"
TIMEOUT = 120.0


def large_folder(root: Path, files: int = ahead.MIN_FILES + 100) -> Path:
    """``root/many``: ``files`` small stacks of three shapes, a broken TIFF and a text."""
    folder = root / "many"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    shapes = []
    for pages, height, width in ((2, 40, 24), (3, 17, 33), (1, 64, 8)):
        tifffile.imwrite(root / "shape.tif", rng.integers(0, 65535, (pages, height, width),
                                                         dtype=np.uint16),
                         photometric="minisblack")
        shapes.append((root / "shape.tif").read_bytes())
    for i in range(files):
        (folder / f"f{i:05d}.tif").write_bytes(shapes[i % 3])
    (folder / os.fsdecode(b"odd-\xff-name.tif")).write_bytes(shapes[1])  # not UTF-8
    (folder / "broken.tif").write_bytes(b"II*\0" + b"\xff" * 60)
    (folder / "notes.txt").write_text("notes\n")
    return root


def tiff_names(folder: Path) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.endswith(".tif"))


def listed_tiffs(folder: Path) -> list[str]:
    """The TIFF names of ``folder`` in the order a mount lists them (``os.scandir``'s)."""
    with os.scandir(folder) as entries:
        return [e.name for e in entries if e.name.endswith(".tif")]


def helper_processes(under: Path) -> list[int]:
    """Pids of describe-ahead helpers working on folders under ``under`` (a helper's
    folder is on its command line)."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if HELPER.encode() in argv and any(os.fsencode(under) in arg for arg in argv):
            pids.append(int(pid))
    return pids


def expected_sizes(source: Path, names: list[str]) -> dict[str, int | None]:
    """Sizes of x4 of ``names`` in ``source/many`` as a tree without helper or index
    gives them (None: the tree refuses the file)."""
    tree = build_tree(str(source), (X4,), 1 << 20, None, 1)
    sizes: dict[str, int | None] = {}
    for name in names:
        try:
            sizes[name] = tree.attributes(f"/x4/many/{name}")["st_size"]
        except (OSError, TifffsError):
            sizes[name] = None
    tree.catalog.shutdown()
    return sizes


@pytest.fixture
def tree_factory(tmp_path, monkeypatch):
    """Trees with describing ahead, over a private index (or none); shut down at the end.
    A helper starts at the first file a stat must describe, unless ``start_after``."""
    trees = []

    def make(source: Path, index: bool = True, start_after: int = 1):
        monkeypatch.setattr(ahead, "START_AFTER", start_after)
        tree = build_tree(str(source), (X4,), 1 << 20, str(tmp_path / "index") if index
                          else None, 1, describe_ahead=True)
        trees.append(tree)
        return tree

    yield make
    for tree in trees:
        tree.catalog.shutdown()
        if tree.catalog.index is not None:
            tree.catalog.index.close()
    assert not helper_processes(tmp_path)


def test_a_large_new_folder_is_described_by_the_helper_with_the_same_sizes(tmp_path,
                                                                          tree_factory):
    source = large_folder(tmp_path / "src")
    names = tiff_names(source / "many")
    tree = tree_factory(source)
    listed = [e.name for e in tree.list("/x4/many") if e.name.endswith(".tif")]
    first, good = listed[0], len(names) - 1  # the broken file is not described
    tree.attributes(f"/x4/many/{first}")  # describes the first in process: the helper starts
    assert tree.catalog.ahead.wait(TIMEOUT)
    assert tree.catalog.ahead.described == good - 1  # all but the first and the broken one
    assert f"described_ahead {good - 1}" in tree.stats_text()
    assert "describe_ahead_helpers 1" in tree.stats_text()

    expected = expected_sizes(source, names)
    for name in names:
        try:
            size = tree.attributes(f"/x4/many/{name}")["st_size"]
        except (OSError, TifffsError):
            size = None
        assert size == expected[name], name
    assert expected["broken.tif"] is None and sum(s is not None for s in expected.values()) == good

    tree.catalog.index.flush()
    indexed = Index(str(tmp_path / "index")).sizes_in(str(source / "many"), "x4")
    assert {Path(p).name: size for p, (_, size) in indexed.items()} == \
        {name: size for name, size in expected.items() if size is not None}


def test_without_an_index_the_helper_still_gives_the_sizes(tmp_path, tree_factory):
    source = large_folder(tmp_path / "src")
    names = tiff_names(source / "many")
    tree = tree_factory(source, index=False)
    listed = [e.name for e in tree.list("/x4/many") if e.name.endswith(".tif")]
    tree.attributes(f"/x4/many/{listed[0]}")
    assert tree.catalog.ahead.wait(TIMEOUT)
    assert tree.catalog.ahead.described == len(names) - 2
    expected = expected_sizes(source, names)
    for name in names[-20:]:
        assert tree.attributes(f"/x4/many/{name}")["st_size"] == expected[name]
    assert not (tmp_path / "index").exists()


def test_a_file_changed_after_the_helper_described_it_is_described_anew(tmp_path,
                                                                        tree_factory):
    source = large_folder(tmp_path / "src")
    tree = tree_factory(source)
    listed = [e.name for e in tree.list("/x4/many") if e.name.endswith(".tif")]
    tree.attributes(f"/x4/many/{listed[0]}")
    assert tree.catalog.ahead.wait(TIMEOUT) and tree.catalog.ahead.described > 0
    changed = source / "many" / listed[-1]  # the helper's first file
    before = tree.attributes(f"/x4/many/{changed.name}")["st_size"]
    tifffile.imwrite(changed, np.zeros((5, 48, 48), np.uint16), photometric="minisblack")
    after = tree.attributes(f"/x4/many/{changed.name}")["st_size"]
    assert after != before
    assert after == expected_sizes(source, [changed.name])[changed.name]


def test_a_file_whose_ifd_chain_breaks_off_is_left_to_the_daemon_which_logs_it_once(
        tmp_path, tree_factory, caplog):
    source = large_folder(tmp_path / "src")
    listed = listed_tiffs(source / "many")
    looping = source / "many" / listed[-2]  # among the helper's first files
    _loop_ifd_chain(looping)
    expected = expected_sizes(source, [looping.name])[looping.name]
    tree = tree_factory(source)
    tree.list("/x4/many")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tifffs"):
        tree.attributes(f"/x4/many/{listed[0]}")
        assert tree.catalog.ahead.wait(TIMEOUT)
        assert tree.catalog.ahead.described == len(listed) - 3  # first, broken, looping
        assert tree.attributes(f"/x4/many/{looping.name}")["st_size"] == expected
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and looping.name in lines[0] and "loops" in lines[0], lines


def test_a_broken_off_chain_that_only_the_helper_described_is_logged_from_the_index(
        tmp_path, tree_factory, caplog):
    source = large_folder(tmp_path / "src")
    listed = listed_tiffs(source / "many")
    _loop_ifd_chain(source / "many" / listed[-2])
    tree = tree_factory(source)
    tree.list("/x4/many")
    tree.attributes(f"/x4/many/{listed[0]}")
    assert tree.catalog.ahead.wait(TIMEOUT)  # it wrote the file's description...
    tree.catalog.shutdown()
    tree.catalog.index.close()  # ...and this mount never asked for that file
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tifffs"):
        again = tree_factory(source, start_after=10**9)  # a new mount, the same index
        again.list("/x4/many")
        again.attributes(f"/x4/many/{listed[-2]}")  # its size is in the index, but
        again.open(f"/x4/many/{listed[-2]}").close()  # its pages are read from there
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and listed[-2] in lines[0] and "loops" in lines[0], lines


def _loop_ifd_chain(path: Path) -> None:
    """Make the last IFD of ``path`` (a little-endian classic TIFF) point back to the first."""
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        last = tif.pages[-1].offset
    count = int.from_bytes(data[last:last + 2], "little")
    next_at = last + 2 + 12 * count
    data[next_at:next_at + 4] = (8).to_bytes(4, "little")
    path.write_bytes(bytes(data))


def test_the_helper_stops_where_it_meets_files_described_in_process(tmp_path, tree_factory):
    """Without an index: with one, the helper would pass over the files whose rows this
    process has committed (a listing commits them), and meet the first it has not."""
    source = large_folder(tmp_path / "src")
    tree = tree_factory(source, index=False)
    listed = listed_tiffs(source / "many")
    for name in listed[-10:]:  # described in process before any listing was remembered...
        tree.catalog.size(str(source / "many" / name), os.stat(source / "many" / name), X4)
    tree.list("/x4/many")
    tree.attributes(f"/x4/many/{listed[0]}")  # ...so the helper's first file meets them
    assert tree.catalog.ahead.wait(TIMEOUT)
    assert tree.catalog.ahead.described == 0


def test_in_an_indexed_folder_the_helper_describes_only_the_new_files(tmp_path,
                                                                     tree_factory):
    """An acquisition folder that grew: new files among indexed ones, in any order."""
    source = large_folder(tmp_path / "src")
    first = tree_factory(source, start_after=10**9)
    first.list("/x4/many")
    for name in listed_tiffs(source / "many"):
        with contextlib.suppress(OSError, TifffsError):
            first.attributes(f"/x4/many/{name}")
    first.catalog.index.flush()
    rng = np.random.default_rng(1)
    new = [f"new{i:03d}.tif" for i in range(40)]
    for name in new:
        tifffile.imwrite(source / "many" / name, rng.integers(0, 9, (2, 20, 24), np.uint16),
                         photometric="minisblack")

    tree = tree_factory(source)
    listed = [e.name for e in tree.list("/x4/many") if e.name.endswith(".tif")]
    asked = next(n for n in listed if n in new)
    tree.attributes(f"/x4/many/{asked}")  # described in process: the helper starts
    assert tree.catalog.ahead.wait(TIMEOUT)
    assert tree.catalog.ahead.described == len(new) - 1  # the other new files only
    expected = expected_sizes(source, new)
    for name in new:
        assert tree.attributes(f"/x4/many/{name}")["st_size"] == expected[name]


def test_a_first_readdirplus_chunk_of_stats_starts_no_helper_but_more_stats_do(
        tmp_path, tree_factory):
    """With --libfuse 3 the kernel asks for the sizes of every listing's first chunk of
    at most 256 names, even for find, which needs none."""
    source = large_folder(tmp_path / "src")
    tree = tree_factory(source, start_after=ahead.START_AFTER)
    listed = [e.name for e in tree.list("/x4/many") if e.name.endswith(".tif")]
    assert ahead.START_AFTER > 256
    for name in listed[:256]:
        with contextlib.suppress(OSError, TifffsError):
            tree.attributes(f"/x4/many/{name}")
    assert tree.catalog.ahead.started == 0
    for name in listed[256:ahead.START_AFTER]:
        with contextlib.suppress(OSError, TifffsError):
            tree.attributes(f"/x4/many/{name}")
    assert tree.catalog.ahead.started == 1
    assert tree.catalog.ahead.wait(TIMEOUT)


def test_stats_long_after_a_listing_start_no_helper(tmp_path, tree_factory, monkeypatch):
    source = large_folder(tmp_path / "src")
    tree = tree_factory(source)
    monkeypatch.setattr(ahead, "LISTING_SECONDS", -1.0)  # every listing is old at once
    tree.list("/x4/many")
    tree.attributes("/x4/many/f00000.tif")
    assert tree.catalog.ahead.started == 0


def test_shutdown_ends_a_running_helper(tmp_path, tree_factory):
    source = large_folder(tmp_path / "src", files=5000)
    tree = tree_factory(source)
    tree.list("/x4/many")
    tree.attributes("/x4/many/f00000.tif")
    wait_for(lambda: helper_processes(tmp_path), TIMEOUT, "the helper")
    tree.catalog.shutdown()
    assert not helper_processes(tmp_path)


def test_a_helper_started_by_a_thread_that_blocks_sigterm_can_be_terminated(tmp_path):
    """libfuse's threads block SIGTERM, and a child inherits the mask of its thread."""
    started: list[subprocess.Popen] = []

    def start() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        started.append(start_helper(HELPER, str(tmp_path), stdin=subprocess.PIPE,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    thread = threading.Thread(target=start)
    thread.start()
    thread.join()
    process = started[0]
    try:
        process.terminate()  # while it starts, or waits for its request
        assert process.wait(timeout=TIMEOUT) in (0, -signal.SIGTERM)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdin.close()


def test_a_helper_that_dies_is_logged_once_and_the_files_are_described_in_process(
        tmp_path, tree_factory, caplog):
    source = large_folder(tmp_path / "src")
    names = tiff_names(source / "many")
    tree = tree_factory(source)
    tree.list("/x4/many")
    with caplog.at_level(logging.WARNING, logger="tifffs"):
        tree.attributes("/x4/many/f00000.tif")
        wait_for(lambda: helper_processes(tmp_path), TIMEOUT, "the helper")
        for pid in helper_processes(tmp_path):  # while it is still importing
            os.kill(pid, signal.SIGKILL)
        assert tree.catalog.ahead.wait(TIMEOUT)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "many" in lines[0] and "killed by SIGKILL" in lines[0], lines
    expected = expected_sizes(source, names[:50])
    for name in names[:50]:
        if expected[name] is not None:
            assert tree.attributes(f"/x4/many/{name}")["st_size"] == expected[name]


def test_small_listings_start_no_helper(tmp_path, tree_factory):
    source = large_folder(tmp_path / "src", files=ahead.MIN_FILES - 10)
    tree = tree_factory(source)
    tree.list("/x4/many")
    tree.attributes("/x4/many/f00000.tif")
    assert tree.catalog.ahead.wait(0) and not helper_processes(tmp_path)
    assert tree.catalog.ahead.started == tree.catalog.ahead.described == 0


def _ls_sizes(folder: Path) -> dict[str, str]:
    """name -> the size column of ``ls -l`` ("?" where the stat failed)."""
    ls = subprocess.run(["ls", "-l", "--quoting-style=literal", "--time-style=+",
                         str(folder)], check=False, capture_output=True,
                        env={**os.environ, "LC_ALL": "C"}).stdout.splitlines()
    return {os.fsdecode(line.split()[-1]): line.split()[4].decode() for line in ls[1:]}


@pytest.mark.mount
def test_through_a_mount_the_sizes_from_the_helper_are_exact(tmp_path):
    source = large_folder(tmp_path / "src")
    folder_names = tiff_names(source / "many")
    listed = listed_tiffs(source / "many")
    with mounted(source, tmp_path) as mount:
        folder = mount.path / "x4" / "many"
        os.listdir(folder)
        for name in listed[:ahead.START_AFTER]:  # described by the daemon: the helper starts
            with contextlib.suppress(OSError):
                os.stat(folder / name)
        helped = sum(1 for name in listed[ahead.START_AFTER:] if name != "broken.tif")
        wait_for(lambda: mount_stats(mount)["described_ahead"] == helped,
                 TIMEOUT, "the helper's sizes", mount.process, mount.log)
        wait_for(lambda: not helper_processes(tmp_path), TIMEOUT, "the helper's end")
        sizes = _ls_sizes(folder)
        assert sizes.pop("broken.tif") == "?"  # its stat fails (EIO)
        for name in (n for n in folder_names if n != "broken.tif"):
            assert int(sizes[name]) == len((folder / name).read_bytes()), name
        assert mount_stats(mount)["describe_ahead_helpers"] == 1
    assert "broken.tif" in mount.log_text()


@pytest.mark.mount
def test_through_a_mount_ls_meets_the_helper_which_ends_at_once(tmp_path):
    source = large_folder(tmp_path / "src", files=5000)
    with mounted(source, tmp_path) as mount:
        sizes = _ls_sizes(mount.path / "x4" / "many")
        assert len(sizes) == 5000 + 3 and mount_stats(mount)["describe_ahead_helpers"] == 1
        # told to stop when they met: it ends well before the daemon would kill it
        wait_for(lambda: not helper_processes(tmp_path), ahead.STOP_SECONDS / 2,
                 "the helper's end", mount.process, mount.log)
    assert "helper" not in mount.log_text()


@pytest.mark.mount
def test_with_libfuse_3_find_starts_no_helper_and_ls_does(tmp_path):
    source = large_folder(tmp_path / "src")
    with mounted(source, tmp_path, "--libfuse", "3") as mount:
        found = subprocess.run(["find", str(mount.path / "x4"), "-type", "f"],
                               capture_output=True, check=True).stdout.split()
        assert len(found) == ahead.MIN_FILES + 104  # and ../shape.tif
        assert mount_stats(mount)["describe_ahead_helpers"] == 0
        sizes = _ls_sizes(mount.path / "x4" / "many")
        assert len(sizes) == ahead.MIN_FILES + 103
        assert mount_stats(mount)["describe_ahead_helpers"] == 1


@pytest.mark.mount
def test_an_unmount_ends_the_helper(tmp_path):
    source = large_folder(tmp_path / "src", files=5000)
    with mounted(source, tmp_path) as mount:
        folder = mount.path / "x4" / "many"
        os.listdir(folder)
        for name in listed_tiffs(source / "many")[:ahead.START_AFTER]:
            os.stat(folder / name)
        wait_for(lambda: helper_processes(tmp_path), TIMEOUT, "the helper", mount.process,
                 mount.log)
    assert not helper_processes(tmp_path)


def _rows(index_dir: Path) -> dict[str, list[tuple]]:
    connection = sqlite3.connect(index_dir / FILE_NAME)
    try:
        return {table: sorted(connection.execute(f"SELECT * FROM {table}").fetchall())
                for table in ("files", "sizes")}
    finally:
        connection.close()


def test_tifffs_index_describes_from_both_ends_and_writes_what_one_process_would(
        tmp_path, monkeypatch, capsys):
    source = large_folder(tmp_path / "src")
    command = [str(source), "--factors", "2,4", "--views", "fit100"]
    with monkeypatch.context() as serial:
        serial.setattr(ahead, "MIN_FILES", 10**9)
        assert index_command([*command, "--index-dir", str(tmp_path / "one")]) == 1
    alone = capsys.readouterr().err.splitlines()

    # the helper takes part for sure: this process starts once the helper has sent sizes
    monkeypatch.setattr(indexing, "available_cores", lambda: 2)
    from_helper = threading.Event()
    received = indexing._FromTheEnd._received
    monkeypatch.setattr(indexing._FromTheEnd, "_received",
                        lambda self, *args: from_helper.set() or received(self, *args))
    progress = indexing._progress
    monkeypatch.setattr(indexing, "_progress",
                        lambda files: from_helper.wait(TIMEOUT) and progress(files))
    assert index_command([*command, "--index-dir", str(tmp_path / "two")]) == 1
    together = capsys.readouterr().err.splitlines()

    assert from_helper.is_set() and not helper_processes(tmp_path)
    assert _rows(tmp_path / "two") == _rows(tmp_path / "one")
    failed = [line for line in together if "broken.tif" in line]
    assert len(failed) == 1 and failed == [line for line in alone if "broken.tif" in line]
    assert together[-1].split(" in ")[0] == alone[-1].split(" in ")[0] == \
        f"tifffs index: {ahead.MIN_FILES + 103} files, {_pages(ahead.MIN_FILES + 100)} pages, " \
        "1 failures"


def _pages(files: int) -> int:
    """Pages of ``large_folder``'s TIFFs: its files, the odd name (3) and the last shape (1)."""
    return sum((2, 3, 1)[i % 3] for i in range(files)) + 3 + 1


def test_ctrl_c_ends_tifffs_index_and_its_helper_with_a_message(tmp_path):
    source = large_folder(tmp_path / "src", files=5000)
    command = subprocess.Popen([sys.executable, "-m", "tifffs", "index", str(source),
                                "--index-dir", str(tmp_path / "index")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: helper_processes(tmp_path), TIMEOUT, "the helper", command)
        command.send_signal(signal.SIGINT)
        _, stderr = command.communicate(timeout=TIMEOUT)
    finally:
        if command.poll() is None:
            command.kill()
            command.wait()
    assert command.returncode == 130, stderr
    assert b"interrupted" in stderr and b"Traceback" not in stderr, stderr
    assert not helper_processes(tmp_path)
