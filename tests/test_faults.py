"""Faults a long-running mount must survive, each through a real mount: sources that
change while their views are read, files still being written, and broken inputs.

The rule checked everywhere: a reader gets bytes of one version of the source (the
bytes ``tifffs.open_view`` renders for it) or EIO; never a mix, never a hang, and the
daemon keeps running. Hangs are detected with generous timeouts, never timed.
"""

from __future__ import annotations

import errno
import io
import os
import random
import socket
import stat
import struct
import threading
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import tifffile
from tifffile import COMPRESSION

from conftest import mounted, wait_for
from crafted import FAIL_ON_READ, broken_files, gray8, ifd_chain, tifffile_bytes
from reference import reference_page
from robustness import call_with_timeout, errno_of, guarded_errno, memory_kib, python_in_subprocess
from tifffs import open_view
from tifffs.decoding import decoding_failure
from tifffs.errors import TifffsError

pytestmark = pytest.mark.mount

HANG = 30.0  # seconds: only a hang detector
#: For one request of a broken input, which takes milliseconds (also a hang detector).
REQUEST_HANG = 15.0
OLD_MTIME_NS = 1_000_000_000 * 1_000_000_000  # 2001: far from "now", in whole seconds


def _write(path: Path, array: np.ndarray, **kwargs) -> None:
    kwargs.setdefault("photometric", "minisblack")
    tifffile.imwrite(path, array, **kwargs)


def _stack(seed: int, pages: int = 6, rows: int = 256, columns: int = 256) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 65535, (pages, rows, columns),
                                                dtype=np.uint16)


def _rendered(path: Path, factor: int = 2) -> bytes:
    view = open_view(str(path), factor)
    return view.read(0, view.size)


# -- sources that change while a view is open
def _truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 3)


def _rewrite_in_place(path: Path) -> None:
    """Overwrite the pixel data in place: same inode, same size, new bytes and mtime."""
    with tifffile.TiffFile(path) as tif:
        start = int(tif.pages.first.dataoffsets[0])
    with open(path, "r+b") as handle:
        handle.seek(start)
        handle.write(_stack(99).tobytes()[: path.stat().st_size - start])


def _rewrite_with_tifffile(path: Path) -> None:
    """What acquisition software does when it saves again: O_TRUNC, then write."""
    _write(path, _stack(7, pages=3, rows=300))


def _replace_by_rename(path: Path) -> None:
    temporary = path.with_name("incoming.tmp")
    _write(temporary, _stack(8, pages=2, rows=200))  # smaller: a shorter view
    os.rename(temporary, path)


CHANGES = {"truncate": _truncate, "rewrite_in_place": _rewrite_in_place,
           "rewrite_with_tifffile": _rewrite_with_tifffile,
           "replace_by_rename": _replace_by_rename, "delete": os.unlink}
#: Changes after which an open handle still has its whole version (the old inode).
OLD_INODE_KEPT = {"replace_by_rename", "delete"}


class _Reader(threading.Thread):
    """Reads random ranges of an open view until told to stop; records what it got.

    Most reads first drop the kernel's cached pages of the file, so that they reach the
    daemon (whose band cache is kept small in these tests).
    """

    def __init__(self, path: Path, expected: bytes, seed: int) -> None:
        super().__init__(daemon=True, name=f"reader {seed}")
        self.fd = os.open(path, os.O_RDONLY)
        self.expected = expected
        self.random = random.Random(seed)
        self.reads = 0
        self.eio = 0
        self.short = 0
        self.problems: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                offset = self.random.randrange(len(self.expected))
                length = self.random.choice([1, 4096, 65536, 300000])
                try:
                    if self.random.random() < 0.8:
                        os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    data = os.pread(self.fd, length, offset)
                except OSError as exc:
                    if exc.errno != errno.EIO:
                        self.problems.append(f"errno {exc.errno} at {offset}+{length}")
                    self.eio += 1
                else:
                    # bytes of the version opened, possibly cut short, never others
                    if data != self.expected[offset:offset + len(data)]:
                        self.problems.append(f"foreign bytes at {offset}+{length}")
                    elif len(data) < min(length, len(self.expected) - offset):
                        self.short += 1
                self.reads += 1
        finally:
            os.close(self.fd)


