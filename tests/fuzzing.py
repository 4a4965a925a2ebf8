"""A fuzzer of the metadata and render path: hypothesis mutates valid TIFFs written by
tifffile and drives ``tifffs.open_view(path, view=..., use_levels=...)`` -> ``.size``,
``.read``, for block, interpolated, fit and Z views.

What must hold for every input:

* ``open_view`` and ``read`` raise nothing but ``tifffs.errors.TifffsError`` (what the
  mount maps to an errno) or ``OSError``; no other exception, no crash, no hang (an
  alarm fires after ``--hang-seconds``);
* a read returns exactly ``min(n, size - offset)`` bytes, the same bytes every time,
  and a whole view (when small) is a TIFF that tifffile reads;
* memory stays bounded: the peak RSS grows by less than ``--max-growth-mib`` over the
  run (address space is capped as well, so a runaway allocation fails fast), and no
  file descriptor leaks.

Run by ``tests/test_fuzz.py`` for a fixed number of examples in CI, and by hand for
as long as you like::

    scripts/fuzz 3600                 # one hour, random seed, findings in ./fuzz-findings
    scripts/fuzz 600 --seed 7         # reproducible
    .venv/bin/python tests/fuzzing.py --examples 3000 --seed 0  # what CI runs

Each failing input is saved to the findings directory with the traceback; the input
being tried is always in ``current.tif`` there, so a crash (SIGSEGV in a codec) or a
hang leaves its reproducer behind.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import io
import json
import logging
import os
import random
import re
import resource
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from tifffile import COMPRESSION

sys.path.insert(0, str(Path(__file__).parent))
import tifffs
from crafted import ifd_chain
from lzw_reference import table_code_after_a_later_clear
from reference import decoded_page, reference_area, reference_blocks, served_pixels
from tifffs import isolated
from tifffs.describe import describe
from tifffs.errors import TifffsError

#: Views whose pixels the fuzzer checks against the reference of tifffile's pixels.
BLOCK_VIEW = re.compile(r"x(?P<factor>\d+)-(?P<method>mean|nearest|max|min|median|mode)")
FIT_VIEW = re.compile(r"fit\d+")
FACTORS = (1, 2, 3, 4, 7)
METHODS = ("mean", "nearest", "max", "median", "mode")
#: Every factor with every method, and the other kinds of view: min, interpolated
#: (whole pages), fit (exact area weights) and Z runs (the source's series).
VIEWS = tuple(f"x{f}-{m}" for f in FACTORS for m in METHODS) + (
    "x2-min", "x2-linear", "x3-lanczos", "fit16", "fit7", "x2z2", "x1z2-max",
    "x2z3-median", "x4z2-nearest")
#: Seeds written by other programs.
SEED_FILES = Path(__file__).with_name("fuzz-seeds")
#: A whole view up to this size is read and parsed with tifffile.
WHOLE_READ_LIMIT = 4 << 20
#: Pages up to this many samples are compared with the reference (whose mode is a
#: Python loop per block).
REFERENCE_LIMIT = 1 << 16


class Hang(Exception):
    """An example ran longer than the hang limit (raised by SIGALRM)."""


class Finding(AssertionError):
    """An input broke a rule; the message says which."""


def seeds() -> dict[str, bytes]:
    """Small valid TIFFs of many kinds, written by tifffile (the fuzzer's corpus)."""
    rng = np.random.default_rng(0)

    def write(array: np.ndarray, **kwargs: Any) -> bytes:
        buffer = io.BytesIO()
        kwargs.setdefault("photometric", "minisblack")
        tifffile.imwrite(buffer, array, **kwargs)
        return buffer.getvalue()

    u8 = rng.integers(0, 255, (3, 37, 29), dtype=np.uint8)
    u16 = rng.integers(0, 65535, (2, 40, 33), dtype=np.uint16)
    rgb = rng.integers(0, 255, (30, 26, 3), dtype=np.uint8)
    f32 = rng.standard_normal((2, 21, 19)).astype(np.float32)
    pyramid = io.BytesIO()
    with tifffile.TiffWriter(pyramid) as writer:
        writer.write(rng.integers(0, 255, (64, 48), dtype=np.uint8), subifds=1,
                     photometric="minisblack", tile=(16, 16))
        writer.write(rng.integers(0, 255, (32, 24), dtype=np.uint8),
                     photometric="minisblack", subfiletype=1, tile=(16, 16))
    return {
        "u8_strips.tif": write(u8, rowsperstrip=5),
        "u16_lzw.tif": write(u16, compression="lzw", rowsperstrip=7),
        "u16_deflate_predictor.tif": write(u16, compression="zlib", predictor=True),
        "u8_packbits.tif": write(u8, compression="packbits", rowsperstrip=9),
        "u16_tiles_zstd.tif": write(u16, tile=(16, 16), compression="zstd"),
        "rgb_planar.tif": write(rgb.transpose(2, 0, 1), photometric="rgb",
                                planarconfig="separate"),
        "rgb_jpeg.tif": write(rgb, photometric="rgb", compression="jpeg"),
        "f32_float_predictor.tif": write(f32, compression="zlib", predictor=3),
        "palette.tif": write(u8[0], photometric="palette",
                             colormap=np.arange(768, dtype=np.uint16).reshape(3, 256)),
        "imagej_hyperstack.tif": write(rng.integers(0, 65535, (2, 3, 20, 18),
                                                    dtype=np.uint16), imagej=True,
                                       metadata={"axes": "ZCYX", "spacing": 2.0,
                                                 "unit": "um"}, resolution=(4.0, 4.0)),
        "ome.tif": write(u8, ome=True, metadata={"axes": "ZYX"}),
        "bigendian.tif": write(u16, byteorder=">"),
        "bigtiff.tif": write(u8, bigtiff=True),
        "pyramid_subifds.tif": pyramid.getvalue(),
        "bilevel_packbits.tif": write(u8[0] > 127, photometric="miniswhite",
                                      compression="packbits", rowsperstrip=9),
        "u12_packed.tif": write(u16[0] >> 4, bitspersample=12),
        "u4_packed.tif": write(u8[0] >> 4, bitspersample=4, rowsperstrip=8),
        "u8_tiles_uncompressed.tif": write(u8, tile=(16, 16)),
        "u16_sparse_strips.tif": _unwritten(write(u16, rowsperstrip=8), (1, 3)),
        # decoded in helper processes (tifffs.isolated)
        "u16_jpegxr_tiles.tif": write(u16, tile=(16, 16), compression="jpegxr"),
        "rgb_jpegxr.tif": write(rgb, photometric="rgb", compression="jpegxr"),
        "u8_jpeg2000_tiles.tif": write(u8, tile=(16, 16), compression="jpeg2000"),
        # bilevel CCITT files, which tifffile cannot write (fuzz-seeds/README.md)
        **{path.name: path.read_bytes() for path in sorted(SEED_FILES.glob("*.tif"))},
    }


def _unwritten(data: bytes, strips: tuple[int, ...]) -> bytes:
    """``data`` with these strips of every page never written (offset and byte count
    0), as GDAL leaves out blocks of zeros."""
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        entries = [(page.tags["StripOffsets"].valueoffset,
                    page.tags["StripByteCounts"].valueoffset,
                    page.tags["StripByteCounts"].dtype, len(page.dataoffsets))
                   for page in tif.pages]
    out = bytearray(data)
    for offsets_at, counts_at, counts_type, count in entries:
        assert max(strips) < count and counts_type in (3, 4)  # SHORT or LONG counts
        counts_size = 2 if counts_type == 3 else 4
        for strip in strips:
            out[offsets_at + 4 * strip:offsets_at + 4 * strip + 4] = bytes(4)
            at = counts_at + counts_size * strip
            out[at:at + counts_size] = bytes(counts_size)
    return bytes(out)


def _fields(data: bytes) -> list[tuple[int, int]]:
    """(offset, width) of the structural fields of a classic little-endian TIFF: the
    first-IFD offset, each entry's type, count and value, and each next-IFD pointer."""
    if data[:4] != b"II*\0":
        return [(4, 4)] if len(data) >= 8 else []
    fields = [(4, 4)]
    for ifd in ifd_chain(data):
        fields.append((ifd.offset, 2))
        for at, _, _, _ in ifd.entries.values():
            fields += [(at + 2, 2), (at + 4, 4), (at + 8, 4)]
        fields.append((ifd.next_field, 4))
    return fields


def _interesting(data: bytes) -> list[int]:
    """Values worth writing into a structural field."""
    values = [0, 1, 2, 3, 7, 8, 16, 255, 256, 4095, 0x7FFF, 0x8000, 0xFFFF, 0x10000,
              2**31 - 1, 2**31, 2**32 - 1, len(data) - 1, len(data), len(data) + 1]
    if data[:4] == b"II*\0":
        values += [ifd.offset for ifd in ifd_chain(data)]
    return values


SEEDS = seeds()
FIELDS = {name: _fields(data) for name, data in SEEDS.items()}
INTERESTING = {name: _interesting(data) for name, data in SEEDS.items()}


@st.composite
def mutated_tiffs(draw: Callable[..., Any]) -> tuple[str, bytes]:
    """A seed with 1 to 8 mutations: structural fields set to interesting values, bytes
    set, ranges copied over others, the end cut off."""
    name = draw(st.sampled_from(sorted(SEEDS)))
    data = bytearray(SEEDS[name])
    fields, interesting = FIELDS[name], INTERESTING[name]
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["field", "field", "byte", "copy", "truncate"]))
        if kind == "field" and fields:
            at, width = draw(st.sampled_from(fields))
            value = draw(st.sampled_from(interesting) | st.integers(0, 2**32 - 1))
            data[at:at + width] = (value % (1 << 8 * width)).to_bytes(width, "little")
        elif kind == "byte" and data:
            at = draw(st.integers(0, len(data) - 1))
            data[at] = draw(st.integers(0, 255))
        elif kind == "copy" and len(data) > 8:
            start = draw(st.integers(0, len(data) - 1))
            length = draw(st.integers(1, min(64, len(data) - start)))
            to = draw(st.integers(0, len(data) - length))
            data[to:to + length] = data[start:start + length]
        elif kind == "truncate":
            del data[draw(st.integers(0, len(data))):]
    return name, bytes(data)


