"""Backward kernels: FlashAttention-2 style, the attention recomputed from the
logsumexp, no atomics (so the result is deterministic).

- `attention_dq_kernel`: one program owns a query tile and walks the same key tiles as
  the forward pass, accumulating dQ. In the first pass it also computes
  delta_i = sum_d dO_id * O_id (fp32) for its rows and stores it (every pass's query
  tiles cover each row once), so no launch of its own is spent on delta.
- `attention_dkdv_kernel`: one program owns a key tile and walks the query tiles that
  may read it (geometry.query_range), accumulating dK and dV in registers. It runs
  after the pass's dQ launch, whose delta it reads.

Each pass of a merged head runs both kernels with the *final* logsumexp and delta; the
probabilities P_ij = 2^(s_ij - lse_i) of the pass's keys are then exactly the merged
softmax's, and the passes' gradients add up. A continuation pass adds to the gradients
the first pass stored (read, add, write: sequential launches, so still deterministic).
"""

import triton
import triton.language as tl

from .forward import LOG2E
from .geometry import key_bounds, key_range, key_rows, query_range, query_rows


@triton.jit
def _load_row_stats(LSE, DELTA, stat_base, row, valid):
    """logsumexp in log2 units (+inf for rows with no keys, so their P is 0) and delta."""
    lse = tl.load(LSE + stat_base + row, mask=valid, other=float("inf")) * LOG2E
    lse = tl.where(lse == float("-inf"), float("inf"), lse)
    delta = tl.load(DELTA + stat_base + row, mask=valid, other=0.0)
    return lse, delta


@triton.jit
def _dkdv_tile(
    Q, K, V, DO, LSE, DELTA, DK, DV, q_base, k_base, v_base, do_base, dk_base, dv_base, stat_base,
    stride_qn, stride_kn, stride_vn, stride_don, stride_dkn, stride_dvn,
    n, L, G, C, col_lo, qk_scale, sm_scale, tile,
    MODE: tl.constexpr, CONTINUE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, QK_DIM: tl.constexpr, V_DIM: tl.constexpr,
):
    u_k = tile * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,) virtual key rows
    offs_qk = tl.arange(0, QK_DIM)
    offs_v = tl.arange(0, V_DIM)
    pos_k, valid_k = key_rows(u_k, n, L, G, C, col_lo, MODE)
    row_k = pos_k.to(tl.int64)
    k = tl.load(K + k_base + row_k[:, None] * stride_kn + offs_qk[None, :], mask=valid_k[:, None], other=0.0)
    v = tl.load(V + v_base + row_k[:, None] * stride_vn + offs_v[None, :], mask=valid_k[:, None], other=0.0)
    dk = tl.zeros([BLOCK_N, QK_DIM], tl.float32)
    dv = tl.zeros([BLOCK_N, V_DIM], tl.float32)

    lo, hi = query_range(tile * BLOCK_N, n, L, G, C, col_lo, MODE, CONTINUE, BLOCK_M, BLOCK_N)
    for start in range(lo, hi, BLOCK_M):
        u_q = start + tl.arange(0, BLOCK_M)  # (BLOCK_M,) virtual query rows
        pos_q, valid_q = query_rows(u_q, n, L, G, MODE)
        row_q = pos_q.to(tl.int64)
        q = tl.load(Q + q_base + row_q[:, None] * stride_qn + offs_qk[None, :], mask=valid_q[:, None], other=0.0)
        do = tl.load(DO + do_base + row_q[:, None] * stride_don + offs_v[None, :], mask=valid_q[:, None], other=0.0)
        lse, delta = _load_row_stats(LSE, DELTA, stat_base, row_q, valid_q)
        first, end = key_bounds(u_q, pos_q, valid_q, L, G, C, col_lo, MODE, CONTINUE)  # (BLOCK_M,) each
        s_t = tl.dot(k, tl.trans(q)) * qk_scale  # (BLOCK_N, BLOCK_M): scores transposed
        ok_t = (u_k[:, None] >= first[None, :]) & (u_k[:, None] < end[None, :])
        p_t = tl.where(ok_t, tl.math.exp2(s_t - lse[None, :]), 0.0)
        dv += tl.dot(p_t.to(do.dtype), do)
        dp_t = tl.dot(v, tl.trans(do))  # (BLOCK_N, BLOCK_M)
        ds_t = p_t * (dp_t - delta[None, :])
        dk += tl.dot(ds_t.to(q.dtype), q)

    dk *= sm_scale
    dk_ptrs = DK + dk_base + row_k[:, None] * stride_dkn + offs_qk[None, :]
    dv_ptrs = DV + dv_base + row_k[:, None] * stride_dvn + offs_v[None, :]
    if CONTINUE:
        dk += tl.load(dk_ptrs, mask=valid_k[:, None], other=0.0).to(tl.float32)
        dv += tl.load(dv_ptrs, mask=valid_k[:, None], other=0.0).to(tl.float32)
    tl.store(dk_ptrs, dk.to(DK.dtype.element_ty), mask=valid_k[:, None])
    tl.store(dv_ptrs, dv.to(DV.dtype.element_ty), mask=valid_k[:, None])


