"""Forward kernel: FlashAttention-style online softmax over the key tiles a mode needs.

One program computes one tile of BLOCK_M query rows (virtual indices, see geometry.py)
of one (batch, head). It never stores scores: it keeps a running max m, running sum l
and accumulator acc in base-2 exponent units, and writes the output and the logsumexp
(natural log) per row. A continuation pass starts from the output and logsumexp of the
previous pass instead of from empty state, so a merged head's two sets share one
softmax without an extra combine step.

Rows with no allowed key (fixed A2 alone, first positions) get output 0 and
logsumexp -inf.
"""

import triton
import triton.language as tl

from .geometry import key_bounds, key_range, key_rows, query_rows

LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def _forward_tile(
    Q, K, V, O, LSE, q_base, k_base, v_base, o_base, lse_base,
    stride_qn, stride_kn, stride_vn, stride_on,
    n, L, G, C, col_lo, qk_scale, tile,
    MODE: tl.constexpr, CONTINUE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, QK_DIM: tl.constexpr, V_DIM: tl.constexpr,
):
    u_q = tile * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,) virtual query rows
    offs_qk = tl.arange(0, QK_DIM)
    offs_v = tl.arange(0, V_DIM)
    pos_q, valid_q = query_rows(u_q, n, L, G, MODE)
    row_q = pos_q.to(tl.int64)
    q = tl.load(Q + q_base + row_q[:, None] * stride_qn + offs_qk[None, :], mask=valid_q[:, None], other=0.0)

    if CONTINUE:  # resume the softmax of the previous pass: sum over its keys of 2^(s - lse) is 1
        m_i = tl.load(LSE + lse_base + row_q, mask=valid_q, other=float("-inf")) * LOG2E
        l_i = tl.where(m_i == float("-inf"), 0.0, 1.0)
        acc = tl.load(O + o_base + row_q[:, None] * stride_on + offs_v[None, :], mask=valid_q[:, None], other=0.0)
        acc = acc.to(tl.float32)
    else:
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, V_DIM], tl.float32)

    first, end = key_bounds(u_q, pos_q, valid_q, L, G, C, col_lo, MODE, CONTINUE)  # (BLOCK_M,) each
    lo, hi = key_range(tile * BLOCK_M, n, L, G, C, col_lo, MODE, CONTINUE, BLOCK_M, BLOCK_N)
    # Key tiles inside [max first, min end) are allowed for every row: no mask there (a
    # tile with a missing row has an empty such range, since its end is its first).
    full_lo = tl.max(first, 0)
    full_hi = tl.min(end, 0)
    for start in range(lo, hi, BLOCK_N):
        u_k = start + tl.arange(0, BLOCK_N)  # (BLOCK_N,) virtual key rows
        pos_k, valid_k = key_rows(u_k, n, L, G, C, col_lo, MODE)
        row_k = pos_k.to(tl.int64)
        k = tl.load(K + k_base + row_k[:, None] * stride_kn + offs_qk[None, :], mask=valid_k[:, None], other=0.0)
        v = tl.load(V + v_base + row_k[:, None] * stride_vn + offs_v[None, :], mask=valid_k[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k)) * qk_scale  # (BLOCK_M, BLOCK_N), log2 units
        if (start < full_lo) | (start + BLOCK_N > full_hi):
            ok = (u_k[None, :] >= first[:, None]) & (u_k[None, :] < end[:, None])
            s = tl.where(ok, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing allowed yet
        p = tl.math.exp2(s - m_ref[:, None])
        alpha = tl.math.exp2(m_i - m_ref)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new

    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    out = acc / l_safe[:, None]
    lse = tl.where(empty, float("-inf"), (m_i + tl.math.log2(l_safe)) / LOG2E)
    tl.store(O + o_base + row_q[:, None] * stride_on + offs_v[None, :], out.to(O.dtype.element_ty), mask=valid_q[:, None])
    tl.store(LSE + lse_base + row_q, lse, mask=valid_q)


@triton.jit
def attention_forward_kernel(
    Q, K, V, O, LSE,
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_on,
    H, n, L, G, C, SUMMARY_GROUPS, SUMMARY_HEAD_DIV, qk_scale, N_BUCKET,
    MODE_EVEN: tl.constexpr, MODE_ODD: tl.constexpr, CONTINUE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, QK_DIM: tl.constexpr, V_DIM: tl.constexpr,
):
    """Grid: (query tiles, batch * heads). Even and odd heads may use different modes
    (the multi-head integration), so one launch serves every head."""
    # Later query tiles read more keys (causal): launching them first shortens the tail.
    tile = tl.num_programs(0) - 1 - tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = bh % H
    q_base = b * stride_qb + h * stride_qh
    k_base = b * stride_kb + h * stride_kh
    v_base = b * stride_vb + h * stride_vh
    o_base = b * stride_ob + h * stride_oh
    lse_base = bh.to(tl.int64) * n
    col_lo = L - ((h // SUMMARY_HEAD_DIV) % SUMMARY_GROUPS + 1) * C  # this head's summary columns
    if MODE_EVEN == MODE_ODD:
        _forward_tile(Q, K, V, O, LSE, q_base, k_base, v_base, o_base, lse_base,
                      stride_qn, stride_kn, stride_vn, stride_on, n, L, G, C, col_lo, qk_scale, tile,
                      MODE_EVEN, CONTINUE, BLOCK_M, BLOCK_N, QK_DIM, V_DIM)
    elif h % 2 == 0:
        _forward_tile(Q, K, V, O, LSE, q_base, k_base, v_base, o_base, lse_base,
                      stride_qn, stride_kn, stride_vn, stride_on, n, L, G, C, col_lo, qk_scale, tile,
                      MODE_EVEN, CONTINUE, BLOCK_M, BLOCK_N, QK_DIM, V_DIM)
    else:
        _forward_tile(Q, K, V, O, LSE, q_base, k_base, v_base, o_base, lse_base,
                      stride_qn, stride_kn, stride_vn, stride_on, n, L, G, C, col_lo, qk_scale, tile,
                      MODE_ODD, CONTINUE, BLOCK_M, BLOCK_N, QK_DIM, V_DIM)