class Fuzzer:
    """Checks one input at a time; keeps the memory baseline and the findings."""

    def __init__(self, workdir: Path, findings: Path, hang_seconds: float,
                 max_growth_mib: int) -> None:
        self.current = workdir / "current.tif"
        self.findings = findings
        self.hang_seconds = hang_seconds
        self.max_growth_kib = max_growth_mib << 10
        self.examples = 0
        self.refused = 0
        self.known_lzw = 0
        signal.signal(signal.SIGALRM, self._alarm)
        for data in SEEDS.values():  # warm up every codec before the baseline
            self.current.write_bytes(data)
            try:
                self._exercise("x2", False, random.Random(0))
            except (TifffsError, OSError):
                pass
        gc.collect()
        self.baseline_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.baseline_fds = len(os.listdir("/proc/self/fd"))

    @staticmethod
    def _alarm(signum: int, frame: Any) -> None:
        raise Hang("no result within the hang limit")

    def check(self, name: str, data: bytes, view: str, use_levels: bool,
              read_seed: int) -> None:
        """Run one input; raise ``Finding`` (after saving the input) if a rule breaks."""
        self.current.write_bytes(data)
        self.examples += 1
        if known_lzw_defect(self.current):
            self.known_lzw += 1
            return
        signal.setitimer(signal.ITIMER_REAL, self.hang_seconds)
        call = f"view={view!r}, use_levels={use_levels}"
        try:
            self._exercise(view, use_levels, random.Random(read_seed))
        except (TifffsError, OSError):
            self.refused += 1
        except BaseException as exc:  # anything else is a finding
            if isinstance(exc, KeyboardInterrupt):
                raise
            self._save(name, data, call, exc)
            raise Finding(f"{type(exc).__name__} from a mutation of {name}, "
                          f"{call}: {exc}") from exc
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - self.baseline_kib
        if grown > self.max_growth_kib:
            error = Finding(f"peak RSS grew by {grown >> 10} MiB (limit "
                            f"{self.max_growth_kib >> 10} MiB)")
            self._save(name, data, call, error)
            raise error

    def _exercise(self, name: str, use_levels: bool, rng: random.Random) -> None:
        view = tifffs.open_view(str(self.current), view=name, use_levels=use_levels)
        size = view.size
        if not isinstance(size, int) or size < 8:
            raise Finding(f"size {size!r}")
        ranges = [(0, 8), (0, 65536), (size - 1, 10), (size, 5)]
        ranges += [(rng.randrange(size), rng.choice([1, 3, 4096, 100000]))
                   for _ in range(4)]
        for offset, length in ranges:
            first = view.read(offset, length)
            if len(first) != max(0, min(length, size - offset)):
                raise Finding(f"read({offset}, {length}) of a {size}-byte view gave "
                              f"{len(first)} bytes")
            if view.read(offset, length) != first:
                raise Finding(f"read({offset}, {length}) gave other bytes the second time")
        if size <= WHOLE_READ_LIMIT:
            whole = view.read(0, size)
            with tifffile.TiffFile(io.BytesIO(whole)) as tif:
                served = [decoded_page(page) for page in tif.pages]
            if not use_levels:
                self._compare(name, served)

    def _compare(self, name: str, served: list[np.ndarray]) -> None:
        """A block or fit view's pixels must be the reference downsampling of the pages
        as tifffile decodes them, wherever tifffile decodes every page tifffs serves."""
        match = BLOCK_VIEW.fullmatch(name)
        if match is None and not FIT_VIEW.fullmatch(name):
            return
        factor, method = (int(match["factor"]), match["method"]) if match else (0, "area")
        try:
            with tifffile.TiffFile(self.current) as tif:
                pages = tif.pages[:len(served)]
                if any(isolated.is_isolated(page.compression) for page in pages):
                    return  # tifffile would decode them here, where their decoder may
                    # crash the fuzzer (test_isolated.py compares their pixels)
                sources = [served_pixels(page) for page in pages]
                quirks = {i for i, page in enumerate(pages) if _tifffile_quirk(page)}
        except Exception:  # noqa: BLE001  (tifffile cannot read it: nothing to compare)
            return
        for index, ((pixels, photometric, grey), got) in enumerate(zip(sources, served)):
            if index in quirks or pixels.size > REFERENCE_LIMIT:
                continue
            kept = method
            if photometric == 3 and method not in ("mode", "area"):  # palette: nearest
                kept = "nearest"
            if grey and method == "median":  # bilevel: served as mode (two levels)
                kept = "mode"
            if pixels.dtype.kind == "f" and kept != "nearest" or photometric == 3 and \
                    kept == "area":
                continue  # float arithmetic and palettes in fit views: tested elsewhere
            if kept == "area":  # exact for integers of up to 16 bits, float64 beyond
                if pixels.dtype.itemsize > 2:
                    continue
                expected = reference_area(pixels, got.shape[0], got.shape[1])
            elif kept == "nearest":
                expected = pixels[::factor, ::factor]
            else:
                expected = reference_blocks([pixels], factor, kept)
            if not np.array_equal(got, expected, equal_nan=pixels.dtype.kind == "f"):
                raise Finding(f"page {index} of view {name} differs from the reference of "
                              f"tifffile's pixels ({got.dtype} {got.shape} against "
                              f"{expected.dtype} {expected.shape})")

    def _save(self, name: str, data: bytes, call: str, error: BaseException) -> None:
        self.findings.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(data).hexdigest()[:12]
        stem = self.findings / f"{type(error).__name__}-{Path(name).stem}-{digest}"
        stem.with_suffix(".tif").write_bytes(data)
        stem.with_suffix(".txt").write_text(
            f"seed file {name}, tifffs.open_view(path, {call})\n\n"
            + "".join(traceback.format_exception(error)))

    def check_leaks(self) -> None:
        gc.collect()
        fds = len(os.listdir("/proc/self/fd"))
        if fds > self.baseline_fds + 8:
            raise Finding(f"{fds - self.baseline_fds} file descriptors leaked")


