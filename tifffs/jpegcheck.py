"""A guard against JPEG segments whose header claims far more pixels than their strip or
tile holds.

libjpeg-turbo (imagecodecs' JPEG decoder) allocates the frame that the SOF marker
describes and, when the data ends early, fills every row of it: a 16 x 16 tile whose
header was changed to 65000 x 65000 pixels took 4 GB of memory (RGB needs 3 times that),
enough for the OOM killer to end the daemon. tifffile refuses a frame larger than its
tile after decoding it, and crops one a little taller than its strip; so only frames
that need more than ``page_rules.decode_allowance`` of the segment's bytes are refused,
before decoding. Reading the markers costs a microsecond or two.
"""

from __future__ import annotations

from typing import NamedTuple

from tifffs.page_rules import decode_allowance

#: Start-of-frame markers (SOF0-SOF15 but DHT, JPG and DAC).
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
#: Markers without a length: TEM, RST0-RST7, SOI.
_STANDALONE = frozenset([0x01, *range(0xD0, 0xD9)])
_SOS, _EOI = 0xDA, 0xD9


class Frame(NamedTuple):
    """What a JPEG stream's SOF marker says."""

    height: int
    width: int
    components: int
    precision: int  # bits per sample

    @property
    def decoded_bytes(self) -> int:
        return self.height * self.width * self.components * (2 if self.precision > 8 else 1)


def frame(data: bytes) -> Frame | None:
    """The frame of a JPEG stream (its first SOF marker before the scan), or None when
    there is none: the stream is left to the decoder."""
    if data[:2] != b"\xff\xd8":
        return None
    at, end = 2, len(data)
    while at + 4 <= end:
        if data[at] != 0xFF:
            return None  # not at a marker: the decoder will say what is wrong
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker in _STANDALONE:
            at += 2
            continue
        if marker in (_SOS, _EOI):
            return None
        length = int.from_bytes(data[at + 2:at + 4], "big")
        if marker in _SOF:
            if at + 10 > end:
                return None
            return Frame(height=int.from_bytes(data[at + 5:at + 7], "big"),
                         width=int.from_bytes(data[at + 7:at + 9], "big"),
                         components=data[at + 9], precision=data[at + 4])
        at += 2 + length
    return None


def oversized(data: bytes, segment_bytes: int) -> Frame | None:
    """The frame of ``data`` if decoding it would need more than the allowance of a
    segment of ``segment_bytes`` (``page_rules.decode_allowance``); else None."""
    found = frame(data)
    if found is not None and found.decoded_bytes > decode_allowance(segment_bytes):
        return found
    return None
