"""The fused Triton kernels behind the `Pattern` interface.

Translates a Pattern into the plain numbers the kernels take (`kernel_spec`) and calls
them; the decoding step's kernel (`decode_attention`) needs no pattern and is passed on.
On CUDA tensors the kernels run compiled; on CPU tensors only under Triton's interpreter
(TRITON_INTERPRET=1), which the tests use.
"""

from __future__ import annotations

import torch

from sparse_kernels.decode import decode_attention  # noqa: F401 (the decoding step's kernel, for attention.py)
from sparse_kernels.ops import Blocks, KernelSpec, attention

from .patterns import Pattern


def kernel_spec(pattern: Pattern, layer: int = 0) -> KernelSpec:
    """The pattern's passes for `layer` with its stride and summary parameters."""
    if pattern.kind != "fixed":
        return KernelSpec(pattern.kernel_passes(layer), pattern.stride)
    groups = pattern.stride // pattern.summary if pattern.distinct_summaries else 1
    head_div = 2 if pattern.integration == "multihead" else 1
    return KernelSpec(pattern.kernel_passes(layer), pattern.stride, pattern.summary, groups, head_div)


def sparse_attention_with_lse(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: Pattern, layer: int = 0,
    sm_scale: float | None = None, blocks: Blocks = Blocks(),
) -> tuple[torch.Tensor, torch.Tensor]:
    """(output (batch, heads, n, head_dim), logsumexp (batch, heads, n) fp32) with autograd."""
    return attention(q, k, v, kernel_spec(pattern, layer), sm_scale, blocks)


def sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: Pattern, layer: int = 0) -> torch.Tensor:
    """Causal attention restricted to `pattern` (at `layer`, for the interleaved
    integration); q, k, v (batch, heads, n, head_dim) -> (batch, heads, n, head_dim)."""
    return sparse_attention_with_lse(q, k, v, pattern, layer)[0]
