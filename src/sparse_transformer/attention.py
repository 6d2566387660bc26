"""One attention function over several backends, all computing the same thing.

    attend(q, k, v, pattern, layer, backend) -> softmax(q k^T / sqrt(d_qk) + mask) v

with q, k of shape (batch, heads, n, d_qk), v of shape (batch, heads, n, d_v) and the
mask `pattern.allowed(i, j, layer, head)`. A query with no allowed key (fixed A2 alone,
first chunk) gets output 0, log-sum-exp -inf and zero gradients (SPEC section 1).

Backends:
    reference  exact masked attention in PyTorch, fp32 accumulation, chunked over
               queries so memory stays O(chunk x n): the oracle for the kernels and the
               CPU fallback. `reference_lse` gives the per-row log-sum-exp.
    flex       torch.nn.attention.flex_attention with a mask_mod from the pattern,
               compiled (eager FlexAttention builds the full score matrix).
    sdpa       F.scaled_dot_product_attention, dense causal patterns only.
    triton     the fused kernels (`triton_attention.sparse_attention`), imported lazily.
    auto       triton for CUDA tensors, reference otherwise.
No dropout inside attention (SPEC section 2).

A decoding step (one query per head against a decoding cache) has two implementations,
`attend_decoding`: the reference gathers the keys each head reads and runs the softmax
in PyTorch; the fused decode kernel (`sparse_kernels.decode`) reads them in place. The
triton backend uses the kernel, and so do auto, flex and sdpa on CUDA tensors.
"""

from __future__ import annotations

import functools
import importlib
import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .patterns import Pattern

BACKENDS = ("auto", "reference", "flex", "sdpa", "triton")

# Score elements (batch * heads * rows * keys) per query chunk of the reference: 2^22
# fp32 scores are 16 MiB, and the chunk holds a few tensors of that size at once.
REFERENCE_CHUNK_ELEMENTS = 1 << 22


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: Pattern, layer: int = 0, backend: str = "reference"
) -> torch.Tensor:
    """Masked attention of layer `layer` under `pattern`: (B, H, n, d_v), dtype of q."""
    if backend == "auto":
        backend = "triton" if q.is_cuda else "reference"
    try:
        run = _BACKEND_FUNCTIONS[backend]
    except KeyError:
        raise ValueError(f"unknown attention backend {backend!r}: choose one of {', '.join(BACKENDS)}") from None
    return run(q, k, v, pattern, layer)


# ---------------------------------------------------------------------- reference
def reference_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern: Pattern,
    layer: int = 0,
    chunk_elements: int = REFERENCE_CHUNK_ELEMENTS,
) -> torch.Tensor:
    """Exact masked attention, fp32 accumulation: (B, H, n, d_v) in q's dtype."""
    out, _ = _reference(q, k, v, pattern, layer, chunk_elements)
    return out.to(q.dtype)


def reference_lse(
    q: torch.Tensor,
    k: torch.Tensor,
    pattern: Pattern,
    layer: int = 0,
    chunk_elements: int = REFERENCE_CHUNK_ELEMENTS,
) -> torch.Tensor:
    """(B, H, n) fp32: log sum_j exp(q_i k_j / sqrt(d_qk)) over allowed j (natural log; -inf for empty rows)."""
    v = q.new_zeros(q.shape[:-1] + (1,))  # the values do not enter the log-sum-exp
    _, lse = _reference(q, k, v, pattern, layer, chunk_elements)
    return lse


