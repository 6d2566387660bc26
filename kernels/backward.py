"""Backward kernels: FlashAttention-2 style, the attention recomputed from the
logsumexp, no atomics (so the result is deterministic).

- `attention_dq_kernel`: one program owns a query tile and walks the same key tiles as
  the forward pass, accumulating dQ. In the first pass it also computes
  delta_i = sum_d dO_id * O_id (fp32) for its rows and stores it (every pass's query
  tiles cover each row once), so no launch of its own is spent on delta.
- `attention_dkdv_kernel`: one program owns a key tile and walks the query tiles that
  may read it (geometry.query_range), accumulating dK and dV in registers. It runs
  after the pass's dQ launch, whose delta it reads.

Grouped-query attention: a dK/dV program owns a key tile of one key/value head and
sums over `HEADS` query heads of its group in registers. When the group's heads visit
their keys in different virtual orders (the multi-head integration's two modes, or
distinct summary columns), each query head gets a launch of its own instead, which adds
to what the launch before it stored (`ACCUMULATE`): sequential, so still deterministic.

Each pass of a merged head runs both kernels with the *final* logsumexp and delta; the
probabilities P_ij = 2^(s_ij - lse_i) of the pass's keys are then exactly the merged
softmax's, and the passes' gradients add up. A continuation pass adds to the gradients
the first pass stored (read, add, write: sequential launches, so still deterministic).
"""

import triton
import triton.language as tl

from .forward import key_tile, query_program, query_tile
from .geometry import by_head_mode, key_bounds, key_rows, key_walk, query_range, query_rows, summary_start
from .tiles import dkdv_step, dq_step, load_lse, load_rows, store_rows


@triton.jit
def _load_row_stats(LSE, DELTA, stat_base, row, valid):
    """logsumexp in log2 units (+inf for rows with no keys, so their P is 0) and delta."""
    lse = load_lse(LSE, stat_base, row, valid)
    delta = tl.load(DELTA + stat_base + row, mask=valid, other=0.0)
    return lse, delta


@triton.jit
def _dq_tile(
    Q, K, V, O, DO, LSE, DELTA, DQ, q_base, k_base, v_base, o_base, do_base, dq_base, stat_base,
    stride_qn, stride_kn, stride_vn, stride_on, stride_don, stride_dqn,
    n, L, G, C, col_lo, qk_scale, sm_scale, tile,
    CONTINUE: tl.constexpr, WRITE_DELTA: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    QK_DIM: tl.constexpr, V_DIM: tl.constexpr, QK_PAD: tl.constexpr, V_PAD: tl.constexpr, MODE: tl.constexpr,
):
    """dQ of one query tile read in MODE's order (MODE last: `by_head_mode` passes it)."""
    u_q, pos_q, row_q, valid_q, q = query_tile(Q, q_base, stride_qn, tile * BLOCK_M, n, L, G,
                                               MODE=MODE, BLOCK_M=BLOCK_M, QK_DIM=QK_DIM, QK_PAD=QK_PAD)
    offs_v = tl.arange(0, V_PAD)
    do = load_rows(DO + do_base, row_q, stride_don, valid_q, offs_v, V_DIM, V_PAD)
    if WRITE_DELTA:  # the first pass: delta_i = dO_i . O_i, for this pass and the dK/dV launches after it
        o = load_rows(O + o_base, row_q, stride_on, valid_q, offs_v, V_DIM, V_PAD)
        delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
        tl.store(DELTA + stat_base + row_q, delta, mask=valid_q)
        lse = load_lse(LSE, stat_base, row_q, valid_q)
    else:
        lse, delta = _load_row_stats(LSE, DELTA, stat_base, row_q, valid_q)
    dq = tl.zeros([BLOCK_M, QK_PAD], tl.float32)

    # A deliberate parallel of forward.py's `_forward_tile`: the same walk over the same key
    # tiles, with the probabilities recomputed from the final logsumexp.
    lo, hi, first, end, full_lo, full_hi = key_walk(tile * BLOCK_M, u_q, pos_q, valid_q, n, L, G, C, col_lo,
                                                    MODE=MODE, CONTINUE=CONTINUE, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N)
    for start in range(lo, hi, BLOCK_N):
        k, v, s = key_tile(q, K, V, k_base, v_base, stride_kn, stride_vn, start, first, end, full_lo, full_hi,
                           n, L, G, C, col_lo, MODE=MODE, BLOCK_N=BLOCK_N,
                           QK_DIM=QK_DIM, V_DIM=V_DIM, QK_PAD=QK_PAD, V_PAD=V_PAD)
        p = tl.math.exp2(s * qk_scale - lse[:, None])  # 0 where s is -inf (lse is finite or +inf)
        dq = dq_step(p, do, v, k, delta, dq)

    dq *= sm_scale
    offs_qk = tl.arange(0, QK_PAD)
    if CONTINUE:
        dq += load_rows(DQ + dq_base, row_q, stride_dqn, valid_q, offs_qk, QK_DIM, QK_PAD).to(tl.float32)
    store_rows(DQ + dq_base, row_q, stride_dqn, valid_q, offs_qk, dq, QK_DIM, QK_PAD)


