"""Every TIFF a lab produces, and every reader opens the views (issue 3).

Sources are written by the programs that write them in practice (``writers.py``: tiffcp,
ImageJ 1.x, libvips, GDAL, tifffile), all under one SOURCE tree, mounted once with
``--method mean`` and once with ``--method nearest`` (factors 2 and 4).

* tifffile: every page of every view equals ``reference_page`` of the source page as
  tifffile decodes it (palette pages: always nearest).
* The reader matrix: tifffile, libtiff, ImageJ 1.x, GDAL, libvips, Pillow and ImageMagick
  read every view (factors 2 and 4) and must see its pages, sizes and pixels
  (``readers.py`` says what each reader must see). A reader is excused for a kind only
  where ``EXCUSES`` says so *and* it fails on the source too (checked here, every run); an
  excuse that no longer holds fails as well, so the README's reader matrix stays true.
  ``TIFFFS_READER_MATRIX=FILE`` writes the matrix observed in this run to FILE (markdown).
* OME-XML: the view of an OME source carries OME-XML (validated with ome-types) with the
  same images, sizes divided and physical pixel sizes multiplied by the factor.

A missing program fails (never skips): ``scripts/test`` installs them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import tifffile

import readers
import sample_kinds
import writers
from conftest import Mount, mounted
from reference import reference_page

pytestmark = pytest.mark.mount

FACTORS = (2, 4)
METHODS = ("mean", "nearest")


# -- the source tree and its mounts
@pytest.fixture(scope="session")
def lab(tmp_path_factory) -> tuple[Path, dict[str, writers.Kind]]:
    """SOURCE with one file per kind, written by the programs named in ``writers``."""
    root = tmp_path_factory.mktemp("lab-source")
    scratch = tmp_path_factory.mktemp("lab-scratch")
    try:
        kinds = writers.build_tree(root, scratch)
    except writers.MissingTool as exc:
        pytest.fail(str(exc), pytrace=False)
    return root, kinds


def _mount(lab, tmp_path_factory, name: str, *options: str) -> Iterator[Mount]:
    root, _ = lab
    with mounted(root, tmp_path_factory.mktemp(name), "--factors", "2,4", *options) as m:
        yield m


@pytest.fixture(scope="session")
def lab_mount(lab, tmp_path_factory) -> Iterator[Mount]:
    yield from _mount(lab, tmp_path_factory, "lab-mount")


@pytest.fixture(scope="session")
def lab_mount_nearest(lab, tmp_path_factory) -> Iterator[Mount]:
    yield from _mount(lab, tmp_path_factory, "lab-mount-nearest", "--method", "nearest")


KIND_NAMES = sorted(writers.declared_kinds())
OME_KINDS = [name for name in KIND_NAMES if ".ome." in name]


def reference_pages(source: Path, factor: int, method: str) -> list[np.ndarray]:
    """The source's pages as tifffs serves them (bilevel as 0/255 grey), reduced."""
    return [reference_page(pixels, factor,
                           "nearest" if photometric == readers.PALETTE else method)
            for pixels, photometric, _ in sample_kinds.served_pages(source)]


# -- what the writers wrote
COMPRESSIONS = {"lzw": 5, "zip": 8, "deflate": 8, "zstd": 50000, "packbits": 32773, "jpeg": 7,
                "ccittrle": 2, "g3": 3, "g4": 4, "group4": 4, "ojpeg": 6}