@pytest.mark.parametrize("change", list(CHANGES))
def test_source_changed_while_being_read(tmp_path, change):
    source_dir = tmp_path / "src"
    source_dir.mkdir()
    path = source_dir / "live.tif"
    _write(path, _stack(1))
    os.utime(path, ns=(OLD_MTIME_NS, OLD_MTIME_NS))
    before = _rendered(path)
    with mounted(source_dir, tmp_path / "m", "--cache-size", "64K",
                 source_is_constant=False) as mount:
        view = mount.path / "x2" / "live.tif"
        readers = [_Reader(view, before, seed) for seed in range(4)]
        for reader in readers:
            reader.start()
        wait_for(lambda: all(r.reads >= 20 for r in readers), HANG, "reads before the change")
        CHANGES[change](path)
        counts = [r.reads for r in readers]
        wait_for(lambda: all(r.reads >= c + 50 for r, c in zip(readers, counts)), HANG,
                 "reads after the change")
        for reader in readers:
            reader.stop.set()
            reader.join(HANG)
            assert not reader.is_alive(), "a reader hangs"
            assert not reader.problems, reader.problems[:5]
        if change in OLD_INODE_KEPT:  # the version opened is whole: no EIO
            assert sum(r.eio for r in readers) == 0
            assert sum(r.short for r in readers) == 0
        else:  # what is not cached yet can only fail
            assert sum(r.eio for r in readers) > 0
        # a new open serves the new version, or says why not
        if change == "delete":
            wait_for(lambda: not os.path.exists(view), 5, "the view to disappear")
        else:
            now = os.stat(path)
            wait_for(lambda: os.stat(view).st_mtime_ns == now.st_mtime_ns, 5, "new attributes")
            try:
                expected = _rendered(path)
            except TifffsError:
                assert errno_of(view.read_bytes) == errno.EIO
            else:
                assert call_with_timeout(view.read_bytes, HANG, "reading the new version") \
                    == expected
        assert mount.process.poll() is None


def test_handles_of_two_versions_of_one_path_never_mix(tmp_path):
    """The kernel caches a file's pages per path, whatever handle read them: a handle
    opened on the old version must not get the new version's cached pages, nor the
    other way round, nor a later open the old ones."""
    source_dir = tmp_path / "src"
    source_dir.mkdir()
    path = source_dir / "f.tif"
    _write(path, _stack(1))
    os.utime(path, ns=(OLD_MTIME_NS, OLD_MTIME_NS))
    old = _rendered(path)
    with mounted(source_dir, tmp_path / "m", source_is_constant=False) as mount:
        view = mount.path / "x2" / "f.tif"
        old_fd = os.open(view, os.O_RDONLY)
        try:
            assert os.pread(old_fd, len(old) + 1, 0) == old
            _write(source_dir / "new.tmp", _stack(2))  # same size, other pixels
            os.rename(source_dir / "new.tmp", path)
            new = _rendered(path)
            assert len(new) == len(old) and new != old
            wait_for(lambda: os.stat(view).st_mtime_ns != OLD_MTIME_NS, 5, "new attributes")
            new_fd = os.open(view, os.O_RDONLY)
            try:
                assert os.pread(new_fd, len(new) + 1, 0) == new
                assert os.pread(old_fd, len(old) + 1, 0) == old
                assert os.pread(new_fd, len(new) + 1, 0) == new
            finally:
                os.close(new_fd)
            assert os.pread(old_fd, len(old) + 1, 0) == old
            # opened while the old handle is still open, and after it is closed
            assert view.read_bytes() == new
        finally:
            os.close(old_fd)
        assert view.read_bytes() == new


def test_smaller_replacement_does_not_cut_an_open_handle_short(tmp_path):
    source_dir = tmp_path / "src"
    source_dir.mkdir()
    path = source_dir / "f.tif"
    _write(path, _stack(1))
    os.utime(path, ns=(OLD_MTIME_NS, OLD_MTIME_NS))
    old = _rendered(path)
    with mounted(source_dir, tmp_path / "m", source_is_constant=False) as mount:
        view = mount.path / "x2" / "f.tif"
        with open(view, "rb") as handle:
            start = handle.read(4096)
            _replace_by_rename(path)
            new_size = open_view(str(path), 2).size
            wait_for(lambda: os.stat(view).st_size == new_size, 5, "the new size")
            # the kernel now has the new size, and asks again (with this handle) when a
            # read goes past it
            assert start + handle.read() == old


