"""Block-sparse kernels: the forward, dQ and dK/dV passes over a `BlockLists` layout.

The paper's patterns are closed-form ranges (geometry.py); any other layout is lists
(blocks.py): per query block of `BLOCK` rows, the key blocks it reads, each full or
partial with a mask id. A program owns a BLOCK_M x (head dim) query tile, which lies in
one query block since BLOCK_M divides BLOCK, and walks the listed key blocks in BLOCK_N
sub-tiles, with the same softmax and backward steps as the paper's kernels (tiles.py).
A list holds its partial blocks first: every program walks them in one loop, loading
its (BLOCK_M, BLOCK_N) piece of each block's mask, then the full blocks in a second loop
with no mask and no branch in its body (as FlexAttention's kernels do), which Triton
pipelines as it does a dense loop. Positions >= n are masked only when n is not a
multiple of the block (EVEN_N false). The dK/dV program owns a key tile and walks the
transposed lists: the query blocks that read its key block.

Layouts shared by the batch (LB = 1) or the heads (LH = 1) are read with a zero stride,
so one launch serves every (batch, head). Grouped-query attention: query head h reads
key/value head h // GROUP in place; the dK/dV program of a key/value head sums over its
GROUP query heads (each with its own lists when LH = H) in registers: no atomics.
"""

import triton
import triton.language as tl

from .tiles import dkdv_step, dq_step, load_lse, load_rows, softmax_result, softmax_step, store_rows


@triton.jit
def _listed_block(INDEX, MASK, entry, step, SUB: tl.constexpr):
    """The block of a list's step-th visited sub-tile (SUB sub-tiles per block): its index,
    its mask id (-1: full) and which sub-tile of it."""
    e = step // SUB
    return tl.load(INDEX + entry + e), tl.load(MASK + entry + e), step % SUB


