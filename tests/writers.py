"""Source TIFFs as the programs that write them in practice write them.

Every file starts from a numpy array generated here; it is then written by libtiff's
``tiffcp``, ImageJ 1.x (headless, ``ImageJWriter.java``), libvips (``vips``), GDAL
(``gdal_translate``) or tifffile, with the options those programs use in labs (slide
scanners, microscopes, GIS); bilevel, packed and old-style JPEG files come from
``sample_kinds`` (also ImageMagick and fax2tiff). ``build_tree`` writes them all under
one SOURCE directory, one subdirectory per writer, and returns what each file is
(``KINDS``).

A missing program fails (never skips): ``scripts/test`` installs them.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from conftest import sample_array
from tools import MissingTool, require

INSTALL_HINT = ("run scripts/test, which installs libtiff-tools, imagej, Java, libvips-tools, "
                "gdal-bin and imagemagick")
IMAGEJ_JAR = Path("/usr/share/java/ij.jar")
IMAGEJ_WRITER = Path(__file__).with_name("ImageJWriter.java")
TOOL_TIMEOUT = 300

# size of most sources: odd in both directions, so that factors 2 and 4 leave edge blocks
H, W = 203, 301


def tool(name: str) -> str:
    return require(name, MissingTool, INSTALL_HINT)


def run(*command: str | Path) -> subprocess.CompletedProcess:
    """Run a writer; fail with its output when it fails."""
    command = [str(c) for c in command]
    command[0] = tool(command[0])
    result = subprocess.run(command, capture_output=True, text=True, timeout=TOOL_TIMEOUT,
                            check=False)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({result.returncode}):\n"
                             f"{result.stdout}\n{result.stderr}")
    return result


# -- generated pixels
noise = sample_array  # random pixels over the whole range; dyadic floats (exact sums)


def smooth_rgb(shape: tuple[int, int], seed: int) -> np.ndarray:
    """A photograph-like RGB image (gradients plus a little noise), as JPEG is used for."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:shape[0], 0:shape[1]]
    rgb = np.stack([x * 0.8 + 20, y * 1.1 + 10, (x + y) * 0.4 + 60], axis=-1)
    rgb += rng.normal(0, 6, rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Kind:
    """One source file: its name under SOURCE, the program that wrote it and how."""

    name: str
    writer: str  # tiffcp, ImageJ, vips, GDAL, tifffile, ImageMagick, fax2tiff
    how: str  # the command or call, for the reader matrix
    ome: bool = False  # has an OME-XML description


KINDS: dict[str, Kind] = {}


def _kind(name: str, writer: str, how: str, ome: bool = False) -> Kind:
    kind = Kind(name, writer, how, ome)
    KINDS[name] = kind
    return kind


def plain(path: Path, array: np.ndarray, **kwargs) -> Path:
    """An uncompressed TIFF written by tifffile: the input of the other writers."""
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs.setdefault("photometric", "minisblack")
    kwargs.setdefault("metadata", None)  # no shape description: a plain input file
    tifffile.imwrite(path, array, **kwargs)
    return path


# -- tiffcp
TIFFCP = {
    # name: (input, options)
    "tiffcp/lzw_u16_pages.tif": ("u16_pages", "-c lzw"),
    "tiffcp/lzw_predictor_u16_pages.tif": ("u16_pages", "-c lzw:2"),
    "tiffcp/zip_u8_pages.tif": ("u8_pages", "-c zip"),
    "tiffcp/zip_float_predictor_f32.tif": ("f32_pages", "-c zip:3"),
    "tiffcp/packbits_u8_pages.tif": ("u8_pages", "-c packbits"),
    "tiffcp/jpeg_ycbcr_rgb.tif": ("rgb_smooth", "-c jpeg -r 16"),
    "tiffcp/jpeg_ycbcr_rgb_tiles.tif": ("rgb_smooth", "-c jpeg -t -w 64 -l 64"),
    "tiffcp/jpeg_gray_u8.tif": ("u8_smooth", "-c jpeg -r 32"),
    "tiffcp/tiles_u16_pages.tif": ("u16_pages", "-t -w 64 -l 64"),
    "tiffcp/rows_per_strip_7_u16.tif": ("u16_pages", "-r 7"),
    "tiffcp/separate_rgb_u8.tif": ("rgb_noise", "-p separate"),
    # tiffcp converts to planar separate only for 8-bit samples
    "tiffcp/lzw_predictor_tiles_separate_rgb_u8.tif": (
        "rgb_noise", "-c lzw:2 -t -w 32 -l 48 -p separate"),
    "tiffcp/zip_predictor_tiles_rgb_u16.tif": ("rgb16_noise", "-c zip:2 -t -w 48 -l 32"),
}


def build_tiffcp(root: Path, inputs: dict[str, Path]) -> None:
    for name, (source, options) in TIFFCP.items():
        out = root / name
        out.parent.mkdir(parents=True, exist_ok=True)
        run("tiffcp", *options.split(), inputs[source], out)
        _kind(name, "tiffcp", f"tiffcp {options} ({source})")


# -- ImageJ 1.x
def build_imagej(root: Path, scratch: Path) -> None:
    """Files saved by ImageJ's FileSaver, big-endian as ImageJ writes them."""
    specs = []

    def spec(name: str, array: np.ndarray, type_: str, c: int, z: int, t: int, how: str,
             **extra: str) -> None:
        raw = scratch / (Path(name).stem + ".raw")
        raw.write_bytes(np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"))
                        .tobytes())
        height, width = array.shape[-3:-1] if type_ == "rgb" else array.shape[-2:]
        out = root / name
        out.parent.mkdir(parents=True, exist_ok=True)
        fields = {"out": out, "raw": raw, "type": type_, "width": width, "height": height,
                  "channels": c, "slices": z, "frames": t, **extra}
        specs.append(";".join(f"{k}={v}" for k, v in fields.items()))
        _kind(name, "ImageJ", how)

    calibration = {"unit": "um", "pw": "0.5", "ph": "0.5", "pd": "2"}
    # stack order: channel fastest, then slice, then frame (2 x 3 x 2 = 12 planes)
    spec("imagej/hyperstack_2c3z2t_u16.tif", noise("uint16", (12, 97, 131), 40), "16", 2, 3, 2,
         "hyperstack 2c x 3z x 2t, 16-bit, composite, 0.5 um, z 2 um, 1.5 s/frame",
         composite="1", finterval="1.5", tunit="s", **calibration)
    spec("imagej/zstack_u8.tif", noise("uint8", (5, H, W), 41), "8", 1, 5, 1,
         "z-stack of 5, 8-bit, 0.5 um, z 2 um", **calibration)
    spec("imagej/single_f32.tif", noise("float32", (1, H, W), 42), "32", 1, 1, 1,
         "one 32-bit float image, 0.5 um", **calibration)
    spec("imagej/rgb_stack.tif", smooth_rgb((H, W), 43)[None].repeat(3, axis=0), "rgb", 1, 3, 1,
         "RGB stack of 3 (ColorProcessor)")
    spec("imagej/lut_palette_u8.tif", noise("uint8", (1, H, W), 44), "8", 1, 1, 1,
         "8-bit image with a colour LUT (saved as palette)", lut="palette")
    java = tool("java")
    if not IMAGEJ_JAR.is_file():
        raise MissingTool(f"{IMAGEJ_JAR} not found: {INSTALL_HINT}")
    run(java, "-Djava.awt.headless=true", "-cp", IMAGEJ_JAR, IMAGEJ_WRITER, *specs)


# -- libvips
VIPS = {
    # name: (input, vips copy target options or a tiffsave argument list)
    "vips/tiled_deflate_pyramid_bigtiff_u8.tif": ("u8_big",
                                                  "[tile,compression=deflate,pyramid,bigtiff]"),
    "vips/tiled_subifd_pyramid_lzw_rgb.tif": ("rgb_big", "[tile,pyramid,subifd,compression=lzw]"),
    "vips/tiled_jpeg_rgb.tif": (
        "rgb_smooth", "[tile,tile-width=64,tile-height=64,compression=jpeg,Q=90]"),
    "vips/strips_lzw_predictor_u16.tif": ("u16_single",
                                          "[compression=lzw,predictor=horizontal]"),
    "vips/multipage_zstd_u16.tif": ("u16_pages", "[compression=zstd]"),
    "vips/tiled_deflate_float_predictor_f32.tif": (
        "f32_single", "[tile,compression=deflate,predictor=float]"),
    "vips/packbits_rgb.tif": ("rgb_noise", "[compression=packbits]"),
}


def build_vips(root: Path, inputs: dict[str, Path]) -> None:
    for name, (source, options) in VIPS.items():
        out = root / name
        out.parent.mkdir(parents=True, exist_ok=True)
        # [n=-1]: all pages (vips keeps them as pages of the output)
        run("vips", "copy", f"{inputs[source]}[n=-1]", f"{out}{options}")
        _kind(name, "vips", f"vips copy {source}.tif[n=-1] out.tif{options}")


# -- GDAL
GDAL = {
    # name: (input, gdal_translate options)
    "gdal/tiled_deflate_predictor_u16_georef.tif": (
        "u16_single", ("-co TILED=YES -co COMPRESS=DEFLATE -co PREDICTOR=2 -a_srs EPSG:32633 "
                       "-a_ullr 500000 4650000 500301 4649797")),
    "gdal/tiled_lzw_u8.tif": ("u8_single", "-co TILED=YES -co COMPRESS=LZW"),
    "gdal/tiled_zstd_float_predictor_f32.tif": (
        "f32_single", "-co TILED=YES -co COMPRESS=ZSTD -co PREDICTOR=3"),
    "gdal/tiled_jpeg_ycbcr_rgb.tif": (
        "rgb_smooth", "-co TILED=YES -co COMPRESS=JPEG -co PHOTOMETRIC=YCBCR"),
    "gdal/tiled_jpeg_rgb.tif": ("rgb_smooth", "-co TILED=YES -co COMPRESS=JPEG"),
    "gdal/band_interleaved_lzw_5band_u16.tif": (
        "u16_5band", "-co INTERLEAVE=BAND -co COMPRESS=LZW"),
    # elevation models: signed 16-bit and 64-bit floats
    "gdal/tiled_lzw_predictor_i16_dem.tif": (
        "i16_dem", "-co TILED=YES -co COMPRESS=LZW -co PREDICTOR=2"),
    "gdal/deflate_f64.tif": ("f64_single", "-co COMPRESS=DEFLATE"),
    "gdal/cog_deflate_overviews_u8.tif": (
        "u8_big", "-of COG -co BLOCKSIZE=128 -co COMPRESS=DEFLATE -co OVERVIEWS=AUTO"),
    # sparse files: blocks of zeros are not written (offset and byte count 0)
    "gdal/sparse_strips_u16.tif": ("u16_zero_rows", "-co SPARSE_OK=TRUE"),
    "gdal/sparse_tiled_u16.tif": (
        "u16_zero_rows", "-co SPARSE_OK=TRUE -co TILED=YES -co BLOCKXSIZE=64 -co BLOCKYSIZE=64"),
}


def build_gdal(root: Path, inputs: dict[str, Path]) -> None:
    for name, (source, options) in GDAL.items():
        out = root / name
        out.parent.mkdir(parents=True, exist_ok=True)
        run("gdal_translate", "-q", *options.split(), inputs[source], out)
        _kind(name, "GDAL", f"gdal_translate {options} ({source})")


# -- tifffile
def build_tifffile(root: Path) -> None:
    d = root / "tifffile"
    d.mkdir(parents=True, exist_ok=True)

    def add(name: str, how: str, ome: bool = False) -> Path:
        _kind(f"tifffile/{name}", "tifffile", how, ome)
        return d / name

    ome_meta = {"axes": "ZYX", "PhysicalSizeX": 0.325, "PhysicalSizeXUnit": "µm",
                "PhysicalSizeY": 0.325, "PhysicalSizeYUnit": "µm", "PhysicalSizeZ": 2.0,
                "PhysicalSizeZUnit": "µm"}
    tifffile.imwrite(add("ome_zstack_u16.ome.tif", "imwrite(ome=True), ZYX, 0.325 um",
                         ome=True), noise("uint16", (4, H, W), 60), ome=True,
                     photometric="minisblack", metadata=ome_meta)
    with tifffile.TiffWriter(add("ome_two_series.ome.tif",
                                 "TiffWriter(ome=True): u16 ZYX + RGB u8 series", ome=True),
                             ome=True) as tif:
        tif.write(noise("uint16", (3, H, W), 61), photometric="minisblack",
                  metadata=ome_meta)
        tif.write(noise("uint8", (121, 99, 3), 62), photometric="rgb",
                  metadata={"axes": "YXS", "PhysicalSizeX": 1.5, "PhysicalSizeY": 1.5})
    # an OME pyramid: full resolution in the main IFD chain, levels in SubIFDs
    with tifffile.TiffWriter(add("ome_tiled_deflate_pyramid_subifd.ome.tif",
                                 "OME pyramid, 2 levels in SubIFDs, tiled zlib", ome=True),
                             ome=True) as tif:
        level0 = noise("uint8", (2, 512, 384), 63)
        options = {"tile": (128, 128), "compression": "zlib", "photometric": "minisblack"}
        tif.write(level0, subifds=2, metadata={"axes": "ZYX", "PhysicalSizeX": 0.25,
                                               "PhysicalSizeY": 0.25}, **options)
        for level in (1, 2):
            tif.write(level0[:, ::2 ** level, ::2 ** level], subfiletype=1, **options)
    tifffile.imwrite(add("imagej_hyperstack_tzcyx_u16.tif",
                         "imwrite(imagej=True), TZCYX 2x3x2, 0.25 um, spacing 1.5, finterval"),
                     noise("uint16", (2, 3, 2, 101, 77), 64), imagej=True,
                     resolution=(4.0, 4.0),
                     metadata={"axes": "TZCYX", "unit": "um", "spacing": 1.5,
                               "finterval": 2.0})
    tifffile.imwrite(add("bigtiff_u16.tif", "imwrite(bigtiff=True)"),
                     noise("uint16", (3, H, W), 65), bigtiff=True, photometric="minisblack")
    tifffile.imwrite(add("bigendian_f32.tif", "imwrite(byteorder='>'), float32"),
                     noise("float32", (2, H, W), 66), byteorder=">", photometric="minisblack")
    tifffile.imwrite(add("planar_rgb_u16.tif", "imwrite(planarconfig='separate'), RGB 16-bit"),
                     noise("uint16", (3, H, W), 67), photometric="rgb",
                     planarconfig="separate")
    colormap = np.stack([np.arange(256) * 257, (255 - np.arange(256)) * 257,
                         (np.arange(256) * 3 % 256) * 257]).astype(np.uint16)
    tifffile.imwrite(add("palette_u8.tif", "imwrite(photometric='palette')"),
                     noise("uint8", (H, W), 68), photometric="palette", colormap=colormap)
    tifffile.imwrite(add("rgba_deflate_u8.tif", "imwrite RGBA, unassociated alpha, deflate"),
                     noise("uint8", (H, W, 4), 69), photometric="rgb",
                     extrasamples=["unassalpha"], compression="zlib")


def _zero_rows(array: np.ndarray, start: int, stop: int) -> np.ndarray:
    array[start:stop] = 0
    return array


def build_inputs(scratch: Path) -> dict[str, Path]:
    """Uncompressed tifffile files that tiffcp, vips and GDAL convert."""
    arrays: dict[str, tuple[np.ndarray, dict]] = {
        "u16_pages": (noise("uint16", (3, H, W), 1), {}),
        "u8_pages": (noise("uint8", (2, H, W), 2), {}),
        "f32_pages": (noise("float32", (2, H, W), 3), {}),
        "rgb_smooth": (smooth_rgb((H, W), 4), {"photometric": "rgb"}),
        "u8_smooth": (smooth_rgb((H, W), 5)[..., 1], {}),
        "rgb_noise": (noise("uint8", (H, W, 3), 6), {"photometric": "rgb"}),
        "rgb16_noise": (noise("uint16", (H, W, 3), 7), {"photometric": "rgb"}),
        "u8_big": (noise("uint8", (450, 600), 8), {}),
        "rgb_big": (noise("uint8", (450, 600, 3), 9), {"photometric": "rgb"}),
        "u16_single": (noise("uint16", (H, W), 10), {}),
        "u8_single": (noise("uint8", (H, W), 11), {}),
        "f32_single": (noise("float32", (H, W), 12), {}),
        "u16_5band": (noise("uint16", (H, W, 5), 13), {"planarconfig": "contig"}),
        "i16_dem": (noise("int16", (H, W), 14), {}),
        "f64_single": (noise("float64", (H, W), 15), {}),
        "u16_zero_rows": (_zero_rows(noise("uint16", (H, W), 16), 40, 160), {}),
    }
    return {name: plain(scratch / f"{name}.tif", array, **kwargs)
            for name, (array, kwargs) in arrays.items()}


IMAGEJ_FILES = ("imagej/hyperstack_2c3z2t_u16.tif", "imagej/zstack_u8.tif",
                "imagej/single_f32.tif", "imagej/rgb_stack.tif", "imagej/lut_palette_u8.tif")
TIFFFILE_FILES = tuple(f"tifffile/{name}" for name in (
    "ome_zstack_u16.ome.tif", "ome_two_series.ome.tif", "ome_tiled_deflate_pyramid_subifd.ome.tif",
    "imagej_hyperstack_tzcyx_u16.tif", "bigtiff_u16.tif", "bigendian_f32.tif",
    "planar_rgb_u16.tif", "palette_u8.tif", "rgba_deflate_u8.tif"))


#: samples that are not whole bytes (``sample_kinds``): a few of each writer and kind
PACKED_FILES = ("tifffile/bilevel_default_2pages.tif", "tifffile/gray_12bit_2pages.tif",
                "tiffcp/g4_2pages.tif", "fax2tiff/g3_class_f.tif", "magick/group4.tif",
                "gdal/nbits1_ccittrle.tif", "gdal/nbits1_palette.tif", "gdal/nbits4.tif",
                "ojpeg/ojpeg_rgb.tif", "ojpeg/ojpeg_gray.tif")

PACKED_WRITERS = {"gdal": "GDAL", "magick": "ImageMagick", "ojpeg": "tifffile, patched"}


def build_packed(root: Path, scratch: Path) -> None:
    """The ``PACKED_FILES`` of ``sample_kinds`` (which writes more kinds than these)."""
    import sample_kinds  # it imports this module

    everything = scratch / "packed"
    hows = sample_kinds.build(everything, scratch)
    for name in PACKED_FILES:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(everything / name, root / name)
        folder = name.split("/")[0]
        _kind(name, PACKED_WRITERS.get(folder, folder), hows[name])


def declared_kinds() -> list[str]:
    """The names of all kinds, known without writing anything (for parametrization)."""
    return [*TIFFCP, *IMAGEJ_FILES, *VIPS, *GDAL, *TIFFFILE_FILES, *PACKED_FILES]


def build_tree(root: Path, scratch: Path) -> dict[str, Kind]:
    """Write every kind under ``root`` (inputs and raw files go to ``scratch``)."""
    KINDS.clear()
    inputs = build_inputs(scratch)
    build_tiffcp(root, inputs)
    build_imagej(root, scratch)
    build_vips(root, inputs)
    build_gdal(root, inputs)
    build_tifffile(root)
    build_packed(root, scratch)
    assert sorted(KINDS) == sorted(declared_kinds()), "declare every kind in declared_kinds"
    return dict(KINDS)
