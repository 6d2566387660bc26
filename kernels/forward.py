"""Forward kernel: FlashAttention-style online softmax over the key tiles a mode needs.

One program computes one tile of BLOCK_M query rows (virtual indices, see geometry.py)
of one (batch, head). It never stores scores: it keeps a running max m, running sum l
and accumulator acc in base-2 exponent units, and writes the output and the logsumexp
(natural log) per row. A continuation pass starts from the output and logsumexp of the
previous pass instead of from empty state, so a merged head's two sets share one
softmax without an extra combine step.

Rows with no allowed key (fixed A2 alone, first positions) get output 0 and
logsumexp -inf.

Grouped-query attention: query head h reads key/value head h // GROUP in place.
"""

import triton
import triton.language as tl

from .geometry import by_head_mode, key_rows, key_walk, query_rows, summary_start
from .tiles import LOG2E, load_rows, softmax_result, softmax_step, store_rows


@triton.jit
def query_program(H, GROUP, stride_qb, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh):
    """Which query tile and (batch, head) pair a forward or dQ program serves (grid: (query
    tiles, batch * heads)): the tile, the pair, its batch element (int64) and head, and
    the offsets of the head's q and of the k and v of its key/value head h // GROUP."""
    # Later query tiles read more keys (causal): launching them first shortens the tail.
    tile = tl.num_programs(0) - 1 - tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = bh % H
    return (tile, bh, b, h, b * stride_qb + h * stride_qh,
            b * stride_kb + (h // GROUP) * stride_kh, b * stride_vb + (h // GROUP) * stride_vh)


@triton.jit
def query_tile(Q, q_base, stride_qn, u0, n, L, G, MODE: tl.constexpr, BLOCK_M: tl.constexpr,
               QK_DIM: tl.constexpr, QK_PAD: tl.constexpr):
    """The query tile of virtual rows u0 .. u0 + BLOCK_M - 1 (u_q) that a forward or dQ
    program owns: u_q, their positions, the positions as int64 row indices, which rows
    exist, and q."""
    u_q = u0 + tl.arange(0, BLOCK_M)  # (BLOCK_M,) virtual query rows
    pos_q, valid_q = query_rows(u_q, n, L, G, MODE)
    row_q = pos_q.to(tl.int64)
    q = load_rows(Q + q_base, row_q, stride_qn, valid_q, tl.arange(0, QK_PAD), QK_DIM, QK_PAD)
    return u_q, pos_q, row_q, valid_q, q


@triton.jit
def key_tile(
    q, K, V, k_base, v_base, stride_kn, stride_vn, start, first, end, full_lo, full_hi, n, L, G, C, col_lo,
    MODE: tl.constexpr, BLOCK_N: tl.constexpr,
    QK_DIM: tl.constexpr, V_DIM: tl.constexpr, QK_PAD: tl.constexpr, V_PAD: tl.constexpr,
):
    """The key tile at virtual key `start` of a query tile's walk (geometry.key_walk): its keys,
    values and the (BLOCK_M, BLOCK_N) unscaled scores q . k, -inf where a pair is not
    allowed (the caller scales them inside its exponent)."""
    u_k = start + tl.arange(0, BLOCK_N)  # (BLOCK_N,) virtual key rows
    pos_k, valid_k = key_rows(u_k, n, L, G, C, col_lo, MODE)
    row_k = pos_k.to(tl.int64)
    k = load_rows(K + k_base, row_k, stride_kn, valid_k, tl.arange(0, QK_PAD), QK_DIM, QK_PAD)
    v = load_rows(V + v_base, row_k, stride_vn, valid_k, tl.arange(0, V_PAD), V_DIM, V_PAD)
    s = tl.dot(q, tl.trans(k))
    if (start < full_lo) | (start + BLOCK_N > full_hi):
        ok = (u_k[None, :] >= first[:, None]) & (u_k[None, :] < end[:, None])
        s = tl.where(ok, s, float("-inf"))
    return k, v, s


@triton.jit
def _forward_tile(
    Q, K, V, O, LSE, q_base, k_base, v_base, o_base, lse_base,
    stride_qn, stride_kn, stride_vn, stride_on,
    n, L, G, C, col_lo, qk_scale, tile,
    CONTINUE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    QK_DIM: tl.constexpr, V_DIM: tl.constexpr, QK_PAD: tl.constexpr, V_PAD: tl.constexpr, MODE: tl.constexpr,
):
    """Output and logsumexp of one query tile read in MODE's order (MODE last:
    `by_head_mode` passes it). backward.py's `_dq_tile` walks the same key tiles."""
    u_q, pos_q, row_q, valid_q, q = query_tile(Q, q_base, stride_qn, tile * BLOCK_M, n, L, G,
                                               MODE=MODE, BLOCK_M=BLOCK_M, QK_DIM=QK_DIM, QK_PAD=QK_PAD)
    offs_v = tl.arange(0, V_PAD)
    if CONTINUE:  # resume the softmax of the previous pass: sum over its keys of 2^(s - lse) is 1
        m_i = tl.load(LSE + lse_base + row_q, mask=valid_q, other=float("-inf")) * LOG2E
        l_i = tl.where(m_i == float("-inf"), 0.0, 1.0)
        acc = load_rows(O + o_base, row_q, stride_on, valid_q, offs_v, V_DIM, V_PAD).to(tl.float32)
    else:
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, V_PAD], tl.float32)

    lo, hi, first, end, full_lo, full_hi = key_walk(tile * BLOCK_M, u_q, pos_q, valid_q, n, L, G, C, col_lo,
                                                    MODE=MODE, CONTINUE=CONTINUE, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N)
    for start in range(lo, hi, BLOCK_N):
        k, v, s = key_tile(q, K, V, k_base, v_base, stride_kn, stride_vn, start, first, end, full_lo, full_hi,
                           n, L, G, C, col_lo, MODE=MODE, BLOCK_N=BLOCK_N,
                           QK_DIM=QK_DIM, V_DIM=V_DIM, QK_PAD=QK_PAD, V_PAD=V_PAD)
        m_i, l_i, acc = softmax_step(s, v, m_i, l_i, acc, qk_scale)

    out, lse = softmax_result(m_i, l_i, acc)
    store_rows(O + o_base, row_q, stride_on, valid_q, offs_v, out, V_DIM, V_PAD)
    tl.store(LSE + lse_base + row_q, lse, mask=valid_q)


