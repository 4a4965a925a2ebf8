"""``ViewTree`` and the kernel-cache policy without FUSE: paths, listings, containment,
attributes, handles, the stats file (issue 13: the core is testable without a mount)."""

from __future__ import annotations

import errno
import io
import os
import stat

import numpy as np
import pytest
import tifffile

from tifffs.kernel_cache import KernelCachePolicy
from tifffs.pages import SourceVersion
from tifffs.setup import build_tree
from tifffs.tree import STATS_DIR_INO, view_inode, view_inodes
from tifffs.views import parse_view

VIEWS = (parse_view("x2", "mean"), parse_view("x4-max", "mean"))


@pytest.fixture
def tree(tmp_path):
    source = tmp_path / "src"
    (source / "run").mkdir(parents=True)
    tifffile.imwrite(source / "run" / "a.tif", np.arange(2 * 30 * 20, dtype=np.uint16)
                     .reshape(2, 30, 20), photometric="minisblack")
    (source / "run" / "notes.txt").write_text("notes\n")
    os.mkfifo(source / "run" / "fifo.tif")
    outside = tmp_path / "outside.tif"
    outside.write_bytes((source / "run" / "a.tif").read_bytes())
    os.symlink(outside, source / "run" / "out.tif")
    os.symlink(source / "run", source / "run" / "loop")
    return build_tree(str(source), VIEWS, 1 << 20, None)


def test_the_root_lists_the_views_and_the_stats_folder(tree):
    names = [entry.name for entry in tree.list("/")]
    assert names == [".", "..", ".tifffs", "x2", "x4-max"]
    assert stat.S_ISDIR(tree.attributes("/x2")["st_mode"])


def test_a_view_folder_lists_files_and_folders_with_types_not_fifos_or_links_out(tree):
    entries = {entry.name: entry.attributes for entry in tree.list("/x2/run")}
    assert set(entries) == {".", "..", "a.tif", "notes.txt"}  # no fifo, no link out/loop
    assert entries["a.tif"]["st_mode"] == stat.S_IFREG
    assert entries["a.tif"]["st_ino"] == tree.attributes("/x2/run/a.tif")["st_ino"]


def test_paths_outside_the_tree_are_not_found(tree):
    for path in ("/x3/run/a.tif", "/x2/run/../run/a.tif", "/x2/run/out.tif",
                 "/x2/run/fifo.tif", "/x2/run/missing.tif"):
        with pytest.raises(OSError) as raised:
            tree.attributes(path)
        assert raised.value.errno == errno.ENOENT, path


def test_a_view_has_the_size_of_its_bytes_and_the_source_mode(tree):
    attrs = tree.attributes("/x2/run/a.tif")
    handle = tree.open("/x2/run/a.tif")
    try:
        data = b"".join(handle.read_pieces(0, 1 << 20))
        assert len(data) == attrs["st_size"] == handle.attributes()["st_size"]
        assert tifffile.imread(io.BytesIO(data)).shape == (2, 15, 10)
    finally:
        handle.close()
    source = os.stat(os.path.join(tree.root, "run", "a.tif"))
    assert attrs["st_mode"] == source.st_mode and attrs["st_mtime"] == source.st_mtime_ns
    assert tree.catalog.held_sources() == 0


def test_other_files_pass_through_and_inodes_differ_per_view(tree):
    handle = tree.open("/x4-max/run/notes.txt")
    try:
        assert b"".join(handle.read_pieces(0, 100)) == b"notes\n"
    finally:
        handle.close()
    st = os.stat(os.path.join(tree.root, "run", "notes.txt"))
    assert tree.attributes("/x2/run/notes.txt")["st_ino"] == view_inode(st.st_dev, st.st_ino,
                                                                         "x2")
    assert tree.attributes("/x2/run/notes.txt")["st_ino"] != \
        tree.attributes("/x4-max/run/notes.txt")["st_ino"]


def test_listed_inodes_equal_the_inodes_of_a_stat(tree):
    listed = {entry.name: entry.attributes["st_ino"] for entry in tree.list("/x2/run")
              if entry.attributes}
    assert sorted(listed) == ["a.tif", "notes.txt"]
    assert listed == {name: tree.attributes(f"/x2/run/{name}")["st_ino"] for name in listed}
    rng = np.random.default_rng(5)
    for device in (0, 2049, 2**40 + 7, 2**63):
        inodes = [0, 1, 2**64 - 1, *map(int, rng.integers(0, 2**63, 500, dtype=np.int64))]
        assert view_inodes(device, inodes, "x4") == [view_inode(device, i, "x4")
                                                     for i in inodes]


