"""Reference downsampling, written independently of tifffs for the tests.

It pads each page to whole blocks and reduces with numpy's reshape, counting the
pixels that exist in each block; integer means round half up with exact Python or
int64 arithmetic, float means are computed in float64.
"""

from __future__ import annotations

import numpy as np
import tifffile


def reference_page(page: np.ndarray, factor: int, method: str) -> np.ndarray:
    """Downsample one page (rows, columns) or (rows, columns, samples)."""
    if method == "nearest":
        return page[::factor, ::factor]
    squeeze = page.ndim == 2
    a = page[:, :, None] if squeeze else page
    h, w, c = a.shape
    oh, ow = -(-h // factor), -(-w // factor)
    big = np.dtype(object) if a.dtype.itemsize == 8 and a.dtype.kind in "iu" else (
        np.float64 if a.dtype.kind == "f" else np.int64)
    padded = np.zeros((oh * factor, ow * factor, c), dtype=big)
    padded[:h, :w] = a.astype(big)
    present = np.zeros((oh * factor, ow * factor, 1), dtype=np.int64)
    present[:h, :w] = 1
    sums = padded.reshape(oh, factor, ow, factor, c).sum(axis=(1, 3))
    counts = present.reshape(oh, factor, ow, factor, 1).sum(axis=(1, 3))
    if a.dtype.kind == "f":
        out = (sums / counts).astype(a.dtype)
    else:  # exact: int64, or Python integers (object arrays) for 64-bit types
        out = ((2 * sums + counts) // (2 * counts)).astype(a.dtype)
    return out[:, :, 0] if squeeze else out


def reference_stack(stack: np.ndarray, factor: int, method: str, pages_axis: bool) -> np.ndarray:
    """Downsample every page of ``stack`` (pages first when ``pages_axis``)."""
    if not pages_axis:
        return reference_page(stack, factor, method)
    return np.stack([reference_page(p, factor, method) for p in stack])


def read_pages(path) -> list[np.ndarray]:
    """Every page of the main IFD chain as tifffile decodes it, as (rows, columns,
    samples), whatever its planar configuration."""
    pages = []
    with tifffile.TiffFile(path) as tif:
        for page in tif.pages:
            array = page.asarray()
            if page.planarconfig == 2 and page.samplesperpixel > 1:
                array = np.moveaxis(array, 0, -1)
            pages.append(array.reshape(page.imagelength, page.imagewidth, -1))
    return pages
