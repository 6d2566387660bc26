"""Ranges of mask_mods over tiles (sparse_transformer.mask_bounds): every value an
operation takes inside its arguments' ranges lies in the range it gives, and a layout
evaluates elements only where the ranges leave a tile open."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from layout_checks import assert_lists_match
from sparse_transformer.layouts import SparseLayout
from sparse_transformer.mask_bounds import Bounds, Unbounded, tile_bounds

TABLE = torch.tensor([3, -1, 4, 1, -5, 9, 2, -6, 5, 3, 5, 8, -9, 7, 9, 3, 2, 3, 8, 4, -6, 2, 6, 4, 3])  # 25 entries
FLAGS = TABLE > 2
GRID = TABLE[:, None] * TABLE[None, :5] % 7  # (25, 5)

# Each operation as a mask_mod would write it, on two integer arguments in [-12, 12].
OPERATIONS = {
    "add": lambda x, y: x + y,
    "add a number": lambda x, y: 3 + x,
    "sub": lambda x, y: x - y,
    "sub from a number": lambda x, y: 7 - x,
    "sub from a tensor": lambda x, y: torch.tensor(2) - y,
    "mul": lambda x, y: x * y,
    "mul a number": lambda x, y: -3 * y,
    "neg": lambda x, y: -x,
    "abs": lambda x, y: abs(x - y),
    "abs method": lambda x, y: (x - y).abs(),
    "floor divide": lambda x, y: x // 4,
    "floor divide by a range": lambda x, y: x // (y.clamp(min=1)),
    "remainder": lambda x, y: x % 5,
    "remainder by a range": lambda x, y: (x - y) % y.clamp(min=1),
    "minimum": lambda x, y: torch.minimum(x, y),
    "maximum": lambda x, y: torch.maximum(x, y),
    "clamp": lambda x, y: x.clamp(min=-2, max=4),
    "clamp function": lambda x, y: torch.clamp(y, max=0),
    "less": lambda x, y: x < y,
    "less equal": lambda x, y: x <= y,
    "greater a number": lambda x, y: x > 2,
    "greater equal": lambda x, y: x >= y,
    "tensor less": lambda x, y: torch.tensor(0) < y,
    "equal": lambda x, y: x == y,
    "not equal": lambda x, y: x != y,
    "eq method": lambda x, y: x.eq(y),
    "and": lambda x, y: (x < 3) & (y > -2),
    "or": lambda x, y: (x < -3) | (y == 1),
    "xor": lambda x, y: (x < 0) ^ (y < 0),
    "invert": lambda x, y: ~(x <= y),
    "integer invert": lambda x, y: ~x,
    "logical not": lambda x, y: torch.logical_not(x > y),
    "logical and of integers": lambda x, y: torch.logical_and(x, y),
    "where": lambda x, y: torch.where(x > 0, y, x),
    "where bools": lambda x, y: torch.where(x > y, x < 0, y < 2),
    "bool as long": lambda x, y: (x < y).long() + 1,
    "table": lambda x, y: TABLE[x + 12],
    "bool table": lambda x, y: FLAGS[y + 12],
    "two-dimensional table": lambda x, y: GRID[x + 12, (y + 12) // 5],
    "table at an exact row": lambda x, y: GRID[x + 12, 3],
    "nested": lambda x, y: (TABLE[(x - y).abs()] > 1) | ((x + y) % 3 == 0),
}


def interval(lo: int, hi: int) -> Bounds:
    return Bounds(torch.tensor(lo), torch.tensor(hi), {})


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(sorted(OPERATIONS)), x=st.tuples(st.integers(-12, 12), st.integers(0, 8)),
       y=st.tuples(st.integers(-12, 12), st.integers(0, 8)))
def test_every_value_inside_the_arguments_ranges_is_inside_the_result_range(name, x, y):
    op = OPERATIONS[name]
    (x_lo, x_width), (y_lo, y_width) = x, y
    x_hi, y_hi = min(12, x_lo + x_width), min(12, y_lo + y_width)
    result = op(interval(x_lo, x_hi), interval(y_lo, y_hi))
    lo, hi = result.lo.long(), result.hi.long()
    assert bool(lo <= hi), name
    for a, b in itertools.product(range(x_lo, x_hi + 1), range(y_lo, y_hi + 1)):
        value = op(torch.tensor(a), torch.tensor(b))
        assert (value.dtype == torch.bool) == result.is_bool, name
        assert bool(lo <= value.long() <= hi), (name, a, b, int(value), int(lo), int(hi))


def test_exact_arguments_give_exact_results():
    """Degenerate ranges stay exact: the range pass of an element is the element's value."""
    for name, op in OPERATIONS.items():
        for a, b in ((-7, 3), (5, 5), (12, -12)):
            result, value = op(interval(a, a), interval(b, b)), op(torch.tensor(a), torch.tensor(b))
            assert int(result.lo) == int(result.hi) == int(value), name