def run(fuzzer: Fuzzer, examples: int, first_seed: int, shrink: bool) -> None:
    """``examples`` examples from hypothesis, seeded with ``first_seed``."""
    phases = [Phase.explicit, Phase.generate] + ([Phase.shrink] if shrink else [])

    @seed(first_seed)
    @settings(max_examples=examples, deadline=None, database=None, phases=phases,
              suppress_health_check=list(HealthCheck), print_blob=True)
    @given(mutated_tiffs(), st.sampled_from(VIEWS), st.booleans(), st.integers(0, 2**32))
    def one(mutated: tuple[str, bytes], view: str, use_levels: bool, read_seed: int) -> None:
        name, data = mutated
        fuzzer.check(name, data, view, use_levels, read_seed)

    one()
    fuzzer.check_leaks()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--seconds", type=float, help="run batches until this much time")
    budget.add_argument("--examples", type=int, help="run exactly this many examples")
    budget.add_argument("--replay", type=Path, metavar="DIR",
                        help="check the past findings in DIR (its index.json names the "
                             "view each broke) instead of new inputs")
    parser.add_argument("--seed", type=int, help="first hypothesis seed (default: random)")
    parser.add_argument("--findings", type=Path, default=Path("fuzz-findings"))
    parser.add_argument("--hang-seconds", type=float, default=20.0)
    parser.add_argument("--max-growth-mib", type=int, default=1536)
    parser.add_argument("--max-address-space-gib", type=int, default=8)
    parser.add_argument("--shrink", action="store_true",
                        help="let hypothesis shrink a failing input (slow for hangs)")
    args = parser.parse_args(argv)
    logging.getLogger("tifffile").setLevel(logging.CRITICAL)  # it logs what it repairs
    limit = args.max_address_space_gib << 30
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    first_seed = args.seed if args.seed is not None else random.randrange(2**31)
    args.findings.mkdir(parents=True, exist_ok=True)
    fuzzer = Fuzzer(args.findings, args.findings, args.hang_seconds, args.max_growth_mib)
    if args.replay is not None:
        return replay(fuzzer, args.replay)
    started = time.monotonic()
    print(f"fuzzing tifffs.open_view, seed {first_seed}, findings in {args.findings}",
          flush=True)
    findings: dict[str, Finding] = {}
    batch = 0
    while not findings or args.examples is None:
        if args.examples is None and time.monotonic() - started >= args.seconds:
            break
        try:  # with --seconds, go on after a finding (a new batch, a new seed)
            run(fuzzer, args.examples or 200, first_seed + batch, args.shrink)
        except Finding as finding:
            key = _where(finding)
            if key not in findings:
                print(f"FINDING after {fuzzer.examples} examples at {key}: {finding}",
                      flush=True)
            findings.setdefault(key, finding)
        batch += 1
        if args.examples is not None:
            break
    print(f"{len(findings)} distinct findings (saved in {args.findings}); {fuzzer.examples} "
          f"examples, {fuzzer.refused} refused with an errno, {fuzzer.known_lzw} not run "
          "(the known LZW case, docs/operations.md), in "
          f"{time.monotonic() - started:.0f} s; peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10} MiB", flush=True)
    return 1 if findings else 0


