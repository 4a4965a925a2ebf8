"""A guard for imagecodecs' LZW decoder against one kind of damaged stream.

The decoder (imagecodecs 2026.3.6, and 2026.5.10 reads alike) takes the code after a
CLEAR code to be a literal byte. When a damaged stream has a table code there instead,
it reads a table entry the stream never made. Right after the stream's first CLEAR the
table holds uninitialised memory, and the process may crash: a corrupt LZW strip would
take the whole mount down (found by ``scripts/fuzz``). A valid stream always has a
literal, CLEAR or EOI there, so such a stream is refused before it is decoded.

Only the start of the stream is checked, which costs a few microseconds. After a later
CLEAR the entries the decoder would read were made earlier in the same stream; a
damaged stream then decodes to wrong pixels, or, in rarer cases, is still unsafe.
"""

from __future__ import annotations

CLEAR, EOI = 256, 257


def safe_start(data: bytes) -> bool:
    """False if the code after the first CLEAR code(s) of an LZW stream is a table
    code; True otherwise (the decoder reports other errors itself)."""
    if len(data) < 2:
        return True
    msb = not (data[0] == 0 and data[1] & 1)  # as imagecodecs: old-style LSB streams
    if msb and (data[0] != 128 or data[1] & 128):
        return True  # it does not start with CLEAR: the decoder refuses it
    head = data[:64]  # room for a few dozen 9-bit codes
    value = int.from_bytes(head, "big" if msb else "little")
    total = len(head) * 8
    position = 9  # after the first CLEAR
    while position + 9 <= total:
        if msb:
            code = (value >> (total - position - 9)) & 0x1FF
        else:
            code = (value >> position) & 0x1FF
        if code != CLEAR:
            return code < CLEAR or code == EOI
        position += 9
    return True  # nothing but CLEAR codes, or the data ends: decoded as empty
