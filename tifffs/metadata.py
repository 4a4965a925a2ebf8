"""Metadata of a view: ImageJ description and tags, OME-XML, physical pixel size. Pure."""

from __future__ import annotations

import io
import struct
import threading
import xml.etree.ElementTree as ET
from fractions import Fraction
from typing import Any

import tifffile

#: ResolutionUnit values and the unit ImageJ shows for them.
RESOLUTION_UNIT_NAMES = {2: "inch", 3: "cm"}
#: ImageJ description keys that hold the stack's dimensions.
_DIMENSION_KEYS = ("channels", "slices", "frames")


def scaled_resolution(resolution: Fraction | None, ratio: Fraction) -> Fraction | None:
    """Pixels per unit of the view: the source's divided by ``ratio`` (source pixels per
    view pixel)."""
    return None if resolution is None else resolution / ratio


def imagej_description(pages: int, source_description: str | None,
                       resolution_unit: int | None, ratio_x: Fraction, ratio_y: Fraction,
                       z_factor: int = 1) -> str:
    """The ImageJ description of a view of ``pages`` uniform pages.

    A source ImageJ description is carried over line by line (dimensions, ``spacing``,
    ``unit``, display range, ...); ``images`` is set to ``pages`` (and ``slices`` too for
    a plain stack); ``xorigin``/``yorigin``
    (in pixels) are divided by the ratios of source to view pixels; with ``z_factor``,
    ``slices`` is reduced and ``spacing`` multiplied. Hyperstack dimensions that no
    longer multiply to ``pages`` are dropped. When no ``unit`` is given but
    ResolutionUnit is inch or centimetre, the matching ``unit=`` is added, because
    ImageJ reads the unit of a file with an ImageJ description from the description only.
    """
    entries: dict[str, str] = {}
    if source_description:
        for line in source_description.splitlines():
            key, sep, value = line.partition("=")
            if sep and key.strip():
                entries[key.strip()] = value.strip()
    entries.pop("ImageJ", None)
    entries["images"] = str(pages)
    for key, ratio in (("xorigin", ratio_x), ("yorigin", ratio_y)):
        _scale_entry(entries, key, 1 / ratio)
    if z_factor > 1:
        if "slices" in entries and entries["slices"].isdigit():
            entries["slices"] = str(-(-int(entries["slices"]) // z_factor))
        _scale_entry(entries, "spacing", z_factor)
    dimensions = 1
    for key in _DIMENSION_KEYS:
        try:
            dimensions *= int(entries.get(key, "1"))
        except ValueError:
            dimensions = -1
    if dimensions != pages:
        for key in (*_DIMENSION_KEYS, "hyperstack"):
            entries.pop(key, None)
        if pages > 1:  # a plain stack, as ImageJ and tifffile write it
            entries["slices"] = str(pages)
    if "unit" not in entries and resolution_unit in RESOLUTION_UNIT_NAMES:
        entries["unit"] = RESOLUTION_UNIT_NAMES[resolution_unit]
    lines = ["ImageJ=1.11a"] + [f"{key}={value}" for key, value in entries.items()]
    return "\n".join(lines) + "\n"


def _scale_entry(entries: dict[str, str], key: str, scale: float | Fraction) -> None:
    """Multiply a numeric entry in place; drop it if it is not a number."""
    if key in entries:
        try:
            entries[key] = _format_number(float(entries[key]) * float(scale))
        except ValueError:
            del entries[key]


def _format_number(value: float) -> str:
    return str(int(value)) if value == int(value) else repr(value)


_NAMESPACE_LOCK = threading.Lock()

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
    except (ValueError, TypeError, struct.error):
        return ()
    return tuple((code, field_type, count, bytes(value))
                 for code, field_type, count, value, _ in tags)


def ome_xml_for_view(xml: str, factor: int) -> str | None:
    """The source's OME-XML for an ``x<factor>`` view: SizeX/SizeY reduced (ceil),
    PhysicalSizeX/Y times ``factor``.

    IFD mapping (TiffData) is unchanged, since a view has one page per source page.
    Returns None when the XML cannot be parsed. Non-ASCII text becomes character
    references, so the result is plain ASCII.
    """
    try:
        namespaces = [ns for _, ns in ET.iterparse(io.StringIO(xml), events=("start-ns",))]
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    for element in root.iter():
        if not element.tag.endswith("Pixels"):
            continue
        for axis in ("X", "Y"):
            size = element.get(f"Size{axis}")
            if size and size.isdigit():
                element.set(f"Size{axis}", str(-(-int(size) // factor)))
            physical = element.get(f"PhysicalSize{axis}")
            if physical:
                try:
                    element.set(f"PhysicalSize{axis}", repr(float(physical) * factor))
                except ValueError:
                    pass
    with _NAMESPACE_LOCK:  # ElementTree's prefix registry is global
        for prefix, uri in namespaces:  # keep the source's prefixes, default one included
            ET.register_namespace(prefix, uri)
        text = ET.tostring(root, encoding="us-ascii", xml_declaration=False).decode("ascii")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + text
