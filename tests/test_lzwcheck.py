"""The guard against LZW streams that imagecodecs' decoder cannot read safely: a table
code right after the first CLEAR is refused; every stream an encoder writes passes. And
the tests' reference parser, which finds the same damage after a later CLEAR (left to
the decoder, docs/operations.md)."""

from __future__ import annotations

import imagecodecs
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from lzw_reference import table_code_after_a_later_clear
from tifffs.lzwcheck import safe_start


def _codes(codes: list[int], msb: bool = True) -> bytes:
    """9-bit codes as TIFF (most significant bit first) or old-style (least) LZW."""
    if msb:
        bits = "".join(format(c, "09b") for c in codes)
        bits += "0" * (-len(bits) % 8)
        return int(bits, 2).to_bytes(len(bits) // 8, "big")
    value = sum(c << (9 * i) for i, c in enumerate(codes))
    return value.to_bytes(-(-9 * len(codes) // 8), "little")


def test_a_table_code_after_clear_is_refused():
    for msb in (True, False):
        assert not safe_start(_codes([256, 300, 257], msb))
        assert not safe_start(_codes([256, 256, 258, 65], msb))  # after repeated CLEARs
        assert safe_start(_codes([256, 65, 258, 257], msb))  # a literal, then the table
        assert safe_start(_codes([256, 257], msb))
        assert safe_start(_codes([256, 256, 256], msb))


def test_streams_that_do_not_start_with_clear_are_left_to_the_decoder():
    assert safe_start(b"")
    assert safe_start(b"\x80")
    assert safe_start(b"\x12\x34\x56")  # the decoder refuses it as invalid


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=5000), st.integers(0, 3))
def test_every_stream_the_encoder_writes_passes(raw, repeat):
    data = imagecodecs.lzw_encode(raw * (repeat + 1))
    assert safe_start(data)


def test_the_stream_found_by_the_fuzzer_is_refused():
    rng = np.random.default_rng(0)
    assert safe_start(imagecodecs.lzw_encode(rng.integers(0, 255, 10**5, np.uint8).tobytes()))
    assert not safe_start(bytes.fromhex("8068cdee043888e4a07ebe470bf6b158"))


def test_reference_parser_finds_a_table_code_after_a_later_clear():
    for msb in (True, False):
        assert table_code_after_a_later_clear(_codes([256, 65, 66, 256, 300, 257], msb))
        assert table_code_after_a_later_clear(_codes([256, 65, 256, 256, 259], msb))
        # after the first CLEAR it is lzwcheck's to refuse
        assert not table_code_after_a_later_clear(_codes([256, 300, 257], msb))
        assert not table_code_after_a_later_clear(_codes([256, 65, 256, 66, 258, 257], msb))
        assert not table_code_after_a_later_clear(_codes([256, 65, 257, 256, 300], msb))


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=1, max_size=40000), st.integers(0, 3))
def test_reference_parser_passes_every_stream_the_encoder_writes(data, repeat):
    """Long streams: the table fills, the encoder clears it and goes on (many CLEARs)."""
    stream = imagecodecs.lzw_encode(data * (1 + repeat * 5))
    assert not table_code_after_a_later_clear(stream)
