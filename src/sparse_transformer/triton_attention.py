"""The fused Triton kernels behind the `Pattern` and `SparseLayout` interface.

A causal built-in Pattern runs its closed-form passes (`layouts.kernel_spec`) through
`sparse_kernels.ops.attention`, the fast path; any other layout runs its block lists
through `sparse_kernels.ops.block_attention`. The decoding step's kernel
(`decode_attention`) needs no pattern and is passed on. On CUDA tensors the kernels run
compiled; on CPU tensors only under Triton's interpreter (TRITON_INTERPRET=1), which the
tests use.
"""

from __future__ import annotations

import torch

from sparse_kernels.decode import decode_attention  # noqa: F401 (the decoding step's kernel, for attention.py)
from sparse_kernels.ops import Blocks, attention, block_attention

from .layouts import SparseLayout, kernel_spec
from .patterns import Pattern


def sparse_attention_with_lse(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: Pattern | SparseLayout, layer: int = 0,
    sm_scale: float | None = None, blocks: Blocks = Blocks(),
) -> tuple[torch.Tensor, torch.Tensor]:
    """(output (batch, H, n, d_v), logsumexp (batch, H, n) fp32) with autograd; k and v
    may have H_kv heads dividing H. A layout is already that of one layer (`layer` unused)."""
    if isinstance(pattern, Pattern):
        if pattern.causal:  # straight to the closed form: no layout lookup on the paper's patterns
            return attention(q, k, v, kernel_spec(pattern, layer), sm_scale, blocks)
        pattern = pattern.layout(q.shape[2], q.shape[1], layer, q.device)
    else:
        pattern.check(q.shape[0], q.shape[1], q.shape[2])
    spec = pattern.spec
    if spec is not None:
        return attention(q, k, v, spec, sm_scale, blocks)
    return block_attention(q, k, v, pattern.lists, sm_scale, blocks)


def sparse_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: Pattern | SparseLayout, layer: int = 0
) -> torch.Tensor:
    """Attention restricted to `pattern` (at `layer`, for the interleaved integration) or
    to a layout; q (batch, H, n, d_qk), k (batch, H_kv, n, d_qk), v (batch, H_kv, n, d_v)
    -> (batch, H, n, d_v)."""
    return sparse_attention_with_lse(q, k, v, pattern, layer)[0]