def test_growing_file_is_followed(tmp_path):
    """Acquisition in progress: pages are appended while views are stat'ed and read."""
    source_dir = tmp_path / "src"
    source_dir.mkdir()
    path = source_dir / "acquiring.tif"
    total = 40
    pages = [np.full((128, 96), 1000 + 10 * i, dtype=np.uint16) for i in range(total)]
    expected = [reference_page(p, 2, "mean") for p in pages]
    _write(path, pages[0])
    with mounted(source_dir, tmp_path / "m", source_is_constant=False) as mount:
        view = mount.path / "x2" / "acquiring.tif"
        done = threading.Event()
        seen: list[int] = []  # pages of each view read whole
        attempts = [0]
        problems: list[str] = []

        def read_views() -> None:
            while not done.is_set() or not seen or seen[-1] < total:
                attempts[0] += 1
                try:
                    data = view.read_bytes()
                except OSError as exc:
                    if exc.errno != errno.EIO:  # EIO: changed while read
                        problems.append(f"errno {exc.errno}")
                    continue
                try:  # whatever version it is, it is one whole view
                    with tifffile.TiffFile(io.BytesIO(data)) as tif:
                        got = [page.asarray() for page in tif.pages]
                except Exception as exc:  # noqa: BLE001 - any parse failure is a mix
                    problems.append(f"unreadable view of {len(data)} bytes: {exc!r}")
                    continue
                for i, page in enumerate(got):
                    if not np.array_equal(page, expected[i]):
                        problems.append(f"page {i} of {len(got)} has foreign pixels")
                seen.append(len(got))
                if done.is_set() and len(got) < total and len(seen) > 1000:
                    problems.append("the last pages never appear")
                    return

        reader = threading.Thread(target=read_views, daemon=True)
        reader.start()
        for page in pages[1:]:
            _write(path, page, append=True)
            before = attempts[0]  # let the reader try at least once per page
            wait_for(lambda before=before: attempts[0] > before or not reader.is_alive(), HANG,
                     "a view read")
        done.set()
        reader.join(HANG)
        assert not reader.is_alive(), "the reader hangs"
        assert not problems, problems[:5]
        assert seen[-1] == total
        assert seen == sorted(seen), "pages disappeared"
        size = open_view(str(path), 2).size  # the kernel keeps a size for attr_timeout
        wait_for(lambda: os.stat(view).st_size == size, HANG, "the final size")
        with tifffile.TiffFile(view) as tif:
            assert len(tif.pages) == total


# -- broken inputs
BROKEN = broken_files()
LOOPS = sorted(name for name in BROKEN if "loop" in name)


@pytest.fixture(scope="module", params=["2", "3"], ids=["libfuse2", "libfuse3"])
def broken_mount(request, tmp_path_factory):
    """A mount of every broken input (but the IFD loops), a good neighbour, a directory
    named .tif, fifos and a socket; names looked up are cached for a minute, so that a
    file replaced after its lookup is opened without a new lookup. Once with each
    libfuse: with 3, listings carry attributes (readdirplus), and a broken file's
    must still fail its lookup, with its one log line."""
    work = tmp_path_factory.mktemp("broken")
    source = work / "src"
    source.mkdir()
    for name, data in BROKEN.items():
        if name not in LOOPS:
            (source / name).write_bytes(data)
    good = np.arange(48 * 64, dtype=np.uint16).reshape(48, 64)
    _write(source / "good.tif", good)
    (source / "dir.tif").mkdir()
    _write(source / "dir.tif" / "inner.tif", good)
    os.mkfifo(source / "fifo.tif")
    os.mkfifo(source / "fifo")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(source / "socket.tif"))
    try:
        with mounted(source, work, "-o", "entry_timeout=60", "--libfuse", request.param,
                     source_is_constant=False) as mount:
            mount.good = reference_page(good, 2, "mean")  # type: ignore[attr-defined]
            mount.start_memory = memory_kib(mount.process.pid)  # type: ignore[attr-defined]
            yield mount
    finally:
        listener.close()


def _log_lines(mount, name: str) -> list[str]:
    return [line for line in mount.log_text().splitlines()
            if str(mount.source / name) in line]


def _assert_eio_and_one_log_line(mount, name: str) -> None:
    view = mount.path / "x2" / name
    assert name in os.listdir(mount.path / "x2")
    for _ in range(3):
        if name in FAIL_ON_READ:
            assert os.stat(view).st_size > 0
        else:
            assert guarded_errno(mount, lambda: os.stat(view), f"stat {name}",
                                 REQUEST_HANG) == errno.EIO
        assert guarded_errno(mount, view.read_bytes, f"read {name}", REQUEST_HANG) \
            == errno.EIO
    lines = _log_lines(mount, name)
    assert len(lines) == 1, lines
    assert "EIO" in lines[0]


@pytest.mark.parametrize("name", sorted(set(BROKEN) - set(LOOPS)))
def test_broken_input_gives_eio_and_one_log_line(broken_mount, name):
    _assert_eio_and_one_log_line(broken_mount, name)
    np.testing.assert_array_equal(tifffile.imread(broken_mount.path / "x2" / "good.tif"),
                                  broken_mount.good)


