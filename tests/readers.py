"""Real TIFF readers, driven in batches, and what each must see in a TIFF.

Each reader reads every page of a file into arrays (rows, columns, bands); the reader's
*model* says what a correct reading of that file is, computed from the pages as tifffile
decodes them (palette expanded the way the reader expands it, 16-bit RGB reduced the way
Pillow reduces it, ...). ``check_*`` functions return the list of problems of one file
(an empty list: the reader sees the right pages, sizes and pixels).

* libtiff: ``tiffinfo -D`` (reads all data) and ``tiffcp -c none FILE out.tif``, whose
  pixels are compared with the file's.
* ImageJ 1.x: ``ImageJProbe.java`` in one JVM for all files (size, stack, bit depth, exact
  per-slice sums).
* GDAL: ``gdal_translate -of ENVI GTIFF_DIR:<n>:FILE`` per page: raw pixels of every band.
* libvips and Pillow: ``python readers.py vips|pillow OUT PATH...`` reads every page of
  every file in one process (pyvips ``page=``, Pillow ``seek``).
* ImageMagick: ``identify`` (every page's size, depth, channels) and
  ``convert FILE[i] -depth 8|16 gray:-|rgb:-|rgba:-`` per page.

Every message a reader prints about a file is a problem of the form "... says: ...";
``view_problems`` and ``source_failures`` decide which of them count (a view may not make
a reader say more than the source does; a source fails only on errors, not warnings).
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from reference import served_pixels
from tools import MissingTool, require

INSTALL_HINT = ("run scripts/test, which installs libtiff-tools, imagej, Java, gdal-bin, "
                "libvips-tools, imagemagick and the test extra (Pillow, pyvips)")
IMAGEJ_JAR = Path("/usr/share/java/ij.jar")
PROBE = Path(__file__).with_name("ImageJProbe.java")
TOOL_TIMEOUT = 600
PALETTE, RGB, YCBCR = 3, 2, 6


class ReaderMissing(MissingTool):
    """A reader is not installed: the tests fail (never skip)."""


def tool(name: str) -> str:
    return require(name, ReaderMissing, INSTALL_HINT)


# -- the pages as tifffile decodes them
@dataclass
class Page:
    pixels: np.ndarray  # (rows, columns, samples), native byte order
    photometric: int  # as decoded: JPEG's YCbCr is RGB
    colormap: np.ndarray | None

    @property
    def samples(self) -> int:
        return self.pixels.shape[2]

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)"""
        return self.pixels.shape[1], self.pixels.shape[0]


def tifffile_pages(path: Path) -> list[Page]:
    """Every page of the main IFD chain, decoded by tifffile."""
    pages = []
    with tifffile.TiffFile(path) as tif:
        for page in tif.pages:
            # bilevel: the picture readers show (and tifffs serves), white 255
            pixels, photometric, _ = served_pixels(page)
            colormap = None
            if photometric == PALETTE:
                colormap = np.asarray(page.colormap, dtype=np.uint16)
            pages.append(Page(pixels, photometric, colormap))
    return pages


def palette_rgb(page: Page) -> np.ndarray:
    """The colours of a palette page, 16 bits per channel, (rows, columns, 3)."""
    return np.moveaxis(page.colormap[:, page.pixels[:, :, 0]], 0, -1)


def compare(expected: list[np.ndarray | None], got: list[np.ndarray]) -> list[str]:
    """Pages, shapes, types and pixels; an expected None checks the shape only."""
    problems = []
    if len(got) != len(expected):
        problems.append(f"{len(got)} pages, expected {len(expected)}")
    for i, (e, g) in enumerate(zip(expected, got)):
        if e is None:
            continue
        if g.shape != e.shape:
            problems.append(f"page {i}: shape {g.shape} (rows, columns, bands), expected "
                            f"{e.shape}")
        elif g.dtype != e.dtype:
            problems.append(f"page {i}: type {g.dtype}, expected {e.dtype}")
        elif not np.array_equal(g, e, equal_nan=e.dtype.kind == "f"):
            wrong = int(np.count_nonzero(g != e))
            problems.append(f"page {i}: {wrong} of {e.size} samples differ")
    return problems


