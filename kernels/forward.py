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

from .geometry import key_bounds, key_range, key_rows, query_rows, summary_start
from .tiles import LOG2E, load_rows, softmax_result, softmax_step, store_rows


@triton.jit
def _forward_tile(
    Q, K, V, O, LSE, q_base, k_base, v_base, o_base, lse_base,
    stride_qn, stride_kn, stride_vn, stride_on,
    n, L, G, C, col_lo, qk_scale, tile,
    MODE: tl.constexpr, CONTINUE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    QK_DIM: tl.constexpr, V_DIM: tl.constexpr, QK_PAD: tl.constexpr, V_PAD: tl.constexpr,
):
    u_q = tile * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,) virtual query rows
    offs_qk = tl.arange(0, QK_PAD)
    offs_v = tl.arange(0, V_PAD)
    pos_q, valid_q = query_rows(u_q, n, L, G, MODE)
    row_q = pos_q.to(tl.int64)
    q = load_rows(Q + q_base, row_q, stride_qn, valid_q, offs_qk, QK_DIM, QK_PAD)

    if CONTINUE:  # resume the softmax of the previous pass: sum over its keys of 2^(s - lse) is 1
        m_i = tl.load(LSE + lse_base + row_q, mask=valid_q, other=float("-inf")) * LOG2E
        l_i = tl.where(m_i == float("-inf"), 0.0, 1.0)
        acc = load_rows(O + o_base, row_q, stride_on, valid_q, offs_v, V_DIM, V_PAD).to(tl.float32)
    else:
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, V_PAD], tl.float32)

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
        k = load_rows(K + k_base, row_k, stride_kn, valid_k, offs_qk, QK_DIM, QK_PAD)
        v = load_rows(V + v_base, row_k, stride_vn, valid_k, offs_v, V_DIM, V_PAD)
        s = tl.dot(q, tl.trans(k))  # (BLOCK_M, BLOCK_N), unscaled (softmax_step scales)
        if (start < full_lo) | (start + BLOCK_N > full_hi):
            ok = (u_k[None, :] >= first[:, None]) & (u_k[None, :] < end[:, None])
            s = tl.where(ok, s, float("-inf"))
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
    (the multi-head integration), so one launch serves every head."""
    # Later query tiles read more keys (causal): launching them first shortens the tail.
    tile = tl.num_programs(0) - 1 - tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = bh % H
    q_base = b * stride_qb + h * stride_qh
    k_base = b * stride_kb + (h // GROUP) * stride_kh
    v_base = b * stride_vb + (h // GROUP) * stride_vh
    o_base = b * stride_ob + h * stride_oh
    lse_base = bh.to(tl.int64) * n
    col_lo = summary_start(h, L, C, SUMMARY_GROUPS, SUMMARY_HEAD_DIV)
    if MODE_EVEN == MODE_ODD:
        _forward_tile(Q, K, V, O, LSE, q_base, k_base, v_base, o_base, lse_base,
                      stride_qn, stride_kn, stride_vn, stride_on, n, L, G, C, col_lo, qk_scale, tile,
                      MODE_EVEN, CONTINUE, BLOCK_M, BLOCK_N, QK_DIM, V_DIM, QK_PAD, V_PAD)
    elif h % 2 == 0:
        _forward_tile(Q, K, V, O, LSE, q_base, k_base, v_base, o_base, lse_base,
                      stride_qn, stride_kn, stride_vn, stride_on, n, L, G, C, col_lo, qk_scale, tile,
                      MODE_EVEN, CONTINUE, BLOCK_M, BLOCK_N, QK_DIM, V_DIM, QK_PAD, V_PAD)
    else:
        _forward_tile(Q, K, V, O, LSE, q_base, k_base, v_base, o_base, lse_base,
                      stride_qn, stride_kn, stride_vn, stride_on, n, L, G, C, col_lo, qk_scale, tile,
                      MODE_ODD, CONTINUE, BLOCK_M, BLOCK_N, QK_DIM, V_DIM, QK_PAD, V_PAD)
