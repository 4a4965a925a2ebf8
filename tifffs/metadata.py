"""Metadata of a view: ImageJ description and tags, OME-XML, physical pixel size. Pure.

Source metadata is untrusted text: these functions never raise on it. What cannot be
carried over is dropped, and the text they return is plain ASCII.
"""

from __future__ import annotations

import functools
import math
import struct
import xml.etree.ElementTree as ET
from fractions import Fraction
from typing import Any

import tifffile

from tifffs.arith import ceil_div

#: ResolutionUnit values and the unit ImageJ shows for them.
RESOLUTION_UNIT_NAMES = {2: "inch", 3: "cm"}
#: ImageJ description keys that hold the stack's dimensions.
_DIMENSION_KEYS = ("channels", "slices", "frames")


def scaled_resolution(resolution: Fraction | None, ratio: Fraction) -> Fraction | None:
    """Pixels per unit of the view: the source's divided by ``ratio`` (source pixels per
    view pixel)."""
    return None if resolution is None else resolution / ratio


@functools.lru_cache(maxsize=256)  # pure; alike files of a folder ask the same
def imagej_description(pages: int, source_description: str | None,
                       resolution_unit: int | None, ratio_x: Fraction, ratio_y: Fraction,
                       z_factor: int = 1) -> str:
    """The ImageJ description of a view of ``pages`` uniform pages.

    A source ImageJ description is carried over line by line (dimensions, ``spacing``,
    ``unit``, display range, ...); ``images`` is set to ``pages`` (and ``slices`` too for
    a plain stack); ``xorigin``/``yorigin`` (in pixels) are divided by the ratios of
    source to view pixels; with ``z_factor``, ``slices`` is reduced and ``spacing``
    multiplied. Hyperstack dimensions that no longer multiply to ``pages`` are dropped.
    When no ``unit`` is given but ResolutionUnit is inch or centimetre, the matching
    ``unit=`` is added, because ImageJ reads the unit of a file with an ImageJ
    description from the description only. Numbers that are not finite are dropped;
    characters other than printable ASCII are written as ``\\uXXXX``, as ImageJ does.
    """
    entries = _description_entries(source_description)
    entries.pop("ImageJ", None)
    entries["images"] = str(pages)
    for key, ratio in (("xorigin", ratio_x), ("yorigin", ratio_y)):
        _scale_entry(entries, key, 1 / ratio if ratio > 0 else math.nan)
    if z_factor > 1:
        slices = _count(entries.get("slices"))
        if slices is not None:
            entries["slices"] = str(ceil_div(slices, z_factor))
        _scale_entry(entries, "spacing", z_factor)
    dimensions = 1
    for key in _DIMENSION_KEYS:
        count = _count(entries.get(key, "1"))
        dimensions = -1 if count is None or dimensions < 0 else dimensions * count
    if dimensions != pages:
        for key in (*_DIMENSION_KEYS, "hyperstack"):
            entries.pop(key, None)
        if pages > 1:  # a plain stack, as ImageJ and tifffile write it
            entries["slices"] = str(pages)
    if "unit" not in entries and resolution_unit in RESOLUTION_UNIT_NAMES:
        entries["unit"] = RESOLUTION_UNIT_NAMES[resolution_unit]
    lines = ["ImageJ=1.11a"] + [f"{_ascii(key)}={_ascii(value)}"
                                for key, value in entries.items()]
    return "\n".join(lines) + "\n"


def _description_entries(description: str | None) -> dict[str, str]:
    """The ``key=value`` lines of an ImageJ description, stripped; other lines dropped."""
    entries: dict[str, str] = {}
    for line in (description or "").splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip():
            entries[key.strip()] = value.strip()
    return entries


def _count(text: str | None) -> int | None:
    """A non-negative integer written in ASCII digits, else None."""
    if text is None or not (text.isascii() and text.isdigit()) or len(text) > 18:
        return None
    return int(text)


def _scale_entry(entries: dict[str, str], key: str, scale: float | Fraction) -> None:
    """Multiply a numeric entry in place; drop it if it is not a finite number."""
    if key not in entries:
        return
    try:
        value = float(entries[key]) * float(scale)
    except (ValueError, OverflowError):
        value = math.nan
    if math.isfinite(value):
        entries[key] = _format_number(value)
    else:
        del entries[key]


def _format_number(value: float) -> str:
    return str(int(value)) if value == int(value) else repr(value)


def _ascii(text: str) -> str:
    """``text`` in printable ASCII the way ImageJ writes its descriptions: other
    characters as ``\\uXXXX`` (UTF-16 units), which ImageJ reads back (Java's
    ``Properties.load``). Backslashes stay: a source written by ImageJ is escaped already.
    """
    if text.isascii() and text.isprintable():
        return text
    return "".join(c if " " <= c <= "~" else _java_escape(c) for c in text)


def _java_escape(char: str) -> str:
    units = char.encode("utf-16-be", "surrogatepass")
    return "".join(f"\\u{int.from_bytes(units[i:i + 2], 'big'):04X}"
                   for i in range(0, len(units), 2))


