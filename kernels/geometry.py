"""Where each attention mode's queries and keys live, and which pairs are allowed.

Every kernel walks a *virtual index* u over rows: for most modes u is the position
itself; two modes re-index so that every tile they visit is dense:

- STRIDED (strided A2, keys i, i-l, i-2l, ...): the "strided transpose" of the paper's
  code, done with index arithmetic instead of a copy. Rows are grouped by position mod l
  into l groups of G = ceil(n / l) slots; u = r * G + t is position t * l + r. Inside a
  group, A2 is plain causal attention, so a tile is a causal tile of one group.
  Slots whose position is >= n (ragged tails) are masked.
- SUMMARY (fixed A2): keys are only the summary columns, numbered m = X * c + s for
  chunk X and summary column s (position X * l + col_lo + s), so c keys per chunk sit
  next to each other and a key tile holds BLOCK_N summaries of consecutive chunks.

DENSE, BAND (strided A1: the last l positions) and CHUNK (fixed A1: the query's own
chunk) index keys and queries by position.

A *continuation* pass (the second set of a merged head) skips the keys the first set
already counted: STRIDED drops j = i, SUMMARY drops the summaries of the query's own
chunk. So A1 then A2 covers A1 ∪ A2 exactly once.

In these virtual orders the keys a query row may read are one contiguous range
(`key_bounds`), which is what the kernels mask with.
"""

import triton
import triton.language as tl

MODES = {"dense": 0, "band": 1, "chunk": 2, "strided": 3, "summary": 4}  # what MODE_EVEN and MODE_ODD take
DENSE = tl.constexpr(MODES["dense"])
BAND = tl.constexpr(MODES["band"])
CHUNK = tl.constexpr(MODES["chunk"])
STRIDED = tl.constexpr(MODES["strided"])
SUMMARY = tl.constexpr(MODES["summary"])


@triton.jit
def by_head_mode(fn: tl.constexpr, h, MODE_EVEN: tl.constexpr, MODE_ODD: tl.constexpr, args):
    """fn(*args, MODE=...) in head h's mode: MODE_EVEN for even h, MODE_ODD for odd h (the
    multi-head integration serves both factorized heads in one launch). The mode stays a
    constexpr: each branch is fn compiled for one mode, and a program takes the branch of
    its head's parity. fn takes MODE as its last parameter, after those `args` fill."""
    if MODE_EVEN == MODE_ODD:  # one mode for every head: one compiled body of fn instead of two identical ones
        fn(*args, MODE=MODE_EVEN)
    elif h % 2 == 0:
        fn(*args, MODE=MODE_EVEN)
    else:
        fn(*args, MODE=MODE_ODD)


