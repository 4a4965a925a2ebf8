"""``--libfuse 3``: the same files through mfusepy and libfuse 3, and listings that carry
each entry's attributes (readdirplus), through real mounts."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tifffile

from conftest import mounted, wait_for
from tools import mount_stats, source_fds
from trees import listing_folder

pytestmark = pytest.mark.mount

HANG = 60.0


def _walk(root: Path) -> dict[str, tuple[int, ...]]:
    """(mode, size, mtime, inode) of every entry under ``root`` by relative path, or
    (errno,) for those whose ``stat`` fails (broken sources)."""
    found: dict[str, tuple[int, ...]] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            try:
                st = path.stat()
            except OSError as exc:
                found[str(path.relative_to(root))] = (exc.errno or -1,)
                continue
            found[str(path.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns,
                                                  st.st_ino)
    return found


def test_libfuse3_shows_the_same_tree_and_bytes_as_libfuse2(sources, mount, tmp_path):
    root, _ = sources
    with mounted(root, tmp_path, "--libfuse", "3") as mount3:
        assert "libfuse 3" in mount3.log_text()
        for view in ("x4", "x8"):
            listed2, listed3 = _walk(mount.path / view), _walk(mount3.path / view)
            assert listed3 == listed2
            # every source entry is there (two empty listings would be equal too)
            assert sorted(listed3) == sorted(str(p.relative_to(root)) for p in root.rglob("*"))
            for relative, attributes in listed3.items():
                if len(attributes) > 1 and not os.path.isdir(mount3.path / view / relative):
                    assert (mount3.path / view / relative).read_bytes() == \
                        (mount.path / view / relative).read_bytes(), relative


def test_ls_l_takes_attributes_from_the_listing_not_a_lookup_per_file(tmp_path):
    source = listing_folder(tmp_path / "src", files=300)
    with mounted(source, tmp_path, "--libfuse", "3") as mount:
        folder = mount.path / "x4" / "many"
        before = mount_stats(mount)
        listing = subprocess.run(["ls", "-l", "--time-style=+%s", str(folder)],
                                 capture_output=True, text=True, check=True).stdout
        after = mount_stats(mount)
        # the folders of the path are looked up; the 302 entries come with the listing
        assert after["getattrs"] - before["getattrs"] < 10, after["getattrs"]
        assert after["listed_attributes"] - before["listed_attributes"] >= 302
        sizes = {line.split()[-1]: int(line.split()[4]) for line in listing.splitlines()[1:]}
        assert len(sizes) == 302
        for name, size in sizes.items():
            if name.endswith(".tif"):
                assert len((folder / name).read_bytes()) == size, name
        assert sizes["notes.txt"] == len("notes\n")


def test_find_gets_every_entry_with_its_type(tmp_path):
    source = listing_folder(tmp_path / "src", files=300)
    with mounted(source, tmp_path, "--libfuse", "3") as mount:
        found = subprocess.run(["find", str(mount.path / "x4"), "-type", "f"],
                               capture_output=True, text=True, check=True).stdout.split()
        assert sorted(os.path.basename(p) for p in found) == \
            sorted(p.name for p in (source / "many").iterdir() if p.is_file())
        with os.scandir(mount.path / "x4" / "many") as entries:
            types = {e.name: (e.is_file(follow_symlinks=False),
                              e.is_dir(follow_symlinks=False)) for e in entries}
        assert types["notes.txt"] == (True, False) and types["sub"] == (False, True)


def test_a_new_listing_reads_the_folder_again(tmp_path):
    source = listing_folder(tmp_path / "src", files=20)
    with mounted(source, tmp_path, "--libfuse", "3", source_is_constant=False) as mount:
        folder = mount.path / "x4" / "many"
        first = set(os.listdir(folder))
        (source / "many" / "f003.tif").unlink()
        tifffile.imwrite(source / "many" / "late.tif", np.zeros((8, 8), np.uint16))
        wait_for(lambda: set(os.listdir(folder)) == first - {"f003.tif"} | {"late.tif"},
                 HANG, "the changed listing")
        assert tifffile.imread(folder / "late.tif").shape == (2, 2)


def test_a_replaced_source_is_listed_with_its_new_size(tmp_path):
    source = listing_folder(tmp_path / "src", files=3)
    with mounted(source, tmp_path, "--libfuse", "3", source_is_constant=False) as mount:
        folder = mount.path / "x4" / "many"
        old = {e.name: e.stat().st_size for e in os.scandir(folder) if e.is_file()}
        tifffile.imwrite(source / "many" / "f001.tif", np.zeros((5, 64, 64), np.uint16))

        def listed_size() -> int:
            return {e.name: e.stat().st_size for e in os.scandir(folder)}["f001.tif"]

        wait_for(lambda: listed_size() != old["f001.tif"], HANG, "the new size")
        assert len((folder / "f001.tif").read_bytes()) == listed_size()
        assert tifffile.imread(folder / "f001.tif").shape == (5, 16, 16)


def test_no_source_descriptor_is_left_after_a_listing(tmp_path):
    source = listing_folder(tmp_path / "src", files=100)
    with mounted(source, tmp_path, "--libfuse", "3") as mount:
        subprocess.run(["ls", "-lR", str(mount.path)], capture_output=True, check=True)
        assert source_fds(mount.process.pid, source) == []


def test_a_large_folder_on_libfuse_2_hints_at_libfuse_3_once(tmp_path):
    folder = tmp_path / "src" / "big"
    folder.mkdir(parents=True)
    for i in range(5001):
        (folder / f"n{i}.txt").touch()
    with mounted(tmp_path / "src", tmp_path) as mount:
        assert len(os.listdir(mount.path / "x4" / "big")) == 5001
        assert len(os.listdir(mount.path / "x2" / "big")) == 5001
        hints = [line for line in mount.log_text().splitlines() if "--libfuse 3" in line]
        assert len(hints) == 1 and "5001 entries" in hints[0], hints