@triton.jit
def _dkdv_walk(
    Q, DO, LSE, DELTA, k, v, dk, dv, u_k, q_base, do_base, stat_base, stride_qn, stride_don,
    n, L, G, C, col_lo, qk_scale, tile,
    MODE: tl.constexpr, CONTINUE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    QK_DIM: tl.constexpr, V_DIM: tl.constexpr, QK_PAD: tl.constexpr, V_PAD: tl.constexpr,
):
    """dK and dV of one key tile from the query tiles of one query head that may read it."""
    offs_qk = tl.arange(0, QK_PAD)
    offs_v = tl.arange(0, V_PAD)
    lo, hi = query_range(tile * BLOCK_N, n, L, G, C, col_lo,
                         MODE=MODE, CONTINUE=CONTINUE, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N)
    for start in range(lo, hi, BLOCK_M):
        u_q = start + tl.arange(0, BLOCK_M)  # (BLOCK_M,) virtual query rows
        pos_q, valid_q = query_rows(u_q, n, L, G, MODE)
        row_q = pos_q.to(tl.int64)
        q = load_rows(Q + q_base, row_q, stride_qn, valid_q, offs_qk, QK_DIM, QK_PAD)
        do = load_rows(DO + do_base, row_q, stride_don, valid_q, offs_v, V_DIM, V_PAD)
        lse, delta = _load_row_stats(LSE, DELTA, stat_base, row_q, valid_q)
        first, end = key_bounds(u_q, pos_q, valid_q, L, G, C, col_lo, MODE=MODE, CONTINUE=CONTINUE)  # (BLOCK_M,) each
        s_t = tl.dot(k, tl.trans(q)) * qk_scale  # (BLOCK_N, BLOCK_M): scores transposed
        ok_t = (u_k[:, None] >= first[None, :]) & (u_k[:, None] < end[None, :])
        p_t = tl.where(ok_t, tl.math.exp2(s_t - lse[None, :]), 0.0)
        dk, dv = dkdv_step(p_t, q, do, v, delta, dk, dv)
    return dk, dv


@triton.jit
def _dkdv_tile(
    Q, K, V, DO, LSE, DELTA, DK, DV, b, h0, HEADS, k_base, v_base, dk_base, dv_base,
    stride_qb, stride_qh, stride_qn, stride_kn, stride_vn, stride_dob, stride_doh, stride_don, stride_dkn, stride_dvn,
    H, n, L, G, C, col_lo, qk_scale, sm_scale, tile,
    CONTINUE: tl.constexpr, ACCUMULATE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    QK_DIM: tl.constexpr, V_DIM: tl.constexpr, QK_PAD: tl.constexpr, V_PAD: tl.constexpr, MODE: tl.constexpr,
):
    """A key tile's dK and dV summed over query heads h0 .. h0 + HEADS - 1, which all
    read it in MODE's order (MODE last: `by_head_mode` passes it)."""
    u_k = tile * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,) virtual key rows
    offs_qk = tl.arange(0, QK_PAD)
    offs_v = tl.arange(0, V_PAD)
    pos_k, valid_k = key_rows(u_k, n, L, G, C, col_lo, MODE)
    row_k = pos_k.to(tl.int64)
    k = load_rows(K + k_base, row_k, stride_kn, valid_k, offs_qk, QK_DIM, QK_PAD)
    v = load_rows(V + v_base, row_k, stride_vn, valid_k, offs_v, V_DIM, V_PAD)
    dk = tl.zeros([BLOCK_N, QK_PAD], tl.float32)
    dv = tl.zeros([BLOCK_N, V_PAD], tl.float32)
    for head in range(0, HEADS):
        h = h0 + head
        dk, dv = _dkdv_walk(Q, DO, LSE, DELTA, k, v, dk, dv, u_k, b * stride_qb + h * stride_qh,
                            b * stride_dob + h * stride_doh, (b * H + h) * n, stride_qn, stride_don,
                            n, L, G, C, col_lo, qk_scale, tile, MODE=MODE, CONTINUE=CONTINUE, BLOCK_M=BLOCK_M,
                            BLOCK_N=BLOCK_N, QK_DIM=QK_DIM, V_DIM=V_DIM, QK_PAD=QK_PAD, V_PAD=V_PAD)

    dk *= sm_scale
    if ACCUMULATE:
        dk += load_rows(DK + dk_base, row_k, stride_dkn, valid_k, offs_qk, QK_DIM, QK_PAD).to(tl.float32)
        dv += load_rows(DV + dv_base, row_k, stride_dvn, valid_k, offs_v, V_DIM, V_PAD).to(tl.float32)
    store_rows(DK + dk_base, row_k, stride_dkn, valid_k, offs_qk, dk, QK_DIM, QK_PAD)
    store_rows(DV + dv_base, row_k, stride_dvn, valid_k, offs_v, dv, V_DIM, V_PAD)


