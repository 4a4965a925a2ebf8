"""``tifffs render`` of one file: options, one-line errors, temporary file and rename."""

from __future__ import annotations

import os
import select
import shutil
import signal
import stat
import subprocess
from pathlib import Path

import pytest
import tifffile

from conftest import mounted, sample_array, wait_for, write_stack
from robustness import as_nobody, world_readable_workdir
from tifffs import open_view
from trees import START_TIMEOUT, TIFFFS, leftovers, render


@pytest.fixture
def stack(tmp_path) -> Path:
    path = tmp_path / "src" / "stack.tif"
    write_stack(path, sample_array("uint16", (3, 90, 70)))
    return path


def _fails(*args, says: tuple[str, ...], status: int = 2, refuses: tuple[str, ...] = ()):
    result = render(*args, expect=status)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for text in says:
        assert text in lines[0], lines[0]
    for text in refuses:
        assert text not in lines[0], lines[0]
    return lines[0]


def test_option_errors_name_the_option_typed(stack, tmp_path):
    out = tmp_path / "out.tif"
    _fails(stack, out, "--factor", "0", says=("--factor", "'0'"), refuses=("--factors",))
    _fails(stack, out, "--factor", "two", says=("--factor",), refuses=("--factors",))
    _fails(stack, out, "--method", "cubic", says=("--method", "cubic", "mean"))
    _fails(stack, out, "--view", "x0", says=("--view", "x0"), refuses=("--views",))
    _fails(stack, out, "--view", "x2,x4", says=("--view", "one view"))
    _fails(stack, out, "--view", "x2:x4", says=("--view", "one view"))
    _fails(stack, out, "--view", "x4", "--factor", "4", says=("--view", "--factor"))
    _fails(stack, out, "--view", "x4-max", "--method", "mean", says=("--method", "x4-max"))
    _fails(stack, out, "--jobs", "0", says=("--jobs",))
    _fails(stack, out, "--jobs", "2", "--scheduler", "tcp://127.0.0.1:1",
           says=("--jobs", "--scheduler"))
    _fails(stack, out, "--scheduler", "tcp://sched:port", says=("--scheduler", "HOST:PORT"))
    _fails(stack, out, "--cache-size", "lots", says=("--cache-size", "lots"))
    _fails(stack, out, "--split-size", "1K", says=("--split-size",))
    _fails(stack, out, "--no-such-option", says=("--no-such-option", "tifffs render --help"))
    _fails(stack, says=("OUTPUT",))
    assert not out.exists()


def test_missing_or_unusable_paths_are_one_line(stack, tmp_path):
    before = stack.read_bytes()
    _fails(tmp_path / "nothing.tif", tmp_path / "o.tif", says=("SOURCE", "does not exist"))
    missing = tmp_path / "no" / "such" / "folder"
    _fails(stack, missing / "o.tif", says=(str(missing), "mkdir -p"))
    _fails(stack, stack, says=("SOURCE",))
    assert stack.read_bytes() == before  # not rendered over itself


