"""The plain description of a source TIFF: its pages and the metadata views carry over.

Pure data, no file handles: a description is built once per source version (see
``describe``), kept in the index on disk (``FileDescription.to_bytes``) and is all that
``stat`` and the layout of any view need.
"""

from __future__ import annotations

import base64
import functools
import json
import struct
import zlib
from dataclasses import dataclass, fields
from fractions import Fraction
from typing import Any, NamedTuple

import numpy as np
import tifffile
from tifffile import PHOTOMETRIC

from tifffs.arith import ceil_div
from tifffs.cache import LruCache

#: Version of the serialised form and of the rules that make it; an index entry of
#: another format is described anew. 3: strips never written, damaged tags and planar
#: configurations are described as tifffile and the specification read them. 4: each
#: kind of page once, then where each page lies (a stack of 20,000 alike pages).
FORMAT = 4
#: Serialised descriptions longer than this are compressed.
_COMPRESS_ABOVE = 4096


class SourceVersion(NamedTuple):
    """Identity of one version of a source file; a change of any field is a new version."""

    device: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: Any) -> SourceVersion:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def same_content(self, st: Any) -> bool:
        """True when ``st`` (of an open descriptor) still has this version's bytes: the
        ctime is left out, since renaming or deleting the file changes it."""
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) == self[:4]


@dataclass(frozen=True, eq=False)
class SourcePage:
    """What tifffs needs to know of one source page (IFD)."""

    index: int
    ifd_offset: int
    width: int
    height: int
    samples: int
    planar_separate: bool
    dtype: np.dtype  # with the file's byte order
    sampleformat: int
    photometric: int
    compression: int
    tiled: bool
    segment_rows: int  # rows per strip, or tile length
    segment_width: int  # the image width for strips, or tile width
    extrasamples: tuple[int, ...]
    colormap: np.ndarray | None
    subfiletype: int
    offsets: np.ndarray  # uint64, one per strip or tile
    bytecounts: np.ndarray
    xresolution: Fraction | None
    yresolution: Fraction | None
    resolutionunit: int | None
    #: uncompressed strips read with ``pread`` as they are; otherwise tifffile decodes
    direct: bool
    #: bits per sample in the file (``dtype`` is the type served, see ``samples``)
    bits: int
    #: on a bilevel page served as 0/255 grey, the decoded value meaning white; else None
    bilevel_white: int | None = None

    @property
    def planes(self) -> int:
        """Number of sample planes stored one after another (1 unless planar separate)."""
        return self.samples if self.planar_separate else 1

    @property
    def samples_per_row_pixel(self) -> int:
        """Samples stored per pixel within one plane."""
        return 1 if self.planar_separate else self.samples

    @property
    def segment_samples(self) -> int:
        """Samples in one decoded strip or tile (of one plane)."""
        return self.segment_rows * self.segment_width * self.samples_per_row_pixel

    @property
    def row_bytes(self) -> int:
        """Bytes of one row of one plane."""
        return self.width * self.samples_per_row_pixel * self.dtype.itemsize

    @property
    def segments_across(self) -> int:
        """Strips or tiles per row of segments."""
        return ceil_div(self.width, self.segment_width)

    @property
    def segments_per_plane(self) -> int:
        return ceil_div(self.height, self.segment_rows) * self.segments_across

    @property
    def is_palette(self) -> bool:
        return self.photometric == PHOTOMETRIC.PALETTE

    def shape_key(self) -> tuple:
        """What pages of one ImageJ stack or Z run must share."""
        return self.width, self.height, self.samples, self.dtype

    def layout_key(self) -> tuple:
        """Every field but where the page lies (index, IFD offset, segments): pages with
        equal keys, in equal order, make views of equal layout and size. Kept on the
        page; a page copied to other segments (``with_segments``) keeps it rightly."""
        key = self.__dict__.get("_layout_key")
        if key is None:
            key = tuple(_hashable(getattr(self, name)) for name in _layout_field_names())
            object.__setattr__(self, "_layout_key", key)
        return key

    def shared_json(self) -> str:
        """JSON of the fields alike pages share (all but ``placed``'s), encoded once per
        kind of page: a folder of alike files is indexed at listing speed."""
        return _SHARED_JSON.get(self.layout_key(), lambda: json.dumps(
            {name: value for name, value in self.to_json().items()
             if name in _layout_field_names()}, separators=(",", ":")))

    def placed(self, index: int, ifd_offset: int, offsets: np.ndarray,
               bytecounts: np.ndarray) -> SourcePage:
        """This page as page ``index`` at ``ifd_offset`` with these segments (unchecked;
        ``page_rules.with_segments`` checks them). A copy of the frozen page, much faster
        than ``dataclasses.replace`` or ``copy.copy`` for a page per IFD: its fields are
        all in its ``__dict__``, and it shares the layout key."""
        self.layout_key()
        copied = object.__new__(type(self))
        copied.__dict__.update(self.__dict__, index=index, ifd_offset=ifd_offset,
                               offsets=offsets, bytecounts=bytecounts)
        return copied

    def to_json(self) -> dict[str, Any]:
        record = {name: getattr(self, name) for name in _page_field_names()}
        record["dtype"] = self.dtype.str
        record["colormap"] = None if self.colormap is None else _array_text(self.colormap)
        record["offsets"] = _array_text(self.offsets)
        record["bytecounts"] = _array_text(self.bytecounts)
        for name in ("xresolution", "yresolution"):
            value = record[name]
            record[name] = None if value is None else [value.numerator, value.denominator]
        return record

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> SourcePage:
        record = dict(record)
        record["dtype"] = np.dtype(record["dtype"])
        record["extrasamples"] = tuple(record["extrasamples"])
        record["colormap"] = (None if record["colormap"] is None
                              else _array_of(record["colormap"]))
        record["offsets"] = _array_of(record["offsets"])
        record["bytecounts"] = _array_of(record["bytecounts"])
        for name in ("xresolution", "yresolution"):
            value = record[name]
            record[name] = None if value is None else Fraction(*value)
        return cls(**record)


