"""Security: read-only always, symlinks that leave SOURCE, hostile names, other users
(``allow_other`` and ``default_permissions``) and a daemon that runs unprivileged.

The tests that switch users run as root and use uid/gid 65534 through ``setpriv``; their
files live in a world-traversable directory (pytest's tmp_path is private to root).
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import stat
import struct
import subprocess
import sys
import unicodedata
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from conftest import MOUNT_TIMEOUT, fusermount, mounted, unmount, wait_for, write_stack
from crafted import broken_files
from robustness import (
    NOBODY,
    as_nobody,
    clear_mount,
    errno_of,
    mounted_filesystem,
    world_readable_workdir,
)
from tifffs import open_view
from tools import mount_table

pytestmark = pytest.mark.mount


def _tif(path: Path, seed: int = 0, shape: tuple[int, ...] = (2, 40, 30)) -> bytes:
    """Write a small uint16 stack at ``path``; return the bytes of its x2 view."""
    array = np.random.default_rng(seed).integers(0, 65535, shape, dtype=np.uint16)
    write_stack(path, array)
    view = open_view(str(path), 2)
    return view.read(0, view.size)


# -- read-only, and SOURCE never opened for writing
class _Inotify:
    """Every inotify event under some directories (libc through ctypes; no package)."""

    IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE, IN_CLOSE_NOWRITE = 0x2, 0x4, 0x8, 0x10
    IN_OPEN, IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x20, 0x40, 0x80, 0x100, 0x200
    WRITES: ClassVar[dict[int, str]] = {IN_MODIFY: "modified", IN_ATTRIB: "attributes changed",
              IN_CLOSE_WRITE: "closed after opening for writing", IN_MOVED_FROM: "moved",
              IN_MOVED_TO: "moved", IN_CREATE: "created", IN_DELETE: "deleted"}

    def __init__(self, root: Path) -> None:
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0, os.strerror(ctypes.get_errno())
        self.watches: dict[int, Path] = {}
        mask = 0xFFF  # all file events
        for directory in [root, *[p for p in root.rglob("*") if p.is_dir()
                                  and not p.is_symlink()]]:
            wd = self.libc.inotify_add_watch(self.fd, os.fsencode(directory), mask)
            assert wd >= 0, os.strerror(ctypes.get_errno())
            self.watches[wd] = directory

    def events(self) -> list[tuple[Path, int]]:
        found = []
        while True:
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return found
            at = 0
            while at < len(data):
                wd, mask, _, length = struct.unpack_from("iIII", data, at)
                name = data[at + 16:at + 16 + length].rstrip(b"\0")
                found.append((self.watches[wd] / os.fsdecode(name), mask))
                at += 16 + length

    def close(self) -> None:
        os.close(self.fd)


def test_source_is_never_opened_for_writing(sources, tmp_path):
    """inotify reports every open, and whether it was for writing, under SOURCE."""
    root, _ = sources
    watcher = _Inotify(root)
    try:
        with mounted(root, tmp_path) as mount:
            for dirpath, _, files in os.walk(mount.path):
                for name in files:
                    try:
                        Path(dirpath, name).read_bytes()
                    except OSError as exc:
                        assert exc.errno == errno.EIO, (dirpath, name, exc)
        events = watcher.events()
    finally:
        watcher.close()
    opened = [path for path, mask in events if mask & _Inotify.IN_OPEN]
    assert len(opened) >= len(list(root.rglob("*.tif"))), "the watcher saw no opens"
    writes = [(str(path), what) for path, mask in events
              for bit, what in _Inotify.WRITES.items() if mask & bit]
    assert not writes, writes[:10]


def test_every_kind_of_write_fails_on_every_kind_of_path(sources, mount):
    assert "ro" in _mount_options(mount.path)
    paths = [mount.path, mount.path / "x2", mount.path / "x2" / "u8_multi_odd.tif",
             mount.path / "x2" / "run1" / "notes.txt", mount.path / ".tifffs",
             mount.path / ".tifffs" / "stats"]
    for path in paths:
        for what, attempt in _write_attempts(path, mount.path).items():
            code = errno_of(attempt)
            assert code in (errno.EROFS, errno.EPERM), (str(path), what, code)


def _write_attempts(path: Path, mountpoint: Path) -> dict[str, Callable[[], object]]:
    """Every kind of write on ``path`` of the mount, by name."""
    regular = path.is_file()
    where = path.parent if regular else path  # a directory of the mount
    attempts = {
        "chmod": lambda: os.chmod(path, 0o777),
        "chown": lambda: os.chown(path, 1, 1),
        "utime": lambda: os.utime(path, (0, 0)),
        "setxattr": lambda: os.setxattr(path, "user.tifffs", b"x"),
        "link": lambda: os.link(path, mountpoint / "x2" / "hardlink"),
        "mknod": lambda: os.mknod(where / "node", 0o600 | stat.S_IFIFO),
        "mkdir": lambda: os.mkdir(where / "newdir"),
        "symlink": lambda: os.symlink("x", where / "newlink"),
        "create": lambda: os.open(where / "new.tif", os.O_WRONLY | os.O_CREAT),
    }
    if regular:
        attempts.update({
            "open O_RDWR": lambda: os.open(path, os.O_RDWR),
            "open O_WRONLY|O_APPEND": lambda: os.open(path, os.O_WRONLY | os.O_APPEND),
            "open O_RDONLY|O_TRUNC": lambda: os.open(path, os.O_RDONLY | os.O_TRUNC),
            "truncate": lambda: os.truncate(path, 0),
        })
    return attempts


def _mount_options(mountpoint: Path) -> set[str]:
    for entry in mount_table():
        if entry.point == str(mountpoint):
            return set(entry.options)
    raise AssertionError(f"{mountpoint} is not mounted")


# -- symbolic links
def test_symlinks_are_followed_inside_source_only(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    _tif(outside / "secret.tif", seed=1)
    (outside / "secret.txt").write_text("secret")
    source = tmp_path / "src"
    inside = _tif(source / "inside" / "a.tif")
    (source / "inside" / "notes.txt").write_text("notes")
    links = {
        "link_in.tif": "inside/a.tif",  # relative, inside: followed
        "abs_link_in.tif": str(source / "inside" / "a.tif"),  # absolute, inside
        "dir_in": "inside",
        "link_out.tif": str(outside / "secret.tif"),  # leave SOURCE: hidden
        "rel_out.tif": "../outside/secret.tif",
        "text_out.txt": str(outside / "secret.txt"),
        "dir_out": str(outside),
        "rel_dir_out": "../outside",
        "root_out": "/",
        "dangling.tif": "nowhere.tif",
        "loop_a": "loop_b",
        "loop_b": "loop_a",
    }
    for name, target in links.items():
        os.symlink(target, source / name)
    os.symlink("../../outside", source / "inside" / "up_out")
    followed = {"link_in.tif", "abs_link_in.tif", "dir_in"}
    with mounted(source, tmp_path / "m") as mount:
        x2 = mount.path / "x2"
        assert sorted(os.listdir(x2)) == sorted(["inside", *followed])
        assert sorted(os.listdir(x2 / "inside")) == ["a.tif", "notes.txt"]
        for name in ("link_in.tif", "abs_link_in.tif"):
            assert (x2 / name).read_bytes() == inside
        assert sorted(os.listdir(x2 / "dir_in")) == ["a.tif", "notes.txt"]
        assert (x2 / "dir_in" / "a.tif").read_bytes() == inside
        hidden = [x2 / name for name in set(links) - followed] + [
            x2 / "dir_out" / "secret.tif", x2 / "rel_dir_out" / "secret.txt",
            x2 / "inside" / "up_out", x2 / "inside" / "up_out" / "secret.tif",
            x2 / "root_out" / "etc" / "passwd"]
        for path in hidden:
            code = errno_of(partial(os.stat, path))
            assert code in (errno.ENOENT, errno.ELOOP), (str(path), code)
            assert errno_of(path.read_bytes) in (errno.ENOENT, errno.ELOOP), str(path)
        assert mount.process.poll() is None


def test_symlinks_to_directories_above_them_are_not_listed(tmp_path):
    """Recursive tools (find, cp -r, rsync) would descend into such a link forever."""
    source = tmp_path / "src"
    _tif(source / "a" / "one.tif")
    _tif(source / "b" / "two.tif")
    os.symlink(".", source / "self")
    os.symlink("..", source / "a" / "parent")
    os.symlink("../b", source / "a" / "to_b")  # fine on its own ...
    os.symlink("../a", source / "b" / "to_a")  # ... but a/to_b/to_a is a/ again
    with mounted(source, tmp_path / "m") as mount:
        x2 = mount.path / "x2"
        assert sorted(os.listdir(x2)) == ["a", "b"]
        assert sorted(os.listdir(x2 / "a")) == ["one.tif", "to_b"]
        assert sorted(os.listdir(x2 / "a" / "to_b")) == ["two.tif"]
        assert sorted(os.listdir(x2 / "b")) == ["to_a", "two.tif"]
        # named explicitly, they still work
        assert (x2 / "self" / "a" / "one.tif").read_bytes() == \
            (x2 / "a" / "one.tif").read_bytes()
        # so a recursive walk ends
        walked = [Path(d, f) for d, _, files in os.walk(x2) for f in files]
        assert len(walked) == 4, walked


# -- names
ODD_NAMES = [
    "with space.tif", "new\nline.tif", "tab\there.tif", "quote'single.tif",
    'quote"double.tif', "back\\slash.tif", "caf\u00e9 nfc.tif",
    unicodedata.normalize("NFD", "caf\u00e9 nfd.tif"), "\u6570\u636e.tif", "emoji \U0001F52C.tif",
    "-leading-dash.tif", "percent %s %n.tif", "star*question?.tif", "colon:equals=comma,.tif",
    "a..b.tif", "...", "x2", ".hidden.tif", "UPPER.TIF", "trailing space .tif ",
    "a" * 251 + ".tif", "\u00e9" * 125 + "a.tif",  # 255 bytes (the second: 2 bytes a letter)
]
RAW_NAMES = [b"caf\xe9.tif", b"\xff\xfe raw.tif", b"dir\x80\x81"]


@pytest.mark.parametrize("libfuse", ["2", "3"])
def test_odd_and_non_utf8_names_are_served(tmp_path, libfuse):
    source = tmp_path / "src"
    source.mkdir()
    expected: dict[bytes, bytes] = {}
    for i, name in enumerate(ODD_NAMES):
        path = source / name
        if name.lower().endswith((".tif", ".tiff")):  # a view
            expected[os.fsencode(name)] = _tif(path, seed=i)
        else:  # passed through
            path.write_bytes(os.fsencode(name) * 3)
            expected[os.fsencode(name)] = path.read_bytes()
    for i, raw in enumerate(RAW_NAMES):
        path = os.path.join(os.fsencode(source), raw)
        if raw.endswith(b".tif"):
            expected[raw] = _tif(Path(os.fsdecode(path)), seed=100 + i)
        else:
            os.mkdir(path)
            inner = _tif(Path(os.fsdecode(path)) / "inner\xe9.tif", seed=200)
    assert max(len(name) for name in expected) == 255
    with mounted(source, tmp_path / "m", "--libfuse", libfuse) as mount:
        x2 = os.fsencode(mount.path / "x2")
        listed = set(os.listdir(x2))
        assert listed == set(expected) | {b"dir\x80\x81"}
        # sizes as a listing with attributes gives them (readdirplus with libfuse 3)
        with os.scandir(x2) as entries:
            sizes = {entry.name: entry.stat().st_size for entry in entries}
        assert all(sizes[name] == len(data) for name, data in expected.items())
        for name, data in expected.items():
            path = os.path.join(x2, name)
            with open(path, "rb") as handle:
                assert handle.read() == data, name
            assert os.stat(path).st_size == len(data)
        inner_path = os.path.join(x2, b"dir\x80\x81", os.fsencode("inner\xe9.tif"))
        with open(inner_path, "rb") as handle:
            assert handle.read() == inner
        # '..' never leaves the view: the kernel resolves it before tifffs sees a path
        assert os.stat(os.path.join(x2, b"..", b"x2", b"a..b.tif")).st_size > 0
        too_long = os.path.join(x2, b"a" * 256 + b".tif")
        assert errno_of(lambda: os.stat(too_long)) == errno.ENAMETOOLONG


def test_hostile_names_of_broken_files_give_one_escaped_log_line(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    names = [b"evil\nERROR forged line.tif", b"caf\xe9 broken.tif", b"bell\x07.tif"]
    for name in names:
        Path(os.fsdecode(os.path.join(os.fsencode(source), name))).write_bytes(
            broken_files()["truncated_half.tif"])
    with mounted(source, tmp_path / "m", source_is_constant=False) as mount:
        x2 = os.fsencode(mount.path / "x2")
        for name in names:
            for _ in range(2):
                assert errno_of(partial(os.stat, os.path.join(x2, name))) == errno.EIO
        log = mount.log.read_bytes()
        stderr = (tmp_path / "m" / "stderr.txt").read_bytes()
        stats = (mount.path / ".tifffs" / "stats").read_bytes()
    lines = log.decode("utf-8").splitlines()
    assert not any(line.startswith("ERROR forged") for line in lines), lines
    for escaped in ("evil\\nERROR forged line.tif", "caf\\xe9 broken.tif", "bell\\x07.tif"):
        assert len([line for line in lines if escaped in line]) == 1, (escaped, lines)
    assert b"Logging error" not in stderr and b"Traceback" not in stderr, stderr[-2000:]
    error_lines = [line for line in stats.decode().splitlines() if line.startswith("error ")]
    assert len(error_lines) == 3, error_lines


# -- other users
@pytest.fixture
def shared_tree():
    """SOURCE with files and directories of several modes, in a directory every user
    can traverse; the mountpoint too."""
    work = world_readable_workdir("tifffs-users-")
    try:
        source = work / "src"
        source.mkdir(mode=0o755)
        files = {"public.tif": 0o644, "secret.tif": 0o600, "group.tif": 0o640,
                 "acl_denied.tif": 0o644}
        views = {}
        for name, mode in files.items():
            views[name] = _tif(source / name)
            os.chmod(source / name, mode)
        os.chown(source / "group.tif", 0, NOBODY)
        # the mode lets everyone read it, an ACL entry denies uid 65534: the kernel
        # (which applies the mode only) lets that user through, the filesystem does not
        os.setxattr(source / "acl_denied.tif", "system.posix_acl_access", _acl_denying(NOBODY))
        (source / "private").mkdir(mode=0o700)
        _tif(source / "private" / "inside.tif")
        os.chmod(source / "private" / "inside.tif", 0o644)
        (work / "mnt").mkdir(mode=0o755)
        yield work, source, views
    finally:
        unmount(work / "mnt")
        shutil.rmtree(work)


def _acl_denying(uid: int) -> bytes:
    """A POSIX access ACL (the xattr's binary form): rw-r--r--, but nothing for ``uid``."""
    entries = [(0x01, 6, 0xFFFFFFFF), (0x02, 0, uid), (0x04, 4, 0xFFFFFFFF),
               (0x10, 4, 0xFFFFFFFF), (0x20, 4, 0xFFFFFFFF)]
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


READ_AS_NOBODY = """
import errno, os, sys
for path in sys.argv[1:]:
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        print(path, errno.errorcode[exc.errno])
    else:
        print(path, "ok", len(data))
"""


def _read_as_nobody(*paths: Path) -> dict[str, str]:
    result = subprocess.run(as_nobody([sys.executable, "-c", READ_AS_NOBODY,
                                       *map(str, paths)]),
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return {Path(line.split(" ")[0]).name: line.split(" ")[1]
            for line in result.stdout.splitlines()}


def test_without_allow_other_other_users_get_eacces(shared_tree):
    work, source, _ = shared_tree
    with mounted(source, work, source_is_constant=False) as mount:
        assert "allow_other" not in _mount_options(mount.path)
        seen = _read_as_nobody(mount.path / "x2" / "public.tif", mount.path / "x2")
        assert seen == {"public.tif": "EACCES", "x2": "EACCES"}
        # the user who mounted reads it
        assert len((mount.path / "x2" / "public.tif").read_bytes()) > 0


def test_with_allow_other_the_kernel_applies_each_files_mode(shared_tree):
    work, source, views = shared_tree
    with mounted(source, work, "-o", "allow_other", source_is_constant=False) as mount:
        options = _mount_options(mount.path)
        assert {"allow_other", "default_permissions", "ro"} <= options
        x2 = mount.path / "x2"
        seen = _read_as_nobody(x2 / "public.tif", x2 / "secret.tif", x2 / "group.tif",
                               x2 / "private" / "inside.tif")
        assert seen == {"public.tif": "ok", "secret.tif": "EACCES", "group.tif": "ok",
                        "inside.tif": "EACCES"}
        # root reads everything
        assert (x2 / "secret.tif").read_bytes() == views["secret.tif"]


# -- an unprivileged daemon
def test_daemon_runs_as_an_unprivileged_user(shared_tree):
    """tifffs started as uid 65534 on a mountpoint it owns (fusermount is setuid root),
    read by that user, unmounted by that user with fusermount -u. Files the kernel lets
    the reader open but the daemon may not read give EACCES and one log line."""
    work, source, views = shared_tree
    assert stat.S_IMODE(os.stat("/dev/fuse").st_mode) == 0o666, \
        "/dev/fuse must be crw-rw-rw- for unprivileged FUSE (libfuse 2 opens it itself): " \
        "run scripts/test, which sets it"
    mountpoint = work / "mnt"
    os.chown(mountpoint, NOBODY, NOBODY)
    logs = work / "logs"
    logs.mkdir()
    os.chown(logs, NOBODY, NOBODY)
    log = logs / "tifffs.log"
    daemon = subprocess.Popen(as_nobody([sys.executable, "-m", "tifffs", str(source),
                                         str(mountpoint), "-f", "--log-file", str(log)]),
                              stdin=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              cwd=Path(__file__).parent.parent)
    try:
        # root may not look into this mount: it is not root's
        wait_for(lambda: mounted_filesystem(mountpoint) == "fuse.tifffs", MOUNT_TIMEOUT,
                 "the mount", daemon, log)
        assert os.stat(f"/proc/{daemon.pid}").st_uid == NOBODY
        x2 = mountpoint / "x2"
        seen = _read_as_nobody(x2 / "public.tif", x2 / "group.tif", x2 / "secret.tif",
                               x2 / "private" / "inside.tif", x2 / "acl_denied.tif")
        assert seen == {"public.tif": "ok", "group.tif": "ok", "secret.tif": "EACCES",
                        "inside.tif": "EACCES", "acl_denied.tif": "EACCES"}
        copied = subprocess.run(as_nobody(["/bin/cat", str(x2 / "public.tif")]),
                                capture_output=True, timeout=60, check=False)
        assert copied.stdout == views["public.tif"]
        for _ in range(2):
            assert _read_as_nobody(x2 / "acl_denied.tif") == {"acl_denied.tif": "EACCES"}
        text = log.read_text()
        assert len([line for line in text.splitlines() if "acl_denied.tif" in line
                    and "EACCES" in line]) == 1, text
        result = subprocess.run(as_nobody([fusermount(), "-u", str(mountpoint)]),
                                capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0, result.stderr
        assert daemon.wait(timeout=MOUNT_TIMEOUT) == 0
        assert mounted_filesystem(mountpoint) is None
        assert "Traceback" not in log.read_text()
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        clear_mount(mountpoint)