def known_lzw_defect(path: Path) -> bool:
    """Whether tifffs would decode an LZW segment of ``path`` that has a table code right
    after a CLEAR code other than its first. imagecodecs' decoder may then read freed
    memory and crash, depending on the state of the heap; tifffs checks only the start
    of a stream (docs/operations.md says why). Such inputs are counted, not run, so that a
    long run goes on to other findings."""
    try:
        with open(path, "rb") as fh:
            description = describe(fh.fileno(), os.fstat(fh.fileno()).st_size, path.name)
    except Exception:  # noqa: BLE001  (refused: nothing is decoded)
        return False
    data = path.read_bytes()
    for page in description.pages:
        if page.compression == COMPRESSION.LZW:
            for offset, count in zip(page.offsets.tolist(), page.bytecounts.tolist()):
                if offset and table_code_after_a_later_clear(data[offset:offset + count]):
                    return True
    return False


def _tifffile_quirk(page: tifffile.TiffPage) -> bool:
    """Whether tifffile reads this damaged page otherwise than the TIFF specification
    (and tifffs) do, so that its pixels are no reference:

    * a strip or tile never written (offset or byte count 0): tifffile reads a page of
      one such strip at offset 0, and may read the strips after one from the wrong
      place when it reads neighbours together;
    * a predictor on an uncompressed contiguous page: tifffile undoes it over the whole
      page as one row, not row by row;
    * numeric tags of type BYTE, which tifffile keeps as bytes (``PlanarConfiguration``
      ``b'\\x02'``) where readers should take the number.
    """
    if 0 in page.dataoffsets or 0 in page.databytecounts:
        return True
    if page.is_contiguous and page.predictor != 1:
        return True
    return any(isinstance(value, bytes) for value in (
        page.planarconfig, page.photometric, page.compression, page.predictor,
        page.fillorder, page.bitspersample, page.sampleformat, page.samplesperpixel))


