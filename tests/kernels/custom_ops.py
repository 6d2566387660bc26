"""The torch.library checks of the kernels' custom ops, shared by the CPU and GPU tests."""

from __future__ import annotations

import torch

from sparse_kernels import ops
from sparse_transformer import Pattern
from sparse_transformer.layouts import kernel_spec


def check_custom_ops(q, k, v, do, pattern: Pattern, block: int) -> None:
    """Schema and fake (shape-only) implementations of both ops agree with the real kernels
    on these tensors, with tiles of block x block."""
    spec = kernel_spec(pattern)
    sm_scale = q.shape[-1] ** -0.5
    params = (ops._flat_passes(spec), spec.stride, spec.summary, spec.summary_groups, spec.summary_head_div,
              sm_scale, block, block)
    checks = ("test_schema", "test_faketensor")
    torch.library.opcheck(ops.attention_forward_op, (q, k, v, *params), test_utils=checks)
    out, lse = ops.attention_forward_op(q, k, v, *params)
    torch.library.opcheck(ops.attention_backward_op, (do, q, k, v, out, lse, *params), test_utils=checks)