@pytest.mark.parametrize("name", KIND_NAMES)
def test_source_is_what_its_writer_wrote(lab, name):
    """The kind's name is true: compression, tiles, predictor, pyramid, SubIFDs, ..."""
    root, kinds = lab
    assert set(kinds) == set(KIND_NAMES)
    words = Path(name).name.split(".")[0].split("_")
    with tifffile.TiffFile(root / name) as tif:
        first = tif.pages.first
        compression = next((COMPRESSIONS[w] for w in words if w in COMPRESSIONS), 1)
        assert int(first.compression) == compression
        assert first.is_tiled == any(w in ("tiles", "tiled", "cog") for w in words)
        if "predictor" in words:
            assert int(first.predictor) == (3 if "float" in words else 2)
        if "ycbcr" in words:
            assert int(first.photometric) == readers.YCBCR
        if {"separate", "planar", "interleaved"} & set(words):
            assert int(first.planarconfig) == 2
        if "palette" in words:
            assert int(first.photometric) == readers.PALETTE
        assert tif.is_bigtiff == ("bigtiff" in words)
        assert tif.byteorder == (">" if "bigendian" in words else "<")
        assert ("SubIFDs" in first.tags) == ("subifd" in words)
        if "pyramid" in words and "subifd" not in words or "cog" in words:
            sizes = [(p.imagewidth, p.imagelength) for p in tif.pages]
            assert len(sizes) > 2 and sizes == sorted(sizes, reverse=True)
            assert all(int(p.subfiletype) & 1 for p in list(tif.pages)[1:])
        if "sparse" in words:  # blocks of zeros not written: offset and byte count 0
            assert 0 in first.dataoffsets and 0 in first.databytecounts
        if "georef" in words:
            assert {"ModelTiepointTag", "GeoKeyDirectoryTag"} <= {t.name for t in first.tags}
        assert tif.is_ome == (".ome." in name)
        assert tif.is_imagej == (kinds[name].writer == "ImageJ" or "imagej" in words)


# -- tifffile: pixels and structure
@pytest.mark.parametrize("name", KIND_NAMES)
@pytest.mark.parametrize("factor", FACTORS)
@pytest.mark.parametrize("method", METHODS)
def test_view_pixels_equal_reference(lab, lab_mount, lab_mount_nearest, name, factor,
                                     method):
    root, _ = lab
    mount = lab_mount if method == "mean" else lab_mount_nearest
    view = readers.tifffile_pages(mount.path / f"x{factor}" / name)
    expected = reference_pages(root / name, factor, method)
    assert len(view) == len(expected)
    for i, (page, want) in enumerate(zip(view, expected)):
        assert page.pixels.dtype == want.dtype, f"page {i}"
        np.testing.assert_array_equal(page.pixels, want, err_msg=f"page {i}")