def replay(fuzzer: Fuzzer, folder: Path) -> int:
    """Check every past finding in ``folder`` with the view it broke; 1 if any still
    breaks a rule."""
    index = json.loads((folder / "index.json").read_text())
    failed = 0
    for name, entry in sorted(index.items()):
        try:
            fuzzer.check(name, (folder / name).read_bytes(), entry["view"],
                         entry["use_levels"], 0)
        except Finding as finding:
            failed += 1
            print(f"STILL BROKEN {name} ({entry['broke']}): {finding}", flush=True)
    fuzzer.check_leaks()
    if fuzzer.known_lzw:  # not run, so not replayed: a past finding must be replayable
        failed += fuzzer.known_lzw
        print(f"{fuzzer.known_lzw} past findings hold the known LZW case and were not run",
              flush=True)
    print(f"replayed {len(index)} past findings, {failed} still broken", flush=True)
    return 1 if failed else 0


def _where(finding: Finding) -> str:
    """Where a finding comes from: the innermost frame of its cause in tifffs or tifffile."""
    cause = finding.__cause__ or finding
    frames = [f for f in traceback.extract_tb(cause.__traceback__)
              if "tifffs" in f.filename or "tifffile" in f.filename]
    if isinstance(cause, Hang):  # caught anywhere in a loop: name the loop's caller
        ours = [f for f in frames if "/tifffs/" in f.filename]
        return "Hang in " + " > ".join(f.name for f in ours[:3])
    place = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"
    return f"{type(cause).__name__} at {place}"


if __name__ == "__main__":
    sys.exit(main())
