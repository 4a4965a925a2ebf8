"""Metadata of a view: ImageJ description and physical pixel size. Pure."""

from __future__ import annotations

from fractions import Fraction

#: ResolutionUnit values and the unit ImageJ shows for them.
RESOLUTION_UNIT_NAMES = {2: "inch", 3: "cm"}
#: ImageJ description keys that hold the stack's dimensions.
_DIMENSION_KEYS = ("channels", "slices", "frames")


def scaled_resolution(resolution: Fraction | None, factor: int) -> Fraction | None:
    """Pixels per unit of the view: the source's divided by ``factor``."""
    return None if resolution is None else resolution / factor


def imagej_description(pages: int, source_description: str | None,
                       resolution_unit: int | None, factor: int) -> str:
    """The ImageJ description of a view of ``pages`` uniform pages.

    A source ImageJ description is carried over line by line (dimensions, ``spacing``,
    ``unit``, display range, ...); ``images`` is set to ``pages``; ``xorigin``/``yorigin``
    (in pixels) are divided by ``factor``. Hyperstack dimensions that no longer multiply
    to ``pages`` are dropped. When no ``unit`` is given but ResolutionUnit is inch or
    centimetre, the matching ``unit=`` is added, because ImageJ reads the unit of a file
    with an ImageJ description from the description only.
    """
    entries: dict[str, str] = {}
    if source_description:
        for line in source_description.splitlines():
            key, sep, value = line.partition("=")
            if sep and key.strip():
                entries[key.strip()] = value.strip()
    entries.pop("ImageJ", None)
    entries["images"] = str(pages)
    for key in ("xorigin", "yorigin"):
        if key in entries:
            try:
                entries[key] = _format_number(float(entries[key]) / factor)
            except ValueError:
                del entries[key]
    dimensions = 1
    for key in _DIMENSION_KEYS:
        try:
            dimensions *= int(entries.get(key, "1"))
        except ValueError:
            dimensions = -1
    if dimensions != pages:
        for key in (*_DIMENSION_KEYS, "hyperstack"):
            entries.pop(key, None)
    if "unit" not in entries and resolution_unit in RESOLUTION_UNIT_NAMES:
        entries["unit"] = RESOLUTION_UNIT_NAMES[resolution_unit]
    lines = ["ImageJ=1.11a"] + [f"{key}={value}" for key, value in entries.items()]
    return "\n".join(lines) + "\n"


def _format_number(value: float) -> str:
    return str(int(value)) if value == int(value) else repr(value)