def test_a_listing_gives_the_source_names_as_bytes_and_links_their_targets_inodes(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    odd = os.fsdecode(b"caf\xe9.tif")  # not UTF-8
    tifffile.imwrite(source / odd, np.zeros((6, 4), np.uint8))
    (source / "sub").mkdir()
    os.symlink(odd, source / "link.tif")
    os.symlink("sub", source / "sub_link")
    tree = build_tree(str(source), VIEWS, 1 << 20, None)
    listing = tree.list("/x2")
    assert sorted(listing.names) == [b".", b"..", b"caf\xe9.tif", b"link.tif", b"sub",
                                     b"sub_link"]
    assert listing.names[:2] == [b".", b".."] and listing.attributes(0) is None
    for position, name in enumerate(listing.names[2:], start=2):
        path = "/x2/" + os.fsdecode(name)
        attributes = tree.attributes(path)
        assert listing.attributes(position) == {"st_mode": stat.S_IFMT(attributes["st_mode"]),
                                                "st_ino": attributes["st_ino"]}, path
    entries = {entry.name: entry.attributes for entry in listing}
    assert entries[odd] == listing.attributes(listing.names.index(b"caf\xe9.tif"))
    assert entries["link.tif"]["st_ino"] == entries[odd]["st_ino"]  # the target's inode


def test_folders_cannot_be_opened_and_the_stats_file_counts(tree):
    with pytest.raises(IsADirectoryError):
        tree.open("/x2")
    tree.attributes("/x2/run/a.tif")
    text = b"".join(tree.open("/.tifffs/stats").read_pieces(0, 1 << 16)).decode()
    assert "getattrs 1" in text and "sources_open 0" in text
    assert tree.attributes("/.tifffs")["st_ino"] == STATS_DIR_INO


def test_statfs_reports_the_source_filesystem(tree):
    figures, source = tree.statfs(), os.statvfs(tree.root)
    assert figures["f_blocks"] == source.f_blocks and figures["f_bavail"] == source.f_bavail


def test_the_kernel_keeps_one_version_per_path_in_its_cache():
    policy = KernelCachePolicy()
    old, new = SourceVersion(1, 2, 3, 4, 5), SourceVersion(1, 2, 9, 9, 9)
    assert policy.opened("/a", old) == (False, False)  # nothing cached yet
    policy.closed("/a", old)
    assert policy.opened("/a", old) == (False, True)  # the same version: keep its pages
    assert policy.opened("/a", new) == (True, True)  # old still open: read around
    policy.closed("/a", old)
    policy.closed("/a", new)
    assert policy.opened("/a", new) == (False, False)  # alone now: drop the old pages


def test_a_handle_of_another_version_than_the_size_given_reads_directly():
    policy = KernelCachePolicy()
    old, new = SourceVersion(1, 2, 3, 4, 5), SourceVersion(1, 2, 9, 9, 9)
    policy.reported("/a", old)
    assert policy.opened("/a", new).direct_io
    policy.closed("/a", new)
    policy.reported("/a", new)
    assert not policy.opened("/a", new).direct_io


def test_a_read_in_pieces_is_copied_whole_into_the_reply_buffer(tree):
    """What the FUSE binding does with a read: each piece (header bytes, slices of
    rendered bands) copied in order into libfuse's buffer; the same bytes as joined."""
    import ctypes

    from tifffs.fs import copy_pieces

    handle = tree.open("/x2/run/a.tif")
    try:
        size = handle.attributes()["st_size"]
        pieces = handle.read_pieces(100, size)  # from the header into the pixels
        assert len(pieces) >= 2 and isinstance(pieces[0], bytes)
        reply = ctypes.create_string_buffer(size)
        pointer = ctypes.cast(reply, ctypes.POINTER(ctypes.c_byte))
        copied = copy_pieces(pieces, pointer, size)
        assert copied == size - 100
        assert reply.raw[:copied] == b"".join(pieces) == b"".join(handle.read_pieces(0, size))[100:]
        with pytest.raises(ValueError):
            copy_pieces(pieces, pointer, copied - 1)
    finally:
        handle.close()
