"""``tifffs render SOURCE_FOLDER OUTPUT_FOLDER``: the output mirrors the mount's view
folder byte for byte; broken sources, reruns, interrupts, parallel and split work."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import termios
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import mounted, sample_array, wait_for, write_stack
from tifffs import open_view
from trees import START_TIMEOUT, TIFFFS, assert_mirrors, leftovers, make_tree, render, summary


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return make_tree(tmp_path_factory.mktemp("tree") / "src")


@pytest.fixture(scope="module")
def tree_mount(tree, tmp_path_factory):
    with mounted(tree, tmp_path_factory.mktemp("tree_mount"), "--views",
                 "x2,x4,x3-max,x2z2") as mount:
        yield mount


@pytest.mark.mount
@pytest.mark.parametrize("options,view", [(["--factor", "4"], "x4"),
                                          (["--view", "x3-max"], "x3-max"),
                                          (["--view", "x2z2", "--jobs", "1"], "x2z2")])
def test_tree_mirrors_the_mount(tree, tree_mount, tmp_path, options, view):
    out = tmp_path / "out"
    result = render(tree, out, *options, expect=1)
    broken = assert_mirrors(out, tree_mount.path / view)
    assert "broken/not_a_tiff.tif" in broken
    lines = result.stderr.strip().splitlines()
    for name in broken:  # one line each, with the path and the cause
        [line] = [x for x in lines if f"{tree / name}: " in x]
        assert line.startswith("tifffs: ") and len(line.split(f"{name}: ", 1)[1]) > 5
    for name, why in [("link_out.tif", "out of SOURCE"), ("fifo.tif", "fifo"),
                      ("run/loop", "contains it")]:
        assert any(str(tree / name) in x and why in x and "skipped" in x for x in lines), name
    tiffs = [p for p in out.rglob("*") if p.suffix.lower() in (".tif", ".tiff")]
    assert summary(result.stderr) == (len(tiffs), 2, 0, 4, len(broken))
    # skipped: link_out.tif, fifo.tif, run/loop, run_link/loop


@pytest.mark.mount
def test_every_source_kind_of_the_core(sources, mount, tmp_path):
    root, _ = sources
    out = tmp_path / "out"
    render(root, out, "--factor", "4", expect=1)
    broken = assert_mirrors(out, mount.path / "x4")
    assert {"broken/empty.tif", "broken/not_a_tiff.tif"} <= set(broken)


@pytest.mark.mount
def test_jobs_and_split_files_give_the_same_bytes(tmp_path):
    source = tmp_path / "src"
    write_stack(source / "large.tif", sample_array("uint16", (5, 1000, 900)))
    write_stack(source / "small.tif", sample_array("uint8", (2, 50, 60)))
    with mounted(source, tmp_path / "m", "--views", "x1,x2") as mount:
        for view, options in [("x2", ["--jobs", "1", "--split-size", "1M"]),
                              ("x2", ["--jobs", "2", "--split-size", "1M"]),
                              ("x1", ["--jobs", "2", "--split-size", "1M"]),
                              ("x1", ["--jobs", "3"])]:
            out = tmp_path / f"out-{view}-{'-'.join(options)}"
            result = render(source, out, "--view", view, *options)
            assert summary(result.stderr)[:3] == (2, 0, 0)
            assert_mirrors(out, mount.path / view)


def test_rerun_renders_only_what_changed(tmp_path):
    source = tmp_path / "src"
    write_stack(source / "a.tif", sample_array("uint16", (2, 60, 50)))
    write_stack(source / "sub" / "b.tif", sample_array("uint16", (2, 60, 50), seed=1))
    write_stack(source / "sub" / "c.tif", sample_array("uint16", (2, 60, 50), seed=2))
    (source / "sub" / "readme.md").write_text("hello\n")
    out = tmp_path / "out"
    assert summary(render(source, out).stderr) == (3, 1, 0, 0, 0)
    inodes = {p: p.stat().st_ino for p in out.rglob("*") if p.is_file()}
    assert summary(render(source, out).stderr) == (0, 0, 4, 0, 0)
    (out / "sub" / "b.tif").unlink()
    write_stack(source / "sub" / "c.tif", sample_array("uint16", (2, 60, 50), seed=3))
    (source / "sub" / "readme.md").write_text("changed\n")
    assert summary(render(source, out).stderr) == (2, 1, 1, 0, 0)
    assert (out / "a.tif").stat().st_ino == inodes[out / "a.tif"]
    for name in ("a.tif", "sub/b.tif", "sub/c.tif"):
        view = open_view(str(source / name), 4, "mean")
        assert (out / name).read_bytes() == view.read(0, view.size)
        assert (out / name).stat().st_mtime_ns == (source / name).stat().st_mtime_ns
    assert (out / "sub" / "readme.md").read_text() == "changed\n"
    assert summary(render(source, out, "--force").stderr) == (3, 1, 0, 0, 0)


@contextlib.contextmanager
def _writing(source: Path, out: Path, *options: str) -> Iterator[subprocess.Popen]:
    """``tifffs render SOURCE OUT OPTIONS`` in a session of its own (stderr piped), once
    it is writing a temporary output; killed with its workers afterwards if still running."""
    process = subprocess.Popen([*TIFFFS, "render", str(source), str(out), *options],
                               stderr=subprocess.PIPE, start_new_session=True)
    try:
        wait_for(lambda: bool(leftovers(out)) if out.exists() else False, START_TIMEOUT,
                 "a temporary output", process)
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_interrupted_run_leaves_only_whole_files_and_resumes(tmp_path):
    source = tmp_path / "src"
    for i in range(6):
        write_stack(source / f"s{i}.tif", sample_array("uint8", (4, 2500, 2500), seed=i))
    out = tmp_path / "out"
    with _writing(source, out, "--view", "x3-lanczos", "--jobs", "2",
                  "--split-size", "2M") as process:
        os.killpg(process.pid, signal.SIGINT)  # as Ctrl-C on a terminal
        assert process.wait(timeout=120) == 130
        stderr = process.stderr.read().decode()
    assert "Traceback" not in stderr and "interrupted" in stderr, stderr
    assert not leftovers(out)
    done = sorted(p.name for p in out.iterdir())
    for name in done:  # whatever was finished is whole and up to date
        view = open_view(str(source / name), view="x3-lanczos")
        assert (out / name).read_bytes() == view.read(0, view.size)
    result = render(source, out, "--view", "x3-lanczos", "--jobs", "2")
    rendered, _, up_to_date, _, _ = summary(result.stderr)
    assert (rendered, up_to_date) == (6 - len(done), len(done))


def _grandchildren(pid: int) -> list[int]:
    """The worker processes of a process pool: children of its fork server."""
    def children(p: int) -> list[int]:
        try:
            return [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except OSError:
            return []
    return [g for c in children(pid) for g in children(c)]


def test_a_killed_worker_fails_its_files_and_the_run_goes_on(tmp_path):
    source = tmp_path / "src"
    for i in range(8):
        write_stack(source / f"s{i}.tif", sample_array("uint8", (4, 2000, 2000), seed=i))
    out = tmp_path / "out"
    with _writing(source, out, "--view", "x3-lanczos", "--jobs", "2") as process:
        wait_for(lambda: len(_grandchildren(process.pid)) == 2, START_TIMEOUT,
                 "two worker processes", process)
        os.kill(_grandchildren(process.pid)[0], signal.SIGKILL)  # as the OOM killer does
        assert process.wait(timeout=300) == 1
        stderr = process.stderr.read().decode()
    assert "Traceback" not in stderr, stderr
    rendered, _, _, _, failed = summary(stderr)
    assert failed >= 1 and rendered + failed == 8, stderr
    assert stderr.count("its worker failed") == failed
    assert not leftovers(out)
    result = render(source, out, "--view", "x3-lanczos", "--jobs", "2")
    assert summary(result.stderr)[:3] == (failed, 0, rendered)


def test_output_folder_errors(tree, tmp_path):
    def fails(output: Path, *says: str) -> None:
        result = render(tree, output, expect=2)
        [line] = result.stderr.strip().splitlines()
        assert all(text in line for text in says), line

    fails(tree / "views", "inside SOURCE")
    fails(tree / "run" / "deep", "inside SOURCE")
    (tmp_path / "a_file").write_text("x")
    fails(tmp_path / "a_file", "is a file")
    fails(tmp_path / "missing" / "out", "mkdir -p")
    result = render(tree, "-", expect=2)
    assert "stdout" in result.stderr
    assert not (tree / "views").exists()


def test_progress_bar_only_on_a_terminal(tmp_path):
    source = tmp_path / "src"
    for i in range(3):
        write_stack(source / f"s{i}.tif", sample_array("uint8", (2, 40, 40), seed=i))
    plain = render(source, tmp_path / "plain")
    assert "\r" not in plain.stderr and len(plain.stderr.strip().splitlines()) == 1
    main, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    process = subprocess.Popen([*TIFFFS, "render", str(source), str(tmp_path / "tty")],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=terminal)
    os.close(terminal)
    shown = b""
    try:
        while True:
            ready, _, _ = select.select([main], [], [], START_TIMEOUT)
            assert ready, "no output from tifffs render on the terminal"
            try:
                chunk = os.read(main, 4096)
            except OSError:  # EIO: the process closed the terminal
                break
            if not chunk:
                break
            shown += chunk
        assert process.wait(timeout=START_TIMEOUT) == 0
    finally:
        os.close(main)
        if process.poll() is None:
            process.kill()
            process.wait()
    text = shown.decode(errors="replace")
    assert "/3 [" in text and "file" in text, text
    assert "3 rendered" in text
