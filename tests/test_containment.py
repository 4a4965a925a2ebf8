"""A symlink swapped while files are opened never leads a read out of SOURCE (issue 11 f)."""

from __future__ import annotations

import errno
import io
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import tifffile

from conftest import mounted

pytestmark = pytest.mark.mount

SWAPS = 3000


def _swap_link(link: Path, targets: tuple[Path, Path], stop: threading.Event) -> None:
    """Point ``link`` at each target in turn, atomically (rename over it)."""
    temporary = link.with_name(link.name + ".swap")
    i = 0
    while not stop.is_set() and i < SWAPS:
        os.symlink(targets[i % 2], temporary)
        os.replace(temporary, link)
        i += 1


@pytest.mark.parametrize("name", ["link.tif", "link.txt"])
def test_a_link_swapped_during_opens_never_reads_outside(tmp_path, name):
    source, outside = tmp_path / "src", tmp_path / "outside"
    source.mkdir()
    outside.mkdir()
    suffix = Path(name).suffix
    inside_file, outside_file = source / f"inside{suffix}", outside / f"secret{suffix}"
    if suffix == ".tif":
        tifffile.imwrite(inside_file, np.zeros((8, 8), np.uint8), photometric="minisblack")
        tifffile.imwrite(outside_file, np.full((8, 8), 255, np.uint8),
                         photometric="minisblack")
    else:
        inside_file.write_bytes(b"inside\n")
        outside_file.write_bytes(b"SECRET\n")
    link = source / name
    os.symlink(inside_file, link)
    stop = threading.Event()
    with mounted(source, tmp_path, source_is_constant=False) as mount:
        view = mount.path / "x2" / name
        swapper = threading.Thread(target=_swap_link, args=(link, (outside_file, inside_file),
                                                            stop))
        swapper.start()
        reads = refused = 0
        try:
            while swapper.is_alive():
                try:
                    data = view.read_bytes()
                except OSError as exc:
                    assert exc.errno in (errno.ENOENT, errno.EIO), exc
                    refused += 1
                    continue
                reads += 1
                if suffix == ".tif":
                    pixels = tifffile.imread(io.BytesIO(data))
                    assert not pixels.any(), "read the file outside SOURCE"
                else:
                    assert data == b"inside\n", "read the file outside SOURCE"
        finally:
            stop.set()
            swapper.join()
        assert reads > 0 and refused > 0, (reads, refused)