def _reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: Pattern, layer: int, chunk_elements: int
) -> tuple[torch.Tensor, torch.Tensor]:
    batch, heads, n, _ = q.shape
    rows_per_chunk = max(1, chunk_elements // (batch * heads * n))
    # Keep only the residual inputs for backward: each chunk's scores are recomputed,
    # so training memory is O(chunk x n) too, not O(n^2).
    grad_needed = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    outs, lses = [], []
    for start in range(0, n, rows_per_chunk):
        stop = min(n, start + rows_per_chunk)
        args = (q[:, :, start:stop], k[:, :, :stop], v[:, :, :stop], pattern, layer, start)
        if grad_needed:
            out, lse = checkpoint(_reference_rows, *args, use_reentrant=False)
        else:
            out, lse = _reference_rows(*args)
        outs.append(out)
        lses.append(lse)
    return torch.cat(outs, dim=2), torch.cat(lses, dim=2)


def _reference_rows(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: Pattern, layer: int, start: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries start .. start+rows-1 against keys 0 .. start+rows-1 (later keys are never allowed).

    q (B, H, rows, d_qk), k (B, H, keys, d_qk), v (B, H, keys, d_v) ->
    out (B, H, rows, d_v) fp32, lse (B, H, rows) fp32.
    """
    heads, rows, keys = q.shape[1], q.shape[2], k.shape[2]
    scale = 1.0 / math.sqrt(q.shape[-1])
    i = torch.arange(start, start + rows, device=q.device)[:, None]
    j = torch.arange(keys, device=q.device)[None, :]
    head = torch.arange(heads, device=q.device)[:, None, None]
    allowed = pattern.allowed(i, j, layer, head)  # (rows, keys) or (H, rows, keys)
    # fp32 at least; float64 inputs stay float64, so the reference can serve as a float64 oracle.
    acc = torch.promote_types(q.dtype, torch.float32)
    with torch.autocast(q.device.type, enabled=False):  # autocast would run the matmuls in bf16
        scores = torch.matmul(q.to(acc), k.to(acc).transpose(-1, -2)) * scale  # (B, H, rows, keys)
        scores = scores.masked_fill(~allowed, float("-inf"))
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
def flex_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: Pattern, layer: int = 0) -> torch.Tensor:
    """FlexAttention with the pattern as a mask_mod; the block mask is cached per (pattern, n, layer, device)."""
    # One block mask serves every layer of a class (Pattern.layer_class).
    block_mask = _flex_block_mask(pattern, q.shape[2], pattern.layer_class(layer), q.shape[1], str(q.device))
    return _compiled_flex()(q, k, v, block_mask=block_mask)


@functools.lru_cache(maxsize=1)
def _compiled_flex() -> Callable:
    from torch.nn.attention.flex_attention import flex_attention as flex

    # Eager FlexAttention materializes the whole score matrix; compiled, it is a fused kernel.
    return torch.compile(flex, dynamic=False)


@functools.lru_cache(maxsize=64)
def _flex_block_mask(pattern: Pattern, n: int, layer: int, heads: int, device: str):
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b, h, q_idx, kv_idx):
        return pattern.allowed(q_idx, kv_idx, layer, h)

    mask_heads = heads if pattern.depends_on_head() else None  # None: one mask broadcast over heads
    return create_block_mask(mask_mod, None, mask_heads, n, n, device=device)


# ---------------------------------------------------------------------- sdpa, triton
def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: Pattern, layer: int = 0) -> torch.Tensor:
    """PyTorch's fused dense causal attention; refuses sparse patterns rather than ignore them."""
    if pattern.kind != "dense":
        raise ValueError(
            f"attention backend 'sdpa' computes dense causal attention only, not {pattern.describe()}: "
            "use backend 'triton', 'flex' or 'reference'"
        )
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def _triton_module():
    """sparse_transformer.triton_attention, imported on first use (it imports triton)."""
    try:
        return importlib.import_module(f"{__package__}.triton_attention")
    except ModuleNotFoundError as err:
        if err.name != f"{__package__}.triton_attention":
            raise
        raise RuntimeError(
            "attention backend 'triton' is not available: sparse_transformer.triton_attention is missing "
            "from this installation; use backend 'reference' (CPU) or 'flex'"
        ) from None


def triton_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: Pattern, layer: int = 0) -> torch.Tensor:
    return _triton_module().sparse_attention(q, k, v, pattern, layer)


_BACKEND_FUNCTIONS: dict[str, Callable[..., torch.Tensor]] = {
    "reference": reference_attention,
    "flex": flex_attention,
    "sdpa": sdpa_attention,
    "triton": triton_attention,
}


# ---------------------------------------------------------------------- decoding
def attend_decoding(
    q: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor, slots: torch.Tensor, valid: torch.Tensor,
    backend: str = "reference",
) -> torch.Tensor:
    """One query per head against a decoding cache: q (B, H, d_qk), key_cache (B, H, S, d_qk),
    value_cache (B, H, S, d_v); head h reads the cache rows slots[h, valid[h]] (slots, valid
    (H, K)) -> (B, H, d_v) in q's dtype, 0 for a head with no valid key. q.k and the softmax
    in fp32 at least, as SPEC 5.6 asks when sampling. Nothing is read back to the host."""
    if backend == "triton" or (backend != "reference" and q.is_cuda):
        return _triton_module().decode_attention(q, key_cache, value_cache, slots, valid, 1 / math.sqrt(q.shape[-1]))
    return reference_decoding(q, key_cache, value_cache, slots, valid)
