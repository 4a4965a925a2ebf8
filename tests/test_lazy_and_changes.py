"""Laziness (what a stat and a first-page read touch of the source), changing sources,
permissions."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import tifffile

from conftest import mounted, wait_for
from tifffs import open_view
from tools import evict, resident_bytes

pytestmark = pytest.mark.mount

LIGHTSHEET_SHAPE = (101, 2048, 2048)


@pytest.fixture(scope="module")
def lightsheet(tmp_path_factory) -> Path:
    """101 x 2048 x 2048 uint16, uncompressed, one strip per page (808 MiB)."""
    root = tmp_path_factory.mktemp("lightsheet")
    page = np.arange(2048 * 2048, dtype=np.uint16).reshape(2048, 2048)
    with tifffile.TiffWriter(root / "stack.tif") as writer:
        for z in range(LIGHTSHEET_SHAPE[0]):
            writer.write(page + z, photometric="minisblack", contiguous=True)
    return root


def test_stat_and_first_page_touch_a_few_percent_of_the_source(lightsheet, tmp_path):
    source = lightsheet / "stack.tif"
    size = source.stat().st_size
    with mounted(lightsheet, tmp_path) as mount:
        view = mount.path / "x4" / "stack.tif"
        evict(source)
        assert resident_bytes(source) < size * 0.001
        view_size = os.stat(view).st_size
        after_stat = resident_bytes(source)
        with tifffile.TiffFile(view) as tif:
            first = tif.pages.first.asarray()
            assert len(tif.pages) == LIGHTSHEET_SHAPE[0]
        after_first_page = resident_bytes(source)
    print(f"source {size} B; view {view_size} B; resident after stat {after_stat} B "
          f"({after_stat / size:.2%}), after page 1 {after_first_page} B "
          f"({after_first_page / size:.2%})")
    assert first.shape == (512, 512)
    assert after_stat < size * 0.01
    assert after_first_page < size * 0.04  # page 1 alone is 1/101 = 0.99 %


def test_changed_source_is_reread(tmp_path):
    source_dir = tmp_path / "src"
    source_dir.mkdir()
    path = source_dir / "live.tif"
    first = np.full((2, 64, 64), 10, dtype=np.uint16)
    tifffile.imwrite(path, first, photometric="minisblack")
    with mounted(source_dir, tmp_path / "m", source_is_constant=False) as mount:
        view = mount.path / "x4" / "live.tif"
        np.testing.assert_array_equal(tifffile.imread(view), first[:, ::4, ::4])
        old_size = os.stat(view).st_size
        # replaced by rename, with a different size
        second = np.full((3, 80, 48), 20, dtype=np.uint16)
        tifffile.imwrite(source_dir / "tmp.tif", second, photometric="minisblack")
        os.rename(source_dir / "tmp.tif", path)
        wait_for(lambda: os.stat(view).st_size != old_size, 5, "the new size")
        data = view.read_bytes()
        assert data == open_view(str(path), 4).read(0, 1 << 30)
        np.testing.assert_array_equal(tifffile.imread(view), second[:, ::4, ::4])
        # rewritten in place with the same size: a new mtime is a new version
        third = np.full((3, 80, 48), 30, dtype=np.uint16)
        tifffile.imwrite(path, third, photometric="minisblack")
        stamp = os.stat(path).st_mtime_ns + 5_000_000_000
        os.utime(path, ns=(stamp, stamp))
        wait_for(lambda: os.stat(view).st_mtime_ns == stamp, 5, "the new mtime")
        np.testing.assert_array_equal(tifffile.imread(view), third[:, ::4, ::4])


def test_open_view_of_a_source_truncated_meanwhile_gives_eio(tmp_path):
    source_dir = tmp_path / "src"
    source_dir.mkdir()
    path = source_dir / "shrinks.tif"
    tifffile.imwrite(path, np.ones((4, 1024, 1024), dtype=np.uint16), photometric="minisblack")
    with mounted(source_dir, tmp_path / "m", source_is_constant=False) as mount:
        view = mount.path / "x2" / "shrinks.tif"
        with open(view, "rb") as handle:
            handle.read(4096)
            os.truncate(path, 4096)
            with pytest.raises(OSError) as excinfo:
                handle.read()
            assert excinfo.value.errno == errno.EIO
        assert "shrinks.tif" in mount.log_text()


def test_unreadable_source_gives_eacces():
    # a world-traversable directory: pytest's tmp_path is private to its owner
    work = Path(tempfile.mkdtemp(prefix="tifffs-eacces-"))
    try:
        os.chmod(work, 0o755)
        source_dir = work / "src"
        source_dir.mkdir(mode=0o755)
        secret = source_dir / "secret.tif"
        tifffile.imwrite(secret, np.ones((16, 16), dtype=np.uint8))
        os.chmod(secret, 0o600)
        public = source_dir / "public.tif"
        tifffile.imwrite(public, np.ones((16, 16), dtype=np.uint8))
        os.chmod(public, 0o644)
        (work / "m").mkdir(mode=0o755)
        root = os.geteuid() == 0
        options = ("-o", "allow_other") if root else ()
        with mounted(source_dir, work / "m", *options, source_is_constant=False) as mount:
            script = ("import sys\n"
                      "try:\n    open(sys.argv[1], 'rb').read()\n"
                      "except PermissionError:\n    sys.exit(13)\n"
                      "open(sys.argv[2], 'rb').read()\n")
            command = [sys.executable, "-c", script, str(mount.path / "x2" / "secret.tif"),
                       str(mount.path / "x2" / "public.tif")]
            if root:  # another user reads; the kernel applies the source file's mode
                setpriv = shutil.which("setpriv")
                assert setpriv, "setpriv (util-linux) is needed: run scripts/test"
                command = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups",
                           *command]
            else:  # the daemon itself may not read the file
                os.chmod(secret, 0o000)
            result = subprocess.run(command, capture_output=True, text=True, check=False)
            assert result.returncode == 13, result.stderr
    finally:
        shutil.rmtree(work)
