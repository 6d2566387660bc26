"""Host (Python) cost of one eager forward+backward through sparse_attention with every
kernel launch stubbed out, on CPU tensors, against a no-op autograd.Function: how much of
a call's host time is ours and how much the autograd Function's. n = 256, D = 16 (small
tensors, so allocation stays cheap); one thread; best of 5 x 100 calls."""
import os, sys, time, cProfile, pstats
os.environ["TRITON_INTERPRET"] = "1"
sys.path[:0] = ["src", "/tmp/pkgs"]  # from the repository root; /tmp/pkgs/sparse_kernels links to kernels/
import torch
import torch.nn.functional as F
from sparse_kernels import launch
launch.Launch.__call__ = lambda self, *t: None
from sparse_transformer import Pattern
from sparse_transformer.attention import sparse_attention
torch.set_num_threads(1)
n = 256
q, k, v, g = (torch.randn(1, 8, n, 16) for _ in range(4))
leaves = [t.requires_grad_() for t in (q, k, v)]
def t(fn, reps=100):
    for _ in range(20): fn()
    best = 1e9
    for _ in range(5):
        s = time.perf_counter()
        for _ in range(reps): fn()
        best = min(best, (time.perf_counter() - s) / reps)
    return best * 1e6
# A deliberate copy of host_autograd_outputs_2026-11-30.py's no-op Function (CPU tensors here):
# each record script runs on its own, and the two measure the same baseline.
class One(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v):
        o = torch.empty_like(q); l = torch.empty(q.shape[:3])
        ctx.save_for_backward(q, k, v, o, l)
        return o
    @staticmethod
    def backward(ctx, do):
        q, k, v, o, l = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
print("noop Function", t(lambda: torch.autograd.grad(One.apply(q, k, v), leaves, g)))
print("sdpa (cpu)", t(lambda: torch.autograd.grad(F.scaled_dot_product_attention(q[:, :, :16], k[:, :, :16], v[:, :, :16], is_causal=True), leaves, g[:, :, :16], allow_unused=True), 50))
pats = {"local": Pattern("local", 128), "strided multihead": Pattern("strided", 128, integration="multihead"),
        "strided merged": Pattern("strided", 128, integration="merged"), "fixed merged": Pattern("fixed", 128, 32, integration="merged")}
for name, p in pats.items():
    fn = lambda: torch.autograd.grad(sparse_attention(q, k, v, p), leaves, g)
    print(name, round(t(fn), 1))
if len(sys.argv) > 1:
    p = pats[sys.argv[1]]
    fn = lambda: torch.autograd.grad(sparse_attention(q, k, v, p), leaves, g)
    pr = cProfile.Profile(); pr.enable()
    for _ in range(2000): fn()
    pr.disable(); pstats.Stats(pr).sort_stats("tottime").print_stats(25)
