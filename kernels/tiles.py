"""The per-tile steps every attention kernel shares, whatever decides which tiles it visits.

The paper-pattern kernels (forward.py, backward.py) walk ranges of virtual indices
(geometry.py); the block-sparse kernels (block_sparse.py) walk lists of blocks. Both
load rows of a head dim padded to a power of two, and apply the same online-softmax and
backward steps to each (query tile, key tile) pair; those steps live here, once. Every
function is a @triton.jit helper, inlined into its caller: no cost at run time.
"""

import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)  # log2(e), the one definition (launch.LOG2E is its float)


@triton.jit
def load_rows(ptr, row, stride, valid, offs, DIM: tl.constexpr, PAD: tl.constexpr, ALL_VALID: tl.constexpr = False):
    """A (rows, PAD) tile: rows `row` (int64) of a (.., n, DIM) tensor at `ptr`, read as 0
    where the row is not valid or the column is padding (DIM < PAD). ALL_VALID: the
    caller knows every row is valid, so the rows need no mask."""
    ptrs = ptr + row[:, None] * stride + offs[None, :]
    if DIM == PAD:  # a power-of-two head dim: no column mask, the loads of the paper's shapes
        if ALL_VALID:
            tile = tl.load(ptrs)
        else:
            tile = tl.load(ptrs, mask=valid[:, None], other=0.0)
    elif ALL_VALID:
        tile = tl.load(ptrs, mask=(offs < DIM)[None, :], other=0.0)
    else:
        tile = tl.load(ptrs, mask=valid[:, None] & (offs < DIM)[None, :], other=0.0)
    return tile


@triton.jit
def load_run(ptr, first, stride, n, ROWS: tl.constexpr, offs, DIM: tl.constexpr, PAD: tl.constexpr,
             ALL_VALID: tl.constexpr):
    """A (ROWS, PAD) tile of the consecutive rows first .. first + ROWS - 1 (first int64)
    of a (.., n, DIM) tensor at `ptr`, read as 0 past n (unless ALL_VALID) and in the
    padding. The same tile as `load_rows`, addressed as one scalar start plus offsets
    that do not change from tile to tile: inside a loop over listed blocks, the 64-bit
    row address is computed once per tile instead of once per element."""
    rows = tl.arange(0, ROWS)
    return load_rows(ptr + first * stride, rows, stride, rows < n - first, offs, DIM, PAD, ALL_VALID)


@triton.jit
def store_rows(ptr, row, stride, valid, offs, value, DIM: tl.constexpr, PAD: tl.constexpr):
    """Store a (rows, PAD) tile into rows `row` of a (.., n, DIM) tensor, skipping padding."""
    ptrs = ptr + row[:, None] * stride + offs[None, :]
    if DIM == PAD:
        tl.store(ptrs, value.to(ptr.dtype.element_ty), mask=valid[:, None])
    else:
        tl.store(ptrs, value.to(ptr.dtype.element_ty), mask=valid[:, None] & (offs < DIM)[None, :])


@triton.jit
def softmax_step(s, v, m_i, l_i, acc, qk_scale):
    """One key tile of the online softmax. s: (BLOCK_M, BLOCK_N) raw scores q . k, -inf
    where a pair is not allowed; qk_scale: the softmax scale times log2(e), applied here
    so that scaling and subtracting the max are one fused multiply-add per score (the
    running max is taken over the raw scores, then scaled per row); m_i, l_i: running
    max and sum per row in log2 units; acc: the unnormalized output. Returns the updated
    (m_i, l_i, acc)."""
    m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
    m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing allowed yet
    p = tl.math.exp2(s * qk_scale - m_ref[:, None])
    alpha = tl.math.exp2(m_i - m_ref)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return m_new, l_i, acc


@triton.jit
def softmax_result(m_i, l_i, acc):
    """(output, logsumexp in natural log) of finished rows: 0 and -inf for a row with no key."""
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    out = acc / l_safe[:, None]
    lse = tl.where(empty, float("-inf"), (m_i + tl.math.log2(l_safe)) / LOG2E)
    return out, lse


@triton.jit
def load_lse(LSE, stat_base, row, valid):
    """logsumexp in log2 units, +inf for rows with no keys (and missing rows), so their P is 0."""
    lse = tl.load(LSE + stat_base + row, mask=valid, other=float("inf")) * LOG2E
    return tl.where(lse == float("-inf"), float("inf"), lse)


@triton.jit
def dq_step(p, do, v, k, delta, dq):
    """dQ of one key tile: p (BLOCK_M, BLOCK_N) probabilities, 0 where not allowed."""
    dp = tl.dot(do, tl.trans(v))
    ds = p * (dp - delta[:, None])
    return dq + tl.dot(ds.to(k.dtype), k)


@triton.jit
def dkdv_step(p_t, q, do, v, delta, dk, dv):
    """dK and dV of one query tile: p_t (BLOCK_N, BLOCK_M) transposed probabilities, 0
    where not allowed."""
    dv += tl.dot(p_t.to(do.dtype), do)
    dp_t = tl.dot(v, tl.trans(do))  # (BLOCK_N, BLOCK_M)
    ds_t = p_t * (dp_t - delta[None, :])
    dk += tl.dot(ds_t.to(q.dtype), q)
    return dk, dv