@pytest.mark.parametrize("name", KIND_NAMES)
def test_view_structure(lab, lab_mount, name):
    """Main IFD chain only, page for page; JPEG YCbCr served as RGB; plain little-endian."""
    root, _ = lab
    for factor in FACTORS:
        with tifffile.TiffFile(root / name) as src, \
                tifffile.TiffFile(lab_mount.path / f"x{factor}" / name) as view:
            assert view.byteorder == "<"
            assert len(view.pages) == len(src.pages)
            served = sample_kinds.served_pages(root / name)
            for s, v, (pixels, photometric, _) in zip(src.pages, view.pages, served):
                assert int(v.compression) == 1 and "SubIFDs" not in v.tags
                assert (v.imagewidth, v.imagelength) == (-(-s.imagewidth // factor),
                                                         -(-s.imagelength // factor))
                assert int(v.photometric) == photometric
                assert (v.samplesperpixel, v.planarconfig, v.dtype, int(v.subfiletype)) == \
                    (s.samplesperpixel, s.planarconfig, pixels.dtype.newbyteorder("<"),
                     int(s.subfiletype))


# -- the reader matrix
READERS = ("tifffile", "libtiff", "ImageJ", "GDAL", "libvips", "Pillow", "ImageMagick")

#: (reader, kind) -> why the reader cannot read views of that kind. Each holds only while
#: the reader also fails on the source (checked by ``test_reader_reads_every_view``).
FIVE_BANDS = "gdal/band_interleaved_lzw_5band_u16.tif"
EXCUSES: dict[tuple[str, str], str] = {
    ("ImageJ", FIVE_BANDS): "ImageJ 1.x shows only the first of the 5 samples of a pixel "
                            "(one slice per page instead of 5)",
    ("libvips", FIVE_BANDS): "libvips 8.14 misreads planar-separate pages that are not RGB "
                             "(minisblack with 2 or more samples), compressed or not",
    ("Pillow", FIVE_BANDS): "Pillow has no mode for 5 samples of 16 bits: it shows only the "
                            "first band of the LZW source and cannot identify an "
                            "uncompressed file of that kind",
    ("Pillow", "tifffile/planar_rgb_u16.tif"): "Pillow reduces planar-separate 16-bit RGB to "
                                               "the low byte of each sample (contiguous 16-bit "
                                               "RGB: the high byte)",
    ("ImageMagick", FIVE_BANDS): "ImageMagick 6 reads 5 minisblack samples as gray and alpha",
    ("ImageJ", "gdal/deflate_f64.tif"): "ImageJ 1.x opens no 64-bit float TIFF",
    ("libvips", "gdal/deflate_f64.tif"): "libvips 8.14 opens no 64-bit float TIFF "
                                         "(tiff2vips: samples out of range)",
    ("Pillow", "gdal/deflate_f64.tif"): "Pillow has no mode for 64-bit floats",
}


@dataclass
class Outcome:
    """Problems a reader has with the source and with the view at each factor."""

    source: list[str]
    views: dict[int, list[str]] = field(default_factory=dict)


def _tifffile_problems(path: Path, source: Path | None, factor: int | None) -> list[str]:
    """The view's pages equal the reference (method mean); a source is the ground truth."""
    if source is None:
        return []
    try:
        view = [p.pixels for p in readers.tifffile_pages(path)]
    except Exception as exc:  # noqa: BLE001 (anything tifffile raises)
        return [f"cannot read: {exc}"]
    return readers.compare(reference_pages(source, factor, "mean"), view)


class Matrix:
    """Runs each reader once over all sources and all views; caches the outcomes."""

    def __init__(self, root: Path, mount: Mount, workdir: Path) -> None:
        self.root, self.mount, self.workdir = root, mount, workdir
        self.outcomes: dict[str, dict[str, Outcome]] = {}
        self._imagej: dict[Path, readers.ImageJReport | str] | None = None

    def paths(self) -> list[tuple[str, int | None, Path]]:
        """(kind, factor or None for the source, path) of everything read."""
        items = [(name, None, self.root / name) for name in KIND_NAMES]
        items += [(name, f, self.mount.path / f"x{f}" / name) for f in FACTORS
                  for name in KIND_NAMES]
        return items

    def imagej_reports(self) -> dict[Path, readers.ImageJReport | str]:
        """ImageJ's reports on every source and view (one JVM for all)."""
        if self._imagej is None:
            self._imagej = readers.run_imagej([path for _, _, path in self.paths()])
        return self._imagej

    def of(self, reader: str) -> dict[str, Outcome]:
        if reader not in self.outcomes:
            self.outcomes[reader] = self._run(reader)
        return self.outcomes[reader]

    def _run(self, reader: str) -> dict[str, Outcome]:
        work = self.workdir / reader
        work.mkdir(exist_ok=True)
        items = self.paths()
        paths = [path for _, _, path in items]
        if reader == "tifffile":
            problems = {path: _tifffile_problems(path, None if f is None else self.root / n, f)
                        for n, f, path in items}
        elif reader == "libtiff":
            problems = {path: readers.check_libtiff(path, work) for _, _, path in items}
        elif reader == "ImageMagick":
            problems = {path: readers.check_imagemagick(path, work) for _, _, path in items}
        elif reader == "ImageJ":
            reports = self.imagej_reports()
            problems = {path: readers.check_imagej(reports[path], path) for path in paths}
        elif reader == "GDAL":
            readings = readers.read_gdal(paths, work)
            problems = {path: readers.check_gdal(readings[path], path) for path in paths}
        else:
            worker, model = {"libvips": ("vips", readers.vips_expected),
                             "Pillow": ("pillow", readers.pillow_expected)}[reader]
            readings = readers.read_batch(worker, paths, work)
            problems = {path: readers.check_reading(
                readings[path], [model(p) for p in readers.tifffile_pages(path)])
                for path in paths}
        outcomes = {}
        for name in KIND_NAMES:
            source = self.root / name
            outcomes[name] = Outcome(readers.source_failures(problems[source]))
            for f in FACTORS:
                view = self.mount.path / f"x{f}" / name
                outcomes[name].views[f] = readers.view_problems(problems[view], view,
                                                                problems[source], source)
        return outcomes


@pytest.fixture(scope="session")
def matrix(lab, lab_mount, tmp_path_factory) -> Iterator[Matrix]:
    root, _ = lab
    m = Matrix(root, lab_mount, tmp_path_factory.mktemp("readers"))
    yield m
    target = os.environ.get("TIFFFS_READER_MATRIX")
    if target:
        Path(target).write_text(matrix_markdown(m, lab[1]))


@pytest.mark.parametrize("name", KIND_NAMES)
@pytest.mark.parametrize("reader", READERS)
def test_reader_reads_every_view(matrix, reader, name):
    """Right pages, sizes, pixels, no complaint; or an excuse proven on the source."""
    try:
        outcome = matrix.of(reader)[name]
    except readers.ReaderMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    failing = {f: p for f, p in outcome.views.items() if p}
    excuse = EXCUSES.get((reader, name))
    if not failing:
        assert excuse is None, (f"{reader} now reads the views of {name}: drop the excuse "
                                f"({excuse!r}) here and in the README's reader matrix")
        return
    report = "\n".join(f"  x{f}: {'; '.join(p)}" for f, p in failing.items())
    assert excuse is not None, (
        f"{reader} fails on the views of {name}:\n{report}\n"
        f"and on the source: {'; '.join(outcome.source) or 'nothing (reads it fine)'}")
    assert outcome.source, (f"{reader} reads the source {name} but not its views (excused "
                            f"as {excuse!r}, which does not hold):\n{report}")


def matrix_markdown(m: Matrix, kinds: dict[str, writers.Kind]) -> str:
    """The observed matrix: one row per kind, one column per reader."""
    lines = ["| source kind | written by | " + " | ".join(READERS) + " |",
             "| --- | --- | " + " | ".join("---" for _ in READERS) + " |"]
    notes: list[str] = []
    for name in KIND_NAMES:
        cells = []
        for reader in READERS:
            outcome = m.outcomes.get(reader, {}).get(name)
            if outcome is None:
                cells.append("not run")
                continue
            view_ok = not any(outcome.views.values())
            source_ok = not outcome.source
            if view_ok:
                cell = "yes" if source_ok else "yes (source: no)"
                if not source_ok:
                    notes.append(f"{reader} on source {name}: {'; '.join(outcome.source)}")
            else:
                problems = "; ".join(p for ps in outcome.views.values() for p in ps)
                cell = "excused" if (reader, name) in EXCUSES and not source_ok else "**NO**"
                notes.append(f"{reader} on views of {name}: {problems} -- source: "
                             f"{'; '.join(outcome.source) or 'reads it'}")
            cells.append(cell)
        lines.append(f"| `{name}` | {kinds[name].how} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + "\n".join(f"* {n}" for n in notes) + "\n"


# -- ImageJ: hyperstack dimensions and calibration follow the source
NO_PHYSICAL_UNIT = {"", " ", "pixel", "pixels"}
IMAGEJ_KEYS = ("channels", "slices", "frames", "hyperstack", "mode", "unit", "spacing",
               "finterval")
IMAGEJ_CALIBRATED = [name for name in KIND_NAMES if name.startswith(("imagej/", "vips/"))
                     or "imagej" in name]


@pytest.mark.parametrize("name", IMAGEJ_CALIBRATED)
def test_imagej_sees_hyperstack_and_scaled_calibration(lab, lab_mount, matrix, name):
    """Channels, slices, frames and unit as in the source; pixel size f times; z spacing."""
    root, _ = lab
    paths = [root / name, *(lab_mount.path / f"x{f}" / name for f in FACTORS)]
    try:
        reports = matrix.imagej_reports()
    except readers.ReaderMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    with tifffile.TiffFile(paths[0]) as tif:
        source_meta = tif.imagej_metadata
    for path in paths[1:] if source_meta else ():  # dimensions, spacing, frame interval
        with tifffile.TiffFile(path) as tif:
            view_meta = tif.imagej_metadata or {}
        for key in IMAGEJ_KEYS:
            assert view_meta.get(key) == source_meta.get(key), (path, key)
    source = reports[paths[0]]
    if isinstance(source, str):  # ImageJ cannot open the source: the views only
        for path in paths[1:]:
            assert not isinstance(reports[path], str), reports[path]
        return
    for factor, path in zip(FACTORS, paths[1:]):
        view = reports[path]
        assert not isinstance(view, str), view
        assert (view.channels, view.slices, view.frames) == \
            (source.channels, source.slices, source.frames)
        if source.unit in NO_PHYSICAL_UNIT:  # ImageJ ignores a resolution without unit
            assert view.unit in NO_PHYSICAL_UNIT and view.pixel_width == source.pixel_width
            continue
        assert view.unit == source.unit
        assert math.isclose(view.pixel_width, factor * source.pixel_width, rel_tol=1e-9)
        assert math.isclose(view.pixel_height, factor * source.pixel_height, rel_tol=1e-9)
        assert math.isclose(view.pixel_depth, source.pixel_depth, rel_tol=1e-9)


# -- OME-XML
def _ome(path: Path):
    from ome_types import from_xml

    with tifffile.TiffFile(path) as tif:
        description = tif.pages.first.description
        assert tif.is_ome, f"{path} has no OME-XML description: {description[:200]!r}"
        return from_xml(description, validate=True), [s.shape for s in tif.series], \
            len(tif.pages)


@pytest.mark.parametrize("name", OME_KINDS)
@pytest.mark.parametrize("factor", FACTORS)
def test_ome_view_has_valid_scaled_ome_xml(lab, lab_mount, name, factor):
    """Same images and planes; SizeX/SizeY ceil(/f); PhysicalSizeX/Y times f; valid XML."""
    root, _ = lab
    source, _, source_pages = _ome(root / name)
    view, _, view_pages = _ome(lab_mount.path / f"x{factor}" / name)  # validates the XML
    assert view_pages == source_pages
    assert len(view.images) == len(source.images)
    for s, v in zip(source.images, view.images):
        sp, vp = s.pixels, v.pixels
        assert (vp.size_x, vp.size_y) == (-(-sp.size_x // factor), -(-sp.size_y // factor))
        assert (vp.size_z, vp.size_c, vp.size_t, vp.type, vp.dimension_order) == \
            (sp.size_z, sp.size_c, sp.size_t, sp.type, sp.dimension_order)
        for axis in ("x", "y"):
            size = getattr(sp, f"physical_size_{axis}")
            scaled = getattr(vp, f"physical_size_{axis}")
            if size is None:
                assert scaled is None
            else:
                assert scaled == pytest.approx(size * factor, rel=1e-9)
                assert getattr(vp, f"physical_size_{axis}_unit") == \
                    getattr(sp, f"physical_size_{axis}_unit")
        assert vp.physical_size_z == sp.physical_size_z


@pytest.mark.parametrize("name", OME_KINDS)
@pytest.mark.parametrize("factor", FACTORS)
def test_ome_view_series_are_the_downsampled_series(lab, lab_mount, name, factor):
    """tifffile's OME series of the view: the source's, Y and X reduced, reference pixels."""
    root, _ = lab
    view_path = lab_mount.path / f"x{factor}" / name
    with tifffile.TiffFile(root / name) as src, tifffile.TiffFile(view_path) as view:
        assert view.is_ome
        assert len(view.series) == len(src.series)
        for s, v in zip(src.series, view.series):
            assert v.axes == s.axes
            expected_shape = tuple(-(-n // factor) if a in "YX" else n
                                   for a, n in zip(s.axes, s.shape))
            assert v.shape == expected_shape
            source_pixels, view_pixels = s.asarray(), v.asarray()
            planes = s.axes.index("Y")  # (..., Y, X[, S]): one reference per plane
            for index in np.ndindex(*s.shape[:planes]):
                np.testing.assert_array_equal(
                    view_pixels[index], reference_page(source_pixels[index], factor, "mean"),
                    err_msg=f"series {s.index} plane {index}")
