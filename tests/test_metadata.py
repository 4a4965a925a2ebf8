"""Metadata of a view on its own: ImageJ description and tags, OME-XML.

Source metadata is hostile text: hypothesis feeds arbitrary strings and numbers, and the
functions must neither raise nor return anything but ASCII.
"""

from __future__ import annotations

import io
import math
import xml.etree.ElementTree as ET
from fractions import Fraction

import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st

from tifffs.metadata import imagej_description, imagej_tags, ome_xml_for_view

OME_NS = "http://www.openmicroscopy.org/Schemas/OME/2016-06"
KEYS = ["xorigin", "yorigin", "spacing", "slices", "channels", "frames", "images", "unit",
        "hyperstack", "finterval", "min", "max", "mode", "ImageJ", "loop"]

numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-(10**30), 10**30).map(str),
    st.sampled_from(["inf", "-inf", "nan", "Infinity", "1e309", "-0", "9" * 5000, "\u00b2",
                     "\u0663", "1_000", "0x10", " 3 ", ""]),
)
values = st.one_of(numbers, st.text())
descriptions = st.one_of(
    st.text(),
    st.lists(st.tuples(st.one_of(st.sampled_from(KEYS), st.text()), values))
    .map(lambda pairs: "\n".join(f"{k}={v}" for k, v in pairs)),
)
ratios = st.fractions(min_value=Fraction(1, 10**6), max_value=10**6)


def _assert_ascii_description(text: str, pages: int) -> dict:
    assert text.isascii()
    assert text.startswith("ImageJ=") and text.endswith("\n")
    lines = text.splitlines()
    assert all(line.isprintable() and "=" in line for line in lines), lines
    parsed = tifffile.tifffile.imagej_description_metadata(text)  # as tifffile reads it
    assert parsed["images"] == pages
    return parsed


@settings(max_examples=400)
@given(descriptions, st.integers(1, 10**6), st.one_of(st.none(), st.integers(-1, 70000)),
       ratios, ratios, st.integers(1, 1024))
def test_imagej_description_never_raises_and_writes_ascii(source, pages, unit, rx, ry, zf):
    text = imagej_description(pages, source, unit, rx, ry, zf)
    parsed = _assert_ascii_description(text, pages)
    scaled = ("xorigin", "yorigin", "spacing") if zf > 1 else ("xorigin", "yorigin")
    for key in scaled:  # numbers that were scaled; other lines are carried as they are
        if key in parsed:
            assert math.isfinite(float(parsed[key]))


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e309", "ten", ""])
def test_origin_that_is_not_a_finite_number_is_dropped(value):
    text = imagej_description(2, f"ImageJ=1.53t\nxorigin={value}\nyorigin=8\n", None,
                              Fraction(4), Fraction(4))
    assert "xorigin" not in text
    assert "yorigin=2\n" in text


def test_carried_lines_scaled_and_reduced():
    source = ("ImageJ=1.53t\nimages=24\nchannels=2\nslices=6\nframes=2\nhyperstack=true\n"
              "mode=composite\nunit=\u00b5m\nspacing=2.5\nfinterval=3\nxorigin=10\n")
    text = imagej_description(12, source, None, Fraction(4), Fraction(2), z_factor=2)
    assert text == ("ImageJ=1.11a\nimages=12\nchannels=2\nslices=3\nframes=2\n"
                    "hyperstack=true\nmode=composite\nunit=\\u00B5m\nspacing=5\nfinterval=3\n"
                    "xorigin=2.5\n")


def test_non_ascii_and_control_characters_are_escaped_as_imagej_does():
    source = "ImageJ=1\nlabel=caf\u00e9\x00\x1b \U0001f600\nunit=\\u00B5m\n"
    text = imagej_description(1, source, 3, Fraction(2), Fraction(2))
    assert "label=caf\\u00E9\\u0000\\u001B \\uD83D\\uDE00\n" in text
    assert "unit=\\u00B5m\n" in text  # as ImageJ wrote it: not escaped twice


def test_resolution_unit_gives_an_imagej_unit_when_none_is_given():
    assert "unit=cm\n" in imagej_description(1, None, 3, Fraction(2), Fraction(2))
    assert "unit=inch\n" in imagej_description(1, "", 2, Fraction(2), Fraction(2))
    assert "unit=" not in imagej_description(1, None, 1, Fraction(2), Fraction(2))


# -- ImageJ tags (IJMetadata): values as tifffile parses them from a source
tag_values = st.one_of(
    st.text(), st.lists(st.text(), max_size=4), st.tuples(st.floats(), st.floats()),
    st.lists(st.floats(), max_size=6), st.dictionaries(st.text(), st.text(), max_size=3),
    st.lists(st.integers(0, 3).map(lambda n: np.zeros((n, 256), np.uint8)), max_size=3),
    st.integers(), st.none(), st.binary(max_size=16),
)


@given(st.dictionaries(st.sampled_from(["Info", "Labels", "Ranges", "LUTs", "Properties",
                                        "ROI", "Overlays", "other"]), tag_values))
