"""The metadata index (``tifffs.index``) and the catalog over it, without a mount."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import tifffile

from robustness import as_nobody, world_readable_workdir
from tifffs import catalog as catalog_module
from tifffs.catalog import Catalog
from tifffs.describe import describe
from tifffs.errors import BrokenSource
from tifffs.index import ENTRY_FORMAT, FILE_NAME, Index, open_index
from tifffs.pages import FileDescription, SourceVersion
from tifffs.render import RenderPool
from tifffs.setup import build_tree
from tifffs.views import parse_view
from tifffs.virtual import band_cache
from trees import listing_folder

X4 = parse_view("x4", "mean")


def _tiff(path: Path, pages: int = 3, seed: int = 0, **kwargs) -> Path:
    rng = np.random.default_rng(seed)
    tifffile.imwrite(path, rng.integers(0, 65535, (pages, 40, 30), dtype=np.uint16),
                     photometric="minisblack", **kwargs)
    return path


def _described(path: Path) -> FileDescription:
    fd = os.open(path, os.O_RDONLY)
    try:
        return describe(fd, os.fstat(fd).st_size, path.name)
    finally:
        os.close(fd)


def _catalog(index: Index | None) -> Catalog:
    return Catalog(band_cache(1 << 20), RenderPool(1), index)


def test_a_description_round_trips_through_the_index(tmp_path):
    path = _tiff(tmp_path / "a.tif", resolution=(2.0, 3.0), imagej=True,
                 metadata={"Ranges": (0.0, 100.0), "Labels": ["a", "b", "c"]})
    index = Index(str(tmp_path / "index"))
    version = SourceVersion.of(os.stat(path))
    description = _described(path)
    index.put(str(path), version, description.to_bytes(), None)
    index.flush()
    entry = Index(str(tmp_path / "index")).lookup(str(path), version)
    assert entry is not None and entry.error is None
    again = FileDescription.from_bytes(entry.description)
    assert again.metadata == description.metadata
    for page, other in zip(again.pages, description.pages, strict=True):
        assert page.to_json() == other.to_json()


@pytest.mark.parametrize("field", SourceVersion._fields)
def test_an_entry_is_used_only_when_every_field_of_the_stat_key_matches(tmp_path, field):
    index = Index(str(tmp_path / "index"))
    version = SourceVersion(1, 2, 3, 4, 5)
    index.put("/data/a.tif", version, b"description", None)
    index.put_size("/data/a.tif", version, "x4", 1234)
    index.flush()
    changed = version._replace(**{field: getattr(version, field) + 1})
    assert index.lookup("/data/a.tif", version) is not None
    assert index.lookup("/data/a.tif", changed) is None
    # sizes come with the version they were written for: the catalog serves a size only
    # for that version (test_a_size_of_another_version_of_the_file_is_not_served)
    assert index.sizes_of(["/data/a.tif"], "x4") == {"/data/a.tif": (tuple(version), 1234)}


def test_an_entry_of_another_tifffs_version_is_ignored(tmp_path):
    index = Index(str(tmp_path / "index"))
    version = SourceVersion(1, 2, 3, 4, 5)
    index.put("/data/a.tif", version, b"description", None)
    index.flush()
    with sqlite3.connect(index.path) as connection:
        connection.execute("UPDATE files SET format='0/0.0.0'")
    assert index.lookup("/data/a.tif", version) is None
    assert ENTRY_FORMAT != "0/0.0.0"


def test_the_catalog_uses_the_index_and_describes_a_changed_file_anew(tmp_path,
                                                                    monkeypatch):
    path = _tiff(tmp_path / "a.tif", pages=3)
    first = _catalog(Index(str(tmp_path / "index")))
    size = first.size(str(path), os.stat(path), X4)
    first.index.flush()
    opened = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda p, *a, **k: opened.append(p) or real_open(p, *a, **k))
    # a new catalog (a new mount) gets the size from the index, without opening the file
    assert _catalog(Index(str(tmp_path / "index"))).size(str(path), os.stat(path), X4) == size
    assert str(path) not in opened
    monkeypatch.undo()
    _tiff(path, pages=5, seed=1)  # rewritten: new size, mtime and ctime
    again = _catalog(Index(str(tmp_path / "index")))
    bigger = again.size(str(path), os.stat(path), X4)
    assert bigger > size
    reader = again.open(str(path), X4)
    try:
        assert len(reader.read(0, 1 << 30)) == bigger
    finally:
        again.close(reader)


def test_a_size_of_another_version_of_the_file_is_not_served(tmp_path):
    path = _tiff(tmp_path / "a.tif")
    true_size = _catalog(None).size(str(path), os.stat(path), X4)
    index = Index(str(tmp_path / "index"))
    index.put_size(str(path), SourceVersion.of(os.stat(path)), "x4", 12345)
    index.flush()
    assert _catalog(index).size(str(path), os.stat(path), X4) == 12345  # the row is used
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # the same bytes, a new mtime
    assert _catalog(index).size(str(path), os.stat(path), X4) == true_size
    index.close()


def test_a_touched_file_is_described_anew_without_an_index_lookup(tmp_path, monkeypatch):
    paths = [_tiff(tmp_path / f"{i}.tif", seed=i) for i in range(3)]
    first = _catalog(Index(str(tmp_path / "index")))
    sizes = [first.size(str(p), os.stat(p), X4) for p in paths]
    first.index.flush()
    st = os.stat(paths[0])
    os.utime(paths[0], ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # a stale row now
    index = Index(str(tmp_path / "index"))
    looked_up = []
    real_lookup = index.lookup
    monkeypatch.setattr(index, "lookup",
                        lambda path, version: looked_up.append(path) or real_lookup(path, version))
    again = _catalog(index)
    for path in paths:  # a new view name, so the sizes are computed from descriptions
        again.description(str(path), SourceVersion.of(os.stat(path)))
    assert looked_up == [str(p) for p in paths[1:]]  # the folder's versions told it apart
    assert [again.size(str(p), os.stat(p), X4) for p in paths] == sizes


def test_a_folder_larger_than_the_sizes_kept_in_memory_is_listed_again_from_the_index(
        tmp_path, monkeypatch):
    """A second ``ls -l`` in one mount of a folder of 100,000 files (more than the
    65,536 sizes kept in memory) described them all again: the folder's index rows had
    been read before this mount wrote them."""
    monkeypatch.setattr(catalog_module, "MAX_SIZES", 8)
    monkeypatch.setattr(catalog_module, "MAX_DESCRIPTIONS", 8)
    source = listing_folder(tmp_path / "src", files=30)
    tree = build_tree(str(source), (X4,), 1 << 20, str(tmp_path / "index"), 1)
    described = []
    real_describe = catalog_module.describe
    monkeypatch.setattr(catalog_module, "describe",
                        lambda fd, size, name: described.append(name) or
                        real_describe(fd, size, name))
    try:
        sizes = []
        for _ in range(2):  # two listings, each with a stat of every file
            names = [e.name for e in tree.list("/x4/many") if e.name.endswith(".tif")]
            sizes.append({n: tree.attributes(f"/x4/many/{n}")["st_size"] for n in names})
        assert sorted(described) == sorted(sizes[0]) and sizes[1] == sizes[0]
    finally:
        tree.catalog.shutdown()
        tree.catalog.index.close()


def test_flushes_while_other_threads_queue_rows_end_and_lose_nothing(tmp_path):
    """A listing flushes the index from one FUSE thread while stats in other folders
    queue rows from others: a flush must end, and every row reach the database."""
    index = Index(str(tmp_path / "index"))
    version = SourceVersion(1, 2, 3, 4, 5)
    queued = threading.Event()

    def queue_rows(worker: int) -> None:
        for i in range(2000):
            index.put_size(f"/src/d{worker}/f{i}.tif", version, "x4", i)
            queued.set()

    def flush_often() -> None:
        queued.wait(10)
        for _ in range(300):
            index.flush()

    threads = [threading.Thread(target=queue_rows, args=(w,)) for w in range(3)]
    threads.append(threading.Thread(target=flush_often))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads), "a flush never ended"
    index.close()
    with contextlib.closing(sqlite3.connect(tmp_path / "index" / FILE_NAME)) as connection:
        assert connection.execute("SELECT count(*) FROM sizes").fetchone() == (6000,)


def test_a_description_given_as_a_function_is_made_by_the_writer(tmp_path):
    index = Index(str(tmp_path / "index"))
    version = SourceVersion(1, 2, 3, 4, 5)

    def broken() -> bytes:
        raise RuntimeError("cannot serialise")

    index.put("/data/a.tif", version, lambda: b"made later", None, weight=10)
    index.put("/data/b.tif", version, broken, None, weight=10)
    index.flush()
    assert index.lookup("/data/a.tif", version) == (b"made later", None)
    assert index.lookup("/data/b.tif", version) is None  # that row alone is left out
    index.close()


def test_errors_are_kept_in_the_index_too(tmp_path):
    path = tmp_path / "broken.tif"
    path.write_bytes(b"II*\0" + b"\xff" * 100)
    catalog = _catalog(Index(str(tmp_path / "index")))
    with pytest.raises(BrokenSource):
        catalog.size(str(path), os.stat(path), X4)
    catalog.index.flush()
    entry = Index(str(tmp_path / "index")).lookup(str(path), SourceVersion.of(os.stat(path)))
    assert entry is not None and entry.error.startswith("BrokenSource:")


def test_a_corrupt_database_is_set_aside_with_one_log_line(tmp_path, caplog):
    folder = tmp_path / "index"
    folder.mkdir()
    (folder / FILE_NAME).write_bytes(b"this is not a database" * 100)
    index = open_index(str(folder))
    assert index is not None
    assert [r for r in caplog.records if "corrupt" in r.getMessage()]
    path = _tiff(tmp_path / "a.tif")
    assert _catalog(index).size(str(path), os.stat(path), X4) > 0
    assert any(name.startswith(FILE_NAME + ".corrupt") for name in os.listdir(folder))


def test_a_truncated_database_never_gives_a_wrong_size(tmp_path):
    path = _tiff(tmp_path / "a.tif")
    expected = _catalog(None).size(str(path), os.stat(path), X4)
    index = Index(str(tmp_path / "index"))
    _catalog(index).size(str(path), os.stat(path), X4)
    index.close()
    database = tmp_path / "index" / FILE_NAME
    database.write_bytes(database.read_bytes()[:1000])
    index = open_index(str(tmp_path / "index"))
    assert _catalog(index).size(str(path), os.stat(path), X4) == expected


def test_an_unwritable_index_folder_means_no_index_and_one_log_line(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the folder should be")
    assert open_index(str(blocker / "index")) is None
    assert len([r for r in caplog.records if "without an index" in r.getMessage()]) == 1


READ_ONLY_LOOKUPS = """
import json, os, sys
from tifffs import catalog as catalog_module
from tifffs.catalog import Catalog
from tifffs.index import open_index
from tifffs.render import RenderPool
from tifffs.setup import build_tree
from tifffs.views import parse_view
from tifffs.virtual import band_cache
index_dir, indexed, other = sys.argv[1:]
catalog = Catalog(band_cache(1 << 20), RenderPool(1), open_index(index_dir))
x4 = parse_view("x4", "mean")
print(json.dumps({"indexed": catalog.size(indexed, os.stat(indexed), x4),
                  "other": catalog.size(other, os.stat(other), x4)}))