def said(output: str) -> list[str]:
    """The messages in a reader's stderr, as problems."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return [f"says: {line[:300]}" for line in lines]


def is_message(problem: str) -> bool:
    return "says: " in problem


def _normal(problem: str, path: Path) -> str:
    return problem.replace(str(path), "FILE")


def view_problems(view: list[str], view_path: Path, source: list[str],
                  source_path: Path) -> list[str]:
    """What counts against a view: every problem except messages the source also gets."""
    also = {_normal(p, source_path) for p in source if is_message(p)}
    return [p for p in view if not (is_message(p) and _normal(p, view_path) in also)]


def source_failures(source: list[str]) -> list[str]:
    """What proves that a reader fails on a source: every problem but warnings."""
    return [p for p in source if not (is_message(p) and "warning" in p.lower())]


def _run(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, timeout=TOOL_TIMEOUT, check=False)


# -- libtiff
def tiffinfo_sizes(report: str) -> list[tuple[int, int]]:
    """(width, height) of every directory of the main IFD chain (not of SubIFDs)."""
    sizes = []
    for block in report.split("=== TIFF directory ")[1:]:
        found = re.search(r"Image Width: (\d+) Image Length: (\d+)", block)
        sizes.append((int(found[1]), int(found[2])) if found else None)
    return sizes


def check_libtiff(path: Path, workdir: Path) -> list[str]:
    """``tiffinfo -D`` clean with every page's size; ``tiffcp -c none`` copies the pixels."""
    problems = []
    pages = tifffile_pages(path)
    info = _run([tool("tiffinfo"), "-D", str(path)])
    stderr = info.stderr.decode("utf-8", "replace")
    if info.returncode:
        problems.append(f"tiffinfo -D exit {info.returncode}")
    problems += ["tiffinfo -D " + p for p in said(stderr)]
    sizes = tiffinfo_sizes(info.stdout.decode("utf-8", "replace"))
    if sizes != [p.size for p in pages]:
        problems.append(f"tiffinfo sees sizes {sizes}, expected {[p.size for p in pages]}")
    out = workdir / "tiffcp-out.tif"
    out.unlink(missing_ok=True)
    # -c none: what plain tiffcp does with the uncompressed views; for a JPEG source it
    # compares libtiff's decoding, not a second lossy encoding
    copy = _run([tool("tiffcp"), "-c", "none", str(path), str(out)])
    if copy.returncode:
        problems.append(f"tiffcp exit {copy.returncode}")
    problems += ["tiffcp " + p for p in said(copy.stderr.decode("utf-8", "replace"))]
    if copy.returncode == 0:
        try:
            copied = [p.pixels for p in tifffile_pages(out)]
        except Exception as exc:  # noqa: BLE001 (whatever tifffile raises for a bad copy)
            problems.append(f"the tiffcp copy is unreadable: {exc}")
        else:
            problems += ["tiffcp copy: " + p for p in compare([p.pixels for p in pages],
                                                               copied)]
    return problems


# -- GDAL (python3-gdal of the system Python, in a worker: ``gdal_reader.py``)
SYSTEM_PYTHON = "/usr/bin/python3"
GDAL_READER = Path(__file__).with_name("gdal_reader.py")


def read_gdal(paths: list[Path], workdir: Path) -> dict[Path, dict]:
    """Every page of every path, read by GDAL in one process: pages, messages, error."""
    out = workdir / "gdal"
    shutil.rmtree(out, ignore_errors=True)
    result = _run([SYSTEM_PYTHON, str(GDAL_READER), str(out), *map(str, paths)])
    if result.returncode or not (out / "index.json").exists():
        raise ReaderMissing(f"the GDAL reader failed (exit {result.returncode}; python3-gdal: "
                            f"{INSTALL_HINT}):\n{result.stderr.decode('utf-8', 'replace')}")
    index = json.loads((out / "index.json").read_text())
    readings = {}
    for k, path in enumerate(paths):
        reading = index[str(path)]
        reading["arrays"] = [np.load(out / f"{k}-{n}.npy")
                             for n in range(1, reading["pages"] + 1)]
        readings[path] = reading
    return readings


def check_gdal(reading: dict, path: Path) -> list[str]:
    """Every page (``GTIFF_DIR:<n>:``), every band, every pixel."""
    problems = [f"says: {m[:300]}" for m in reading["messages"]]
    if "error" in reading:
        problems.append(f"cannot read page {reading['pages']}: {reading['error'][:300]}")
    return problems + compare([p.pixels for p in tifffile_pages(path)], reading["arrays"])


# -- ImageMagick (Debian's ImageMagick 6 is a Q16 build: 16 bits per sample inside)
IM_CHANNELS = {1: "gray", 2: "graya", 3: "srgb", 4: "srgba"}
IM_RAW = {1: "gray", 2: "graya", 3: "rgb", 4: "rgba"}
#: ImageMagick stores a sample in 16 bits: floats come back within one step of that
IM_FLOAT_TOLERANCE = 1.5 / 65535


