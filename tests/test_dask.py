"""``tifffs render --scheduler``: a real dask scheduler and two workers as separate
processes on 127.0.0.1, and faster in-process clusters for the batch logic."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import distributed  # tifffs[dask], which scripts/test installs
import pytest

from conftest import mounted, sample_array, wait_for, write_stack
from tifffs import open_view, rendering
from tools import free_port, stop_group
from trees import assert_mirrors, leftovers, make_tree, render, summary

START_TIMEOUT = 90.0


def _dask(*args: str, log: Path) -> subprocess.Popen:
    """``dask ARGS`` in its own process group, logging to ``log``."""
    dask = Path(sys.executable).with_name("dask")
    return subprocess.Popen([str(dask), *args], stdin=subprocess.DEVNULL,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)


@contextlib.contextmanager
def dask_cluster(workdir: Path, workers: int = 2) -> Iterator[str]:
    """``dask scheduler`` and ``dask worker`` processes on 127.0.0.1 (free ports), all
    stopped afterwards; yields the scheduler's address once the workers are there."""
    workdir.mkdir(parents=True, exist_ok=True)
    scheduler_file = workdir / "scheduler.json"
    processes = [_dask("scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                       "--scheduler-file", str(scheduler_file), log=workdir / "scheduler.log")]
    try:
        wait_for(scheduler_file.exists, START_TIMEOUT, "the dask scheduler", processes[0],
                 workdir / "scheduler.log")
        for i in range(workers):
            processes.append(_dask("worker", "--scheduler-file", str(scheduler_file),
                                   "--host", "127.0.0.1", "--nthreads", "1", "--no-dashboard",
                                   "--local-directory", str(workdir / f"w{i}"),
                                   log=workdir / f"worker{i}.log"))
        address = json.loads(scheduler_file.read_text())["address"]
        with distributed.Client(address, timeout="30s") as client:
            client.wait_for_workers(workers, timeout=START_TIMEOUT)
        yield address
    finally:
        for process in reversed(processes):
            stop_group(process)


@pytest.mark.mount
def test_tree_on_a_scheduler_and_two_worker_processes(tmp_path):
    source = make_tree(tmp_path / "src")
    write_stack(source / "large.tif", sample_array("uint16", (5, 1000, 900)))  # split
    out = tmp_path / "out"
    with mounted(source, tmp_path / "m", "--views", "x2") as mount, \
            dask_cluster(tmp_path / "dask") as address:
        assert address.startswith("tcp://127.0.0.1:")
        result = render(source, out, "--view", "x2", "--scheduler", address, "--split-size",
                        "1M", expect=1)
        broken = assert_mirrors(out, mount.path / "x2")
        assert "broken/not_a_tiff.tif" in broken
        assert f"{source / 'broken' / 'not_a_tiff.tif'}: " in result.stderr
        rendered, copied, up_to_date, _, failed = summary(result.stderr)
        assert (copied, up_to_date, failed) == (2, 0, len(broken))
        again = render(source, out, "--view", "x2", "--scheduler", address, expect=1)
        assert summary(again.stderr)[:3] == (0, 0, rendered + copied)


@pytest.fixture(scope="module")
def local_cluster(tmp_path_factory) -> Iterator[str]:
    """An in-process cluster: two workers of one thread each."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None,
                                  local_directory=tmp_path_factory.mktemp("dask")) as cluster:
        yield cluster.scheduler_address


def test_in_process_cluster_splits_large_files_and_reports_broken_ones(local_cluster,
                                                                        tmp_path, capsys):
    source = tmp_path / "src"
    write_stack(source / "large.tif", sample_array("uint8", (6, 1500, 1400)))
    write_stack(source / "sub" / "small.tif", sample_array("uint16", (2, 70, 50)))
    (source / "sub" / "bad.tif").write_bytes(b"II*\0 not really")
    out = tmp_path / "out"
    args = [str(source), str(out), "--view", "x2", "--scheduler", local_cluster,
            "--split-size", "1M"]
    assert rendering.main(args) == 1
    stderr = capsys.readouterr().err
    assert f"{source / 'sub' / 'bad.tif'}: " in stderr
    assert summary(stderr) == (2, 0, 0, 0, 1)
    for name in ("large.tif", "sub/small.tif"):
        view = open_view(str(source / name), view="x2")
        assert (out / name).read_bytes() == view.read(0, view.size)
    assert not (out / "sub" / "bad.tif").exists() and not leftovers(out)
    assert rendering.main(args) == 1
    assert summary(capsys.readouterr().err) == (0, 0, 2, 0, 1)


def test_rewritten_source_of_the_same_size_is_rendered_again(local_cluster, tmp_path, capsys):
    source = tmp_path / "src"
    write_stack(source / "large.tif", sample_array("uint8", (4, 1200, 1200)))
    out = tmp_path / "out"
    args = [str(source), str(out), "--view", "x1", "--scheduler", local_cluster,
            "--split-size", "1M"]
    assert rendering.main(args) == 0
    capsys.readouterr()
    # same size, new content and mtime
    data = bytearray((source / "large.tif").read_bytes())
    data[-1] ^= 0xFF
    (source / "large.tif").write_bytes(bytes(data))
    assert rendering.main(args) == 0
    assert summary(capsys.readouterr().err)[:3] == (1, 0, 0)
    view = open_view(str(source / "large.tif"), view="x1")
    assert (out / "large.tif").read_bytes() == view.read(0, view.size)


def test_unreachable_scheduler_is_one_line(tmp_path):
    source = tmp_path / "src"
    write_stack(source / "a.tif", sample_array("uint8", (20, 20)))
    result = render(source, tmp_path / "out", "--scheduler", f"tcp://127.0.0.1:{free_port()}",
                    expect=1)
    [line] = result.stderr.strip().splitlines()
    assert "cannot reach the dask scheduler" in line and "--scheduler" in line
    assert not (tmp_path / "out").exists()  # nothing created before the cluster answered


def test_missing_dask_says_what_to_install(tmp_path):
    source = tmp_path / "src"
    write_stack(source / "a.tif", sample_array("uint8", (20, 20)))
    # a package that fails to import, as when tifffs[dask] is not installed
    fake = tmp_path / "no_dask" / "distributed"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named distributed')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(fake.parent), os.environ.get("PYTHONPATH")])))
    result = render(source, tmp_path / "out", "--scheduler", "tcp://127.0.0.1:8786",
                    expect=2, env=env)
    [line] = result.stderr.strip().splitlines()
    assert "pip install 'tifffs[dask]'" in line