@triton.jit
def attention_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV,
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
    stride_dob, stride_doh, stride_don, stride_dkb, stride_dkh, stride_dkn, stride_dvb, stride_dvh, stride_dvn,
    H, n, L, G, C, SUMMARY_GROUPS, SUMMARY_HEAD_DIV, qk_scale, sm_scale, N_BUCKET,
    MODE_EVEN: tl.constexpr, MODE_ODD: tl.constexpr, CONTINUE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, QK_DIM: tl.constexpr, V_DIM: tl.constexpr,
):
    """Grid: (key tiles, batch * heads)."""
    tile = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = bh % H
    q_base = b * stride_qb + h * stride_qh
    k_base = b * stride_kb + h * stride_kh
    v_base = b * stride_vb + h * stride_vh
    do_base = b * stride_dob + h * stride_doh
    dk_base = b * stride_dkb + h * stride_dkh
    dv_base = b * stride_dvb + h * stride_dvh
    stat_base = bh.to(tl.int64) * n
    col_lo = L - ((h // SUMMARY_HEAD_DIV) % SUMMARY_GROUPS + 1) * C
    if MODE_EVEN == MODE_ODD:
        _dkdv_tile(Q, K, V, DO, LSE, DELTA, DK, DV, q_base, k_base, v_base, do_base, dk_base, dv_base, stat_base,
                   stride_qn, stride_kn, stride_vn, stride_don, stride_dkn, stride_dvn,
                   n, L, G, C, col_lo, qk_scale, sm_scale, tile, MODE_EVEN, CONTINUE, BLOCK_M, BLOCK_N, QK_DIM, V_DIM)
    elif h % 2 == 0:
        _dkdv_tile(Q, K, V, DO, LSE, DELTA, DK, DV, q_base, k_base, v_base, do_base, dk_base, dv_base, stat_base,
                   stride_qn, stride_kn, stride_vn, stride_don, stride_dkn, stride_dvn,
                   n, L, G, C, col_lo, qk_scale, sm_scale, tile, MODE_EVEN, CONTINUE, BLOCK_M, BLOCK_N, QK_DIM, V_DIM)
    else:
        _dkdv_tile(Q, K, V, DO, LSE, DELTA, DK, DV, q_base, k_base, v_base, do_base, dk_base, dv_base, stat_base,
                   stride_qn, stride_kn, stride_vn, stride_don, stride_dkn, stride_dvn,
                   n, L, G, C, col_lo, qk_scale, sm_scale, tile, MODE_ODD, CONTINUE, BLOCK_M, BLOCK_N, QK_DIM, V_DIM)


@triton.jit
def _dq_tile(
    Q, K, V, O, DO, LSE, DELTA, DQ, q_base, k_base, v_base, o_base, do_base, dq_base, stat_base,
    stride_qn, stride_kn, stride_vn, stride_on, stride_don, stride_dqn,
    n, L, G, C, col_lo, qk_scale, sm_scale, tile,
    MODE: tl.constexpr, CONTINUE: tl.constexpr, WRITE_DELTA: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, QK_DIM: tl.constexpr, V_DIM: tl.constexpr,
):
    u_q = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_qk = tl.arange(0, QK_DIM)
    offs_v = tl.arange(0, V_DIM)
    pos_q, valid_q = query_rows(u_q, n, L, G, MODE)
    row_q = pos_q.to(tl.int64)
    q = tl.load(Q + q_base + row_q[:, None] * stride_qn + offs_qk[None, :], mask=valid_q[:, None], other=0.0)
    do = tl.load(DO + do_base + row_q[:, None] * stride_don + offs_v[None, :], mask=valid_q[:, None], other=0.0)
    if WRITE_DELTA:  # the first pass: delta_i = dO_i . O_i, for this pass and the dK/dV launches after it
        o = tl.load(O + o_base + row_q[:, None] * stride_on + offs_v[None, :], mask=valid_q[:, None], other=0.0)
        delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
        tl.store(DELTA + stat_base + row_q, delta, mask=valid_q)
        lse = tl.load(LSE + stat_base + row_q, mask=valid_q, other=float("inf")) * LOG2E
        lse = tl.where(lse == float("-inf"), float("inf"), lse)
    else:
        lse, delta = _load_row_stats(LSE, DELTA, stat_base, row_q, valid_q)
    dq = tl.zeros([BLOCK_M, QK_DIM], tl.float32)

    first, end = key_bounds(u_q, pos_q, valid_q, L, G, C, col_lo, MODE, CONTINUE)  # (BLOCK_M,) each
    lo, hi = key_range(tile * BLOCK_M, n, L, G, C, col_lo, MODE, CONTINUE, BLOCK_M, BLOCK_N)
    # Key tiles inside [max first, min end) are allowed for every row: no mask there (a
    # tile with a missing row has an empty such range, since its end is its first).
    full_lo = tl.max(first, 0)
    full_hi = tl.min(end, 0)
    for start in range(lo, hi, BLOCK_N):
        u_k = start + tl.arange(0, BLOCK_N)
        pos_k, valid_k = key_rows(u_k, n, L, G, C, col_lo, MODE)
        row_k = pos_k.to(tl.int64)
        k = tl.load(K + k_base + row_k[:, None] * stride_kn + offs_qk[None, :], mask=valid_k[:, None], other=0.0)
        v = tl.load(V + v_base + row_k[:, None] * stride_vn + offs_v[None, :], mask=valid_k[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k)) * qk_scale  # (BLOCK_M, BLOCK_N)
        p = tl.math.exp2(s - lse[:, None])
        if (start < full_lo) | (start + BLOCK_N > full_hi):
            ok = (u_k[None, :] >= first[:, None]) & (u_k[None, :] < end[:, None])
            p = tl.where(ok, p, 0.0)
        dp = tl.dot(do, tl.trans(v))
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k)

    dq *= sm_scale
    dq_ptrs = DQ + dq_base + row_q[:, None] * stride_dqn + offs_qk[None, :]
    if CONTINUE:
        dq += tl.load(dq_ptrs, mask=valid_q[:, None], other=0.0).to(tl.float32)
    tl.store(dq_ptrs, dq.to(DQ.dtype.element_ty), mask=valid_q[:, None])


@triton.jit
def attention_dq_kernel(
    Q, K, V, O, DO, LSE, DELTA, DQ,
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_on, stride_dob, stride_doh, stride_don, stride_dqb, stride_dqh, stride_dqn,
    H, n, L, G, C, SUMMARY_GROUPS, SUMMARY_HEAD_DIV, qk_scale, sm_scale, N_BUCKET,
    MODE_EVEN: tl.constexpr, MODE_ODD: tl.constexpr, CONTINUE: tl.constexpr, WRITE_DELTA: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, QK_DIM: tl.constexpr, V_DIM: tl.constexpr,
):
    """Grid: (query tiles, batch * heads)."""
    # Later query tiles read more keys (causal): launching them first shortens the tail.
    tile = tl.num_programs(0) - 1 - tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = bh % H
    q_base = b * stride_qb + h * stride_qh
    k_base = b * stride_kb + h * stride_kh
    v_base = b * stride_vb + h * stride_vh
    o_base = b * stride_ob + h * stride_oh
    do_base = b * stride_dob + h * stride_doh
    dq_base = b * stride_dqb + h * stride_dqh
    stat_base = bh.to(tl.int64) * n
    col_lo = L - ((h // SUMMARY_HEAD_DIV) % SUMMARY_GROUPS + 1) * C
    if MODE_EVEN == MODE_ODD:
        _dq_tile(Q, K, V, O, DO, LSE, DELTA, DQ, q_base, k_base, v_base, o_base, do_base, dq_base, stat_base,
                 stride_qn, stride_kn, stride_vn, stride_on, stride_don, stride_dqn, n, L, G, C, col_lo,
                 qk_scale, sm_scale, tile, MODE_EVEN, CONTINUE, WRITE_DELTA, BLOCK_M, BLOCK_N, QK_DIM, V_DIM)
    elif h % 2 == 0:
        _dq_tile(Q, K, V, O, DO, LSE, DELTA, DQ, q_base, k_base, v_base, o_base, do_base, dq_base, stat_base,
                 stride_qn, stride_kn, stride_vn, stride_on, stride_don, stride_dqn, n, L, G, C, col_lo,
                 qk_scale, sm_scale, tile, MODE_EVEN, CONTINUE, WRITE_DELTA, BLOCK_M, BLOCK_N, QK_DIM, V_DIM)
    else:
        _dq_tile(Q, K, V, O, DO, LSE, DELTA, DQ, q_base, k_base, v_base, o_base, do_base, dq_base, stat_base,
                 stride_qn, stride_kn, stride_vn, stride_on, stride_don, stride_dqn, n, L, G, C, col_lo,
                 qk_scale, sm_scale, tile, MODE_ODD, CONTINUE, WRITE_DELTA, BLOCK_M, BLOCK_N, QK_DIM, V_DIM)
