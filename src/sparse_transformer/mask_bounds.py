"""What a mask_mod can allow over a whole tile, without evaluating its elements.

`SparseLayout.from_mask_mod` needs, per (query block x key block) tile, whether the
mask_mod allows every pair, none, or some. Evaluating every pair costs n^2, as
FlexAttention's `create_block_mask` does. Instead the mask_mod is first called with
`Bounds`: each index argument is the range of positions a tile spans, and every
operation on ranges gives a range that holds each value the operation can take on any
element (interval arithmetic). The result, a range of bools per tile, says "all pairs"
([True, True]), "none" ([False, False]) or "some, maybe" ([False, True]); only the last
kind is evaluated element by element. For the masks users write (windows, global tokens,
prefixes, documents, random blocks) nearly every tile is decided by its range.

The ranges are sound, not always tight: an operation that cannot be bounded cheaply gives
the widest range, and one that is not supported at all (floats, Python branching on a
tensor, a shape) raises `Unbounded` (or TypeError, for a Python operator Bounds does not
define), after which the caller evaluates every element.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import torch

# An index range whose product of widths is at most this is gathered value by value
# (exact); a wider one reads a range-minimum table (one varying index) or the whole table.
ENUMERATED_VALUES = 64


class Unbounded(Exception):
    """The mask_mod did something that ranges are not kept through: evaluate every element."""


class Bounds:
    """Per element, the range [lo, hi] of an integer or bool tensor: lo and hi broadcast
    like the tensor would, int64 for integers, bool for bools (False < True).

    `tables` is shared by all Bounds of one build: range-minimum tables of the lookup
    tables the mask_mod indexes, built once per build.
    """

    __hash__ = None  # == builds a Bounds

    def __init__(self, lo: torch.Tensor, hi: torch.Tensor, tables: dict | None = None):
        self.lo, self.hi, self.tables = lo, hi, tables

    @property
    def is_bool(self) -> bool:
        return self.lo.dtype == torch.bool

    @classmethod
    def of(cls, value, device: torch.device, tables: dict | None = None) -> Bounds:
        """A Bounds, a tensor or a Python number as a Bounds (a tensor is its own range)."""
        if isinstance(value, Bounds):
            return value
        if isinstance(value, bool):
            value = torch.tensor(value, device=device)
        elif isinstance(value, int):
            value = torch.tensor(value, dtype=torch.int64, device=device)
        if not isinstance(value, torch.Tensor) or value.dtype.is_floating_point or value.dtype.is_complex:
            raise Unbounded(f"a {type(value).__name__} of {getattr(value, 'dtype', '')} in a mask_mod")
        value = value if value.dtype == torch.bool else value.long()
        return cls(value, value, tables)

    # ------------------------------------------------------------------ conversions
    def as_int(self) -> Bounds:
        return Bounds(self.lo.long(), self.hi.long(), self.tables) if self.is_bool else self

    def truth(self) -> Bounds:
        """As bools: True where nonzero (what a mask_mod's integer result means)."""
        if self.is_bool:
            return self
        never_zero = (self.lo > 0) | (self.hi < 0)
        return Bounds(never_zero, (self.lo != 0) | (self.hi != 0), self.tables)

    def _dtype(self, dtype: torch.dtype) -> Bounds:
        if dtype == torch.bool:
            return self.truth()
        if dtype.is_floating_point or dtype.is_complex:
            raise Unbounded(f"a conversion to {dtype} in a mask_mod")
        return self.as_int()

    def to(self, *args, **kwargs) -> Bounds:
        dtype = kwargs.get("dtype", next((a for a in args if isinstance(a, torch.dtype)), None))
        return self if dtype is None else self._dtype(dtype)

    def bool(self) -> Bounds:
        return self.truth()

    def long(self) -> Bounds:
        return self.as_int()

    int = long

    def __bool__(self):
        raise Unbounded("Python branching on a tensor in a mask_mod")

    def __getattr__(self, name: str):
        """Tensor methods (`q_idx.abs()`, `.clamp(max=...)`, `.eq(...)`) as the torch functions."""
        if name.startswith("__"):  # Python's protocols look these up and expect AttributeError
            raise AttributeError(name)
        if name in TORCH_FUNCTIONS and name != "where":  # Tensor.where(condition, other) reads differently
            return functools.partial(TORCH_FUNCTIONS[name], self)
        raise Unbounded(f"`.{name}` of an index tensor in a mask_mod")

    # ------------------------------------------------------------------ operators
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        if name not in TORCH_FUNCTIONS or (kwargs and name not in ("clamp", "clip", "where")):
            raise Unbounded(f"torch function {name!r} in a mask_mod")
        return TORCH_FUNCTIONS[name](*args, **(kwargs or {}))

    # The operators (__add__, __lt__, __getitem__, ...) are set from TORCH_FUNCTIONS below.


def _operands(*values) -> tuple[list[Bounds], dict | None]:
    """The values as Bounds on the first Bounds' device, and that build's tables."""
    first = next(v for v in values if isinstance(v, Bounds))
    return [Bounds.of(v, first.lo.device, first.tables) for v in values], first.tables


# ---------------------------------------------------------------------- integer arithmetic
def add(a, b) -> Bounds:
    (a, b), tables = _operands(a, b)
    a, b = a.as_int(), b.as_int()
    return Bounds(a.lo + b.lo, a.hi + b.hi, tables)


def sub(a, b) -> Bounds:
    (a, b), tables = _operands(a, b)
    a, b = a.as_int(), b.as_int()
    return Bounds(a.lo - b.hi, a.hi - b.lo, tables)


def neg(a) -> Bounds:
    (a,), tables = _operands(a)
    a = a.as_int()
    return Bounds(-a.hi, -a.lo, tables)


def _corners(op: Callable, a: Bounds, b: Bounds, tables) -> Bounds:
    """The range of op over the box a x b, for op monotone in each argument on it."""
    values = torch.stack(torch.broadcast_tensors(op(a.lo, b.lo), op(a.lo, b.hi), op(a.hi, b.lo), op(a.hi, b.hi)))
    return Bounds(values.amin(0), values.amax(0), tables)


def mul(a, b) -> Bounds:
    (a, b), tables = _operands(a, b)
    return _corners(torch.mul, a.as_int(), b.as_int(), tables)


def floor_divide(a, b) -> Bounds:
    (a, b), tables = _operands(a, b)
    a, b = a.as_int(), b.as_int()
    if not bool((b.lo > 0).all()):  # floor(a / b) is monotone in each argument only for b > 0
        raise Unbounded("floor division by a divisor that may be <= 0 in a mask_mod")
    return _corners(torch.floor_divide, a, b, tables)


def remainder(a, b) -> Bounds:
    (a, b), tables = _operands(a, b)
    a, b = a.as_int(), b.as_int()
    if not bool((b.lo > 0).all()):
        raise Unbounded("a remainder by a divisor that may be <= 0 in a mask_mod")
    # Within one period of a fixed divisor, a mod b rises from lo mod b to hi mod b.
    one_period = (b.lo == b.hi) & (torch.floor_divide(a.lo, b.lo) == torch.floor_divide(a.hi, b.lo))
    return Bounds(torch.where(one_period, torch.remainder(a.lo, b.lo), 0),
                  torch.where(one_period, torch.remainder(a.hi, b.lo), b.hi - 1), tables)


def absolute(a) -> Bounds:
    (a,), tables = _operands(a)
    a = a.as_int()
    lo = torch.where(a.lo >= 0, a.lo, torch.where(a.hi <= 0, -a.hi, 0))
    return Bounds(lo, torch.maximum(-a.lo, a.hi), tables)


def minimum(a, b) -> Bounds:
    (a, b), tables = _operands(a, b)
    a, b = a.as_int(), b.as_int()
    return Bounds(torch.minimum(a.lo, b.lo), torch.minimum(a.hi, b.hi), tables)


def maximum(a, b) -> Bounds:
    (a, b), tables = _operands(a, b)
    a, b = a.as_int(), b.as_int()
    return Bounds(torch.maximum(a.lo, b.lo), torch.maximum(a.hi, b.hi), tables)


def clamp(a, min=None, max=None) -> Bounds:  # noqa: A002 (torch's argument names)
    a = a if min is None else maximum(a, min)
    return a if max is None else minimum(a, max)


# ---------------------------------------------------------------------- comparisons and logic
def less(a, b) -> Bounds:
    (a, b), tables = _operands(a, b)
    a, b = a.as_int(), b.as_int()
    return Bounds(a.hi < b.lo, a.lo < b.hi, tables)


def less_equal(a, b) -> Bounds:
    (a, b), tables = _operands(a, b)
    a, b = a.as_int(), b.as_int()
    return Bounds(a.hi <= b.lo, a.lo <= b.hi, tables)


def equal(a, b) -> Bounds:
    (a, b), tables = _operands(a, b)
    a, b = a.as_int(), b.as_int()
    always = (a.lo == a.hi) & (b.lo == b.hi) & (a.lo == b.lo)
    return Bounds(always, (a.lo <= b.hi) & (b.lo <= a.hi), tables)


def logical_not(a) -> Bounds:
    (a,), tables = _operands(a)
    a = a.truth()
    return Bounds(~a.hi, ~a.lo, tables)


def logical_and(a, b) -> Bounds:
    (a, b), tables = _operands(a, b)
    a, b = a.truth(), b.truth()
    return Bounds(a.lo & b.lo, a.hi & b.hi, tables)


def logical_or(a, b) -> Bounds:
    (a, b), tables = _operands(a, b)
    a, b = a.truth(), b.truth()
    return Bounds(a.lo | b.lo, a.hi | b.hi, tables)


def logical_xor(a, b) -> Bounds:
    (a, b), tables = _operands(a, b)
    a, b = a.truth(), b.truth()
    return Bounds((a.lo & ~b.hi) | (~a.hi & b.lo), (a.hi & ~b.lo) | (~a.lo & b.hi), tables)


def _bitwise(logical: Callable, exact: Callable) -> Callable:
    """&, | and ^: logic on bools; on integers, exact only where both values are known."""
    def op(a, b) -> Bounds:
        (a, b), tables = _operands(a, b)
        if a.is_bool and b.is_bool:
            return logical(a, b)
        a, b = a.as_int(), b.as_int()
        if not bool(((a.lo == a.hi) & (b.lo == b.hi)).all()):
            raise Unbounded("a bitwise operation on integer ranges in a mask_mod")
        value = exact(a.lo, b.lo)
        return Bounds(value, value, tables)
    return op


bitwise_and = _bitwise(logical_and, torch.bitwise_and)
bitwise_or = _bitwise(logical_or, torch.bitwise_or)
bitwise_xor = _bitwise(logical_xor, torch.bitwise_xor)


def bitwise_not(a) -> Bounds:
    (a,), tables = _operands(a)
    return logical_not(a) if a.is_bool else Bounds(-a.hi - 1, -a.lo - 1, tables)  # ~x = -x - 1


def where(condition, x, y) -> Bounds:
    (condition, x, y), tables = _operands(condition, x, y)
    condition = condition.truth()
    if not (x.is_bool and y.is_bool):
        x, y = x.as_int(), y.as_int()
    either_lo, either_hi = torch.minimum(x.lo, y.lo), torch.maximum(x.hi, y.hi)
    lo = torch.where(condition.lo, x.lo, torch.where(~condition.hi, y.lo, either_lo))
    hi = torch.where(condition.lo, x.hi, torch.where(~condition.hi, y.hi, either_hi))
    return Bounds(lo, hi, tables)


# ---------------------------------------------------------------------- table lookups
def gather(table, index) -> Bounds:
    """table[index] for a plain tensor `table` and integer indices (Bounds, tensors, ints),
    one per leading dimension of the table."""
    if isinstance(table, Bounds):
        raise Unbounded("indexing an index tensor in a mask_mod")
    index = index if isinstance(index, tuple) else (index,)
    if len(index) != table.dim() or not all(isinstance(i, (Bounds, torch.Tensor, int)) for i in index) \
            or any(isinstance(i, bool) or (isinstance(i, torch.Tensor) and i.dtype == torch.bool) for i in index):
        raise Unbounded("indexing other than one integer index per dimension in a mask_mod")
    index, tables = _operands(*index)
    index = [i.as_int() for i in index]
    for i, size in zip(index, table.shape):
        if bool((i.lo < 0).any()) or bool((i.hi >= size).any()):  # negative indices wrap: leave them to the elements
            raise Unbounded("an index that may be out of range or negative in a mask_mod")
    if table.dtype.is_floating_point or table.dtype.is_complex:
        raise Unbounded(f"a lookup in a {table.dtype} table in a mask_mod")
    widths = [(i.hi - i.lo).amax() for i in index]
    varying = [d for d, w in enumerate(widths) if int(w) > 0]
    if not varying:
        lo = hi = table[tuple(i.lo for i in index)].long()
    elif math.prod(int(widths[d]) + 1 for d in varying) <= ENUMERATED_VALUES:
        lo, hi = _enumerated(table.long(), index, varying, widths)
    elif len(varying) == 1:
        lo, hi = _range_lookup(table, index, varying[0], tables)
    else:  # several wide indices: the whole table's range
        shape = torch.broadcast_shapes(*(i.lo.shape for i in index))
        lo, hi = table.long().amin().expand(shape), table.long().amax().expand(shape)
    if table.dtype == torch.bool:
        return Bounds(lo.bool(), hi.bool(), tables)
    return Bounds(lo, hi, tables)


def _enumerated(values: torch.Tensor, index: list[Bounds], varying: list[int], widths) -> tuple[torch.Tensor, torch.Tensor]:
    """Every value of the index box, up to ENUMERATED_VALUES of them: exact."""
    lo = hi = None
    offsets = torch.cartesian_prod(*(torch.arange(int(widths[d]) + 1) for d in varying)).reshape(-1, len(varying))
    for offset in offsets.tolist():
        at = [i.lo for i in index]
        for d, o in zip(varying, offset):
            at[d] = torch.minimum(index[d].lo + o, index[d].hi)
        value = values[tuple(at)]
        lo = value if lo is None else torch.minimum(lo, value)
        hi = value if hi is None else torch.maximum(hi, value)
    return lo, hi


def _range_lookup(table: torch.Tensor, index: list[Bounds], d: int, tables: dict | None) -> tuple[torch.Tensor, torch.Tensor]:
    """min and max of table over [lo, hi] along dimension d (the others exact), from a
    sparse table: level k holds the min / max of 2^k consecutive entries, so any range is
    two overlapping power-of-two ranges. Only the levels the widest range needs are built
    (a tile's range of a position spans a block, not the sequence)."""
    # The cache holds the table itself, so no other tensor takes its address during the
    # build; the version counter tells an in-place change.
    key = (table.data_ptr(), tuple(table.shape), tuple(table.stride()), table.dtype, table._version, d)
    cache = tables if tables is not None else {}
    lo, hi = index[d].lo, index[d].hi
    level = torch.floor(torch.log2((hi - lo + 1).double())).long()
    levels = int(level.max()) + 1
    if key not in cache or len(cache[key][1]) < levels:
        cache[key] = (table, *_sparse_tables(table.long().movedim(d, -1), levels))
    _, low_table, high_table = cache[key]  # (levels, ..., size along d)
    span = torch.pow(2, level)
    others = [i.lo for k, i in enumerate(index) if k != d]
    first, last = (level, *others, lo), (level, *others, hi - span + 1)
    return (torch.minimum(low_table[first], low_table[last]), torch.maximum(high_table[first], high_table[last]))


def _sparse_tables(values: torch.Tensor, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(levels, ..., size) each: level k holds at i the min (max) of values[..., i : i + 2^k]
    wherever that fits; the entries nearer the end keep level k - 1's, and no range reads them."""
    lows, highs = [values], [values]
    for k in range(1, levels):
        step = 1 << (k - 1)
        low, high = lows[-1], highs[-1]
        lows.append(torch.cat([torch.minimum(low[..., :-step], low[..., step:]), low[..., -step:]], -1))
        highs.append(torch.cat([torch.maximum(high[..., :-step], high[..., step:]), high[..., -step:]], -1))
    return torch.stack(lows), torch.stack(highs)


TORCH_FUNCTIONS: dict[str, Callable] = {}
for _names, _fn in (
    (("add", "__add__", "__radd__"), add),
    (("sub", "subtract", "__sub__"), sub),
    (("__rsub__",), lambda a, b: sub(b, a)),
    (("mul", "multiply", "__mul__", "__rmul__"), mul),
    (("floor_divide", "__floordiv__"), floor_divide),
    (("__rfloordiv__",), lambda a, b: floor_divide(b, a)),
    (("remainder", "__mod__"), remainder),
    (("__rmod__",), lambda a, b: remainder(b, a)),
    (("neg", "negative", "__neg__"), neg),
    (("abs", "absolute", "__abs__"), absolute),
    (("minimum",), minimum),
    (("maximum",), maximum),
    (("clamp", "clip"), clamp),
    (("lt", "less", "__lt__"), less),
    (("le", "less_equal", "__le__"), less_equal),
    (("gt", "greater", "__gt__"), lambda a, b: less(b, a)),
    (("ge", "greater_equal", "__ge__"), lambda a, b: less_equal(b, a)),
    (("eq", "__eq__"), equal),
    (("ne", "not_equal", "__ne__"), lambda a, b: logical_not(equal(a, b))),
    (("logical_not",), logical_not),
    (("logical_and",), logical_and),
    (("logical_or",), logical_or),
    (("logical_xor",), logical_xor),
    (("bitwise_and", "__and__", "__rand__"), bitwise_and),
    (("bitwise_or", "__or__", "__ror__"), bitwise_or),
    (("bitwise_xor", "__xor__", "__rxor__"), bitwise_xor),
    (("bitwise_not", "__invert__"), bitwise_not),
    (("where",), where),
    (("__getitem__",), gather),
):
    for _name in _names:
        TORCH_FUNCTIONS[_name] = _fn
        if _name.startswith("__"):  # Python's operators on Bounds: the same (self, other) as Tensor's
            setattr(Bounds, _name, _fn)


def tile_bounds(mask_mod: Callable, n: int, block: int, lb: int, lh: int, rows: range, nb: int,
                device: torch.device, tables: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(always, ever), each (lb, lh, len(rows), nb) bool: for query blocks `rows` against
    every key block, whether mask_mod surely allows every pair of the tile (inside n) and
    whether it may allow any. Raises Unbounded if the mask_mod leaves what ranges follow.
    `tables` is kept across calls of one build (the range tables of its lookups)."""
    def spans(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        start = blocks * block
        return start, torch.clamp(start + block - 1, max=n - 1)

    q_lo, q_hi = spans(torch.arange(rows.start, rows.stop, device=device))
    k_lo, k_hi = spans(torch.arange(nb, device=device))
    q = Bounds(q_lo.view(1, 1, -1, 1), q_hi.view(1, 1, -1, 1), tables)
    kv = Bounds(k_lo.view(1, 1, 1, -1), k_hi.view(1, 1, 1, -1), tables)
    b = torch.arange(lb, device=device).view(-1, 1, 1, 1)
    h = torch.arange(lh, device=device).view(1, -1, 1, 1)
    allowed = Bounds.of(mask_mod(b, h, q, kv), device).truth()
    shape = (lb, lh, len(rows), nb)
    return allowed.lo.expand(shape), allowed.hi.expand(shape)
