"""Which source pages make each page of a Z view: z_blocks against a brute-force count."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tifffs.errors import UnsupportedSource
from tifffs.stacks import z_axis, z_blocks


def test_plain_stack_in_runs_with_a_short_last_run():
    assert z_blocks("Q", (7,), 3) == [(0, 1, 2), (3, 4, 5), (6,)]
    assert z_blocks("Z", (4,), 1) == [(0,), (1,), (2,), (3,)]
    assert z_blocks("Z", (2,), 5) == [(0, 1)]


def test_hyperstack_reduces_slices_of_the_same_channel_and_time():
    # ImageJ order TZC: page index = (t * Z + z) * C + c
    blocks = z_blocks("TZC", (2, 3, 2), 2)
    assert blocks == [(0, 2), (1, 3), (4,), (5,),      # t=0: z-runs {0,1} and {2}, c=0,1
                      (6, 8), (7, 9), (10,), (11,)]  # t=1


@pytest.mark.parametrize("axes", ["C", "T", "S", "E", "TC", "CT"])
def test_no_z_axis_is_refused(axes):
    with pytest.raises(UnsupportedSource, match="no Z axis"):
        z_axis(axes)


@given(st.lists(st.integers(1, 4), min_size=1, max_size=4), st.integers(1, 5), st.data())
def test_z_blocks_partition_the_pages_by_channel_and_time(shape, z_factor, data):
    axes = "".join(data.draw(st.permutations("TZCA"))[:len(shape)])
    if "Z" not in axes:
        axes = "Z" + axes[1:]
    shape = tuple(shape)
    blocks = z_blocks(axes, shape, z_factor)
    z = axes.index("Z")
    out_z = -(-shape[z] // z_factor)
    assert len(blocks) == math.prod(shape) // shape[z] * out_z
    assert sorted(itertools.chain(*blocks)) == list(range(math.prod(shape)))
    strides = [math.prod(shape[i + 1:]) for i in range(len(shape))]
    for block in blocks:
        coords = [tuple(p // s % n for s, n in zip(strides, shape)) for p in block]
        others = {c[:z] + c[z + 1:] for c in coords}
        assert len(others) == 1  # one channel and time point
        zs = [c[z] for c in coords]
        assert zs == list(range(zs[0], zs[0] + len(zs)))  # consecutive, in order
        assert zs[0] % z_factor == 0 and len(zs) <= z_factor