@dataclass
class IMExpected:
    channels: str  # as identify's %[channels]
    pixels: np.ndarray | None  # raw output of convert; None: not comparable
    raw_format: str  # convert's output options
    tolerance: float = 0.0


def im_expected(page: Page) -> IMExpected:
    """What ``convert`` writes for a page: palette as 16-bit RGB, signed 16-bit plus 32768,
    floats clamped to 0..1 (Q16 keeps no more), 32- and 64-bit integers not comparable."""
    pixels = page.pixels
    channels = IM_CHANNELS.get(page.samples, f"{page.samples} samples")
    raw = IM_RAW.get(pixels.shape[2], "gray")
    if page.photometric == PALETTE:
        return IMExpected("srgb", palette_rgb(page), "-depth 16 -endian LSB rgb:-")
    if pixels.dtype == np.uint8:
        return IMExpected(channels, pixels, f"-depth 8 {raw}:-")
    if pixels.dtype == np.uint16:
        return IMExpected(channels, pixels, f"-depth 16 -endian LSB {raw}:-")
    if pixels.dtype == np.int16:
        return IMExpected(channels, (pixels.astype(np.int32) + 32768).astype(np.uint16),
                          f"-depth 16 -endian LSB {raw}:-")
    if pixels.dtype.kind == "f":
        return IMExpected(channels, np.clip(pixels, 0, 1).astype(np.float32),
                          f"-define quantum:format=floating-point -depth 32 -endian LSB "
                          f"{raw}:-", IM_FLOAT_TOLERANCE)
    return IMExpected(channels, None, f"-depth 16 -endian LSB {raw}:-")


def check_imagemagick(path: Path, workdir: Path) -> list[str]:
    """``identify`` sees every page's size, depth and channels; ``convert`` its pixels."""
    pages = tifffile_pages(path)
    problems = []
    result = _run([tool("identify"), "-format", "%w %h %z %[channels]\n", str(path)])
    stderr = result.stderr.decode("utf-8", "replace")
    if result.returncode:
        return [f"identify exit {result.returncode}: {stderr.strip()[:300]}"]
    problems += ["identify " + p for p in said(stderr)]
    seen = [line.split() for line in result.stdout.decode().splitlines() if line.strip()]
    if len(seen) != len(pages):
        problems.append(f"identify sees {len(seen)} pages, expected {len(pages)}")
    for i, (fields, page) in enumerate(zip(seen, pages)):
        expected = im_expected(page)
        want = [*map(str, page.size), str(page.pixels.dtype.itemsize * 8), expected.channels]
        if fields != want:
            problems.append(f"page {i}: identify sees {' '.join(fields)}, expected "
                            f"{' '.join(want)} (width height depth channels)")
            continue
        convert = _run([tool("convert"), f"{path}[{i}]", *expected.raw_format.split()])
        stderr = convert.stderr.decode("utf-8", "replace")
        if convert.returncode:
            problems.append(f"page {i}: convert exit {convert.returncode}: "
                            f"{stderr.strip()[:300]}")
            continue
        problems += [f"page {i}: convert {p}" for p in said(stderr)]
        pixels = expected.pixels
        if pixels is None:  # decoded all the same: convert succeeded quietly
            continue
        dtype = pixels.dtype.newbyteorder("<")
        if len(convert.stdout) != pixels.nbytes:
            problems.append(f"page {i}: convert gives {len(convert.stdout)} bytes, expected "
                            f"{pixels.nbytes}")
            continue
        got = np.frombuffer(convert.stdout, dtype=dtype).reshape(pixels.shape)
        got = got.astype(pixels.dtype)
        if expected.tolerance:
            wrong = int(np.count_nonzero(np.abs(got - pixels) > expected.tolerance))
            if wrong:
                problems.append(f"page {i}: {wrong} of {pixels.size} samples differ by more "
                                f"than {expected.tolerance:.2g}")
        else:
            problems += [p.replace("page 0", f"page {i}") for p in compare([pixels], [got])]
    return problems


# -- libvips and Pillow: in a worker process (``python readers.py READER OUT PATH...``)
def vips_expected(page: Page) -> np.ndarray:
    """libvips expands a colour map to 8-bit RGB (the high byte of each entry)."""
    if page.photometric == PALETTE:
        return (palette_rgb(page) >> 8).astype(np.uint8)
    return page.pixels