@triton.jit
def summary_start(h, L, C, SUMMARY_GROUPS, SUMMARY_HEAD_DIV):
    """col_lo: the first of the c summary columns (positions mod l) that query head h
    reads under fixed A2, its sub-block (h // SUMMARY_HEAD_DIV) % SUMMARY_GROUPS counted
    back from the last c columns (patterns.Pattern.summary_columns; ops.KernelSpec)."""
    return L - ((h // SUMMARY_HEAD_DIV) % SUMMARY_GROUPS + 1) * C


@triton.jit
def query_rows(u, n, L, G, MODE: tl.constexpr):
    """Positions of the query rows with virtual indices u, and which rows exist."""
    if MODE == STRIDED:
        group = u // G
        pos = (u % G) * L + group
        valid = (group < L) & (pos < n)
    else:
        pos = u
        valid = u < n
    return pos, valid


@triton.jit
def key_rows(u, n, L, G, C, col_lo, MODE: tl.constexpr):
    """Positions of the key rows with virtual indices u, and which rows exist."""
    if MODE == STRIDED:
        group = u // G
        pos = (u % G) * L + group
        valid = (group < L) & (pos < n)
    elif MODE == SUMMARY:
        pos = (u // C) * L + col_lo + u % C
        valid = pos < n
    else:
        pos = u
        valid = u < n
    return pos, valid


@triton.jit
def key_bounds(u_q, pos_q, valid_q, L, G, C, col_lo, MODE: tl.constexpr, CONTINUE: tl.constexpr):
    """[first, end) of the virtual keys each query row may read.

    In virtual key order every mode's allowed set is one contiguous range, so a kernel
    masks a tile with two comparisons per pair and no division in its inner loop. Keys in
    a valid row's range always exist (position < n); rows that do not exist get an
    empty range.
    """
    if MODE == DENSE:
        first = tl.zeros_like(u_q)
        end = u_q + 1
    elif MODE == BAND:
        first = tl.maximum(u_q - L + 1, 0)
        end = u_q + 1
    elif MODE == CHUNK:
        first = u_q // L * L
        end = u_q + 1
    elif MODE == STRIDED:  # the earlier slots of the query's group (in position order too)
        first = u_q // G * G
        if CONTINUE:
            end = u_q
        else:
            end = u_q + 1
    else:  # SUMMARY: all summaries of earlier chunks, then those of its own chunk up to itself
        first = tl.zeros_like(u_q)
        end = pos_q // L * C
        if not CONTINUE:
            end += tl.minimum(tl.maximum(pos_q % L + 1 - col_lo, 0), C)
    end = tl.where(valid_q, end, first)
    return first, end


@triton.jit
def key_walk(u0, u_q, pos_q, valid_q, n, L, G, C, col_lo, MODE: tl.constexpr, CONTINUE: tl.constexpr,
             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """The keys a query tile (virtual rows u_q from u0, positions pos_q) walks: the virtual
    key range [lo, hi) (`key_range`), each row's allowed keys [first, end) (`key_bounds`)
    and [full_lo, full_hi), the keys every row may read, where a key tile needs no mask
    (a tile with a missing row has an empty such range, since its end is its first)."""
    first, end = key_bounds(u_q, pos_q, valid_q, L, G, C, col_lo, MODE=MODE, CONTINUE=CONTINUE)  # (BLOCK_M,) each
    lo, hi = key_range(u0, n, L, G, C, col_lo, MODE=MODE, CONTINUE=CONTINUE, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N)
    return lo, hi, first, end, tl.max(first, 0), tl.min(end, 0)


@triton.jit
def row_count(n, L, G, MODE: tl.constexpr):
    """How many virtual query rows the mode has (the query grid's extent)."""
    if MODE == STRIDED:
        rows = L * G
    else:
        rows = n
    return rows


@triton.jit
def key_range(u0, n, L, G, C, col_lo, MODE: tl.constexpr, CONTINUE: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """[lo, hi) of virtual key indices that the query tile starting at u0 may need.

    lo is rounded down to a multiple of BLOCK_N so that key tiles stay aligned.
    """
    rows = row_count(n, L, G, MODE)
    last = tl.minimum(u0 + BLOCK_M, rows) - 1  # last existing virtual query row
    if MODE == DENSE:
        lo = 0
        hi = last + 1
    elif MODE == BAND:
        lo = tl.maximum(u0 - L + 1, 0) // BLOCK_N * BLOCK_N
        hi = last + 1
    elif MODE == CHUNK:
        lo = (u0 // L * L) // BLOCK_N * BLOCK_N
        hi = last + 1
    elif MODE == STRIDED:
        lo = (u0 // G * G) // BLOCK_N * BLOCK_N
        hi = last + 1
    else:  # SUMMARY: the summaries at positions up to the last query (earlier chunks only when continuing)
        lo = 0
        pos_last = tl.minimum(last, n - 1)
        hi = (pos_last // L) * C
        if not CONTINUE:
            hi += tl.minimum(tl.maximum(pos_last % L + 1 - col_lo, 0), C)
    hi = tl.where(u0 < rows, hi, lo)
    return lo, hi


@triton.jit
def query_range(u0, n, L, G, C, col_lo, MODE: tl.constexpr, CONTINUE: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """[lo, hi) of virtual query indices that may read the key tile starting at u0.

    lo is rounded down to a multiple of BLOCK_M so that query tiles stay aligned.
    """
    rows = row_count(n, L, G, MODE)
    u_last = u0 + BLOCK_N - 1
    if MODE == DENSE:
        lo = u0
        hi = rows
    elif MODE == BAND:
        lo = u0
        hi = tl.minimum(u_last + L, rows)
    elif MODE == CHUNK:
        lo = u0
        hi = tl.minimum((u_last // L + 1) * L, rows)
    elif MODE == STRIDED:
        lo = u0
        hi = tl.minimum((u_last // G + 1) * G, rows)
    else:  # SUMMARY: every later query (from the next chunk on when continuing)
        if CONTINUE:
            lo = (u0 // C + 1) * L
        else:
            lo = (u0 // C) * L + col_lo + u0 % C
        hi = rows
    lo = lo // BLOCK_M * BLOCK_M
    hi = tl.where(lo < hi, hi, lo)
    return lo, hi
