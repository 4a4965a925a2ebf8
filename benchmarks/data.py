"""The benchmark's data: generated once into ~/.cache/tifffs-bench, reused while intact.

Every case is a folder of TIFFs written by tifffile. A manifest beside each folder (not
inside: tifffs would list it) records the generator's parameters and every file's size; a
case is regenerated only when its manifest is missing, different or contradicted by disk.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

GENERATOR_VERSION = 2
LINKS = 8  # hard links of the stack: the tree of stacks that the tree render renders

SIZES: dict[str, dict[str, int]] = {
    "full": {"stack_pages": 101, "stack_side": 2048, "files": 500, "files_pages": 5,
             "files_side": 256, "files_dirs": 10, "flat": 20000, "flat_pages": 2,
             "flat_side": 64, "page_rows": 16384, "page_columns": 32768,
             "timelapse_pages": 4000, "timelapse_side": 256},
    "quick": {"stack_pages": 21, "stack_side": 2048, "files": 100, "files_pages": 5,
              "files_side": 256, "files_dirs": 10, "flat": 2000, "flat_pages": 2,
              "flat_side": 64, "page_rows": 4096, "page_columns": 8192,
              "timelapse_pages": 500, "timelapse_side": 256},
}


@dataclass(frozen=True)
class Case:
    """A folder of source TIFFs: ``root`` and the paths of its TIFFs relative to it."""

    name: str
    title: str
    root: str
    relfiles: tuple[str, ...]

    @property
    def files(self) -> list[str]:
        """Absolute paths of the case's TIFFs."""
        return [os.path.join(self.root, rel) for rel in self.relfiles]


def default_data_dir() -> str:
    """``$XDG_CACHE_HOME/tifffs-bench``, else ``~/.cache/tifffs-bench``."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(cache, "tifffs-bench")


def _smooth_noisy_planes(count: int, side: int, seed: int, mean: int, amplitude: int,
                         periods: tuple[float, float], drift: bool = False) -> Iterator[Any]:
    """``count`` uint16 planes: a smooth pattern plus noise of 0-255 (plus the plane's
    number with ``drift``), as a microscope's planes are."""
    import numpy as np

    rng = np.random.default_rng(seed)
    y, x = np.ogrid[:side, :side]
    base = (mean + amplitude * np.sin(x / periods[0]) * np.cos(y / periods[1])).astype(
        np.uint16)
    for i in range(count):
        yield base + rng.integers(0, 256, (side, side), dtype=np.uint16) + np.uint16(
            i if drift else 0)


def _write_stack(root: str, p: dict[str, int]) -> list[str]:
    import tifffile

    pages, side = p["stack_pages"], p["stack_side"]
    planes = _smooth_noisy_planes(pages, side, 1, 1000, 400, (53.0, 71.0), drift=True)
    tifffile.imwrite(os.path.join(root, "stack.tif"), planes, shape=(pages, side, side),
                     dtype="uint16", photometric="minisblack", rowsperstrip=side,
                     metadata={"axes": "ZYX"})
    return ["stack.tif"]


def _write_small(root: str, count: int, pages: int, side: int, dirs: int,
                 seed: int) -> list[str]:
    import numpy as np
    import tifffile

    rng = np.random.default_rng(seed)
    width = len(str(count - 1))
    rels = []
    for i in range(count):
        name = f"f{i:0{width}d}.tif"
        rel = os.path.join(f"d{i % dirs:02d}", name) if dirs > 1 else name
        os.makedirs(os.path.join(root, os.path.dirname(rel)), exist_ok=True)
        data = rng.integers(0, 4096, (pages, side, side), dtype=np.uint16)
        tifffile.imwrite(os.path.join(root, rel), data, photometric="minisblack",
                         metadata={"axes": "ZYX"})
        rels.append(rel)
    return sorted(rels)


def _write_files(root: str, p: dict[str, int]) -> list[str]:
    return _write_small(root, p["files"], p["files_pages"], p["files_side"], p["files_dirs"], 3)


def _write_flat(root: str, p: dict[str, int]) -> list[str]:
    return _write_small(root, p["flat"], p["flat_pages"], p["flat_side"], 1, 4)


def _write_page(root: str, p: dict[str, int]) -> list[str]:
    """One big page (1 GiB in the full run), uncompressed and in zlib tiles of 512 x 512
    (as slide scans are stored: a row of tiles holds tens of MB)."""
    import numpy as np
    import tifffile

    rows, columns = p["page_rows"], p["page_columns"]
    rng = np.random.default_rng(5)
    x = np.arange(columns)
    uncompressed = os.path.join(root, "page.tif")
    page = tifffile.memmap(uncompressed, shape=(rows, columns), dtype=np.uint16,
                           photometric="minisblack")
    for top in range(0, rows, 1024):
        band = page[top:top + 1024]
        band[:] = (1000 + 400 * np.sin(x / 97.0)).astype(np.uint16)
        band += rng.integers(0, 256, band.shape, dtype=np.uint16)
    page.flush()
    del page
    source = tifffile.memmap(uncompressed, mode="r")
    tifffile.imwrite(os.path.join(root, "tiles.tif"), source, tile=(512, 512),
                     compression="zlib", compressionargs={"level": 1},
                     photometric="minisblack")
    return ["page.tif", "tiles.tif"]