"""


def test_a_read_only_database_is_bypassed_and_never_fails_a_stat():
    """As a user who may read the index but not write it (root may write anything): the
    index is bypassed with one log line, every size is right, the database untouched."""
    work = world_readable_workdir("tifffs-index-")
    try:
        path = _tiff(work / "a.tif")
        index = Index(str(work / "index"))
        size = _catalog(index).size(str(path), os.stat(path), X4)
        index.close()
        other = _tiff(work / "b.tif", pages=2)
        os.chmod(work / "index", 0o755)
        database = work / "index" / FILE_NAME
        before = database.read_bytes()
        result = subprocess.run(as_nobody([sys.executable, "-c", READ_ONLY_LOOKUPS,
                                           str(work / "index"), str(path), str(other)]),
                                capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0, result.stderr
        seen = json.loads(result.stdout)
        assert seen["indexed"] == size
        assert seen["other"] > 0
        [line] = result.stderr.strip().splitlines()
        assert "going on without an index" in line and "--index-dir" in line, line
        assert database.read_bytes() == before
    finally:
        shutil.rmtree(work)


WRITER = """
import os, sys
from tifffs.index import Index
from tifffs.pages import SourceVersion
index = Index(sys.argv[1])
for i in range(int(sys.argv[3])):
    index.put(f"/{sys.argv[2]}/{i}.tif", SourceVersion(1, i, 2, 3, 4), b"x" * 100, None)
    index.put_size(f"/{sys.argv[2]}/{i}.tif", SourceVersion(1, i, 2, 3, 4), "x4", i)
