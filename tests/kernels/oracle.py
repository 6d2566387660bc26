"""Float64 ground truth for the kernel tests, built on the project's reference attention."""

from __future__ import annotations

import torch

from sparse_transformer import Pattern
from sparse_transformer.attention import reference_attention, reference_lse


def oracle(q, k, v, do, pattern: Pattern, layer: int):
    """Output, logsumexp and (dq, dk, dv) of the reference attention in float64. k and v
    may have fewer heads than q (grouped-query attention): each serves H // H_kv
    consecutive query heads, so their gradients sum over the group."""
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    group = q.shape[1] // k.shape[1]
    k_all, v_all = (t.repeat_interleave(group, 1) for t in (k64, v64))
    out = reference_attention(q64, k_all, v_all, pattern, layer)
    grads = torch.autograd.grad(out, (q64, k64, v64), do.double())
    with torch.no_grad():
        lse = reference_lse(q64, k_all, pattern, layer)
    return out.detach(), lse, grads


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / max(||expected||, 1) in float64 (NaN anywhere gives inf).

    The floor of 1 keeps rounding noise from counting as a large relative error where
    the exact answer is zero (dq of a query with a single key, for one)."""
    actual, expected = actual.double(), expected.double()
    if not torch.isfinite(actual).all():
        return float("inf")
    return ((actual - expected).norm() / expected.norm().clamp_min(1.0)).item()
