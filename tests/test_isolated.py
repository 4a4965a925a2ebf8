"""JPEG XR and JPEG 2000 segments are decoded in helper processes (``tifffs.isolated``):
pixels equal tifffile's; a decoder that crashes, fills memory or hangs fails only its
read; helpers never outlive the process that started them."""

from __future__ import annotations

import io
import os
import resource
import signal
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest
import tifffile

from conftest import mounted, wait_for
from crafted import jpeg2000_claiming_a_terabyte, jpegxr_reserved_format
from reference import reference_blocks, reference_page
from robustness import call_with_timeout
from tifffs import isolated, open_view
from tifffs.errors import BrokenSource

HANG = 60.0  # seconds: only a hang detector


def _isolated_sources(folder) -> dict[str, np.ndarray]:
    """JPEG XR and JPEG 2000 files of the kinds tifffile writes (lossless), and their
    pixels."""
    rng = np.random.default_rng(5)
    kinds = {
        "u8_strips.tif": (rng.integers(0, 255, (3, 41, 35), dtype=np.uint8),
                          {"rowsperstrip": 16, "compression": "jpegxr"}),
        "u16_tiles.tif": (rng.integers(0, 65535, (2, 50, 47), dtype=np.uint16),
                          {"tile": (16, 16), "compression": "jpegxr"}),
        "rgb_tiles.tif": (rng.integers(0, 255, (37, 45, 3), dtype=np.uint8),
                          {"tile": (32, 32), "photometric": "rgb", "compression": "jpegxr"}),
        "j2k_u16_tiles.tif": (rng.integers(0, 65535, (2, 50, 47), dtype=np.uint16),
                              {"tile": (16, 16), "compression": "jpeg2000"}),
        "j2k_rgb_strips.tif": (rng.integers(0, 255, (37, 45, 3), dtype=np.uint8),
                               {"rowsperstrip": 8, "photometric": "rgb",
                                "compression": "jpeg2000"}),
    }
    pixels = {}
    for name, (array, options) in kinds.items():
        options.setdefault("photometric", "minisblack")
        tifffile.imwrite(folder / name, array, **options)
        pixels[name] = tifffile.imread(folder / name)  # lossless: the written array
        np.testing.assert_array_equal(pixels[name], array)
    return pixels


def _served(data: bytes) -> np.ndarray:
    return tifffile.imread(io.BytesIO(data))


@pytest.mark.parametrize("view,method", [("x2", "mean"), ("x3-nearest", "nearest"),
                                         ("x2-median", "median")])
def test_views_equal_the_reference(tmp_path, view, method):
    sources = _isolated_sources(tmp_path)
    isolated.stop_helpers()  # the helpers seen below are this test's
    factor = int(view[1])
    for name, array in sources.items():
        rendered = open_view(str(tmp_path / name), view=view)
        got = _served(rendered.read(0, rendered.size))
        rgb = "rgb" in name
        pages = [array] if rgb or array.ndim == 2 else list(array)
        if method == "median":
            expected = [reference_blocks([page if rgb else page[:, :, None]], factor,
                                         "median") for page in pages]
            expected = [e if rgb else e[:, :, 0] for e in expected]
        else:
            expected = [reference_page(page, factor, method) for page in pages]
        np.testing.assert_array_equal(got, expected[0] if len(pages) == 1 else
                                      np.stack(expected), err_msg=name)
    assert isolated.helper_pids(), "nothing was decoded in a helper process"


def test_crashing_decoder_fails_only_that_read(tmp_path):
    """jxrlib divides by zero on a reserved header value (SIGFPE, which would end this
    process): the read fails with the cause, and the next JPEG XR read works."""
    bad = tmp_path / "bad.tif"
    bad.write_bytes(jpegxr_reserved_format())
    decode = "import sys, tifffile; tifffile.imread(sys.argv[1])"
    crash = subprocess.run([sys.executable, "-c", decode, str(bad)], check=False,
                           capture_output=True, timeout=HANG)
    assert crash.returncode == -signal.SIGFPE, "the input no longer crashes the decoder"

    view = open_view(str(bad), 2)
    with pytest.raises(BrokenSource, match=r"page 0 segment 0: the JPEG XR decoder "
                                           r"crashed \(SIGFPE\)"):
        view.read(0, view.size)
    sources = _isolated_sources(tmp_path)
    good = open_view(str(tmp_path / "u16_tiles.tif"), view="x2-nearest")
    np.testing.assert_array_equal(_served(good.read(0, good.size)),
                                  sources["u16_tiles.tif"][:, ::2, ::2])


