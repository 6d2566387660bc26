"""One attention function over several backends, all computing the same thing.

    attend(q, k, v, pattern_or_layout, layer, backend) -> softmax(q k^T / sqrt(d_qk) + mask) v

with q of shape (batch, H, n, d_qk), k (batch, H_kv, n, d_qk) and v (batch, H_kv, n, d_v),
H_kv dividing H (grouped-query attention: query head h reads kv head h // (H / H_kv)),
and the mask `pattern.allowed(i, j, layer, head)` of a `Pattern` or the element mask of a
`SparseLayout` (`layouts.py`; the layout is already that of one layer, `layer` is
unused). A query with no allowed key (fixed A2 alone, first chunk) gets output 0,
log-sum-exp -inf and zero gradients (docs/kernels.md, "Interface and checks").

Backends:
    reference  exact masked attention in PyTorch, fp32 accumulation, chunked over
               queries so memory stays O(chunk x n): the oracle for the kernels and the
               CPU fallback. `reference_lse` gives the per-row log-sum-exp.
    flex       torch.nn.attention.flex_attention, compiled (eager FlexAttention builds the
               full score matrix), with a block mask built compiled from the pattern's
               mask_mod, or the layout's `to_block_mask()`.
    sdpa       F.scaled_dot_product_attention, dense patterns only.
    triton     the fused kernels (`sparse_attention` below, over `sparse_kernels.ops`): a
               causal Pattern's closed form, any other layout's block lists.
    auto       triton for CUDA tensors, reference otherwise.
No dropout inside attention (the paper's section 5.2 drops out only at the end of each
residual branch).

A decoding step (one query per head against a decoding cache) has two implementations,
`attend_decoding`: the reference gathers the keys each head reads and runs the softmax
in PyTorch; the fused decode kernel (`sparse_kernels.decode`) reads them in place. The
triton backend uses the kernel, and so do auto, flex and sdpa on CUDA tensors.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, get_args

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .config import AttentionBackend
from sparse_kernels import decode, ops

from .layouts import SparseLayout, kernel_spec
from .patterns import Pattern

BACKENDS = get_args(AttentionBackend)

# Score elements (batch * heads * rows * keys) per query chunk of the reference: 2^22
# fp32 scores are 16 MiB, and the chunk holds a few tensors of that size at once.
REFERENCE_CHUNK_ELEMENTS = 1 << 22


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: Pattern | SparseLayout, layer: int = 0,
    backend: str = "reference",
) -> torch.Tensor:
    """Masked attention of layer `layer` under `pattern` (or a layout): (B, H, n, d_v), dtype of q."""
    return attention_function(backend)(q, k, v, pattern, layer)


AttentionFunction = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "Pattern | SparseLayout", int], torch.Tensor]


def attention_function(backend: str) -> AttentionFunction:
    """The function of a backend name, resolved once (the model does so when it is built):
    f(q, k, v, pattern_or_layout, layer) -> (B, H, n, d_v)."""
    try:
        return _BACKEND_FUNCTIONS[backend]
    except KeyError:
        raise ValueError(f"unknown attention backend {backend!r}: choose one of {', '.join(BACKENDS)}") from None


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: Pattern | SparseLayout) -> int:
    """Refuse shapes no backend can take; returns the query heads per kv head (the group)."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"attention: q, k, v must be (batch, heads, n, head_dim), got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    batch, heads, n, _ = q.shape
    kv_heads = k.shape[1]
    if k.shape[:3] != v.shape[:3] or k.shape[0] != batch or k.shape[2] != n or k.shape[3] != q.shape[3]:
        raise ValueError(
            f"attention: shapes must be q (batch, H, n, d_qk), k (batch, H_kv, n, d_qk), v (batch, H_kv, n, d_v), "
            f"got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if heads % kv_heads:
        raise ValueError(f"attention: k and v have {kv_heads} heads, which does not divide q's {heads}: use H_kv dividing H")
    if isinstance(pattern, SparseLayout):
        pattern.check(batch, heads, n)
    return heads // kv_heads


# ---------------------------------------------------------------------- reference
def reference_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: Pattern | SparseLayout, layer: int = 0,
    chunk_elements: int = REFERENCE_CHUNK_ELEMENTS,
) -> torch.Tensor:
    """Exact masked attention, fp32 accumulation: (B, H, n, d_v) in q's dtype."""
    out, _ = _reference(q, k, v, pattern, layer, chunk_elements)
    return out.to(q.dtype)


