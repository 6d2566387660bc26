"""Host cost of a Python autograd.Function with one or two outputs, and of dense SDPA (CUDA)."""
import sys, torch
import torch.nn.functional as F
from common import enqueue_ms

class Two(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v):
        o = torch.empty_like(q); l = torch.empty(q.shape[:3], device=q.device)
        ctx.save_for_backward(q, k, v, o, l); ctx.mark_non_differentiable(l); ctx.set_materialize_grads(False)
        return o, l
    @staticmethod
    def backward(ctx, do, _):
        q, k, v, o, l = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)

class One(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v):
        o = torch.empty_like(q); l = torch.empty(q.shape[:3], device=q.device)
        ctx.save_for_backward(q, k, v, o, l)
        return o
    @staticmethod
    def backward(ctx, do):
        q, k, v, o, l = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)

q, k, v, g = (torch.randn(1, 8, 1024, 64, device="cuda", dtype=torch.bfloat16) for _ in range(4))
leaves = [t.requires_grad_() for t in (q, k, v)]
for name, fn in [("two outputs", lambda: torch.autograd.grad(Two.apply(q, k, v)[0], leaves, g)),
                 ("one output", lambda: torch.autograd.grad(One.apply(q, k, v), leaves, g)),
                 ("sdpa", lambda: torch.autograd.grad(F.scaled_dot_product_attention(q, k, v, is_causal=True), leaves, g)),
                 ("mul", lambda: torch.autograd.grad(q * k, leaves[:2], g))]:
    print(name, "host us %.1f" % (enqueue_ms(fn, 40) * 1e3), flush=True)