index.close()
"""


def test_two_processes_write_one_index_at_once(tmp_path):
    folder = str(tmp_path / "index")
    Index(folder).close()
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, folder, name, "2000"])
               for name in ("one", "two")]
    assert [w.wait(timeout=120) for w in writers] == [0, 0]
    index = Index(folder)
    for name in ("one", "two"):
        sizes = index.sizes_in(f"/{name}", "x4")
        assert len(sizes) == 2000
        assert sizes[f"/{name}/1999.tif"] == ((1, 1999, 2, 3, 4), 1999)


def test_without_an_index_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = _tiff(tmp_path / "a.tif")
    assert _catalog(None).size(str(path), os.stat(path), X4) > 0
    assert not (tmp_path / "cache").exists()


def _patch_u32(path: Path, offset: int, value: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset:offset + 4] = value.to_bytes(4, "little")
    path.write_bytes(bytes(data))


def test_tifffs_index_reports_broken_files_in_its_own_words(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    _tiff(source / "good.tif")
    chain = _tiff(source / "chain.tif")  # page 0's link to page 1 points past the end
    with tifffile.TiffFile(chain) as tif:
        ifd, entries = tif.pages[0].offset, len(tif.pages[0].tags)
    _patch_u32(chain, ifd + 2 + 12 * entries, 0xFFFFFFF0)
    (source / "garbage.tif").write_bytes(b"II*\0" + b"\xff" * 60)
    # a tag whose value lies outside the file: tifffile logs a warning of its own
    tifffile.imwrite(source / "tag.tif", np.zeros((16, 16), np.uint8),
                     extratags=[(65000, "s", 0, "x" * 40, True)])
    with tifffile.TiffFile(source / "tag.tif") as tif:
        tag_entry = tif.pages[0].tags[65000].offset
    _patch_u32(source / "tag.tif", tag_entry + 8, 0x7FFFFFF0)

    result = subprocess.run([sys.executable, "-m", "tifffs", "index", str(source),
                             "--index-dir", str(tmp_path / "index")],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1, result.stderr  # garbage.tif failed
    lines = result.stderr.splitlines()
    assert all(line.startswith("tifffs index: ") for line in lines), lines
    assert "tifffile" not in result.stderr and "TiffTag" not in result.stderr, lines
    assert any("chain.tif: IFD 1 at offset 4294967280 is unreadable: serving the 1 page "
               "before it" in line for line in lines), lines
    assert any("garbage.tif: the header's offset of the first IFD (4294967295) points "
               "outside the file (64 bytes)" in line for line in lines), lines
    assert "4 files, 5 pages, 1 failures" in lines[-1], lines

    missing = subprocess.run([sys.executable, "-m", "tifffs", "index", str(tmp_path / "no")],
                             capture_output=True, text=True, timeout=60, check=False)
    assert missing.returncode == 2
    assert f"SOURCE {tmp_path / 'no'} does not exist" in missing.stderr, missing.stderr