@functools.cache
def _page_field_names() -> tuple[str, ...]:
    return tuple(f.name for f in fields(SourcePage))


def _hashable(value: Any) -> Any:
    """``value`` as a cheap dictionary key: arrays as bytes, fractions as integer pairs
    (Python hashes a Fraction anew, slowly, every time)."""
    if isinstance(value, np.ndarray):
        return value.tobytes()
    if isinstance(value, Fraction):
        return value.numerator, value.denominator
    return value


#: The JSON of the fields pages share with alike pages, by their ``layout_key``; of
#: the metadata files share.
_SHARED_JSON: LruCache[str] = LruCache(256)
_METADATA_JSON: LruCache[str] = LruCache(64)


@functools.cache
def _layout_field_names() -> tuple[str, ...]:
    where = {"index", "ifd_offset", "offsets", "bytecounts"}
    return tuple(name for name in _page_field_names() if name not in where)


@dataclass(frozen=True)
class FileMetadata:
    """File-level metadata that views carry over (raw; parsed where it is used)."""

    imagej_description: str | None = None
    ome_xml: str | None = None
    #: IJMetadata (50839) and IJMetadataByteCounts (50838) of the first page, raw
    imagej_tag: bytes | None = None
    imagej_tag_counts: tuple[int, ...] = ()
    byteorder: str = "<"

    def json_text(self) -> str:
        """The metadata as JSON (the IJMetadata bytes in base64)."""
        record = dict(vars(self))  # its fields, all plain values
        if self.imagej_tag is not None:
            record["imagej_tag"] = base64.b64encode(self.imagej_tag).decode()
        return json.dumps(record, separators=(",", ":"))

    def imagej_metadata(self) -> dict[str, Any] | None:
        """The IJMetadata tag parsed by tifffile (ranges, LUTs, labels...), or None."""
        if not self.imagej_tag or not self.imagej_tag_counts:
            return None
        try:
            # not exported at tifffile's top level, but stable for years
            return tifffile.tifffile.imagej_metadata(self.imagej_tag, self.imagej_tag_counts,
                                                     self.byteorder)
        except (ValueError, struct.error, IndexError, UnicodeDecodeError):
            return None