@triton.jit
def attention_dq_kernel(
    Q, K, V, O, DO, LSE, DELTA, DQ,
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_on, stride_dob, stride_doh, stride_don, stride_dqb, stride_dqh, stride_dqn,
    H, GROUP, n, L, G, C, SUMMARY_GROUPS, SUMMARY_HEAD_DIV, qk_scale, sm_scale, N_BUCKET,
    MODE_EVEN: tl.constexpr, MODE_ODD: tl.constexpr, CONTINUE: tl.constexpr, WRITE_DELTA: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    QK_DIM: tl.constexpr, V_DIM: tl.constexpr, QK_PAD: tl.constexpr, V_PAD: tl.constexpr,
):
    """Grid: (query tiles, batch * heads)."""
    tile, bh, b, h, q_base, k_base, v_base = query_program(
        H, GROUP, stride_qb, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh)
    o_base = b * stride_ob + h * stride_oh
    do_base = b * stride_dob + h * stride_doh
    dq_base = b * stride_dqb + h * stride_dqh
    stat_base = bh.to(tl.int64) * n
    col_lo = summary_start(h, L, C, SUMMARY_GROUPS, SUMMARY_HEAD_DIV)
    by_head_mode(_dq_tile, h, MODE_EVEN, MODE_ODD, (  # _dq_tile's arguments but its last, MODE
        Q, K, V, O, DO, LSE, DELTA, DQ, q_base, k_base, v_base, o_base, do_base, dq_base, stat_base,
        stride_qn, stride_kn, stride_vn, stride_on, stride_don, stride_dqn,
        n, L, G, C, col_lo, qk_scale, sm_scale, tile,
        CONTINUE, WRITE_DELTA, BLOCK_M, BLOCK_N, QK_DIM, V_DIM, QK_PAD, V_PAD))


@triton.jit
def attention_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV,
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
    stride_dob, stride_doh, stride_don, stride_dkb, stride_dkh, stride_dkn, stride_dvb, stride_dvh, stride_dvn,
    H, GROUP, HEAD_FIRST, HEADS, n, L, G, C, SUMMARY_GROUPS, SUMMARY_HEAD_DIV, qk_scale, sm_scale, N_BUCKET,
    MODE_EVEN: tl.constexpr, MODE_ODD: tl.constexpr, CONTINUE: tl.constexpr, ACCUMULATE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    QK_DIM: tl.constexpr, V_DIM: tl.constexpr, QK_PAD: tl.constexpr, V_PAD: tl.constexpr,
):
    """Grid: (key tiles, batch * key/value heads). The program of key/value head g sums
    over query heads g * GROUP + HEAD_FIRST + [0, HEADS); their keys are in the order of
    the first one's mode (ops.backward launches so that the others share it)."""
    tile = tl.program_id(0)
    bg = tl.program_id(1)
    kv_heads = H // GROUP
    b = (bg // kv_heads).to(tl.int64)
    g = bg % kv_heads
    h0 = g * GROUP + HEAD_FIRST
    k_base = b * stride_kb + g * stride_kh
    v_base = b * stride_vb + g * stride_vh
    dk_base = b * stride_dkb + g * stride_dkh
    dv_base = b * stride_dvb + g * stride_dvh
    col_lo = summary_start(h0, L, C, SUMMARY_GROUPS, SUMMARY_HEAD_DIV)
    by_head_mode(_dkdv_tile, h0, MODE_EVEN, MODE_ODD, (  # _dkdv_tile's arguments but its last, MODE
        Q, K, V, DO, LSE, DELTA, DK, DV, b, h0, HEADS, k_base, v_base, dk_base, dv_base,
        stride_qb, stride_qh, stride_qn, stride_kn, stride_vn, stride_dob, stride_doh, stride_don,
        stride_dkn, stride_dvn, H, n, L, G, C, col_lo, qk_scale, sm_scale, tile,
        CONTINUE, ACCUMULATE, BLOCK_M, BLOCK_N, QK_DIM, V_DIM, QK_PAD, V_PAD))
