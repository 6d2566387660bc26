"""Decoding kernel: one query per (batch, head) against the keys a decoding cache holds.

`decode_attention(q, key_cache, value_cache, slots, valid, scale)` is what a decoding
step of sparse attention needs: each head h reads the cache rows slots[h, valid[h]],
softmax(q k^T * scale) v over them. The kernel reads those rows in place by slot (no
gathered copy of the keys), computes q.k and the softmax in fp32 (the paper's section 5.6 asks
fp32 q.k when sampling) with an online softmax over blocks of BLOCK_N keys, and outputs 0 for a
head with no valid key.

Split over keys (flash-decoding): a step has only batch * heads queries, often too few
programs to fill the GPU, while one query may read thousands of keys (dense attention
reads every position). When the key count is large, the keys are cut into `splits`
ranges, one program per (batch * head, split) writes its running max, sum and fp32
accumulator to scratch, and a second kernel combines them. The number of splits is host
arithmetic on the shapes only: nothing is read from the device and every allocation has
a size known on the host, so a call can be captured in a CUDA graph.

Head dims up to 256, padded to a power of two (at least 16) with masks; d_qk may differ
from d_v. On CPU tensors the kernels run only under Triton's interpreter.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import DTYPES, LOG2E, Launcher, _interpreted, cdiv, next_power_of_2, plan, tensor_key

MAX_HEAD_DIM = 256
# A split reads at least this many keys: fewer would cost more in the combine launch and
# its scratch traffic than the extra programs gain.
SPLIT_MIN_KEYS = 128
# Split until there are about this many programs: a few per SM of an H100 or H200 (132).
TARGET_PROGRAMS = 1024
MAX_SPLITS = 32  # the combine kernel holds every split's accumulator of one head at once


@triton.jit
def decode_attention_kernel(
    Q, K, V, SLOTS, VALID, O, PARTIAL_M, PARTIAL_L, PARTIAL_ACC,
    stride_qb, stride_qh, stride_kb, stride_kh, stride_ks, stride_vb, stride_vh, stride_vs,
    stride_sh, stride_sk, stride_rh, stride_rk, stride_ob, stride_oh,
    H, KEYS, KEYS_PER_SPLIT, qk_scale,
    QK_DIM: tl.constexpr, V_DIM: tl.constexpr, QK_BLOCK: tl.constexpr, V_BLOCK: tl.constexpr,
    BLOCK_N: tl.constexpr, SPLIT: tl.constexpr,
):
    """Grid: (batch * heads, splits). Program (bh, split) reads keys [split * KEYS_PER_SPLIT,
    (split + 1) * KEYS_PER_SPLIT) of the head's list. Without SPLIT it writes the output;
    with SPLIT its max (log2 units), sum and unnormalized accumulator."""
    bh = tl.program_id(0)
    split = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)  # 64-bit offsets: a cache of 1M slots x 256 dims x heads passes 2^31
    offs_qk = tl.arange(0, QK_BLOCK)
    offs_v = tl.arange(0, V_BLOCK)
    qk_in = offs_qk < QK_DIM
    v_in = offs_v < V_DIM
    # The scale and log2(e) folded into q once: the scores come out in log2 units for exp2.
    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_qk, mask=qk_in, other=0.0).to(tl.float32) * qk_scale
    k_head = K + b * stride_kb + h * stride_kh
    v_head = V + b * stride_vb + h * stride_vh

    m_i = tl.full([], float("-inf"), tl.float32)
    l_i = tl.zeros([], tl.float32)
    acc = tl.zeros([V_BLOCK], tl.float32)
    start = split * KEYS_PER_SPLIT
    end = tl.minimum(start + KEYS_PER_SPLIT, KEYS)
    for first in range(start, end, BLOCK_N):
        offs_n = first + tl.arange(0, BLOCK_N)
        in_range = offs_n < end
        slot = tl.load(SLOTS + h * stride_sh + offs_n * stride_sk, mask=in_range, other=0).to(tl.int64)
        read = (tl.load(VALID + h * stride_rh + offs_n * stride_rk, mask=in_range, other=0) != 0) & in_range
        # Rows not read are never loaded: their slots may be anything.
        k = tl.load(k_head + slot[:, None] * stride_ks + offs_qk[None, :], mask=read[:, None] & qk_in[None, :], other=0.0)
        # The values are loaded before the scores are computed, so the two loads overlap.
        v = tl.load(v_head + slot[:, None] * stride_vs + offs_v[None, :], mask=read[:, None] & v_in[None, :], other=0.0)
        s = tl.sum(q[None, :] * k.to(tl.float32), 1)  # (BLOCK_N,) fp32
        s = tl.where(read, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 0))
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # nothing read yet
        p = tl.math.exp2(s - m_ref)
        alpha = tl.math.exp2(m_i - m_ref)
        l_i = l_i * alpha + tl.sum(p, 0)
        acc = acc * alpha + tl.sum(p[:, None] * v.to(tl.float32), 0)
        m_i = m_new

    if SPLIT:
        part = bh * tl.num_programs(1) + split
        tl.store(PARTIAL_M + part, m_i)
        tl.store(PARTIAL_L + part, l_i)
        tl.store(PARTIAL_ACC + part * V_BLOCK + offs_v, acc)
    else:
        out = acc / tl.where(l_i == 0.0, 1.0, l_i)  # no key read: acc is 0, and so is the output
        tl.store(O + b * stride_ob + h * stride_oh + offs_v, out.to(O.dtype.element_ty), mask=v_in)


@triton.jit
def decode_combine_kernel(
    PARTIAL_M, PARTIAL_L, PARTIAL_ACC, O, stride_ob, stride_oh, H, SPLITS,
    V_DIM: tl.constexpr, V_BLOCK: tl.constexpr, SPLIT_BLOCK: tl.constexpr,
):
    """Grid: (batch * heads,). One softmax from the splits' partial states."""
    bh = tl.program_id(0)
    b = (bh // H).to(tl.int64)
    h = bh % H
    offs_s = tl.arange(0, SPLIT_BLOCK)
    offs_v = tl.arange(0, V_BLOCK)
    in_s = offs_s < SPLITS
    part = bh * SPLITS + offs_s
    m = tl.load(PARTIAL_M + part, mask=in_s, other=float("-inf"))
    l = tl.load(PARTIAL_L + part, mask=in_s, other=0.0)
    acc = tl.load(PARTIAL_ACC + part[:, None] * V_BLOCK + offs_v[None, :], mask=in_s[:, None], other=0.0)
    m_max = tl.max(m, 0)
    weight = tl.math.exp2(m - tl.where(m_max == float("-inf"), 0.0, m_max))  # 0 for splits that read nothing
    total = tl.sum(l * weight, 0)
    out = tl.sum(acc * weight[:, None], 0) / tl.where(total == 0.0, 1.0, total)
    tl.store(O + b * stride_ob + h * stride_oh + offs_v, out.to(O.dtype.element_ty), mask=offs_v < V_DIM)


_DECODE = Launcher(decode_attention_kernel)
_COMBINE = Launcher(decode_combine_kernel)


def _buffer(*shape: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialized buffer: the output or scratch. Every buffer comes from here, so
    tests can poison them and catch elements a kernel never writes."""
    return torch.empty(shape, device=device, dtype=dtype)


def _padded(dim: int) -> int:
    return max(16, next_power_of_2(dim))


def decode_splits(batch_heads: int, keys: int) -> int:
    """How many key ranges each query's keys are cut into: enough programs to fill the GPU,
    but never ranges shorter than SPLIT_MIN_KEYS. Shapes only, so a CUDA graph may capture it."""
    wanted = max(1, TARGET_PROGRAMS // batch_heads)
    return max(1, min(keys // SPLIT_MIN_KEYS, wanted, MAX_SPLITS))


def check_inputs(q, key_cache, value_cache, slots, valid) -> None:
    """Refuse bad inputs with a message before anything is launched (shapes and dtypes
    only: the slots' values are on the device, and stay there)."""
    for name, t, dims in (("q", q, 3), ("key_cache", key_cache, 4), ("value_cache", value_cache, 4)):
        if t.dim() != dims:
            raise ValueError(f"decode attention: {name} must have {dims} dimensions, got shape {tuple(t.shape)}")
        if t.dtype not in DTYPES:
            raise TypeError(f"decode attention: {name} has dtype {t.dtype}; use float16, bfloat16 or float32")
        if t.stride(-1) != 1:
            raise ValueError(f"decode attention: {name} must be contiguous in its last dimension; call .contiguous()")
    batch, heads, d_qk = q.shape
    if key_cache.shape[:2] != (batch, heads) or key_cache.shape[3] != d_qk or value_cache.shape[:3] != key_cache.shape[:3]:
        raise ValueError(
            "decode attention: shapes must be q (batch, heads, d_qk), key_cache (batch, heads, slots, d_qk) and "
            f"value_cache (batch, heads, slots, d_v), got {tuple(q.shape)}, {tuple(key_cache.shape)}, {tuple(value_cache.shape)}"
        )
    if slots.dim() != 2 or slots.shape[0] != heads or valid.shape != slots.shape:
        raise ValueError(f"decode attention: slots and valid must both be (heads, keys) with heads={heads}, "
                         f"got {tuple(slots.shape)}, {tuple(valid.shape)}")
    if slots.dtype not in (torch.int32, torch.int64) or valid.dtype != torch.bool:
        raise TypeError(f"decode attention: slots must be int32 or int64 and valid bool, got {slots.dtype}, {valid.dtype}")
    if max(d_qk, value_cache.shape[3]) > MAX_HEAD_DIM:
        raise ValueError(f"decode attention: head dims up to {MAX_HEAD_DIM} are supported, got {d_qk} and {value_cache.shape[3]}")
    if len({t.device for t in (q, key_cache, value_cache, slots, valid)}) > 1:
        raise ValueError("decode attention: q, the caches, slots and valid must be on one device")
    if q.device.type == "cpu" and not _interpreted():
        raise RuntimeError("decode attention: the Triton kernel needs CUDA tensors; for CPU tensors set TRITON_INTERPRET=1 "
                           "before importing triton (slow: for tests) or use the reference backend")


def decode_attention(q: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor, slots: torch.Tensor,
                     valid: torch.Tensor, scale: float, keys_per_split: int | None = None) -> torch.Tensor:
    """q (B, H, d_qk), key_cache (B, H, S, d_qk), value_cache (B, H, S, d_v), slots (H, K)
    integer, valid (H, K) bool -> (B, H, d_v) in q's dtype: head h attends to the cache
    rows slots[h, valid[h]] with scores q.k * scale. `keys_per_split` fixes the split
    (tests); by default `decode_splits` chooses it."""
    check_inputs(q, key_cache, value_cache, slots, valid)
    tensors = (q, key_cache, value_cache, slots, valid.view(torch.uint8))
    key = (*map(tensor_key, tensors), scale, keys_per_split)
    out = _buffer(*q.shape[:2], value_cache.shape[3], device=q.device, dtype=q.dtype)
    launches, partial_shapes = plan(_PLANS, key, lambda: _decode_plan(*tensors, out, scale, keys_per_split))
    # Per split: running max, sum and weighted values; `out` stands in when nothing is split.
    partials = [_buffer(*shape, device=q.device, dtype=torch.float32) if shape else out for shape in partial_shapes]
    decode, *combine = launches
    decode(*tensors, out, *partials)
    for launch in combine:
        launch(*partials, out)
    return out


_PLANS: dict = {}


def _decode_plan(q, key_cache, value_cache, slots, valid, out, scale: float, keys_per_split: int | None):
    """The decode launch and (when the keys are split) the combine launch, with the shapes
    of the partial results (None each when nothing is split)."""
    batch, heads, d_qk = q.shape
    d_v, keys = value_cache.shape[3], slots.shape[1]
    if keys_per_split is None:
        keys_per_split = cdiv(keys, decode_splits(batch * heads, keys))
    splits = cdiv(keys, keys_per_split) if keys else 1
    block_n = min(64 if max(d_qk, d_v) <= 128 else 32, _padded(keys_per_split))
    if splits > 1:  # whole blocks per split: only the last block of the last split is ragged
        keys_per_split = cdiv(keys_per_split, block_n) * block_n
        splits = cdiv(keys, keys_per_split)
    v_block = _padded(d_v)
    launches = [_DECODE.bind(
        lambda meta: (batch * heads, splits),
        *q.stride()[:2], *key_cache.stride()[:3], *value_cache.stride()[:3], *slots.stride(), *valid.stride(),
        *out.stride()[:2], heads, keys, keys_per_split, scale * LOG2E,
        tiles=dict(BLOCK_N=block_n), QK_DIM=d_qk, V_DIM=d_v, QK_BLOCK=_padded(d_qk), V_BLOCK=v_block, SPLIT=splits > 1,
    )]
    if splits > 1:
        launches.append(_COMBINE.bind(lambda meta: (batch * heads,), *out.stride()[:2], heads, splits,
                                      tiles={}, V_DIM=d_v, V_BLOCK=v_block, SPLIT_BLOCK=next_power_of_2(splits)))
        return launches, ((batch * heads, splits), (batch * heads, splits), (batch * heads, splits, v_block))
    return launches, (None, None, None)