def test_decoder_filling_memory_fails_only_that_read(tmp_path):
    """OpenJPEG fills as much memory as a damaged tile claims (2^20 x 2^20 pixels): the
    helper's address space is limited, so the read fails and this process stays small."""
    bad = tmp_path / "bad.tif"
    bad.write_bytes(jpeg2000_claiming_a_terabyte())
    decode = ("import resource, sys, tifffile\n"
              "try:\n    tifffile.imread(sys.argv[1])\nexcept Exception:\n    pass\n"
              "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n")
    limit = 2 << 30  # so that this check cannot take the machine's memory

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    filled = subprocess.run([sys.executable, "-c", decode, str(bad)], check=True,
                            capture_output=True, text=True, timeout=HANG,
                            preexec_fn=limited)
    assert int(filled.stdout) > 1 << 20, "the input no longer makes OpenJPEG fill memory"

    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    view = open_view(str(bad), 2)
    with pytest.raises(BrokenSource, match=r"page 0 segment 0: .*JPEG 2000|cannot decode"):
        view.read(0, view.size)
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before
    assert grown_kib < 100 << 10, f"this process grew by {grown_kib >> 10} MiB"


def test_at_most_one_helper_per_core(tmp_path):
    """Many readers at once (libfuse 2 starts a thread per waiting request) share at
    most ``MAX_HELPERS`` helpers, each some 40 MB."""
    sources = _isolated_sources(tmp_path)
    path = str(tmp_path / "j2k_u16_tiles.tif")
    problems: list[str] = []

    def read() -> None:
        try:
            view = open_view(path, view="x1-nearest")  # its own decoders: no cache shared
            got = _served(view.read(0, view.size))
            if not np.array_equal(got, sources["j2k_u16_tiles.tif"]):
                problems.append("other pixels")
        except Exception as exc:  # noqa: BLE001  (reported below)
            problems.append(repr(exc))

    readers = [threading.Thread(target=read) for _ in range(3 * isolated.MAX_HELPERS)]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join(HANG)
    assert not problems, problems
    assert 1 <= isolated.most_helpers_at_once() <= isolated.MAX_HELPERS
    assert len(isolated.helper_pids()) <= isolated.IDLE_HELPERS


def test_helper_that_stops_answering_is_ended(tmp_path, monkeypatch):
    sources = _isolated_sources(tmp_path)
    path = str(tmp_path / "u8_strips.tif")
    view = open_view(path, view="x1-nearest")
    view.read(0, view.size)  # starts a helper, which then waits for work
    helpers = isolated.helper_pids()
    assert helpers
    monkeypatch.setattr(isolated, "DECODE_SECONDS", 1.0)
    for pid in helpers:
        os.kill(pid, signal.SIGSTOP)  # alive, but never answers
    try:
        fresh = open_view(path, view="x1-nearest")  # new decoders: no pixels cached
        with pytest.raises(BrokenSource, match="did not finish within 1 s"):
            for _ in helpers:  # each stopped helper fails one read, then is gone
                fresh.read(0, fresh.size)
                fresh = open_view(path, view="x1-nearest")
    finally:
        for pid in helpers:
            if os.path.exists(f"/proc/{pid}"):
                os.kill(pid, signal.SIGCONT)
    ended = [pid for pid in helpers if not os.path.exists(f"/proc/{pid}")]
    assert ended, "the helper that did not answer is still running"
    again = open_view(path, view="x1-nearest")
    np.testing.assert_array_equal(_served(again.read(0, again.size)),
                                  sources["u8_strips.tif"])


def test_large_request_to_a_stopped_helper_times_out(tmp_path, monkeypatch):
    """The deadline covers the whole exchange: sending a tile larger than the socket's
    buffer to a helper that reads nothing, too (not only waiting for the answer)."""
    path = tmp_path / "big_tile.tif"
    pixels = np.random.default_rng(9).integers(0, 255, (512, 512, 3), dtype=np.uint8)
    tifffile.imwrite(path, pixels, photometric="rgb", compression="jpeg2000",
                     tile=(512, 512))
    ours, theirs = socket.socketpair()
    with ours, theirs:
        buffered = ours.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    with tifffile.TiffFile(path) as tif:
        assert tif.pages.first.databytecounts[0] > 2 * buffered  # more than a socket holds
    view = open_view(str(path), view="x2-nearest")
    view.read(0, view.size)  # starts a helper, which then waits for work
    helpers = isolated.helper_pids()
    monkeypatch.setattr(isolated, "DECODE_SECONDS", 1.0)
    for pid in helpers:
        os.kill(pid, signal.SIGSTOP)
    try:
        fresh = open_view(str(path), view="x2-nearest")
        with pytest.raises(BrokenSource, match="did not finish within 1 s"):
            call_with_timeout(lambda: fresh.read(0, fresh.size), HANG, "the read")
    finally:
        for pid in helpers:
            if os.path.exists(f"/proc/{pid}"):
                os.kill(pid, signal.SIGCONT)


def test_helper_killed_while_idle_costs_no_read(tmp_path):
    """A helper that died waiting for work (the OOM killer, an admin) is replaced before
    a read uses it: the read is served, not failed as damaged data."""
    sources = _isolated_sources(tmp_path)
    path = str(tmp_path / "u16_tiles.tif")
    view = open_view(path, view="x1-nearest")
    view.read(0, view.size)
    for pid in isolated.helper_pids():
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: all(_ended(pid) for pid in isolated.helper_pids()), HANG,
             "the helpers to die")
    again = open_view(path, view="x1-nearest")
    np.testing.assert_array_equal(_served(again.read(0, again.size)), sources["u16_tiles.tif"])


