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

What a program walks is a row of the pass's work table (`blocks.schedule`): a list, or
a piece of a long one, longest first. A piece stores its partial result (output and
logsumexp, or a gradient's partial sum) in a slot of a float32 scratch, and a second,
short launch adds up each split list's pieces in piece order (`block_combine_kernel`,
`block_sum_kernel`): a global row or column then costs no more than the other lists,
and the sums stay deterministic without atomics.

Layouts shared by the batch (LB = 1) or the heads (LH = 1) are read with a zero stride,
so one launch serves every (batch, head). Grouped-query attention: query head h reads
key/value head h // GROUP in place; the dK/dV program of a key/value head sums over its
GROUP query heads (each with its own lists when LH = H) in registers: no atomics.
"""

import triton
import triton.language as tl

from .tiles import dkdv_step, dq_step, load_lse, load_rows, load_run, softmax_result, softmax_step, store_rows

# Pairs whose programs interleave (`_scheduled_tile`). All pairs at once (the order before)
# spread the programs running together over every head: on an H200 at n = 16,384, batch 4,
# H = 8, D = 128, four at a time made prefix-LM 8% and packed documents 12% faster, one
# at a time the same; at D = 64 one at a time made Longformer 13% slower (its long
# global-row pieces start late), four 6% (docs/benchmarks.md, "Program order").
PAIR_GROUP = tl.constexpr(4)


@triton.jit
def _table(b, h, LIST_SB, LIST_SH):
    """Which of the (LB, LH) lists (batch b, query head h) reads: LIST_SB is LH and
    LIST_SH 1, each 0 where the layout is shared along that dimension."""
    return b * LIST_SB + h.to(tl.int64) * LIST_SH


@triton.jit
def _scheduled_tile(H, NW, BLOCK: tl.constexpr, TILE: tl.constexpr):
    """The (batch, head) pair a program serves, the pair's batch element and head, its
    rank in the pass's work table and its TILE-row tile's first row in the block.

    The 1-D grid holds NW * (BLOCK // TILE) ranks for each pair. The pairs go in groups of
    PAIR_GROUP; inside a group the pairs vary fastest and rank r takes row r of the pair's
    work table (longest first), so each group's longest work starts in its first wave.
    Groups go one after another, so the programs running at once read the keys and values
    (or queries and output gradients) of a few heads, which stay in L2. H: heads of the
    pairs (query heads for a query tile, key/value heads for a key tile)."""
    ranks = NW * (BLOCK // TILE)
    pairs = tl.num_programs(0) // ranks
    group = tl.program_id(0) // (PAIR_GROUP * ranks)
    within = tl.program_id(0) - group * (PAIR_GROUP * ranks)
    size = tl.minimum(PAIR_GROUP, pairs - group * PAIR_GROUP)  # the last group may be smaller
    pair = group * PAIR_GROUP + within % size
    rank = within // size
    return pair, (pair // H).to(tl.int64), pair % H, rank // (BLOCK // TILE), (rank % (BLOCK // TILE)) * TILE


@triton.jit
def _work_item(WORK, row, n, offset, BLOCK: tl.constexpr):
    """Row `row` of a work table: its block, the entry range [first, end) of the block's
    list and its slot (-1: store in place), and whether a tile `offset` rows into the
    block has anything to do (padding rows and tiles wholly past n do not)."""
    block = tl.load(WORK + row * 4)
    live = (block >= 0) & (block * BLOCK + offset < n)
    return tl.maximum(block, 0), tl.load(WORK + row * 4 + 1), tl.load(WORK + row * 4 + 2), tl.load(WORK + row * 4 + 3), live


@triton.jit
def _step_range(COUNT, PARTIAL, entry, first, end, live, SUB: tl.constexpr):
    """The sub-tile steps a work item takes in list `entry`: [first, end) of it, clipped
    to the list (the last piece's end is OPEN), as the partial part [p0, p1) and the
    full part [f0, f1), SUB sub-tiles per block; none when not live."""
    count = tl.load(COUNT + entry)
    partial = tl.load(PARTIAL + entry)
    end = tl.where(live, tl.minimum(end, count), 0)
    first = tl.minimum(first, end)
    split = tl.minimum(tl.maximum(first, partial), end)
    return first * SUB, split * SUB, split * SUB, end * SUB


@triton.jit
def _first_visit(INDEX, MASK, entry, step, last, BLOCK: tl.constexpr, TILE: tl.constexpr):
    """Where a loop over a list's sub-tile steps [step, last) starts: the first row (int64)
    of the step-th visited TILE-row sub-tile (BLOCK // TILE a block) and its block's mask
    id (-1: full); nothing is read for an empty loop."""
    SUB: tl.constexpr = BLOCK // TILE
    live = step < last
    j = tl.load(INDEX + entry + step // SUB, mask=live, other=0)
    return j.to(tl.int64) * BLOCK + (step % SUB) * TILE, tl.load(MASK + entry + step // SUB, mask=live, other=-1)


@triton.jit
def _next_visit(INDEX, MASK, entry, step, last, row0, mask_id,
                BLOCK: tl.constexpr, TILE: tl.constexpr, PARTIAL: tl.constexpr):
    """The row and mask id of the step after `step`: the next sub-tile of the same block,
    or the first of the next listed block. Carried from step to step, so a step's tile
    loads do not wait on a list read of their own and Triton's pipeliner can issue them
    two steps ahead (num_stages = 3), as FlexAttention's kernels do: with the list read
    inside the step it kept one tile in flight (docs/benchmarks.md, "Carried addresses").
    Full blocks need no mask id."""
    SUB: tl.constexpr = BLOCK // TILE
    nxt = step + 1
    jump = nxt % SUB == 0
    live = jump & (nxt < last)
    j = tl.load(INDEX + entry + nxt // SUB, mask=live, other=0)
    row0 = tl.where(jump, j.to(tl.int64) * BLOCK, row0 + TILE)
    if PARTIAL:
        mask_id = tl.where(jump, tl.load(MASK + entry + nxt // SUB, mask=live, other=-1), mask_id)
    return row0, mask_id


@triton.jit
def _mask_tile(MASKS, mask_id, r0, c0,
               BLOCK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, TRANSPOSED: tl.constexpr):
    """(BLOCK_M, BLOCK_N) piece of masks[mask_id] from query row r0 and key column c0;
    TRANSPOSED: its (BLOCK_N, BLOCK_M) transpose, loaded as such for the dK/dV pass's
    transposed scores. Transposing a loaded tile instead (tl.trans) cost the dK/dV
    partial loop a layout conversion, 20-35% more instructions a step and, at D = 128,
    spilled registers (Triton 3.6; docs/benchmarks.md, "The dK/dV mask tile")."""
    rows = r0 + tl.arange(0, BLOCK_M)
    cols = c0 + tl.arange(0, BLOCK_N)
    base = MASKS + mask_id.to(tl.int64) * (BLOCK * BLOCK)
    if TRANSPOSED:
        tile = tl.load(base + cols[:, None] + rows[None, :] * BLOCK)
    else:
        tile = tl.load(base + rows[:, None] * BLOCK + cols[None, :])
    return tile != 0


@triton.jit
def _listed_key_tile(
    q, k_ptr, v_ptr, MASKS, mask_id, row_k0, r0, stride_kn, stride_vn, n,
    BLOCK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    QK_DIM: tl.constexpr, V_DIM: tl.constexpr, QK_PAD: tl.constexpr, V_PAD: tl.constexpr,
    PARTIAL: tl.constexpr, EVEN_N: tl.constexpr,
):
    """The key sub-tile from row row_k0 that a query tile's list visits: its keys, values
    and the (BLOCK_M, BLOCK_N) unscaled scores q . k, -inf where a pair is not allowed
    (the caller scales them inside its exponent). PARTIAL: the block is partial (apply
    mask `mask_id`)."""
    c0 = tl.multiple_of((row_k0 % BLOCK).to(tl.int32), BLOCK_N)  # unhinted, the mask loads go bytewise and spill
    k = load_run(k_ptr, row_k0, stride_kn, n, BLOCK_N, tl.arange(0, QK_PAD), QK_DIM, QK_PAD, ALL_VALID=EVEN_N)
    v = load_run(v_ptr, row_k0, stride_vn, n, BLOCK_N, tl.arange(0, V_PAD), V_DIM, V_PAD, ALL_VALID=EVEN_N)
    s = tl.dot(q, tl.trans(k))
    if PARTIAL:
        ok = _mask_tile(MASKS, mask_id, r0, c0, BLOCK=BLOCK, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, TRANSPOSED=False)
        if not EVEN_N:
            ok = ok & (row_k0 + tl.arange(0, BLOCK_N) < n)[None, :]
        s = tl.where(ok, s, float("-inf"))
    elif not EVEN_N:
        s = tl.where((row_k0 + tl.arange(0, BLOCK_N) < n)[None, :], s, float("-inf"))
    return k, v, s


@triton.jit
def _query_tile(
    Q, K, V, KV_COUNT, KV_PARTIAL, KV_WORK, stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_vb,
    stride_vh, H, GROUP, n, NB, NW, LIST_SB, LIST_SH,
    BLOCK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, QK_DIM: tl.constexpr, QK_PAD: tl.constexpr,
):
    """What a forward or dQ program starts from: its (batch, head) pair, query rows and
    their validity, the tile's first row inside its query block, q, the key/value head's
    k and v, where its list starts, its steps (partial [p0, p1), full [f0, f1)), its
    work item's first entry and its slot."""
    bh, b, h, rank, r0 = _scheduled_tile(H, NW, BLOCK=BLOCK, TILE=BLOCK_M)
    table = _table(b, h, LIST_SB, LIST_SH)
    i, first, end, slot, live = _work_item(KV_WORK, table * NW + rank, n, r0, BLOCK)
    row_q = i.to(tl.int64) * BLOCK + r0 + tl.arange(0, BLOCK_M)
    valid_q = row_q < tl.where(live, n, 0)
    q = load_rows(Q + b * stride_qb + h * stride_qh, row_q, stride_qn, valid_q, tl.arange(0, QK_PAD), QK_DIM, QK_PAD)
    k_ptr = K + b * stride_kb + (h // GROUP) * stride_kh
    v_ptr = V + b * stride_vb + (h // GROUP) * stride_vh
    entry = table * NB + i
    p0, p1, f0, f1 = _step_range(KV_COUNT, KV_PARTIAL, entry, first, end, live, SUB=BLOCK // BLOCK_N)
    return bh, b, h, row_q, valid_q, r0, q, k_ptr, v_ptr, entry, p0, p1, f0, f1, first, slot


@triton.jit
def _slot_rows(pair, slot, NSLOTS, offset, BLOCK: tl.constexpr, TILE: tl.constexpr):
    """Rows of a float32 scratch (pairs * NSLOTS * BLOCK rows) that hold a tile's partial
    result: the tile `offset` rows into the block, in `slot` of its (batch, head) pair."""
    return (pair.to(tl.int64) * NSLOTS + slot) * BLOCK + offset + tl.arange(0, TILE)


@triton.jit
def block_forward_kernel(
    Q, K, V, O, LSE, O_PART, LSE_PART, KV_COUNT, KV_PARTIAL, KV_WORK, KV_INDEX, KV_MASK, MASKS,
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_on,
    H, GROUP, n, NB, NW, NSLOTS, LIST_SB, LIST_SH, KV_WIDTH, qk_scale, N_BUCKET,
    BLOCK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    QK_DIM: tl.constexpr, V_DIM: tl.constexpr, QK_PAD: tl.constexpr, V_PAD: tl.constexpr, EVEN_N: tl.constexpr,
):
    """Grid: (NW * BLOCK // BLOCK_M * batch * heads,), longest work first (`_scheduled_tile`).
    A piece of a split list stores its normalized output and logsumexp (float32) in its
    slot of O_PART and LSE_PART, for `block_combine_kernel`."""
    bh, b, h, row_q, valid_q, r0, q, k_ptr, v_ptr, entry, p0, p1, f0, f1, first, slot = _query_tile(
        Q, K, V, KV_COUNT, KV_PARTIAL, KV_WORK, stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_vb,
        stride_vh, H, GROUP, n, NB, NW, LIST_SB, LIST_SH,
        BLOCK=BLOCK, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, QK_DIM=QK_DIM, QK_PAD=QK_PAD)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, V_PAD], tl.float32)
    row_k0, mask_id = _first_visit(KV_INDEX, KV_MASK, entry * KV_WIDTH, p0, p1, BLOCK=BLOCK, TILE=BLOCK_N)
    for step in range(p0, p1):
        k, v, s = _listed_key_tile(q, k_ptr, v_ptr, MASKS, mask_id, row_k0, r0, stride_kn, stride_vn, n,
                                   BLOCK=BLOCK, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, QK_DIM=QK_DIM, V_DIM=V_DIM,
                                   QK_PAD=QK_PAD, V_PAD=V_PAD, PARTIAL=True, EVEN_N=EVEN_N)
        m_i, l_i, acc = softmax_step(s, v, m_i, l_i, acc, qk_scale)
        row_k0, mask_id = _next_visit(KV_INDEX, KV_MASK, entry * KV_WIDTH, step, p1, row_k0, mask_id,
                                      BLOCK=BLOCK, TILE=BLOCK_N, PARTIAL=True)
    row_k0, mask_id = _first_visit(KV_INDEX, KV_MASK, entry * KV_WIDTH, f0, f1, BLOCK=BLOCK, TILE=BLOCK_N)
    for step in range(f0, f1):
        k, v, s = _listed_key_tile(q, k_ptr, v_ptr, MASKS, mask_id, row_k0, r0, stride_kn, stride_vn, n,
                                   BLOCK=BLOCK, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, QK_DIM=QK_DIM, V_DIM=V_DIM,
                                   QK_PAD=QK_PAD, V_PAD=V_PAD, PARTIAL=False, EVEN_N=EVEN_N)
        m_i, l_i, acc = softmax_step(s, v, m_i, l_i, acc, qk_scale)
        row_k0, mask_id = _next_visit(KV_INDEX, KV_MASK, entry * KV_WIDTH, step, f1, row_k0, mask_id,
                                      BLOCK=BLOCK, TILE=BLOCK_N, PARTIAL=False)

    out, lse = softmax_result(m_i, l_i, acc)
    offs_v = tl.arange(0, V_PAD)
    if slot < 0:
        store_rows(O + b * stride_ob + h * stride_oh, row_q, stride_on, valid_q, offs_v, out, V_DIM, V_PAD)
        tl.store(LSE + bh.to(tl.int64) * n + row_q, lse, mask=valid_q)
    else:
        part = _slot_rows(bh, slot, NSLOTS, r0, BLOCK=BLOCK, TILE=BLOCK_M)
        store_rows(O_PART, part, V_PAD, valid_q, offs_v, out, V_PAD, V_PAD)
        tl.store(LSE_PART + part, lse, mask=valid_q)


@triton.jit
def _split_tile(SPLIT, H, GROUP, n, NS, LIST_SB, LIST_SH, BLOCK: tl.constexpr, TILE: tl.constexpr):
    """What a program of `block_combine_kernel` or `block_sum_kernel` adds up, on their grid
    (NS * BLOCK // TILE, batch * H): its (batch, head) pair, the pair's batch element and
    head, its TILE-row tile's first row in the block, and from its row of the split table
    (that of the head's first query head: GROUP query heads a head) the tile's rows, their
    validity (none on a padding row), the list's first slot and its number of pieces."""
    tile = tl.program_id(0)
    pair = tl.program_id(1)
    b = (pair // H).to(tl.int64)
    h = pair % H
    offset = (tile % (BLOCK // TILE)) * TILE
    row = _table(b, h * GROUP, LIST_SB, LIST_SH) * NS + tile // (BLOCK // TILE)
    block = tl.load(SPLIT + row * 3)
    rows = tl.maximum(block, 0).to(tl.int64) * BLOCK + offset + tl.arange(0, TILE)
    valid = rows < tl.where(block >= 0, n, 0)
    return pair, b, h, offset, rows, valid, tl.load(SPLIT + row * 3 + 1), tl.load(SPLIT + row * 3 + 2)


@triton.jit
def block_combine_kernel(
    O_PART, LSE_PART, O, LSE, KV_SPLIT, stride_ob, stride_oh, stride_on, H, n, NS, NSLOTS, LIST_SB, LIST_SH,
    BLOCK: tl.constexpr, BLOCK_M: tl.constexpr, V_DIM: tl.constexpr, V_PAD: tl.constexpr,
):
    """Grid: (NS * BLOCK // BLOCK_M, batch * heads). The output and logsumexp of each split
    list's rows from its pieces' (normalized output, logsumexp), in piece order: the
    output is the pieces' outputs weighted by exp(lse_piece - lse)."""
    bh, b, h, r0, row_q, valid_q, first, pieces = _split_tile(
        KV_SPLIT, H, 1, n, NS, LIST_SB, LIST_SH, BLOCK=BLOCK, TILE=BLOCK_M)
    offs_v = tl.arange(0, V_PAD)
    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    for piece in range(0, pieces):
        part = _slot_rows(bh, first + piece, NSLOTS, r0, BLOCK=BLOCK, TILE=BLOCK_M)
        m = tl.maximum(m, tl.load(LSE_PART + part, mask=valid_q, other=float("-inf")))
    m_ref = tl.where(m == float("-inf"), 0.0, m)  # rows no piece reaches
    total = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, V_PAD], tl.float32)
    for piece in range(0, pieces):
        part = _slot_rows(bh, first + piece, NSLOTS, r0, BLOCK=BLOCK, TILE=BLOCK_M)
        weight = tl.exp(tl.load(LSE_PART + part, mask=valid_q, other=float("-inf")) - m_ref)
        total += weight
        acc += weight[:, None] * load_rows(O_PART, part, V_PAD, valid_q, offs_v, V_PAD, V_PAD)
    empty = total == 0.0
    out = acc / tl.where(empty, 1.0, total)[:, None]
    lse = tl.where(empty, float("-inf"), m_ref + tl.log(tl.where(empty, 1.0, total)))
    store_rows(O + b * stride_ob + h * stride_oh, row_q, stride_on, valid_q, offs_v, out, V_DIM, V_PAD)
    tl.store(LSE + bh.to(tl.int64) * n + row_q, lse, mask=valid_q)


@triton.jit
def block_dq_kernel(
    Q, K, V, O, DO, LSE, DELTA, DQ, DQ_PART, KV_COUNT, KV_PARTIAL, KV_WORK, KV_INDEX, KV_MASK, MASKS,
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_on, stride_dob, stride_doh, stride_don, stride_dqb, stride_dqh, stride_dqn,
    H, GROUP, n, NB, NW, NSLOTS, LIST_SB, LIST_SH, KV_WIDTH, qk_scale, sm_scale, N_BUCKET,
    BLOCK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    QK_DIM: tl.constexpr, V_DIM: tl.constexpr, QK_PAD: tl.constexpr, V_PAD: tl.constexpr, EVEN_N: tl.constexpr,
):
    """Grid: as the forward's. Also stores delta = rowsum(dO * O) for the dK/dV launch
    after it (the first piece of a list does). A piece of a split list stores its part of
    dQ (float32) in its slot of DQ_PART, for `block_sum_kernel`."""
    bh, b, h, row_q, valid_q, r0, q, k_ptr, v_ptr, entry, p0, p1, f0, f1, first, slot = _query_tile(
        Q, K, V, KV_COUNT, KV_PARTIAL, KV_WORK, stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_vb,
        stride_vh, H, GROUP, n, NB, NW, LIST_SB, LIST_SH,
        BLOCK=BLOCK, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, QK_DIM=QK_DIM, QK_PAD=QK_PAD)
    offs_qk = tl.arange(0, QK_PAD)
    offs_v = tl.arange(0, V_PAD)
    stat_base = bh.to(tl.int64) * n
    do = load_rows(DO + b * stride_dob + h * stride_doh, row_q, stride_don, valid_q, offs_v, V_DIM, V_PAD)
    o = load_rows(O + b * stride_ob + h * stride_oh, row_q, stride_on, valid_q, offs_v, V_DIM, V_PAD)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + stat_base + row_q, delta, mask=valid_q & (row_q < tl.where(first == 0, n, 0)))
    lse = load_lse(LSE, stat_base, row_q, valid_q)
    dq = tl.zeros([BLOCK_M, QK_PAD], tl.float32)
    row_k0, mask_id = _first_visit(KV_INDEX, KV_MASK, entry * KV_WIDTH, p0, p1, BLOCK=BLOCK, TILE=BLOCK_N)
    for step in range(p0, p1):
        k, v, s = _listed_key_tile(q, k_ptr, v_ptr, MASKS, mask_id, row_k0, r0, stride_kn, stride_vn, n,
                                   BLOCK=BLOCK, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, QK_DIM=QK_DIM, V_DIM=V_DIM,
                                   QK_PAD=QK_PAD, V_PAD=V_PAD, PARTIAL=True, EVEN_N=EVEN_N)
        p = tl.math.exp2(s * qk_scale - lse[:, None])  # 0 where s is -inf (lse is finite or +inf)
        dq = dq_step(p, do, v, k, delta, dq)
        row_k0, mask_id = _next_visit(KV_INDEX, KV_MASK, entry * KV_WIDTH, step, p1, row_k0, mask_id,
                                      BLOCK=BLOCK, TILE=BLOCK_N, PARTIAL=True)
    row_k0, mask_id = _first_visit(KV_INDEX, KV_MASK, entry * KV_WIDTH, f0, f1, BLOCK=BLOCK, TILE=BLOCK_N)
    for step in range(f0, f1):
        k, v, s = _listed_key_tile(q, k_ptr, v_ptr, MASKS, mask_id, row_k0, r0, stride_kn, stride_vn, n,
                                   BLOCK=BLOCK, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, QK_DIM=QK_DIM, V_DIM=V_DIM,
                                   QK_PAD=QK_PAD, V_PAD=V_PAD, PARTIAL=False, EVEN_N=EVEN_N)
        p = tl.math.exp2(s * qk_scale - lse[:, None])
        dq = dq_step(p, do, v, k, delta, dq)
        row_k0, mask_id = _next_visit(KV_INDEX, KV_MASK, entry * KV_WIDTH, step, f1, row_k0, mask_id,
                                      BLOCK=BLOCK, TILE=BLOCK_N, PARTIAL=False)

    dq *= sm_scale
    if slot < 0:
        store_rows(DQ + b * stride_dqb + h * stride_dqh, row_q, stride_dqn, valid_q, offs_qk, dq, QK_DIM, QK_PAD)
    else:
        part = _slot_rows(bh, slot, NSLOTS, r0, BLOCK=BLOCK, TILE=BLOCK_M)
        store_rows(DQ_PART, part, QK_PAD, valid_q, offs_qk, dq, QK_PAD, QK_PAD)


@triton.jit
def _listed_query_tile(
    k, v, dk, dv, q_ptr, do_ptr, LSE, DELTA, MASKS, mask_id, row_q0, c0, stat_base,
    stride_qn, stride_don, n, qk_scale,
    BLOCK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    QK_DIM: tl.constexpr, V_DIM: tl.constexpr, QK_PAD: tl.constexpr, V_PAD: tl.constexpr,
    PARTIAL: tl.constexpr, EVEN_N: tl.constexpr,
):
    """dK and dV of a key tile, updated by the query sub-tile from row row_q0 that its
    transposed list visits (PARTIAL: the block is partial, with mask `mask_id`)."""
    r0 = tl.multiple_of((row_q0 % BLOCK).to(tl.int32), BLOCK_M)
    row_q = row_q0 + tl.arange(0, BLOCK_M)
    valid_q = row_q < n
    q = load_run(q_ptr, row_q0, stride_qn, n, BLOCK_M, tl.arange(0, QK_PAD), QK_DIM, QK_PAD, ALL_VALID=EVEN_N)
    do = load_run(do_ptr, row_q0, stride_don, n, BLOCK_M, tl.arange(0, V_PAD), V_DIM, V_PAD, ALL_VALID=EVEN_N)
    lse = load_lse(LSE, stat_base, row_q, valid_q)  # +inf on rows >= n: their P is 0
    delta = tl.load(DELTA + stat_base + row_q, mask=valid_q, other=0.0)
    s_t = tl.dot(k, tl.trans(q)) * qk_scale  # (BLOCK_N, BLOCK_M): scores transposed
    p_t = tl.math.exp2(s_t - lse[None, :])
    if PARTIAL:  # columns >= n need no mask: their dK and dV are never stored
        ok_t = _mask_tile(MASKS, mask_id, r0, c0, BLOCK=BLOCK, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, TRANSPOSED=True)
        p_t = tl.where(ok_t, p_t, 0.0)
    return dkdv_step(p_t, q, do, v, delta, dk, dv)


@triton.jit
def block_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV, DK_PART, DV_PART, Q_COUNT, Q_PARTIAL, Q_WORK, Q_INDEX, Q_MASK, MASKS,
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
    stride_dob, stride_doh, stride_don, stride_dkb, stride_dkh, stride_dkn, stride_dvb, stride_dvh, stride_dvn,
    H, GROUP, n, NB, NW, NSLOTS, LIST_SB, LIST_SH, Q_WIDTH, qk_scale, sm_scale, N_BUCKET,
    BLOCK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    QK_DIM: tl.constexpr, V_DIM: tl.constexpr, QK_PAD: tl.constexpr, V_PAD: tl.constexpr, EVEN_N: tl.constexpr,
):
    """Grid: (NW * BLOCK // BLOCK_N * batch * key/value heads,), longest work first. Sums
    over the GROUP query heads of its key/value head, by the work table of the group's
    first head (a piece's range applies to each head's list; the last piece is open).
    A piece of a split list stores its parts of dK and dV (float32) in its slots of
    DK_PART and DV_PART, for `block_sum_kernel`."""
    bg, b, g, rank, c0 = _scheduled_tile(H // GROUP, NW, BLOCK=BLOCK, TILE=BLOCK_N)  # c0: first column in the key block
    j, first, end, slot, live = _work_item(Q_WORK, _table(b, g * GROUP, LIST_SB, LIST_SH) * NW + rank, n, c0, BLOCK)
    offs_qk = tl.arange(0, QK_PAD)
    offs_v = tl.arange(0, V_PAD)
    row_k = j.to(tl.int64) * BLOCK + c0 + tl.arange(0, BLOCK_N)
    valid_k = row_k < tl.where(live, n, 0)
    k = load_rows(K + b * stride_kb + g * stride_kh, row_k, stride_kn, valid_k, offs_qk, QK_DIM, QK_PAD)
    v = load_rows(V + b * stride_vb + g * stride_vh, row_k, stride_vn, valid_k, offs_v, V_DIM, V_PAD)
    dk = tl.zeros([BLOCK_N, QK_PAD], tl.float32)
    dv = tl.zeros([BLOCK_N, V_PAD], tl.float32)
    for head in range(0, GROUP):
        h = g * GROUP + head
        q_ptr = Q + b * stride_qb + h * stride_qh
        do_ptr = DO + b * stride_dob + h * stride_doh
        stat_base = (b * H + h) * n
        entry = _table(b, h, LIST_SB, LIST_SH) * NB + j
        p0, p1, f0, f1 = _step_range(Q_COUNT, Q_PARTIAL, entry, first, end, live, SUB=BLOCK // BLOCK_M)
        row_q0, mask_id = _first_visit(Q_INDEX, Q_MASK, entry * Q_WIDTH, p0, p1, BLOCK=BLOCK, TILE=BLOCK_M)
        for step in range(p0, p1):
            dk, dv = _listed_query_tile(k, v, dk, dv, q_ptr, do_ptr, LSE, DELTA, MASKS, mask_id, row_q0, c0,
                                        stat_base, stride_qn, stride_don, n, qk_scale,
                                        BLOCK=BLOCK, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, QK_DIM=QK_DIM, V_DIM=V_DIM,
                                        QK_PAD=QK_PAD, V_PAD=V_PAD, PARTIAL=True, EVEN_N=EVEN_N)
            row_q0, mask_id = _next_visit(Q_INDEX, Q_MASK, entry * Q_WIDTH, step, p1, row_q0, mask_id,
                                          BLOCK=BLOCK, TILE=BLOCK_M, PARTIAL=True)
        row_q0, mask_id = _first_visit(Q_INDEX, Q_MASK, entry * Q_WIDTH, f0, f1, BLOCK=BLOCK, TILE=BLOCK_M)
        for step in range(f0, f1):
            dk, dv = _listed_query_tile(k, v, dk, dv, q_ptr, do_ptr, LSE, DELTA, MASKS, mask_id, row_q0, c0,
                                        stat_base, stride_qn, stride_don, n, qk_scale,
                                        BLOCK=BLOCK, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, QK_DIM=QK_DIM, V_DIM=V_DIM,
                                        QK_PAD=QK_PAD, V_PAD=V_PAD, PARTIAL=False, EVEN_N=EVEN_N)
            row_q0, mask_id = _next_visit(Q_INDEX, Q_MASK, entry * Q_WIDTH, step, f1, row_q0, mask_id,
                                          BLOCK=BLOCK, TILE=BLOCK_M, PARTIAL=False)

    dk *= sm_scale
    if slot < 0:
        store_rows(DK + b * stride_dkb + g * stride_dkh, row_k, stride_dkn, valid_k, offs_qk, dk, QK_DIM, QK_PAD)
        store_rows(DV + b * stride_dvb + g * stride_dvh, row_k, stride_dvn, valid_k, offs_v, dv, V_DIM, V_PAD)
    else:
        part = _slot_rows(bg, slot, NSLOTS, c0, BLOCK=BLOCK, TILE=BLOCK_N)
        store_rows(DK_PART, part, QK_PAD, valid_k, offs_qk, dk, QK_PAD, QK_PAD)
        store_rows(DV_PART, part, V_PAD, valid_k, offs_v, dv, V_PAD, V_PAD)


@triton.jit
def block_sum_kernel(
    PART, DST, SPLIT, stride_db, stride_dh, stride_dn, H, GROUP, n, NS, NSLOTS, LIST_SB, LIST_SH,
    BLOCK: tl.constexpr, BLOCK_M: tl.constexpr, DIM: tl.constexpr, PAD: tl.constexpr,
):
    """Grid: (NS * BLOCK // BLOCK_M, batch * H). Each split list's rows of DST (dQ, dK or
    dV), the sum of its pieces' parts in piece order. H: the heads of DST; a head's split
    table is that of its first query head (GROUP query heads a head: 1 for dQ)."""
    pair, b, g, r0, rows, valid, first, pieces = _split_tile(
        SPLIT, H, GROUP, n, NS, LIST_SB, LIST_SH, BLOCK=BLOCK, TILE=BLOCK_M)
    offs = tl.arange(0, PAD)
    total = tl.zeros([BLOCK_M, PAD], tl.float32)
    for piece in range(0, pieces):
        part = _slot_rows(pair, first + piece, NSLOTS, r0, BLOCK=BLOCK, TILE=BLOCK_M)
        total += load_rows(PART, part, PAD, valid, offs, PAD, PAD)
    store_rows(DST + b * stride_db + g * stride_dh, rows, stride_dn, valid, offs, total, DIM, PAD)