def _write_timelapse(root: str, p: dict[str, int]) -> list[str]:
    """A time-lapse as a microscope writes it: thousands of small frames in one ImageJ
    hyperstack (a band per frame: what per-band costs weigh on)."""
    import tifffile

    frames, side = p["timelapse_pages"], p["timelapse_side"]
    planes = _smooth_noisy_planes(frames, side, 6, 800, 300, (17.0, 23.0))
    tifffile.imwrite(os.path.join(root, "timelapse.tif"), planes,
                     shape=(frames, side, side), dtype="uint16", imagej=True,
                     metadata={"axes": "TYX"})
    return ["timelapse.tif"]


WRITERS: dict[str, tuple[str, Callable[[str, dict[str, int]], list[str]]]] = {
    "stack": ("light-sheet {stack_pages} x {stack_side} x {stack_side} uint16, uncompressed",
              _write_stack),
    "files": (("{files} files of {files_pages} x {files_side} x {files_side} uint16 in "
               "{files_dirs} folders"), _write_files),
    "flat": ("{flat} files of {flat_pages} x {flat_side} x {flat_side} uint16 in one folder",
             _write_flat),
    "page": (("one page of {page_rows} x {page_columns} uint16, uncompressed and in zlib "
              "tiles of 512 x 512"), _write_page),
    "timelapse": (("time-lapse of {timelapse_pages} x {timelapse_side} x {timelapse_side} "
                   "uint16 frames, one ImageJ file"), _write_timelapse),
}


def _intact(root: str, manifest: dict[str, Any]) -> bool:
    sizes = manifest.get("sizes") or {}
    try:
        return bool(sizes) and all(os.path.getsize(os.path.join(root, rel)) == size
                                   for rel, size in sizes.items())
    except OSError:
        return False


def _prepare_case(base: str, name: str, params: dict[str, int],
                  log: Callable[[str], None]) -> Case:
    title_format, writer = WRITERS[name]
    root = os.path.join(base, name)
    manifest_path = root + ".json"
    wanted = {"generator": GENERATOR_VERSION, "params": params}
    manifest: dict[str, Any] = {}
    try:
        with open(manifest_path) as fh:
            manifest = json.load(fh)
    except (OSError, ValueError):
        pass
    if manifest.get("wanted") != wanted or not _intact(root, manifest):
        log(f"generating {name} in {root} (once; reused afterwards)")
        start = time.perf_counter()
        shutil.rmtree(root, ignore_errors=True)
        partial = root + ".partial"
        shutil.rmtree(partial, ignore_errors=True)
        os.makedirs(partial)
        rels = writer(partial, params)
        os.rename(partial, root)
        manifest = {"wanted": wanted,
                    "sizes": {rel: os.path.getsize(os.path.join(root, rel)) for rel in rels}}
        with open(manifest_path, "w") as fh:
            json.dump(manifest, fh)
        log(f"  {name}: {len(rels)} files in {time.perf_counter() - start:.1f} s")
    return Case(name, title_format.format(**params), root, tuple(sorted(manifest["sizes"])))


def _params_of(name: str, sizes: dict[str, int]) -> dict[str, int]:
    """The sizes of case ``name`` (``flat``, ``flat_pages``...): a case is generated
    anew only when its own change."""
    return {key: value for key, value in sizes.items()
            if key == name or key.startswith(name + "_")}


def _link_tree(base: str, stack: Case) -> Case:
    """LINKS hard links of the stack in two folders: a tree of stacks, no extra disk."""
    root = os.path.join(base, "stacks")
    shutil.rmtree(root, ignore_errors=True)
    rels = []
    for i in range(LINKS):
        rel = os.path.join(f"run{i % 2}", f"stack{i}.tif")
        os.makedirs(os.path.join(root, os.path.dirname(rel)), exist_ok=True)
        os.link(stack.files[0], os.path.join(root, rel))
        rels.append(rel)
    return Case("stacks", f"{LINKS} hard links of the light-sheet stack in 2 folders", root,
                tuple(sorted(rels)))


def prepare(data_dir: str, mode: str, log: Callable[[str], None]) -> dict[str, Case]:
    """Every case of ``mode`` ("full" or "quick"), generated where missing or damaged."""
    base = os.path.join(data_dir, mode)
    os.makedirs(base, exist_ok=True)
    cases = {name: _prepare_case(base, name, _params_of(name, SIZES[mode]), log)
             for name in WRITERS}
    cases["stacks"] = _link_tree(base, cases["stack"])
    return cases