@triton.jit
def _mask_tile(MASKS, mask_id, r0, c0, BLOCK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """(BLOCK_M, BLOCK_N) piece of masks[mask_id] from query row r0 and key column c0."""
    rows = r0 + tl.arange(0, BLOCK_M)
    cols = c0 + tl.arange(0, BLOCK_N)
    ptrs = MASKS + mask_id.to(tl.int64) * (BLOCK * BLOCK) + rows[:, None] * BLOCK + cols[None, :]
    return tl.load(ptrs) != 0


@triton.jit
def _listed_key_tile(
    q, k_ptr, v_ptr, INDEX, MASK, MASKS, entry, step, r0, stride_kn, stride_vn, n, qk_scale,
    BLOCK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    QK_DIM: tl.constexpr, V_DIM: tl.constexpr, QK_PAD: tl.constexpr, V_PAD: tl.constexpr,
    PARTIAL: tl.constexpr, EVEN_N: tl.constexpr,
):
    """The step-th key sub-tile a query tile's list visits: its keys, values and the
    (BLOCK_M, BLOCK_N) scores in log2 units, -inf where a pair is not allowed. PARTIAL:
    the step lies among the list's partial blocks (apply their mask)."""
    j, mask_id, sub = _listed_block(INDEX, MASK, entry, step, BLOCK // BLOCK_N)
    c0 = sub * BLOCK_N
    row_k = j.to(tl.int64) * BLOCK + c0 + tl.arange(0, BLOCK_N)
    valid_k = row_k < n
    k = load_rows(k_ptr, row_k, stride_kn, valid_k, tl.arange(0, QK_PAD), QK_DIM, QK_PAD, EVEN_N)
    v = load_rows(v_ptr, row_k, stride_vn, valid_k, tl.arange(0, V_PAD), V_DIM, V_PAD, EVEN_N)
    s = tl.dot(q, tl.trans(k)) * qk_scale
    if PARTIAL:
        ok = _mask_tile(MASKS, mask_id, r0, c0, BLOCK, BLOCK_M, BLOCK_N)
        if not EVEN_N:
            ok = ok & valid_k[None, :]
        s = tl.where(ok, s, float("-inf"))
    elif not EVEN_N:
        s = tl.where(valid_k[None, :], s, float("-inf"))
    return k, v, s


@triton.jit
def _list_entry(b, h, i, LIST_SB, LIST_SH, NB):
    """Offset of (batch b, query head h, block i) in the (LB, LH, NB) count tensors; LIST_SB
    and LIST_SH are 0 where the layout is shared."""
    return b * LIST_SB + h.to(tl.int64) * LIST_SH + i


@triton.jit
def _scheduled_tile(H, NB, BLOCK: tl.constexpr, TILE: tl.constexpr):
    """The (batch, head) pair a program serves, the pair's batch element and head, the
    rank of its block in the pair's ORDER, and its TILE-row tile's first row in the block.

    Programs run longest list first: the 1-D grid holds NB * (BLOCK // TILE) ranks for
    each of its pairs, pairs varying fastest, and rank r takes the r-th block of the
    pair's ORDER (its blocks by list length, descending). The longest lists of every head
    so start in the first wave, instead of whenever their head's turn comes, and do not
    run on alone after everything else has finished. H: heads of the pairs (query heads
    for a query tile, key/value heads for a key tile)."""
    pairs = tl.num_programs(0) // (NB * (BLOCK // TILE))
    pair = tl.program_id(0) % pairs
    rank = tl.program_id(0) // pairs
    return pair, (pair // H).to(tl.int64), pair % H, rank // (BLOCK // TILE), (rank % (BLOCK // TILE)) * TILE


@triton.jit
def _query_tile(
    Q, K, V, KV_COUNT, KV_PARTIAL, KV_ORDER, stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_vb,
    stride_vh, H, GROUP, n, NB, LIST_SB, LIST_SH,
    BLOCK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, QK_DIM: tl.constexpr, QK_PAD: tl.constexpr,
):
    """What a forward or dQ program starts from: its (batch, head) pair, query rows and
    their validity, the tile's first row inside its query block, q, the key/value head's
    k and v, where its list starts, and how many key sub-tiles it visits in partial
    blocks and in all (none for a tile wholly past n)."""
    bh, b, h, block_rank, r0 = _scheduled_tile(H, NB, BLOCK, BLOCK_M)
    i = tl.load(KV_ORDER + _list_entry(b, h, block_rank, LIST_SB, LIST_SH, NB))
    row_q = i.to(tl.int64) * BLOCK + r0 + tl.arange(0, BLOCK_M)
    valid_q = row_q < n
    q = load_rows(Q + b * stride_qb + h * stride_qh, row_q, stride_qn, valid_q, tl.arange(0, QK_PAD), QK_DIM, QK_PAD)
    k_ptr = K + b * stride_kb + (h // GROUP) * stride_kh
    v_ptr = V + b * stride_vb + (h // GROUP) * stride_vh
    entry = _list_entry(b, h, i, LIST_SB, LIST_SH, NB)
    inside = (i * BLOCK + r0 < n).to(tl.int32)
    partial_steps = tl.load(KV_PARTIAL + entry) * (BLOCK // BLOCK_N) * inside
    steps = tl.load(KV_COUNT + entry) * (BLOCK // BLOCK_N) * inside
    return bh, b, h, row_q, valid_q, r0, q, k_ptr, v_ptr, entry, partial_steps, steps


@triton.jit
def block_forward_kernel(
    Q, K, V, O, LSE, KV_COUNT, KV_PARTIAL, KV_ORDER, KV_INDEX, KV_MASK, MASKS,
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_on,
    H, GROUP, n, NB, LIST_SB, LIST_SH, KV_WIDTH, qk_scale, N_BUCKET,
    BLOCK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    QK_DIM: tl.constexpr, V_DIM: tl.constexpr, QK_PAD: tl.constexpr, V_PAD: tl.constexpr, EVEN_N: tl.constexpr,
):
    """Grid: (blocks * BLOCK // BLOCK_M * batch * heads,), longest list first (`_scheduled_tile`)."""
    bh, b, h, row_q, valid_q, r0, q, k_ptr, v_ptr, entry, partial_steps, steps = _query_tile(
        Q, K, V, KV_COUNT, KV_PARTIAL, KV_ORDER, stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_vb, stride_vh,
        H, GROUP, n, NB, LIST_SB, LIST_SH, BLOCK, BLOCK_M, BLOCK_N, QK_DIM, QK_PAD)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, V_PAD], tl.float32)
    for step in range(0, partial_steps):
        k, v, s = _listed_key_tile(q, k_ptr, v_ptr, KV_INDEX, KV_MASK, MASKS, entry * KV_WIDTH, step, r0,
                                   stride_kn, stride_vn, n, qk_scale,
                                   BLOCK, BLOCK_M, BLOCK_N, QK_DIM, V_DIM, QK_PAD, V_PAD, True, EVEN_N)
        m_i, l_i, acc = softmax_step(s, v, m_i, l_i, acc)
    for step in range(partial_steps, steps):
        k, v, s = _listed_key_tile(q, k_ptr, v_ptr, KV_INDEX, KV_MASK, MASKS, entry * KV_WIDTH, step, r0,
                                   stride_kn, stride_vn, n, qk_scale,
                                   BLOCK, BLOCK_M, BLOCK_N, QK_DIM, V_DIM, QK_PAD, V_PAD, False, EVEN_N)
        m_i, l_i, acc = softmax_step(s, v, m_i, l_i, acc)

    out, lse = softmax_result(m_i, l_i, acc)
    store_rows(O + b * stride_ob + h * stride_oh, row_q, stride_on, valid_q, tl.arange(0, V_PAD), out, V_DIM, V_PAD)
    tl.store(LSE + bh.to(tl.int64) * n + row_q, lse, mask=valid_q)


@triton.jit
def block_dq_kernel(
    Q, K, V, O, DO, LSE, DELTA, DQ, KV_COUNT, KV_PARTIAL, KV_ORDER, KV_INDEX, KV_MASK, MASKS,
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_on, stride_dob, stride_doh, stride_don, stride_dqb, stride_dqh, stride_dqn,
    H, GROUP, n, NB, LIST_SB, LIST_SH, KV_WIDTH, qk_scale, sm_scale, N_BUCKET,
    BLOCK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    QK_DIM: tl.constexpr, V_DIM: tl.constexpr, QK_PAD: tl.constexpr, V_PAD: tl.constexpr, EVEN_N: tl.constexpr,
):
    """Grid: as the forward's. Also stores delta = rowsum(dO * O) for the
    dK/dV launch after it."""
    bh, b, h, row_q, valid_q, r0, q, k_ptr, v_ptr, entry, partial_steps, steps = _query_tile(
        Q, K, V, KV_COUNT, KV_PARTIAL, KV_ORDER, stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_vb, stride_vh,
        H, GROUP, n, NB, LIST_SB, LIST_SH, BLOCK, BLOCK_M, BLOCK_N, QK_DIM, QK_PAD)
    offs_v = tl.arange(0, V_PAD)
    stat_base = bh.to(tl.int64) * n
    do = load_rows(DO + b * stride_dob + h * stride_doh, row_q, stride_don, valid_q, offs_v, V_DIM, V_PAD)
    o = load_rows(O + b * stride_ob + h * stride_oh, row_q, stride_on, valid_q, offs_v, V_DIM, V_PAD)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + stat_base + row_q, delta, mask=valid_q)
    lse = load_lse(LSE, stat_base, row_q, valid_q)
    dq = tl.zeros([BLOCK_M, QK_PAD], tl.float32)
    for step in range(0, partial_steps):
        k, v, s = _listed_key_tile(q, k_ptr, v_ptr, KV_INDEX, KV_MASK, MASKS, entry * KV_WIDTH, step, r0,
                                   stride_kn, stride_vn, n, qk_scale,
                                   BLOCK, BLOCK_M, BLOCK_N, QK_DIM, V_DIM, QK_PAD, V_PAD, True, EVEN_N)
        p = tl.math.exp2(s - lse[:, None])  # 0 where s is -inf (lse is finite or +inf)
        dq = dq_step(p, do, v, k, delta, dq)
    for step in range(partial_steps, steps):
        k, v, s = _listed_key_tile(q, k_ptr, v_ptr, KV_INDEX, KV_MASK, MASKS, entry * KV_WIDTH, step, r0,
                                   stride_kn, stride_vn, n, qk_scale,
                                   BLOCK, BLOCK_M, BLOCK_N, QK_DIM, V_DIM, QK_PAD, V_PAD, False, EVEN_N)
        p = tl.math.exp2(s - lse[:, None])
        dq = dq_step(p, do, v, k, delta, dq)

    dq *= sm_scale
    store_rows(DQ + b * stride_dqb + h * stride_dqh, row_q, stride_dqn, valid_q, tl.arange(0, QK_PAD), dq, QK_DIM, QK_PAD)


@triton.jit
def _listed_query_tile(
    k, v, dk, dv, q_ptr, do_ptr, LSE, DELTA, INDEX, MASK, MASKS, entry, step, c0, stat_base,
    stride_qn, stride_don, n, qk_scale,
    BLOCK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    QK_DIM: tl.constexpr, V_DIM: tl.constexpr, QK_PAD: tl.constexpr, V_PAD: tl.constexpr,
    PARTIAL: tl.constexpr, EVEN_N: tl.constexpr,
):
    """dK and dV of a key tile, updated by the step-th query sub-tile its transposed list
    visits (PARTIAL: among the partial blocks)."""
    i, mask_id, sub = _listed_block(INDEX, MASK, entry, step, BLOCK // BLOCK_M)
    r0 = sub * BLOCK_M
    row_q = i.to(tl.int64) * BLOCK + r0 + tl.arange(0, BLOCK_M)
    valid_q = row_q < n
    q = load_rows(q_ptr, row_q, stride_qn, valid_q, tl.arange(0, QK_PAD), QK_DIM, QK_PAD, EVEN_N)
    do = load_rows(do_ptr, row_q, stride_don, valid_q, tl.arange(0, V_PAD), V_DIM, V_PAD, EVEN_N)
    lse = load_lse(LSE, stat_base, row_q, valid_q)  # +inf on rows >= n: their P is 0
    delta = tl.load(DELTA + stat_base + row_q, mask=valid_q, other=0.0)
    s_t = tl.dot(k, tl.trans(q)) * qk_scale  # (BLOCK_N, BLOCK_M): scores transposed
    p_t = tl.math.exp2(s_t - lse[None, :])
    if PARTIAL:  # columns >= n need no mask: their dK and dV are never stored
        p_t = tl.where(tl.trans(_mask_tile(MASKS, mask_id, r0, c0, BLOCK, BLOCK_M, BLOCK_N)), p_t, 0.0)
    return dkdv_step(p_t, q, do, v, delta, dk, dv)


@triton.jit
def block_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV, Q_COUNT, Q_PARTIAL, Q_ORDER, Q_INDEX, Q_MASK, MASKS,
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
    stride_dob, stride_doh, stride_don, stride_dkb, stride_dkh, stride_dkn, stride_dvb, stride_dvh, stride_dvn,
    H, GROUP, n, NB, LIST_SB, LIST_SH, Q_WIDTH, qk_scale, sm_scale, N_BUCKET,
    BLOCK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    QK_DIM: tl.constexpr, V_DIM: tl.constexpr, QK_PAD: tl.constexpr, V_PAD: tl.constexpr, EVEN_N: tl.constexpr,
):
    """Grid: (blocks * BLOCK // BLOCK_N * batch * key/value heads,), longest list first.
    Sums over the GROUP query heads of its key/value head."""
    bg, b, g, block_rank, c0 = _scheduled_tile(H // GROUP, NB, BLOCK, BLOCK_N)  # c0: first column in the key block
    # Any permutation of the key blocks serves the whole group; the group's first head's order is the one taken.
    j = tl.load(Q_ORDER + _list_entry(b, g * GROUP, block_rank, LIST_SB, LIST_SH, NB))
    inside = (j * BLOCK + c0 < n).to(tl.int32)  # 0 for a tile wholly past n: nothing to visit
    offs_qk = tl.arange(0, QK_PAD)
    offs_v = tl.arange(0, V_PAD)
    row_k = j.to(tl.int64) * BLOCK + c0 + tl.arange(0, BLOCK_N)
    valid_k = row_k < n
    k = load_rows(K + b * stride_kb + g * stride_kh, row_k, stride_kn, valid_k, offs_qk, QK_DIM, QK_PAD)
    v = load_rows(V + b * stride_vb + g * stride_vh, row_k, stride_vn, valid_k, offs_v, V_DIM, V_PAD)
    dk = tl.zeros([BLOCK_N, QK_PAD], tl.float32)
    dv = tl.zeros([BLOCK_N, V_PAD], tl.float32)
    for head in range(0, GROUP):
        h = g * GROUP + head
        q_ptr = Q + b * stride_qb + h * stride_qh
        do_ptr = DO + b * stride_dob + h * stride_doh
        stat_base = (b * H + h) * n
        entry = _list_entry(b, h, j, LIST_SB, LIST_SH, NB)
        partial_steps = tl.load(Q_PARTIAL + entry) * (BLOCK // BLOCK_M) * inside
        steps = tl.load(Q_COUNT + entry) * (BLOCK // BLOCK_M) * inside
        for step in range(0, partial_steps):
            dk, dv = _listed_query_tile(k, v, dk, dv, q_ptr, do_ptr, LSE, DELTA, Q_INDEX, Q_MASK, MASKS,
                                        entry * Q_WIDTH, step, c0, stat_base, stride_qn, stride_don, n, qk_scale,
                                        BLOCK, BLOCK_M, BLOCK_N, QK_DIM, V_DIM, QK_PAD, V_PAD, True, EVEN_N)
        for step in range(partial_steps, steps):
            dk, dv = _listed_query_tile(k, v, dk, dv, q_ptr, do_ptr, LSE, DELTA, Q_INDEX, Q_MASK, MASKS,
                                        entry * Q_WIDTH, step, c0, stat_base, stride_qn, stride_don, n, qk_scale,
                                        BLOCK, BLOCK_M, BLOCK_N, QK_DIM, V_DIM, QK_PAD, V_PAD, False, EVEN_N)

    dk *= sm_scale
    store_rows(DK + b * stride_dkb + g * stride_dkh, row_k, stride_dkn, valid_k, offs_qk, dk, QK_DIM, QK_PAD)
    store_rows(DV + b * stride_dvb + g * stride_dvh, row_k, stride_dvn, valid_k, offs_v, dv, V_DIM, V_PAD)
