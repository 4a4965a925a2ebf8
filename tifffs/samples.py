"""Sample kinds that are not whole bytes: how they are served.

tifffile decodes packed unsigned samples (1 to 31 bits other than 8 and 16) into the
next size: ``bool`` for 1 bit, ``uint8`` for 2 to 7, ``uint16`` for 9 to 15, ``uint32``
for 17 to 31. tifffs serves

* bilevel pages (1-bit MinIsWhite or MinIsBlack): 8-bit MinIsBlack grey, black 0 and
  white 255, so that ``mean`` is the fraction of white scaled to 0-255 and the other
  block methods keep two levels;
* every other packed page (2- to 31-bit integers, 1-bit palette): the decoded values
  as they are, in ``uint8``, ``uint16`` or ``uint32``; a palette's colour map is padded
  to the 256 or 65536 entries of an 8- or 16-bit palette.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tifffile import PHOTOMETRIC

#: Largest packed sample size tifffile decodes.
MAX_PACKED_BITS = 31
#: A bilevel page's white, as served.
WHITE = 255


def packed(bits: int, dtype: Any) -> bool:
    """True for unsigned samples stored in fewer bits than their decoded type."""
    dtype = np.dtype(dtype)
    return dtype.kind in "ub" and 1 <= bits < 8 * dtype.itemsize and bits <= MAX_PACKED_BITS


def served_dtype(dtype: Any) -> np.dtype:
    """The type a decoded sample is served as: ``uint8`` for 1-bit (``bool``), else as
    tifffile decodes it."""
    dtype = np.dtype(dtype)
    return np.dtype(dtype.byteorder + "u1") if dtype.kind == "b" else dtype


def bilevel_white(bits: int, photometric: int) -> int | None:
    """The decoded value meaning white on a bilevel page (1 for MinIsBlack, 0 for
    MinIsWhite), or None for a page that is not bilevel grey."""
    if bits != 1:
        return None
    if photometric == PHOTOMETRIC.MINISBLACK:
        return 1
    if photometric == PHOTOMETRIC.MINISWHITE:
        return 0
    return None


def served_photometric(photometric: int, white: int | None) -> int:
    """Bilevel pages are served MinIsBlack (white 255); others keep their photometric."""
    return int(PHOTOMETRIC.MINISBLACK) if white is not None else photometric


def served_colormap(colormap: np.ndarray | None, bits: int) -> np.ndarray | None:
    """A palette of ``2**bits`` colours padded with black to 256 (``bits`` < 8) or
    65536 entries, as the served 8- or 16-bit palette needs."""
    if colormap is None or bits == 8 or bits >= 16:
        return colormap
    colormap = np.asarray(colormap, dtype=np.uint16).reshape(3, -1)
    entries = 256 if bits < 8 else 65536
    padded = np.zeros((3, entries), dtype=np.uint16)
    padded[:, :min(entries, colormap.shape[1])] = colormap[:, :entries]
    return padded


def bilevel_to_grey(decoded: np.ndarray, white: int) -> None:
    """Turn decoded 0/1 samples (``uint8``) into 0/255 MinIsBlack grey, in place."""
    if white:
        np.multiply(decoded, WHITE, out=decoded)
    else:
        np.subtract(1, decoded, out=decoded)
        np.multiply(decoded, WHITE, out=decoded)
