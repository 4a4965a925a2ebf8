"""An LZW stream parsed code by code as imagecodecs' decoder reads it, for the tests: it
finds the damage that ``tifffs.lzwcheck`` leaves alone (docs/operations.md)."""

from __future__ import annotations

CLEAR, EOI = 256, 257


def table_code_after_a_later_clear(stream: bytes) -> bool:
    """Parse an LZW stream code by code as imagecodecs' decoder does (TIFF's MSB order
    with early change, or old-style LSB); True when a CLEAR code other than the first is
    followed by a table code (258 or more)."""
    if len(stream) < 2:
        return False
    msb = not (stream[0] == 0 and stream[1] & 1)
    padded = bytes(stream) + bytes(3)
    total = len(stream) * 8

    def code_at(position: int, width: int) -> int:
        if position + width > total:
            return EOI  # the decoder reads EOI past the end
        at, shift = position >> 3, position & 7
        if msb:
            window = padded[at] << 16 | padded[at + 1] << 8 | padded[at + 2]
            return window >> (24 - shift - width) & (1 << width) - 1
        window = padded[at] | padded[at + 1] << 8 | padded[at + 2] << 16
        return window >> shift & (1 << width) - 1

    position, width, table, clears = 0, 9, 258, 0
    widen = (511, 1023, 2047) if msb else (512, 1024, 2048)
    while True:
        code = code_at(position, width)
        position += width
        if code == EOI:
            return False
        if code == CLEAR:
            clears += 1
            width, table = 9, 258
            while (code := code_at(position, 9)) == CLEAR:
                position += 9
            position += 9
            if code == EOI:
                return False
            if code >= 258:
                return clears > 1  # after the first CLEAR tifffs refuses it itself
            continue
        if table >= 5120 or code > table:
            return False  # the decoder stops there with an error
        table += 1
        if table in widen:
            width += 1