def reference_lse(
    q: torch.Tensor, k: torch.Tensor, pattern: Pattern | SparseLayout, layer: int = 0,
    chunk_elements: int = REFERENCE_CHUNK_ELEMENTS,
) -> torch.Tensor:
    """(B, H, n) fp32: log sum_j exp(q_i k_j / sqrt(d_qk)) over allowed j (natural log; -inf for empty rows)."""
    v = k.new_zeros(k.shape[:-1] + (1,))  # the values do not enter the log-sum-exp
    _, lse = _reference(q, k, v, pattern, layer, chunk_elements)
    return lse


def _reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: Pattern | SparseLayout, layer: int, chunk_elements: int
) -> tuple[torch.Tensor, torch.Tensor]:
    group = check_inputs(q, k, v, pattern)
    if group > 1:  # the reference may copy: each query head gets its kv head's keys and values
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    batch, heads, n, _ = q.shape
    rows_per_chunk = max(1, chunk_elements // (batch * heads * n))
    # A causal pattern never allows a key after the query: its chunks read keys up to their last row.
    causal = isinstance(pattern, Pattern) and pattern.causal
    allowed = pattern.element_mask if isinstance(pattern, SparseLayout) else _pattern_mask(pattern, layer, heads)
    # Keep only the residual inputs for backward: each chunk's scores are recomputed,
    # so training memory is O(chunk x n) too, not O(n^2).
    grad_needed = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    outs, lses = [], []
    for start in range(0, n, rows_per_chunk):
        stop = min(n, start + rows_per_chunk)
        keys = stop if causal else n
        args = (q[:, :, start:stop], k[:, :, :keys], v[:, :, :keys], allowed, start)
        if grad_needed:
            out, lse = checkpoint(_reference_rows, *args, use_reentrant=False)
        else:
            out, lse = _reference_rows(*args)
        outs.append(out)
        lses.append(lse)
    return torch.cat(outs, dim=2), torch.cat(lses, dim=2)


def _pattern_mask(pattern: Pattern, layer: int, heads: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """(rows, keys) index vectors -> the pattern's mask, (rows, keys) or (H, rows, keys)."""

    def allowed(rows: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        head = torch.arange(heads, device=rows.device)[:, None, None]
        return pattern.allowed(rows[:, None], keys[None, :], layer, head)

    return allowed


def _reference_rows(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: Callable, start: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries start .. start+rows-1 against keys 0 .. keys-1 (for a causal pattern the
    later keys are never allowed, so they are left out).

    q (B, H, rows, d_qk), k (B, H, keys, d_qk), v (B, H, keys, d_v), allowed(rows, keys)
    a mask broadcasting to (B, H, rows, keys) -> out (B, H, rows, d_v) fp32, lse (B, H, rows) fp32.
    """
    rows, keys = q.shape[2], k.shape[2]
    scale = 1.0 / math.sqrt(q.shape[-1])
    mask = allowed(torch.arange(start, start + rows, device=q.device), torch.arange(keys, device=q.device))
    # fp32 at least; float64 inputs stay float64, so the reference can serve as a float64 oracle.
    acc = torch.promote_types(q.dtype, torch.float32)
    with torch.autocast(q.device.type, enabled=False):  # autocast would run the matmuls in bf16
        scores = torch.matmul(q.to(acc), k.to(acc).transpose(-1, -2)) * scale  # (B, H, rows, keys)
        scores = scores.masked_fill(~mask, float("-inf"))
        # The row maximum only stabilizes exp; it cancels exactly, so no gradient flows through it.
        row_max = scores.amax(dim=-1, keepdim=True).detach()
        row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))  # empty rows
        weights = torch.exp(scores - row_max)  # (B, H, rows, keys), 0 where not allowed
        total = weights.sum(dim=-1, keepdim=True)
        nonempty = total > 0
        safe_total = torch.where(nonempty, total, torch.ones_like(total))  # keeps 1/0 out of the gradients
        out = torch.matmul(weights, v.to(acc)) / safe_total
        lse = torch.where(nonempty, row_max + torch.log(safe_total), float("-inf")).squeeze(-1)
    return out, lse


def reference_decoding(
    q: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor, slots: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """One query per head against cached keys: (B, H, d_v) in q's dtype; see `attend_decoding`."""
    batch, _, _, d_qk = key_cache.shape
    index = slots[None, :, :, None]  # (1, H, K, 1): the same slots for every batch row
    keys = key_cache.gather(2, index.expand(batch, -1, -1, d_qk))  # (B, H, K, d_qk)
    values = value_cache.gather(2, index.expand(batch, -1, -1, value_cache.shape[-1]))  # (B, H, K, d_v)
    acc = torch.promote_types(q.dtype, torch.float32)  # float64 inputs stay float64: an oracle for the kernel
    with torch.autocast(q.device.type, enabled=False):
        scores = torch.einsum("bhd,bhkd->bhk", q.to(acc), keys.to(acc)) / math.sqrt(d_qk)
        scores = scores.masked_fill(~valid, float("-inf"))
        weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # a query with no key: all 0, output 0
        out = torch.einsum("bhk,bhkd->bhd", weights, values.to(acc))  # (B, H, d_v)
    return out.to(q.dtype)


# ---------------------------------------------------------------------- flex
def flex_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: Pattern | SparseLayout, layer: int = 0
) -> torch.Tensor:
    """FlexAttention with the pattern as a mask_mod (its block mask cached per (pattern,
    n, layer class, heads, device)) or the layout's block mask."""
    group = check_inputs(q, k, v, pattern)
    if isinstance(pattern, SparseLayout):
        block_mask = pattern.to_block_mask()
    else:  # one block mask serves every layer of a class (Pattern.layer_class)
        block_mask = _flex_block_mask(pattern, q.shape[2], pattern.layer_class(layer), q.shape[1], str(q.device))
    return _compiled_flex()(q, k, v, block_mask=block_mask, enable_gqa=group > 1)


@functools.lru_cache(maxsize=1)
def _compiled_flex() -> Callable:
    from torch.nn.attention.flex_attention import flex_attention as flex

    # Eager FlexAttention materializes the whole score matrix; compiled, it is a fused kernel.
    return torch.compile(flex, dynamic=False)


@functools.lru_cache(maxsize=64)
def _flex_block_mask(pattern: Pattern, n: int, layer: int, heads: int, device: str):
    from torch.nn.attention.flex_attention import create_block_mask

    mask_heads = heads if pattern.depends_on_head() else None  # None: one mask broadcast over heads
    # Compiled, the mask is built tile by tile; eager, create_block_mask materializes n x n.
    return torch.compile(create_block_mask)(pattern.mask_mod(layer), None, mask_heads, n, n, device=device)


# ---------------------------------------------------------------------- sdpa, triton
def sdpa_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: Pattern | SparseLayout, layer: int = 0
) -> torch.Tensor:
    """PyTorch's fused dense attention; refuses sparse patterns and layouts rather than ignore them."""
    if not isinstance(pattern, Pattern) or pattern.kind != "dense":
        described = pattern.describe() if isinstance(pattern, Pattern) else "a layout"
        raise ValueError(
            f"attention backend 'sdpa' computes dense attention only, not {described}: "
            "use backend 'triton', 'flex' or 'reference'"
        )
    group = check_inputs(q, k, v, pattern)
    return F.scaled_dot_product_attention(q, k, v, is_causal=pattern.causal, enable_gqa=group > 1)


def sparse_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: Pattern | SparseLayout, layer: int = 0,
    sm_scale: float | None = None, blocks: ops.Blocks = ops.Blocks(), with_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention restricted to `pattern` (at `layer`, for the interleaved integration) or
    to a layout, through the fused kernels, with autograd: q (batch, H, n, d_qk), k
    (batch, H_kv, n, d_qk), v (batch, H_kv, n, d_v) -> (batch, H, n, d_v), and with
    `with_lse` also the logsumexp (batch, H, n) fp32. A causal Pattern runs its
    closed-form passes (`layouts.kernel_spec`, the fast path), any other layout its block
    lists. On CUDA tensors the kernels run compiled; on CPU tensors only under Triton's
    interpreter (TRITON_INTERPRET=1), which the tests use. A layout is already that of
    one layer (`layer` unused)."""
    if isinstance(pattern, Pattern):
        if pattern.causal:  # straight to the closed form: no layout lookup on the paper's patterns
            return ops.attention(q, k, v, kernel_spec(pattern, layer), sm_scale, blocks, with_lse)
        pattern = pattern.layout(q.shape[2], q.shape[1], layer, q.device)
    else:
        pattern.check(q.shape[0], q.shape[1], q.shape[2])
    if pattern.spec is not None:
        return ops.attention(q, k, v, pattern.spec, sm_scale, blocks, with_lse)
    return ops.block_attention(q, k, v, pattern.lists, sm_scale, blocks, with_lse)


def sparse_attention_with_lse(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: Pattern | SparseLayout, layer: int = 0,
    sm_scale: float | None = None, blocks: ops.Blocks = ops.Blocks(),
) -> tuple[torch.Tensor, torch.Tensor]:
    """`sparse_attention` that also returns the logsumexp: (output, logsumexp)."""
    return sparse_attention(q, k, v, pattern, layer, sm_scale, blocks, with_lse=True)


def auto_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: Pattern | SparseLayout, layer: int = 0
) -> torch.Tensor:
    """The kernels on CUDA tensors, the reference elsewhere (a model may move between devices)."""
    return (sparse_attention if q.is_cuda else reference_attention)(q, k, v, pattern, layer)


_BACKEND_FUNCTIONS: dict[str, AttentionFunction] = {
    "auto": auto_attention,
    "reference": reference_attention,
    "flex": flex_attention,
    "sdpa": sdpa_attention,
    "triton": sparse_attention,
}


# ---------------------------------------------------------------------- decoding
def attend_decoding(
    q: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor, slots: torch.Tensor, valid: torch.Tensor,
    backend: str = "reference",
) -> torch.Tensor:
    """One query per head against a decoding cache: q (B, H, d_qk), key_cache (B, H, S, d_qk),
    value_cache (B, H, S, d_v); head h reads the cache rows slots[h, valid[h]] (slots, valid
    (H, K)) -> (B, H, d_v) in q's dtype, 0 for a head with no valid key. q.k and the softmax
    in fp32 at least, as the paper's section 5.6 asks when sampling. Nothing is read back to the host."""
    return decoding_function(backend)(q, key_cache, value_cache, slots, valid)


def decoding_function(backend: str) -> Callable[..., torch.Tensor]:
    """`attend_decoding`'s implementation for a backend name, resolved once: the kernel for
    triton, the reference for reference, and for the others the kernel on CUDA tensors."""
    attention_function(backend)  # an unknown name is refused here as for attention
    return {"triton": kernel_decoding, "reference": reference_decoding}.get(backend, auto_decoding)


def kernel_decoding(q: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor, slots: torch.Tensor,
                    valid: torch.Tensor) -> torch.Tensor:
    """The fused decode kernel (`sparse_kernels.decode`), reading the cache in place."""
    return decode.decode_attention(q, key_cache, value_cache, slots, valid, 1 / math.sqrt(q.shape[-1]))


def auto_decoding(q: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor, slots: torch.Tensor,
                  valid: torch.Tensor) -> torch.Tensor:
    """The kernel on CUDA tensors, the reference elsewhere."""
    return (kernel_decoding if q.is_cuda else reference_decoding)(q, key_cache, value_cache, slots, valid)