@pytest.mark.mount
def test_unreadable_source_is_one_line_and_leaves_nothing(stack):
    work = world_readable_workdir("tifffs-render-")
    try:
        locked = work / "locked.tif"
        locked.write_bytes(stack.read_bytes())
        locked.chmod(0o600)  # root's: unreadable for the user who renders
        out = work / "out"
        out.mkdir(mode=0o777)
        out.chmod(0o777)
        result = subprocess.run(as_nobody([*TIFFFS, "render", str(locked), str(out / "o.tif")]),
                                capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr
        [line] = result.stderr.strip().splitlines()
        assert "locked.tif" in line and "Permission denied" in line, line
        assert os.listdir(out) == []
    finally:
        shutil.rmtree(work)


def test_decode_failure_mid_file_leaves_no_output(tmp_path):
    source = tmp_path / "bad.tif"
    write_stack(source, sample_array("uint16", (4, 200, 150)), compression="zlib",
                rowsperstrip=8)
    data = bytearray(source.read_bytes())
    with tifffile.TiffFile(source) as tif:  # spoil the last page's strips only
        page = tif.pages[3]
        for offset, count in zip(page.dataoffsets, page.databytecounts):
            data[offset:offset + count] = b"\xff" * count
    source.write_bytes(bytes(data))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    previous = out_dir / "bad.tif"
    previous.write_bytes(b"previous output")
    result = render(source, previous, expect=1)
    assert "bad.tif" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert previous.read_bytes() == b"previous output"  # the old output is untouched
    assert sorted(os.listdir(out_dir)) == ["bad.tif"]


def test_output_is_renamed_into_place_with_the_source_mtime(stack, tmp_path):
    os.utime(stack, ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    out = tmp_path / "out.tif"
    render(stack, out, "--factor", "2")
    view = open_view(str(stack), 2, "mean")
    assert out.read_bytes() == view.read(0, view.size)
    assert out.stat().st_mtime_ns == stack.stat().st_mtime_ns
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask
    assert not leftovers(tmp_path)


def test_rerun_skips_an_up_to_date_output_and_redoes_a_stale_one(stack, tmp_path):
    out = tmp_path / "out.tif"
    render(stack, out)
    inode = out.stat().st_ino
    render(stack, out)
    assert out.stat().st_ino == inode  # not rewritten
    render(stack, out, "--force")
    assert out.stat().st_ino != inode
    inode = out.stat().st_ino
    os.utime(stack)  # the source changed: a new mtime
    render(stack, out)
    assert out.stat().st_ino != inode
    assert out.stat().st_mtime_ns == stack.stat().st_mtime_ns


def test_output_folder_takes_the_source_name_and_stdout_streams(stack, tmp_path):
    folder = tmp_path / "views"
    folder.mkdir()
    render(stack, folder, "--view", "x3-max")
    expected = open_view(str(stack), view="x3-max")
    assert (folder / "stack.tif").read_bytes() == expected.read(0, expected.size)
    result = subprocess.run([*TIFFFS, "render", str(stack), "-", "--view", "x3-max"],
                            capture_output=True, timeout=60, check=False)
    assert result.returncode == 0 and result.stdout == expected.read(0, expected.size)


def test_devices_and_fifos_are_written_not_replaced(stack, tmp_path):
    render(stack, os.devnull)
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    process = subprocess.Popen([*TIFFFS, "render", str(stack), str(fifo)],
                               stderr=subprocess.PIPE)
    # opened without waiting for a writer: should tifffs render fail before it opens the
    # fifo, the test fails instead of hanging in open()
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        wait_for(lambda: select.select([fd], [], [], 0)[0] or process.poll() is not None,
                 60, "tifffs render to write into the fifo")
        os.set_blocking(fd, True)
        with open(fd, "rb", closefd=False) as reader:
            data = reader.read()
        assert process.wait(timeout=60) == 0
    finally:
        os.close(fd)
        if process.poll() is None:
            process.kill()
            process.wait()
    view = open_view(str(stack), 4, "mean")
    assert data == view.read(0, view.size)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


@pytest.mark.mount
def test_render_equals_the_mounted_view_for_options(tmp_path):
    source = tmp_path / "src"
    write_stack(source / "hyper.tif", sample_array("uint16", (6, 3, 50, 60)),
                imagej=True, metadata={"axes": "ZCYX"})
    with mounted(source, tmp_path / "m", "--views", "x2z3,x4-max,fit33") as mount:
        for view in ("x2z3", "x4-max", "fit33"):
            out = tmp_path / f"{view}.tif"
            render(source / "hyper.tif", out, "--view", view)
            assert out.read_bytes() == (mount.path / view / "hyper.tif").read_bytes(), view


def test_interrupt_leaves_no_partial_file(tmp_path):
    source = tmp_path / "big.tif"
    # lanczos resizes whole pages: slow enough to be caught while writing
    write_stack(source, sample_array("uint8", (12, 3000, 3000)))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    process = subprocess.Popen([*TIFFFS, "render", str(source), str(out_dir / "big.tif"),
                                "--view", "x3-lanczos"], stderr=subprocess.PIPE,
                               start_new_session=True)
    try:
        wait_for(lambda: bool(leftovers(out_dir)), START_TIMEOUT, "the temporary output",
                 process)
        os.killpg(process.pid, signal.SIGINT)  # as Ctrl-C on a terminal
        assert process.wait(timeout=60) == 130
        stderr = process.stderr.read().decode()
        assert "Traceback" not in stderr and "interrupted" in stderr, stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert os.listdir(out_dir) == []


def test_float_and_rgb_sources_render_like_open_view(tmp_path):
    for name, array, kwargs, shape in [
            ("f.tif", sample_array("float32", (2, 40, 30)), {}, (2, 14, 10)),
            ("rgb.tif", sample_array("uint8", (41, 29, 3)), {"photometric": "rgb"}, (14, 10, 3))]:
        write_stack(tmp_path / name, array, **kwargs)
        render(tmp_path / name, tmp_path / f"out-{name}", "--factor", "3")
        view = open_view(str(tmp_path / name), 3, "mean")
        assert (tmp_path / f"out-{name}").read_bytes() == view.read(0, view.size)
        assert tifffile.imread(tmp_path / f"out-{name}").shape == shape


def test_workers_are_started_for_the_tasks_a_view_makes_not_for_its_source_size(tmp_path):
    """A source larger than --split-size whose view is smaller makes one task: it renders
    in this process (starting workers would cost more than the render); a view larger
    than --split-size makes range tasks, one per --split-size."""
    from tifffs.batch import Job
    from tifffs.rendering import _Options, _task_estimate
    from tifffs.tasks import ViewSpec

    source = tmp_path / "big.tif"
    write_stack(source, sample_array("uint16", (3, 512, 1024)))  # 3 MiB
    assert source.stat().st_size > 3 << 20
    job = Job(str(source), str(tmp_path / "out.tif"), render=True)
    options = _Options(jobs=8, scheduler=None, split_bytes=1 << 20)
    assert _task_estimate(ViewSpec("x4", "mean"), [job], options) == 1
    whole = open_view(str(source), view="x1")
    assert _task_estimate(ViewSpec("x1", "mean"), [job], options) == -(-whole.size // (1 << 20))
    whole.close()
    copy = Job(str(source), str(tmp_path / "copy.tif"), render=False)
    assert _task_estimate(ViewSpec("x4", "mean"), [copy, copy, copy], options) == 3


def test_jobs_is_a_budget_of_cores():
    """--jobs N: one process per task up to N, and the cores left render bands side by
    side, so --jobs 1 uses one core and one big file gets all N."""
    from tifffs.rendering import share_cores

    assert share_cores(1, 1) == (1, 1)
    assert share_cores(1, 8) == (1, 1)
    assert share_cores(2, 1) == (1, 2)
    assert share_cores(2, 8) == (2, 1)
    assert share_cores(8, 3) == (3, 2)
    assert share_cores(3, 0) == (1, 3)


@pytest.mark.parametrize("jobs, folder, slots", [("1", False, 1), ("2", False, 2),
                                                 ("1", True, 1), ("2", True, 2)])
def test_jobs_sets_how_many_bands_render_at_once(tmp_path, monkeypatch, jobs, folder, slots):
    """In this process (one task: no worker processes), every render pool has the slots
    that --jobs leaves to the one file, also when it is a folder's only file."""
    from tifffs import render as render_module
    from tifffs import rendering

    made: list[int] = []
    real_init = render_module.RenderPool.__init__

    def recording_init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        made.append(self.slots)

    monkeypatch.setattr(render_module.RenderPool, "__init__", recording_init)
    source = tmp_path / "src" / "stack.tif"
    write_stack(source, sample_array("uint16", (3, 256, 200)))
    out = tmp_path / "out"
    out.mkdir()
    argv = [str(source.parent if folder else source), str(out / "x"), "--jobs", jobs]
    assert rendering.main(argv) == 0
    assert made and set(made) == {slots}, made
    written = out / "x" / "stack.tif" if folder else out / "x"
    expected = open_view(str(source), view="x4")
    assert written.read_bytes() == expected.read(0, expected.size)
    expected.close()


def test_interrupt_while_streaming_to_stdout_says_so_in_one_line(tmp_path):
    source = tmp_path / "big.tif"
    write_stack(source, sample_array("uint8", (4, 2000, 2000)))
    process = subprocess.Popen([*TIFFFS, "render", str(source), "-", "--view", "x2"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               start_new_session=True)
    try:
        # the view (4 MB) is larger than the pipe: once its first byte has come, the
        # command is streaming, and soon blocked on the pipe nobody reads
        assert process.stdout.read(1)
        os.killpg(process.pid, signal.SIGINT)  # as Ctrl-C on a terminal
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, stderr
    assert stderr.decode().strip() == "tifffs: interrupted"