#: ImageJ metadata (IJMetadata tag) entries that stay valid at any size; ROIs and
#: overlays hold pixel coordinates and are dropped.
IMAGEJ_TAG_KEYS = ("Info", "Labels", "Ranges", "LUTs", "Properties")


def imagej_tags(imagej_metadata: dict[str, Any] | None) -> tuple[tuple[int, int, int, bytes],
                                                                   ...]:
    """IJMetadata and IJMetadataByteCounts tags (display ranges, LUTs, labels...) to keep."""
    if not imagej_metadata:
        return ()
    kept = {key: imagej_metadata[key] for key in IMAGEJ_TAG_KEYS if key in imagej_metadata}
    if not kept:
        return ()
    try:
        tags = tifffile.imagej_metadata_tag(kept, "<")
    except (ValueError, TypeError, AttributeError, struct.error):  # values of odd types
        return ()
    return tuple((code, field_type, count, bytes(value))
                 for code, field_type, count, value, _ in tags)


def ome_xml_for_view(xml: str, factor: int) -> str | None:
    """The source's OME-XML for an ``x<factor>`` view: SizeX/SizeY reduced (ceil),
    PhysicalSizeX/Y times ``factor``.

    IFD mapping (TiffData) is unchanged, since a view has one page per source page.
    Returns None when the XML cannot be parsed. The source's namespace prefixes are
    kept. Non-ASCII text becomes character references, so the result is plain ASCII.
    """
    parsed = _parse_xml(xml)
    if parsed is None:
        return None
    root, declared = parsed
    for element in root.iter():
        if element.tag.endswith("Pixels"):
            _scale_pixels(element, factor)
    _write_prefixes(root, declared)
    try:
        text = ET.tostring(root, encoding="us-ascii", xml_declaration=False).decode("ascii")
    except RecursionError:  # ElementTree writes nested elements recursively
        return None
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + text


def _parse_xml(xml: str) -> tuple[ET.Element, list[tuple[str, str]]] | None:
    """The root element and the (prefix, uri) declarations in document order, or None."""
    parser = ET.XMLPullParser(events=("start-ns", "end"))
    try:
        parser.feed(xml)
        parser.close()
    except (ET.ParseError, UnicodeError, ValueError):
        return None
    declared: list[tuple[str, str]] = []
    root = None
    for event, item in parser.read_events():
        if event == "start-ns":
            declared.append(item)
        else:
            root = item
    return None if root is None else (root, declared)


def _scale_pixels(element: ET.Element, factor: int) -> None:
    """SizeX/SizeY divided (ceil) and PhysicalSizeX/Y multiplied by ``factor``, in place;
    values that are not numbers, or would not stay finite, are left as they are."""
    for axis in ("X", "Y"):
        size = _count(element.get(f"Size{axis}"))
        if size is not None:
            element.set(f"Size{axis}", str(ceil_div(size, factor)))
        try:
            physical = float(element.get(f"PhysicalSize{axis}", "nan")) * factor
        except (ValueError, OverflowError):
            continue
        if math.isfinite(physical):
            element.set(f"PhysicalSize{axis}", repr(physical))


_XML_NAMESPACE = "http://www.w3.org/XML/1998/namespace"


def _write_prefixes(root: ET.Element, declared: list[tuple[str, str]]) -> None:
    """Rename every ``{uri}name`` to ``prefix:name`` in place, with the source's prefixes
    (new ``ns<n>`` ones where two uris share one), and declare them on the root.

    ElementTree would otherwise take prefixes from its registry, which is global to the
    process (``ET.register_namespace`` changes it for every thread, and refuses
    ``ns0``-style prefixes, which ElementTree itself writes).
    """
    qualified = all(element.tag.startswith("{") for element in root.iter())
    prefixes = {_XML_NAMESPACE: "xml"}  # uri -> prefix
    default = None  # elements only; kept only if no element is outside every namespace
    for prefix, uri in declared:
        if not uri:
            continue
        if not prefix:
            default = default or (uri if qualified else None)
        elif uri not in prefixes and prefix not in prefixes.values():
            prefixes[uri] = prefix

    def name(qname: str, of_element: bool) -> str:
        if not qname.startswith("{"):
            return qname
        uri, _, local = qname[1:].partition("}")
        if of_element and uri == default:
            return local
        if uri not in prefixes:
            prefixes[uri] = next(f"ns{n}" for n in range(len(prefixes) + 1)
                                 if f"ns{n}" not in prefixes.values())
        return f"{prefixes[uri]}:{local}"

    for element in root.iter():
        element.tag = name(element.tag, True)
        attributes = [(name(key, False), value) for key, value in element.attrib.items()]
        element.attrib.clear()
        element.attrib.update(attributes)
    declarations = {"xmlns": default} if default else {}
    declarations.update((f"xmlns:{prefix}", uri) for uri, prefix in prefixes.items()
                        if uri != _XML_NAMESPACE)
    attributes = [*declarations.items(), *root.attrib.items()]
    root.attrib.clear()
    root.attrib.update(attributes)