@dataclass(frozen=True, eq=False)
class FileDescription:
    """All pages of the main IFD chain and the file's metadata."""

    pages: tuple[SourcePage, ...]
    metadata: FileMetadata
    #: why the description stops before the end of the IFD chain (a loop, a broken IFD)
    truncated: str | None = None

    @property
    def uniform(self) -> bool:
        """True when all pages share shape and type, as an ImageJ stack requires."""
        first = self.pages[0].shape_key()
        return all(page.shape_key() == first for page in self.pages)

    def layout_key(self) -> tuple:
        """What the layout of its views depends on: the pages but where their pixels
        lie, the metadata, the truncation (FileMetadata is frozen, so hashable)."""
        return tuple(page.layout_key() for page in self.pages), self.metadata, self.truncated

    def to_bytes(self) -> bytes:
        """JSON, compressed when large (offsets of many tiles, long OME-XML): each kind
        of page once, then each page as [kind, index, IFD offset, offsets, byte counts]."""
        kinds: dict[tuple, int] = {}
        first_of_kind: list[SourcePage] = []
        places = []
        for page in self.pages:
            kind = kinds.get(page.layout_key())
            if kind is None:
                kind = kinds[page.layout_key()] = len(first_of_kind)
                first_of_kind.append(page)
            places.append(f"[{kind},{int(page.index)},{int(page.ifd_offset)},"
                          f"{_array_json(page.offsets)},{_array_json(page.bytecounts)}]")
        shared = ",".join(page.shared_json() for page in first_of_kind)
        text = (f'{{"format":{FORMAT},"kinds":[{shared}],'
                f'"pages":[{",".join(places)}],"metadata":'
                f'{_METADATA_JSON.get(self.metadata, self.metadata.json_text)},'
                f'"truncated":{json.dumps(self.truncated)}}}').encode()
        return zlib.compress(text, 1) if len(text) > _COMPRESS_ABOVE else text

    @classmethod
    def from_bytes(cls, data: bytes) -> FileDescription:
        """Raise ``ValueError`` for anything that is not a description of this format."""
        try:
            record = json.loads(data if data[:1] == b"{" else zlib.decompress(data))
            if record.get("format") != FORMAT:
                raise ValueError("another format")
            metadata = dict(record["metadata"])
            if metadata["imagej_tag"] is not None:
                metadata["imagej_tag"] = base64.b64decode(metadata["imagej_tag"])
            metadata["imagej_tag_counts"] = tuple(metadata["imagej_tag_counts"])
            nowhere = _array_text(np.zeros(0, dtype=np.uint64))
            kinds = [SourcePage.from_json({**kind, "index": 0, "ifd_offset": 0,
                                           "offsets": nowhere, "bytecounts": nowhere})
                     for kind in record["kinds"]]
            pages = tuple(_kind(kinds, kind).placed(index, ifd_offset, _array_of(offsets),
                                                    _array_of(bytecounts))
                          for kind, index, ifd_offset, offsets, bytecounts in record["pages"])
            if not pages:
                raise ValueError("no pages")
            return cls(pages, FileMetadata(**metadata), record["truncated"])
        except (zlib.error, KeyError, TypeError, AttributeError, ValueError,
                IndexError) as exc:
            raise ValueError(f"not a tifffs description: {exc}") from None


def _kind(kinds: list[SourcePage], kind: Any) -> SourcePage:
    """The stored kind of page numbered ``kind``; ``ValueError`` for any other value."""
    if type(kind) is not int or not 0 <= kind < len(kinds):
        raise ValueError(f"no kind of page {kind!r}")
    return kinds[kind]


def _array_json(array: np.ndarray) -> str:
    """``_array_text`` as JSON text (dtype names and base64 need no escaping)."""
    kind, shape, data = _array_text(array)
    return f'["{kind}",[{",".join(map(str, shape))}],"{data}"]'


def _array_text(array: np.ndarray) -> list:
    little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    return [little.dtype.str, list(little.shape), base64.b64encode(little.tobytes()).decode()]


def _array_of(record: list) -> np.ndarray:
    dtype, shape, data = record
    return np.frombuffer(base64.b64decode(data), dtype=np.dtype(dtype)).reshape(shape)