def _pages_tifffile_reads(data: bytes) -> list[np.ndarray]:
    """The pages of the chain up to where it loops back (tifffile itself would go round
    the loop for ever)."""
    pages, seen = [], set()
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        for page in tif.pages:
            if page.offset in seen:
                break
            seen.add(page.offset)
            pages.append(page.asarray())
    return pages


@pytest.mark.parametrize("name", LOOPS)
def test_ifd_loop_serves_the_pages_before_it_and_leaves_its_directory_usable(tmp_path, name):
    """An endless IFD chain is served as tifffile reads it: the pages up to the loop,
    with one log line naming the file and the cause. A lookup that never returned would
    also block every other lookup in its directory (libfuse 2 serialises them)."""
    source = tmp_path / "src"
    source.mkdir()
    (source / name).write_bytes(BROKEN[name])
    good = np.arange(48 * 64, dtype=np.uint16).reshape(48, 64)
    _write(source / "good.tif", good)
    expected = [reference_page(p, 2, "mean") for p in _pages_tifffile_reads(BROKEN[name])]
    with mounted(source, tmp_path, source_is_constant=False) as mount:
        view = mount.path / "x2" / name
        data = call_with_timeout(view.read_bytes, HANG, f"reading {name}")
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            served = [page.asarray() for page in tif.pages]
        assert len(served) == len(expected)
        for page, reference in zip(served, expected):
            np.testing.assert_array_equal(page, reference)
        lines = _log_lines(mount, name)
        assert len(lines) == 1 and "loops back" in lines[0], lines
        np.testing.assert_array_equal(tifffile.imread(mount.path / "x2" / "good.tif"),
                                      reference_page(good, 2, "mean"))


def test_directory_named_tif_is_mirrored_as_a_directory(broken_mount):
    directory = broken_mount.path / "x2" / "dir.tif"
    assert stat.S_ISDIR(os.stat(directory).st_mode)
    assert os.listdir(directory) == ["inner.tif"]
    assert errno_of(directory.read_bytes) == errno.EISDIR
    np.testing.assert_array_equal(tifffile.imread(directory / "inner.tif"), broken_mount.good)
    assert not _log_lines(broken_mount, "dir.tif")


@pytest.mark.parametrize("name", ["fifo.tif", "fifo", "socket.tif"])
def test_fifos_and_sockets_are_not_shown(broken_mount, name):
    assert name not in os.listdir(broken_mount.path / "x2")
    view = broken_mount.path / "x2" / name
    assert guarded_errno(broken_mount, lambda: os.stat(view), f"stat {name}", HANG) \
        == errno.ENOENT
    assert guarded_errno(broken_mount, view.read_bytes, f"read {name}", HANG) == errno.ENOENT


@pytest.mark.parametrize("name", ["became_fifo.tif", "became_fifo.txt"])
def test_file_replaced_by_a_fifo_after_lookup_does_not_block(broken_mount, name):
    """Opening a fifo blocks until a writer comes: the mount must never do that."""
    source = broken_mount.source / name
    source.write_bytes((broken_mount.source / "good.tif").read_bytes())
    view = broken_mount.path / "x2" / name
    os.stat(view)  # looked up: the kernel will not ask again for a minute
    source.unlink()
    os.mkfifo(source)
    try:
        code = errno_of(view.read_bytes, REQUEST_HANG, f"reading {name}, now a fifo")
    except AssertionError:
        _unblock_reader(source)  # let the daemon's thread go on, then fail
        raise
    finally:
        source.unlink()
    assert code in (errno.ENOENT, errno.EIO)
    assert broken_mount.process.poll() is None


def test_broken_inputs_keep_daemon_memory_bounded(broken_mount):
    """After reading every broken input (files claiming 1e9 x 1e9 pixels, absurd tag
    counts...), the daemon's peak memory grew by less than half its band cache."""
    for name in set(BROKEN) - set(LOOPS):
        guarded_errno(broken_mount, (broken_mount.path / "x2" / name).read_bytes, name, HANG)
    grown = memory_kib(broken_mount.process.pid)["VmHWM"] - broken_mount.start_memory["VmRSS"]
    assert grown < 128 << 10, f"the daemon's peak memory grew by {grown >> 10} MiB"