def test_imagej_tags_never_raise(metadata):
    tags = imagej_tags(metadata)
    assert isinstance(tags, tuple)
    for code, _, count, value in tags:
        assert code in (50838, 50839) and isinstance(value, bytes) and count > 0


def test_imagej_tags_keep_ranges_and_labels_but_not_rois():
    tags = imagej_tags({"Ranges": (0.0, 255.0), "Labels": ["a", "b"], "ROI": b"roi"})
    data = {code: value for code, _, _, value in tags}[50839]
    assert b"lgnar" not in data and b"gnar" in data and b"lbal" in data  # little-endian
    assert b"roi" not in data


# -- OME-XML
def _ome_source(prefix: str | None = None) -> str:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.zeros((2, 9, 7), np.uint16), ome=True,
                     metadata={"axes": "ZYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.25,
                               "Channel": {"Name": ["caf\u00e9"]}})
    with tifffile.TiffFile(io.BytesIO(buffer.getvalue())) as tif:
        xml = tif.ome_metadata
    if prefix is not None:  # the same document with the OME namespace under a prefix
        root = ET.fromstring(xml)
        xml = ET.tostring(root, encoding="unicode")  # ElementTree writes ns0:
        assert "<ns0:OME" in xml
        if prefix != "ns0":
            xml = xml.replace("ns0:", f"{prefix}:").replace("xmlns:ns0", f"xmlns:{prefix}")
    return xml


@pytest.mark.parametrize("prefix", [None, "ns0", "ome"])
def test_ome_xml_for_view_keeps_prefixes_and_validates(prefix):
    import ome_types

    source = _ome_source(prefix)
    registry_probe = ET.tostring(ET.Element(f"{{{OME_NS}}}OME"), encoding="unicode")
    view = ome_xml_for_view(source, 4)
    assert view is not None and view.isascii()
    assert "caf&#233;" in view
    if prefix is not None:
        assert f"<{prefix}:OME xmlns:{prefix}=\"{OME_NS}\"" in view
    # ElementTree's global prefix registry is untouched
    assert ET.tostring(ET.Element(f"{{{OME_NS}}}OME"), encoding="unicode") == registry_probe
    ome = ome_types.from_xml(view, validate=True)
    pixels = ome.images[0].pixels
    assert (pixels.size_x, pixels.size_y, pixels.size_z) == (2, 3, 2)
    assert (pixels.physical_size_x, pixels.physical_size_y) == (2.0, 1.0)


def test_namespaces_sharing_a_prefix_and_unqualified_elements_stay_apart():
    xml = ('<a xmlns:p="urn:one"><p:b p:k="1" xml:lang="en"><p:c xmlns:p="urn:two" p:k="2"/>'
           '</p:b><Pixels SizeX="9" PhysicalSizeX="1e308"/></a>')
    view = ome_xml_for_view(xml, 4)
    root = ET.fromstring(view)
    b = root.find("{urn:one}b")
    assert b.get("{urn:one}k") == "1"
    assert b.get("{http://www.w3.org/XML/1998/namespace}lang") == "en"
    assert b.find("{urn:two}c").get("{urn:two}k") == "2"
    pixels = root.find("Pixels")
    assert pixels.get("SizeX") == "3"
    assert pixels.get("PhysicalSizeX") == "1e308"  # x4 would not be finite: kept


def test_deeply_nested_xml_gives_none():
    assert ome_xml_for_view("<a>" * 5000 + "</a>" * 5000, 2) is None


@given(st.text())
def test_ome_xml_for_view_on_arbitrary_text(text):
    view = ome_xml_for_view(text, 2)
    assert view is None or view.isascii()


pixel_values = st.one_of(numbers, st.text(alphabet=st.characters(codec="utf-8",
                                                                  exclude_categories=["Cs"])))


@given(st.sampled_from(["", "ns0", "OME", "a1"]), pixel_values, pixel_values,
       st.integers(1, 1024))
def test_ome_xml_for_view_on_hostile_pixel_attributes(prefix, size, physical, factor):
    colon = f"{prefix}:" if prefix else ""
    xmlns = f"xmlns:{prefix}" if prefix else "xmlns"
    pixels = ET.Element("Pixels", SizeX=size, PhysicalSizeX=physical)
    attributes = ET.tostring(pixels, encoding="unicode")[len("<Pixels"):-len(" />")]
    xml = (f'<{colon}OME {xmlns}="{OME_NS}"><{colon}Image><{colon}Pixels{attributes} />'
           f"</{colon}Image></{colon}OME>")
    view = ome_xml_for_view(xml, factor)
    if view is None:  # characters XML 1.0 does not allow in attributes
        return
    assert view.isascii()
    result = ET.fromstring(view).find(f"{{{OME_NS}}}Image/{{{OME_NS}}}Pixels")
    if size.isascii() and size.isdigit() and len(size) <= 18:
        assert result.get("SizeX") == str(-(-int(size) // factor))
    else:
        assert result.get("SizeX") == size