def _ended(pid: int) -> bool:
    """True when the child ``pid`` can be reaped, without reaping it. A zombie state in
    /proc is not enough: a killed helper's first thread shows "Z" while its other threads
    (OpenBLAS's) still exit and still hold its socket open."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def test_descriptors_numbered_beyond_1024(tmp_path):
    """The daemon raises its descriptor limit and may hold thousands of sources: waiting
    on a helper must not use select(), which fails for descriptors from 1024 on."""
    sources = _isolated_sources(tmp_path)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 1200 if hard == resource.RLIM_INFINITY else min(hard, 1200)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    held = []
    try:
        while len(held) < 1100:
            held.append(os.open(os.devnull, os.O_RDONLY))
        assert max(held) >= 1024
        view = open_view(str(tmp_path / "rgb_tiles.tif"), view="x1-nearest")
        np.testing.assert_array_equal(_served(view.read(0, view.size)),
                                      sources["rgb_tiles.tif"])
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_helper_ignores_modules_in_the_current_folder(tmp_path):
    """A foreground daemon keeps the user's current folder; a file there named like a
    module (imagecodecs.py) must not replace the real one in the helper."""
    _isolated_sources(tmp_path)
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "imagecodecs.py").write_text("raise ImportError('the wrong imagecodecs')\n")
    script = tmp_path / "read.py"
    script.write_text("import sys, tifffs\nview = tifffs.open_view(sys.argv[1], 2)\n"
                      "print(len(view.read(0, view.size)))\n")
    result = subprocess.run([sys.executable, str(script), str(tmp_path / "u8_strips.tif")],
                            cwd=folder, capture_output=True, text=True, timeout=HANG,
                            check=False)
    assert result.returncode == 0 and int(result.stdout) > 0, result.stderr


def test_forked_child_uses_helpers_of_its_own(tmp_path):
    """After os.fork() (multiprocessing's default on Linux) the child neither keeps its
    parent's helpers alive nor talks to them, and both go on decoding."""
    _isolated_sources(tmp_path)
    code = (
        "import os, sys, tifffs\nfrom tifffs import isolated\n"
        "def read():\n    view = tifffs.open_view(sys.argv[1], 2)\n"
        "    return len(view.read(0, view.size))\n"
        "read()\nparents = isolated.helper_pids()\n"
        "child = os.fork()\n"
        "if child == 0:\n"
        "    ok = not isolated.helper_pids() and read() > 0\n"
        "    ok = ok and not set(isolated.helper_pids()) & set(parents)\n"
        "    os._exit(0 if ok else 1)\n"
        "_, status = os.waitpid(child, 0)\n"
        "assert os.waitstatus_to_exitcode(status) == 0, 'the child failed'\n"
        "assert isolated.helper_pids() == parents and read() > 0\n"
        "print('ok')\n")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "u16_tiles.tif")],
                            capture_output=True, text=True, timeout=HANG, check=False)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_helpers_end_with_the_process_that_started_them(tmp_path):
    _isolated_sources(tmp_path)
    code = ("import sys, tifffs\nfrom tifffs import isolated\n"
            "view = tifffs.open_view(sys.argv[1], 2)\nview.read(0, view.size)\n"
            "print(*isolated.helper_pids(), flush=True)\nsys.stdin.read()\n")
    process = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "u16_tiles.tif")],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        helpers = [int(pid) for pid in process.stdout.readline().split()]
        assert helpers
        process.kill()  # no chance to clean up: the helpers see their pipe close
        process.wait(timeout=HANG)
        wait_for(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in helpers),
                 HANG, "the helpers to end")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _helpers_of(pid: int) -> list[int]:
    """Process ids of the decoding helpers that ``pid`` started."""
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                command = cmdline.read()
        except OSError:
            continue
        if parent == pid and b"tifffs.isolated" in command:
            children.append(int(entry))
    return children


def test_mount_serves_jpegxr_and_leaves_no_helper(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    sources = _isolated_sources(source)
    (source / "bad.tif").write_bytes(jpegxr_reserved_format())
    (source / "big.tif").write_bytes(jpeg2000_claiming_a_terabyte())
    with mounted(source, tmp_path / "work") as mount:
        for name in ("bad.tif", "big.tif"):
            with pytest.raises(OSError) as error:
                (mount.path / "x2" / name).read_bytes()
            assert error.value.errno == 5
        assert "JPEG XR decoder crashed (SIGFPE)" in mount.log_text()
        for name in sources:  # the mount is still up, and a new helper decodes
            view = open_view(str(source / name), 2)
            assert (mount.path / "x2" / name).read_bytes() == view.read(0, view.size), name
        helpers = _helpers_of(mount.process.pid)
        assert helpers, "the daemon decoded JPEG XR in process"
    wait_for(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in helpers), HANG,
             "the daemon's helpers to end")