# -- the same faults without a mount, in the Python API
@pytest.mark.parametrize("name", LOOPS)
def test_open_view_of_an_ifd_loop_serves_its_pages_and_does_not_hang(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(BROKEN[name])
    code = ("import io, tifffile, tifffs\n"
            f"view = tifffs.open_view({str(path)!r}, 2)\n"
            "with tifffile.TiffFile(io.BytesIO(view.read(0, view.size))) as tif:\n"
            "    print(len(tif.pages))\n")
    result = python_in_subprocess(code, REQUEST_HANG, f"open_view({name})")
    assert result.returncode == 0, result.stderr[-2000:]
    assert int(result.stdout) == len(_pages_tifffile_reads(BROKEN[name]))


def test_open_view_of_a_fifo_fails_and_does_not_block(tmp_path):
    fifo = tmp_path / "fifo.tif"
    os.mkfifo(fifo)
    try:
        with pytest.raises((TifffsError, OSError)):
            call_with_timeout(lambda: open_view(str(fifo), 2), 10, "open_view(fifo)")
    finally:
        _unblock_reader(fifo)


def _unblock_reader(fifo: Path) -> None:
    """Let a reader blocked in opening ``fifo`` go on (ENXIO: there is none)."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass


def test_crafted_files_are_what_their_names_say():
    """So that the tests above mean something."""
    assert struct.unpack_from("<I", BROKEN["ifd_past_end.tif"], 4)[0] == 10**8
    with tifffile.TiffFile(io.BytesIO(BROKEN["huge_1e9_x_1e9.tif"])) as tif:
        assert tif.pages.first.shape == (10**9, 10**9)
    for name in FAIL_ON_READ:
        with tifffile.TiffFile(io.BytesIO(BROKEN[name])) as tif:
            assert tif.pages.first.shape == (48, 64)
            if name in ("corrupt_jpegxr_header.tif", "corrupt_jpeg2000_size.tif",
                        "corrupt_jpeg_huge_frame.tif"):
                continue  # it would end pytest (SIGFPE) or take gigabytes; test_isolated.py
                # and test_jpegcheck.py check that it does
            with pytest.raises(Exception):  # noqa: B017  (whichever error tifffile raises)
                tif.asarray()
    chain = ifd_chain(tifffile_bytes(np.zeros((130, 4, 4), np.uint8)))
    looped = BROKEN["ifd_loop_after_100.tif"]
    assert struct.unpack_from("<I", looped, chain[-1].next_field)[0] == chain[110].offset


def test_decoder_errors_name_the_codec_in_words_a_user_reads(tmp_path):
    """imagecodecs' PNG decoder fails on a damaged chunk with a UnicodeDecodeError (it
    cannot word libpng's message): the log names the codec and the damage instead."""
    path = tmp_path / "png.tif"
    path.write_bytes(BROKEN["corrupt_png_chunk.tif"])
    view = open_view(str(path), 2)
    with pytest.raises(TifffsError, match=r"^page 0 segment 0: cannot decode \(PNG\): the "
                                          r"decoder failed on damaged data$"):
        view.read(0, view.size)


@pytest.mark.parametrize("message", ["0", "\x01\x02", "12 34"])
def test_a_decoder_message_without_words_is_worded_for_a_user(message):
    """What libpng's unwritten error buffer reads as, now and then (a CI run got "0")."""
    assert decoding_failure(COMPRESSION.PNG, imagecodecs.PngError(message)) == \
        "cannot decode (PNG): the decoder failed on damaged data"
    assert decoding_failure(COMPRESSION.PNG, imagecodecs.PngError("IDAT: bad CRC")) == \
        "cannot decode (PNG): IDAT: bad CRC"


@pytest.mark.parametrize("unit", [0, 4, 70000])
def test_resolution_unit_out_of_range_is_dropped(tmp_path, unit):
    """A ResolutionUnit outside the spec (found by the fuzzer: 70000 could not be
    written back as a SHORT) is served without a unit, never an error."""
    path = tmp_path / "unit.tif"
    path.write_bytes(gray8(t296=(4, 1, unit)))
    view = open_view(str(path), 2)
    with tifffile.TiffFile(io.BytesIO(view.read(0, view.size))) as tif:
        assert "ResolutionUnit" not in tif.pages.first.tags
        np.testing.assert_array_equal(tif.asarray(), reference_page(
            tifffile.imread(path), 2, "mean"))


@pytest.mark.parametrize("tag", [262, 277, 339])
def test_short_field_out_of_range_is_a_broken_source(tmp_path, tag):
    """Photometric, samples per pixel or sample format beyond a SHORT (found by the
    fuzzer on a bilevel page) is a broken source: one error, never a crash."""
    path = tmp_path / "short.tif"
    path.write_bytes(gray8(**{f"t{tag}": (4, 1, 70000)}))
    with pytest.raises(TifffsError):
        open_view(str(path), 2)
