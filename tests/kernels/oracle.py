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


def assert_matches(out, lse, grads, ref_out, ref_lse, ref_grads, tol):
    """The kernels' output, logsumexp and gradients against the oracle's: rows without keys
    (and only they) have logsumexp -inf and output 0; the rest within `tol` (4 tol for
    the gradients)."""
    empty = torch.isinf(ref_lse)
    assert torch.equal(torch.isinf(lse), empty), "rows without keys must have logsumexp -inf, and only they"
    assert (lse[empty] < 0).all()
    assert (out[empty] == 0).all(), "rows without keys must output 0"
    assert rel_err(out, ref_out) < tol, f"output: {rel_err(out, ref_out):.2e}"
    assert rel_err(lse[~empty], ref_lse[~empty]) < tol, "logsumexp"
    for name, got, want in zip(("dq", "dk", "dv"), grads, ref_grads):
        assert got.shape == want.shape, name
        assert rel_err(got, want) < tol * 4, f"{name}: {rel_err(got, want):.2e}"
    return empty


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / max(||expected||, 1) in float64 (NaN anywhere gives inf).

    The floor of 1 keeps rounding noise from counting as a large relative error where
    the exact answer is zero (dq of a query with a single key, for one)."""
    actual, expected = actual.double(), expected.double()
    if not torch.isfinite(actual).all():
        return float("inf")
    return ((actual - expected).norm() / expected.norm().clamp_min(1.0)).item()