def pillow_expected(page: Page) -> np.ndarray:
    """Pillow keeps palette indices (mode P), reduces 16-bit RGB(A) to its high byte and
    shows signed 16-bit (mode I;16S) as 32-bit integers."""
    pixels = page.pixels
    if page.photometric == RGB and pixels.dtype == np.uint16:
        return (pixels >> 8).astype(np.uint8)
    if pixels.dtype == np.int16:
        return pixels.astype(np.int32)
    return pixels


def read_batch(reader: str, paths: list[Path], workdir: Path) -> dict[Path, dict]:
    """Read all ``paths`` with pyvips or Pillow in one worker process."""
    out = workdir / f"{reader}.pickle"
    command = [sys.executable, str(Path(__file__)), reader, str(out), *map(str, paths)]
    result = _run(command)
    if result.returncode or not out.exists():
        raise AssertionError(f"the {reader} worker failed (exit {result.returncode}; "
                             f"{INSTALL_HINT}):\n{result.stderr.decode('utf-8', 'replace')}")
    with open(out, "rb") as f:
        readings = pickle.load(f)
    return {Path(p): r for p, r in readings.items()}


def check_reading(reading: dict, expected: list[np.ndarray]) -> list[str]:
    if "error" in reading:
        return [f"cannot read: {reading['error']}", *said(reading["stderr"])]
    problems = list(reading["problems"])
    problems += said(reading["stderr"])
    return problems + compare(expected, reading["pages"])


def _read_vips(path: str) -> tuple[list[np.ndarray], list[str]]:
    import pyvips

    first = pyvips.Image.new_from_file(path, page=0, access="sequential")
    count = first.get("n-pages") if first.get_typeof("n-pages") else 1
    pages, problems = [], []
    for i in range(count):
        image = first if i == 0 else pyvips.Image.new_from_file(path, page=i,
                                                                access="sequential")
        pixels = image.numpy()
        pages.append(pixels[:, :, np.newaxis] if pixels.ndim == 2 else pixels)
    return pages, problems


def _read_pillow(path: str) -> tuple[list[np.ndarray], list[str]]:
    from PIL import Image

    pages, problems = [], []
    with Image.open(path) as image:
        for i in range(getattr(image, "n_frames", 1)):
            image.seek(i)
            pixels = np.asarray(image)
            if pixels.shape[:2][::-1] != image.size:
                problems.append(f"page {i}: size {image.size} but pixels {pixels.shape}")
            pixels = pixels.astype(pixels.dtype.newbyteorder("="))
            pages.append(pixels[:, :, np.newaxis] if pixels.ndim == 2 else pixels)
    return pages, problems


def _worker(reader: str, out: str, paths: list[str]) -> None:
    """Read every page of every path; per path its pages, problems and stderr output."""
    import warnings

    if reader == "vips":
        import pyvips

        pyvips.cache_set_max(0)  # no open files kept: the mount can go at once
    read = {"vips": _read_vips, "pillow": _read_pillow}[reader]
    readings = {}
    saved = os.dup(2)
    for path in paths:
        with tempfile.TemporaryFile() as err:
            os.dup2(err.fileno(), 2)  # this file's messages only (libvips logs to stderr)
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    try:
                        pages, problems = read(path)
                        reading = {"pages": pages, "problems": problems}
                    except Exception as exc:  # noqa: BLE001 (each reader has its own)
                        reading = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
            err.seek(0)
            stderr = err.read().decode("utf-8", "replace")
            stderr += "".join(f"warning: {w.message}\n" for w in caught)
            reading["stderr"] = stderr
        readings[path] = reading
    with open(out, "wb") as f:
        pickle.dump(readings, f)


# -- ImageJ 1.x
@dataclass(frozen=True)
class ImageJReport:
    width: int
    height: int
    channels: int
    slices: int
    frames: int
    stack_size: int
    bit_depth: int
    unit: str
    pixel_width: float
    pixel_height: float
    pixel_depth: float
    slice_sums: list[list[int | float]]
    said: tuple[str, ...]  # what ImageJ printed while opening the file

    @classmethod
    def parse(cls, fields: dict[str, str], said: list[str]) -> ImageJReport:
        def number(v: str) -> int | float:
            return float(v) if fields["bit_depth"] == "32" else int(v)

        sums = [[number(v) for v in fields[f"sum{i}"].split(",")]
                for i in range(1, int(fields["stack_size"]) + 1)]
        return cls(*(int(fields[k]) for k in ("width", "height", "channels", "slices",
                                              "frames", "stack_size", "bit_depth")),
                   fields["unit"], float(fields["pixel_width"]),
                   float(fields["pixel_height"]), float(fields["pixel_depth"]), sums,
                   tuple(said))