@triton.jit
def attention_forward_kernel(
    Q, K, V, O, LSE,
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_on,
    H, GROUP, n, L, G, C, SUMMARY_GROUPS, SUMMARY_HEAD_DIV, qk_scale, N_BUCKET,
    MODE_EVEN: tl.constexpr, MODE_ODD: tl.constexpr, CONTINUE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    QK_DIM: tl.constexpr, V_DIM: tl.constexpr, QK_PAD: tl.constexpr, V_PAD: tl.constexpr,
):
    """Grid: (query tiles, batch * heads). Even and odd heads may use different modes
    (the multi-head integration), so one launch serves every head (`by_head_mode`)."""
    tile, bh, b, h, q_base, k_base, v_base = query_program(
        H, GROUP, stride_qb, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh)
    o_base = b * stride_ob + h * stride_oh
    lse_base = bh.to(tl.int64) * n
    col_lo = summary_start(h, L, C, SUMMARY_GROUPS, SUMMARY_HEAD_DIV)
    by_head_mode(_forward_tile, h, MODE_EVEN, MODE_ODD, (  # _forward_tile's arguments but its last, MODE
        Q, K, V, O, LSE, q_base, k_base, v_base, o_base, lse_base, stride_qn, stride_kn, stride_vn, stride_on,
        n, L, G, C, col_lo, qk_scale, tile, CONTINUE, BLOCK_M, BLOCK_N, QK_DIM, V_DIM, QK_PAD, V_PAD))
