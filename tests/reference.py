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
    with tifffile.TiffFile(path) as tif:
        return [decoded_page(page) for page in tif.pages]


def decoded_page(page: tifffile.TiffPage) -> np.ndarray:
    """One page as tifffile decodes it, as (rows, columns, samples)."""
    array = page.asarray()
    if page.planarconfig == 2 and page.samplesperpixel > 1:
        array = np.moveaxis(array, 0, -1)
    return array.reshape(page.imagelength, page.imagewidth, -1)


# -- blocks of several slices, every method; and exact area averaging (fit views)
def _blocks(slices: list[np.ndarray], factor: int, fill) -> tuple[np.ndarray, np.ndarray]:
    """Each block's values along a last axis, padded with ``fill``; and how many exist."""
    h, w, c = slices[0].shape
    oh, ow = -(-h // factor), -(-w // factor)
    values = []
    for s in slices:
        padded = np.full((oh * factor, ow * factor, c), fill, dtype=s.dtype)
        padded[:h, :w] = s
        values.append(padded.reshape(oh, factor, ow, factor, c).transpose(0, 2, 4, 1, 3)
                      .reshape(oh, ow, c, factor * factor))
    present = np.zeros((oh * factor, ow * factor), dtype=np.int64)
    present[:h, :w] = 1
    counts = present.reshape(oh, factor, ow, factor).sum(axis=(1, 3)) * len(slices)
    return np.concatenate(values, axis=-1), counts[:, :, None]


def reference_blocks(slices: list[np.ndarray], factor: int, method: str) -> np.ndarray:
    """Reduce every factor x factor x len(slices) block (rows, columns, samples) of
    integers; ``median`` and ``mean`` round half up, ``mode`` ties go to the smallest."""
    dtype = slices[0].dtype
    if method in ("max", "min"):  # absent values padded with the other extreme
        info = np.iinfo(dtype)
        values, _ = _blocks(slices, factor, info.min if method == "max" else info.max)
        return values.max(axis=-1) if method == "max" else values.min(axis=-1)
    if method == "mean":
        values, counts = _blocks(slices, factor, 0)
        sums = values.astype(object).sum(axis=-1)
        return ((2 * sums + counts) // (2 * counts)).astype(dtype)
    if method == "median":
        # absent values sort last as the type's maximum: the first `count` are the block's
        values, counts = _blocks(slices, factor, np.iinfo(dtype).max)
        ordered = np.sort(values, axis=-1)
        low = np.take_along_axis(ordered, ((counts - 1) // 2)[..., None], -1)[..., 0]
        high = np.take_along_axis(ordered, (counts // 2)[..., None], -1)[..., 0]
        low, high = low.astype(object), high.astype(object)
        return (low + -(-(high - low) // 2)).astype(dtype)
    if method == "mode":
        values, counts = _blocks(slices, factor, 0)
        out = np.empty(values.shape[:3], dtype=dtype)
        for index in np.ndindex(*out.shape):
            present = values[index][_present_positions(index, slices, factor)]
            kinds, occurrences = np.unique(present, return_counts=True)
            out[index] = kinds[np.argmax(occurrences)]  # unique sorts: first is smallest
        return out
    raise ValueError(method)


def _present_positions(index: tuple[int, ...], slices: list[np.ndarray],
                       factor: int) -> np.ndarray:
    h, w = slices[0].shape[:2]
    rows = np.arange(factor)[:, None] + index[0] * factor < h
    cols = np.arange(factor)[None, :] + index[1] * factor < w
    return np.tile((rows & cols).ravel(), len(slices))


def reference_area(page: np.ndarray, height: int, width: int) -> np.ndarray:
    """Exact area average of (rows, columns, samples) integers to height x width:
    dense overlap matrices, Python integers, rounded half up."""
    def overlaps(source: int, output: int) -> np.ndarray:
        i = np.arange(output)[:, None]
        r = np.arange(source)[None, :]
        return np.clip(np.minimum((i + 1) * source, (r + 1) * output)
                       - np.maximum(i * source, r * output), 0, None).astype(object)

    total = page.shape[0] * page.shape[1]
    rows, cols = overlaps(page.shape[0], height), overlaps(page.shape[1], width)
    if page.dtype.itemsize <= 2:  # sums below 2 * total * 2**16: int64 is exact and quicker
        rows, cols = rows.astype(np.int64), cols.astype(np.int64)
    out = np.empty((height, width, page.shape[2]), dtype=page.dtype)
    for k in range(page.shape[2]):
        sums = rows.dot(page[:, :, k].astype(rows.dtype)).dot(cols.T)
        out[:, :, k] = ((2 * sums + total) // (2 * total)).astype(page.dtype)
    return out


def served_pixels(page: tifffile.TiffPage) -> tuple[np.ndarray, int, bool]:
    """A source page as tifffs serves it, from tifffile's decoding: (pixels as (rows,
    columns, samples) in native byte order, photometric, is bilevel grey). Bilevel
    MinIsWhite/MinIsBlack pages become 0/255 MinIsBlack, other 1-bit pages 0/1 uint8,
    and JPEG's YCbCr is RGB as tifffile decodes it."""
    pixels = decoded_page(page)
    pixels = pixels.astype(pixels.dtype.newbyteorder("="))
    photometric = int(page.photometric)
    grey = (page.bitspersample == 1 and page.samplesperpixel == 1
            and photometric in (0, 1))  # bilevel: MinIsWhite, MinIsBlack
    if grey:
        pixels = np.where(pixels.astype(bool) == (photometric == 1), 255, 0).astype(np.uint8)
        photometric = 1
    elif pixels.dtype == bool:
        pixels = pixels.astype(np.uint8)
    return pixels, 2 if photometric == 6 else photometric, grey