def run_imagej(paths: list[Path]) -> dict[Path, ImageJReport | str]:
    """Open all ``paths`` in one headless JVM: a report, or ImageJ's error, per path."""
    java = tool("java")
    if not IMAGEJ_JAR.is_file():
        raise ReaderMissing(f"{IMAGEJ_JAR} not found: {INSTALL_HINT}")
    command = [java, "-Djava.awt.headless=true", "-cp", str(IMAGEJ_JAR), str(PROBE),
               *map(str, paths)]
    result = _run(command)
    stdout = result.stdout.decode("utf-8", "replace")
    reports: dict[Path, ImageJReport | str] = {}
    said: list[str] = []
    for line in stdout.splitlines():
        if not line.startswith("PROBE\t"):
            said.append(line)  # ImageJ's messages come before the file's PROBE line
            continue
        fields = dict(field.split("=", 1) for field in line.split("\t")[1:])
        path = Path(fields["path"])
        if "error" in fields:
            reports[path] = "; ".join([fields["error"], *said])
        else:
            reports[path] = ImageJReport.parse(fields, said)
        said = []
    if result.returncode != 0 or set(reports) != set(paths):
        raise AssertionError(f"the ImageJ probe failed (exit {result.returncode}; "
                             f"{INSTALL_HINT}):\n{stdout}\n"
                             f"{result.stderr.decode('utf-8', 'replace')}")
    return reports


def imagej_expected(pages: list[Page]) -> list[tuple[int, int, int, int, list]]:
    """What ImageJ may show: (width, height, bit depth, stack size, per-slice sums).

    ImageJ opens all pages as a stack when they share size and type. When they do not,
    it opens the first page only, or (OME files) the leading pages that share the first
    page's size and type: both are right. 8-bit RGB(A) is one 24-bit slice (alpha dropped,
    sums "r,g,b"); other multi-sample pages are one slice per sample; palette pages show
    their indices. Signed 16-bit pixels are stored plus 32768 (ImageJ's calibration
    function shows the signed values).
    """
    first = pages[0]
    run = 1
    while run < len(pages) and pages[run].pixels.shape == first.pixels.shape and \
            pages[run].pixels.dtype == first.pixels.dtype:
        run += 1
    return [_imagej_stack(pages[:n]) for n in sorted({1, run})]


def _imagej_stack(shown: list[Page]) -> tuple[int, int, int, int, list]:
    first = shown[0]
    rgb24 = first.photometric == RGB and first.pixels.dtype == np.uint8 and \
        first.samples in (3, 4)
    dtype = first.pixels.dtype
    bit_depth = 24 if rgb24 else dtype.itemsize * 8
    sums: list[list[int | float]] = []
    for page in shown:
        pixels = page.pixels[:, :, :3] if rgb24 else page.pixels
        flat = pixels.reshape(-1, pixels.shape[2])
        if dtype.kind == "f":
            per_sample = [float(s) for s in flat.astype(np.float64).sum(axis=0)]
        else:
            offset = 32768 if dtype == np.int16 else 0
            per_sample = [int(s) + offset * len(flat)
                          for s in flat.astype(np.int64).sum(axis=0)]
        sums += [per_sample] if rgb24 else [[s] for s in per_sample]
    return (*first.size, bit_depth, len(sums), sums)


def check_imagej(report: ImageJReport | str, path: Path) -> list[str]:
    if isinstance(report, str):
        return [f"cannot open: {report}"]
    problems = [f"says: {line[:300]}" for line in report.said]
    candidates = imagej_expected(tifffile_pages(path))
    seen = (report.width, report.height, report.bit_depth, report.stack_size)
    shown = [c for c in candidates if c[:4] == seen]
    if not shown:
        problems.append(f"sees width, height, bit depth, stack size {seen}, expected "
                        f"{' or '.join(str(c[:4]) for c in candidates)}")
        return problems
    sums = shown[0][4]
    for i, (ours, theirs) in enumerate(zip(report.slice_sums, sums)):
        same = len(ours) == len(theirs) and all(
            a == b if isinstance(a, int) and isinstance(b, int)
            else math.isclose(a, b, rel_tol=1e-9) for a, b in zip(ours, theirs))
        if not same:
            problems.append(f"slice {i + 1}: ImageJ sums {ours}, expected {theirs}")
            break
    return problems


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2], sys.argv[3:])