@settings(max_examples=30, deadline=None)
@given(size=st.integers(65, 700), seed=st.integers(0, 2**16), ranges=st.integers(1, 20))
def test_wide_lookups_read_the_exact_minimum_and_maximum(size, seed, ranges):
    """Past ENUMERATED_VALUES a lookup reads a range-minimum table: exact, not just sound.
    The table's levels are built as far as the widest range needs: a narrow lookup first,
    then a wide one through the same cache of tables, which must build the levels it lacks."""
    gen = torch.Generator().manual_seed(seed)
    table = torch.randint(-1000, 1000, (3, size), generator=gen)
    lo = torch.randint(0, size, (ranges,), generator=gen)
    row = torch.randint(0, 3, (ranges,), generator=gen)
    tables: dict = {}
    for widths in ((64, 65), (64, size)):
        hi = torch.minimum(lo + torch.randint(*widths, (ranges,), generator=gen), torch.tensor(size - 1))
        result = table[row, Bounds(lo, hi, tables)]
        for r in range(ranges):
            span = table[row[r], lo[r] : hi[r] + 1]
            assert int(result.lo[r]) == int(span.min()) and int(result.hi[r]) == int(span.max())


@pytest.mark.parametrize("op", [
    lambda x: x.float() < 3,             # floats
    lambda x: x / 2 < 3,                 # true division (floats)
    lambda x: x if x else x,             # Python branching on a tensor
    lambda x: x.shape,                   # the shape of a range
    lambda x: TABLE[x - 30],             # an index that may be negative (wraps)
    lambda x: (x & 3) == 0,              # bits of an integer range
    lambda x: x // (x - 5),              # a divisor that may be 0
])
def test_what_ranges_do_not_follow_is_refused(op):
    with pytest.raises((Unbounded, TypeError)):  # TypeError: a Python operator Bounds does not define
        op(interval(0, 9))


def wide(n: int) -> torch.Tensor:
    return torch.arange(n)


def sliding_window_global(b, h, q, kv):
    return ((q - kv).abs() < 40) | (q < 8) | (kv < 8)


@pytest.mark.parametrize("mask_mod", [
    sliding_window_global,
    lambda b, h, q, kv: kv <= q,
    lambda b, h, q, kv: (kv <= q) & ((q // 48 == kv // 48) | (kv % 48 >= 40)),  # fixed, merged
    lambda b, h, q, kv: (wide(300)[q] // 100 == wide(300)[kv] // 100) & (kv <= q),  # documents of 100
])
def test_only_the_tiles_left_open_are_evaluated_element_by_element(mask_mod):
    """For these masks the ranges are tight on a tile: the elements evaluated are exactly
    those of the partial tiles (and nothing when a tile is full or empty)."""
    n, block = 300, 32
    evaluated = []

    def counted(b, h, q, kv):
        allowed = mask_mod(b, h, q, kv)
        if isinstance(q, torch.Tensor):  # the element pass, not the range pass
            evaluated.append(torch.broadcast_shapes(q.shape, kv.shape).numel())
        return allowed

    layout = SparseLayout.from_mask_mod(counted, n, block=block)
    idx = torch.arange(n)
    mask = mask_mod(0, 0, idx[:, None], idx[None, :])[None, None]
    assert_lists_match(layout.lists, mask)
    partial = int((layout.lists.kv_mask[..., : layout.lists.kv_index.shape[-1]] >= 0)
                  .logical_and(torch.arange(layout.lists.kv_index.shape[-1]) < layout.lists.kv_count[..., None]).sum())
    assert sum(evaluated) == partial * block * block


def test_a_mask_mod_ranges_do_not_follow_builds_the_same_lists():
    """A float in the mask_mod: every tile is evaluated element by element, same lists."""
    def mask_mod(b, h, q, kv):
        return (q.float() - kv.float()).abs() < 17.5

    layout = SparseLayout.from_mask_mod(mask_mod, 200, block=16, slab_elements=16 * 16 * 5)
    idx = torch.arange(200)
    assert_lists_match(layout.lists, mask_mod(0, 0, idx[:, None], idx[None, :])[None, None])


def test_tile_bounds_of_a_head_and_batch_dependent_mask():
    """b and h reach the mask_mod as exact indices; the result has one plane per (b, h)."""
    window = torch.tensor([[16, 64], [1, 200]])  # (batch, heads)

    def mask_mod(b, h, q, kv):
        return (kv <= q) & (q - kv < window[b, h])

    n, block = 256, 32
    nb = math.ceil(n / block)
    always, ever = tile_bounds(mask_mod, n, block, 2, 2, range(nb), nb, torch.device("cpu"), {})
    assert always.shape == ever.shape == (2, 2, nb, nb)
    idx = torch.arange(n)
    for b, h in itertools.product(range(2), range(2)):
        tiles = mask_mod(b, h, idx[:, None], idx[None, :]).view(nb, block, nb, block).transpose(1, 2)
        assert torch.equal(always[b, h], tiles.all(dim=(-1, -2)))
        assert torch.equal(ever[b, h], tiles.any(dim=(-1, -2)))
