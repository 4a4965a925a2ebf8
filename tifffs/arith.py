"""Integer arithmetic used across tifffs."""

from __future__ import annotations


def ceil_div(a: int, b: int) -> int:
    """``ceil(a / b)`` for integers and positive ``b``, exactly (no floats)."""
    return -(-a // b)
