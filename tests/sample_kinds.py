"""Sources whose samples are not whole bytes, as the programs that write them write them.

Bilevel (1-bit) pages by tifffile, ImageMagick, libtiff (``tiffcp``, ``fax2tiff``) and
GDAL, uncompressed, PackBits, CCITT RLE, G3 (1-D and 2-D), G4, fill order 2 and
palette; 2-, 4-, 10-, 12-, 14- and 24-bit packed integers by tifffile and GDAL; old-style
JPEG (compression 6), which no program here writes, patched from tifffile's JPEG.

``served_pages`` is what tifffs must serve for a source, computed from tifffile's
decoding alone: bilevel grey as 0/255 MinIsBlack, other packed samples as decoded.
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import numpy as np
import tifffile

from reference import served_pixels
from writers import H, W, plain, run

PALETTE = 3


def bilevel(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Blobs and noise, as a scanned page or a mask: runs that CCITT codes compress."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:shape[-2], 0:shape[-1]]
    blobs = (np.sin(x / 9.0 + seed) + np.cos(y / 7.0)) > 0.3
    noise = rng.random(shape) < 0.08
    return np.broadcast_to(blobs, shape) ^ noise


def _pgm(path: Path, array: np.ndarray) -> Path:
    """A binary PGM (P5) for ImageMagick; 0/1 as black/white."""
    grey = np.where(array, 255, 0).astype(np.uint8)
    path.write_bytes(b"P5 %d %d 255\n" % (grey.shape[1], grey.shape[0]) + grey.tobytes())
    return path


def build(root: Path, scratch: Path) -> dict[str, str]:
    """Write every kind under ``root``; returns name -> how it was written."""
    kinds: dict[str, str] = {}
    _tifffile(root, kinds)
    _libtiff(root, scratch, kinds)
    _imagemagick(root, scratch, kinds)
    _gdal(root, scratch, kinds)
    _ojpeg(root, scratch, kinds)
    return kinds


def _convert_each(root: Path, folder: str, command: list[str], kinds: dict[str, str],
                  jobs: tuple[tuple[str, str, Path], ...]) -> None:
    """``COMMAND OPTIONS INPUT root/folder/NAME`` for each (NAME, OPTIONS, INPUT); each
    recorded in ``kinds`` as "PROGRAM OPTIONS"."""
    d = root / folder
    d.mkdir(parents=True, exist_ok=True)
    for name, options, input_ in jobs:
        run(*command, *options.split(), input_, d / name)
        kinds[f"{folder}/{name}"] = f"{command[0]} {options}"


def _tifffile(root: Path, kinds: dict[str, str]) -> None:
    rng = np.random.default_rng(7)
    d = root / "tifffile"
    d.mkdir(parents=True, exist_ok=True)
    writes = {
        "bilevel_default_2pages.tif": (bilevel((2, H, W), 1), {}, "imwrite(bool), MinIsWhite"),
        "bilevel_minisblack_packbits.tif": (
            bilevel((H, W), 2), {"photometric": "minisblack", "compression": "packbits"},
            "imwrite(bool, minisblack, packbits)"),
        "gray_2bit.tif": (rng.integers(0, 4, (H, W), dtype=np.uint8),
                          {"bitspersample": 2, "photometric": "minisblack"},
                          "imwrite(bitspersample=2)"),
        "gray_4bit_miniswhite.tif": (rng.integers(0, 16, (H, W), dtype=np.uint8),
                                     {"bitspersample": 4, "photometric": "miniswhite"},
                                     "imwrite(bitspersample=4, miniswhite)"),
        "gray_10bit.tif": (rng.integers(0, 1024, (H, W), dtype=np.uint16),
                           {"bitspersample": 10, "photometric": "minisblack"},
                           "imwrite(bitspersample=10)"),
        "gray_12bit_2pages.tif": (rng.integers(0, 4096, (2, H, W), dtype=np.uint16),
                                  {"bitspersample": 12, "photometric": "minisblack"},
                                  "imwrite(bitspersample=12)"),
        "rgb_14bit.tif": (rng.integers(0, 16384, (H, W, 3), dtype=np.uint16),
                          {"bitspersample": 14, "photometric": "rgb"},
                          "imwrite(bitspersample=14, rgb)"),
    }
    for name, (array, options, how) in writes.items():
        tifffile.imwrite(d / name, array, metadata=None, **options)
        kinds[f"tifffile/{name}"] = how


def _libtiff(root: Path, scratch: Path, kinds: dict[str, str]) -> None:
    source = plain(scratch / "bilevel_pages.tif", bilevel((2, H, W), 4))
    single = plain(scratch / "bilevel_single.tif", bilevel((H, W), 5))
    _convert_each(root, "tiffcp", ["tiffcp"], kinds, (
        ("g3_1d_2pages.tif", "-c g3", source),
        ("g3_2d.tif", "-c g3:2d", single),
        ("g4_2pages.tif", "-c g4", source),
        ("g4_fillorder2.tif", "-c g4 -f lsb2msb", single),
        ("bilevel_fillorder2_rows7.tif", "-f lsb2msb -r 7", single),
    ))
    # fax2tiff reads raw fax data: the G3 strip of a one-strip tiffcp file
    g3 = scratch / "one_strip_g3.tif"
    run("tiffcp", "-c", "g3", "-r", str(H), "-f", "msb2lsb", single, g3)
    with tifffile.TiffFile(g3) as tif:
        page = tif.pages.first
        with open(g3, "rb") as fh:
            fh.seek(page.dataoffsets[0])
            raw = fh.read(page.databytecounts[0])
    (scratch / "fax.g3").write_bytes(raw)
    out = root / "fax2tiff" / "g3_class_f.tif"
    out.parent.mkdir(parents=True, exist_ok=True)
    run("fax2tiff", "-M", "-X", str(W), "-o", out, scratch / "fax.g3")
    kinds["fax2tiff/g3_class_f.tif"] = "fax2tiff -M (raw G3 of tiffcp -c g3)"


def _imagemagick(root: Path, scratch: Path, kinds: dict[str, str]) -> None:
    pgm = _pgm(scratch / "bilevel.pgm", bilevel((H, W), 6))
    d = root / "magick"
    d.mkdir(parents=True, exist_ok=True)
    for name, options in (("monochrome.tif", "-monochrome -depth 1"),
                          ("group4.tif", "-monochrome -compress Group4"),
                          ("fax.tif", "-monochrome -compress Fax")):
        run("convert", pgm, *options.split(), d / name)
        kinds[f"magick/{name}"] = f"convert {options}"


def _gdal(root: Path, scratch: Path, kinds: dict[str, str]) -> None:
    rng = np.random.default_rng(8)
    ones = plain(scratch / "ones.tif", bilevel((H, W), 9).astype(np.uint8))
    colormap = np.zeros((3, 256), np.uint16)
    colormap[:, :2] = [[0, 65535], [32768, 0], [65535, 16384]]
    ones_palette = plain(scratch / "ones_palette.tif", bilevel((H, W), 3).astype(np.uint8),
                         photometric="palette", colormap=colormap)
    u4 = plain(scratch / "u4.tif", rng.integers(0, 16, (H, W), dtype=np.uint8))
    u12 = plain(scratch / "u12.tif", rng.integers(0, 4096, (H, W), dtype=np.uint16))
    u24 = plain(scratch / "u24.tif", rng.integers(0, 1 << 24, (H, W), dtype=np.uint32))
    _convert_each(root, "gdal", ["gdal_translate", "-q"], kinds, (
        ("nbits1.tif", "-co NBITS=1", ones),
        ("nbits1_palette.tif", "-co NBITS=1", ones_palette),
        ("nbits1_ccittrle.tif", "-co NBITS=1 -co COMPRESS=CCITTRLE", ones),
        ("nbits1_ccittfax3.tif", "-co NBITS=1 -co COMPRESS=CCITTFAX3", ones),
        ("nbits1_ccittfax4_tiled.tif",
         ("-co NBITS=1 -co COMPRESS=CCITTFAX4 -co TILED=YES -co BLOCKXSIZE=64 "
          "-co BLOCKYSIZE=64"), ones),
        ("nbits4.tif", "-co NBITS=4", u4),
        ("nbits12_lzw.tif", "-co NBITS=12 -co COMPRESS=LZW", u12),
        ("nbits24.tif", "-co NBITS=24", u24),
    ))


def _ojpeg(root: Path, scratch: Path, kinds: dict[str, str]) -> None:
    """Old-style JPEG: tifffile's JPEG strips (whole JPEG streams) with compression 6."""
    y, x = np.mgrid[0:H, 0:W]
    rgb = np.stack([x * 0.8, y * 1.1, (x + y) * 0.4], axis=-1).astype(np.uint8)
    d = root / "ojpeg"
    d.mkdir(parents=True, exist_ok=True)
    for name, array, options in (
            ("ojpeg_rgb.tif", rgb, {"photometric": "rgb"}),
            ("ojpeg_gray.tif", rgb[..., 1], {"photometric": "minisblack"})):
        path = scratch / name
        tifffile.imwrite(path, array, compression="jpeg", rowsperstrip=H, metadata=None,
                         **options)
        _set_compression(path, 6)
        shutil.copyfile(path, d / name)
        kinds[f"ojpeg/{name}"] = "tifffile JPEG strips, compression patched to 6"


def _set_compression(path: Path, value: int) -> None:
    """Patch the Compression entry of the first IFD of a classic little-endian TIFF."""
    data = bytearray(path.read_bytes())
    assert data[:4] == b"II*\0"
    ifd = struct.unpack_from("<I", data, 4)[0]
    for i in range(struct.unpack_from("<H", data, ifd)[0]):
        entry = ifd + 2 + 12 * i
        if struct.unpack_from("<H", data, entry)[0] == 259:
            struct.pack_into("<H", data, entry + 8, value)
    path.write_bytes(bytes(data))


# -- what tifffs must serve
def served_pages(path: Path) -> list[tuple[np.ndarray, int, bool]]:
    """Every page as tifffs serves it, from tifffile's decoding: (pixels as (rows,
    columns, samples), photometric, is bilevel grey)."""
    with tifffile.TiffFile(path) as tif:
        return [served_pixels(page) for page in tif.pages]
