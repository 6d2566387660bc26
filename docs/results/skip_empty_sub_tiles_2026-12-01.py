"""Per-kernel times of the fixed and local mask_mod layouts at forced tiles, for one tree."""
import json, sys, time
import torch
from torch.profiler import ProfilerActivity, profile
from sparse_kernels import ops
from sparse_kernels.ops import Blocks
from sparse_transformer import Pattern, SparseLayout

tag, out = sys.argv[1], sys.argv[2]
n, H, D = 65536, 8, 64
dev = torch.device("cuda")
gen = torch.Generator(device="cuda").manual_seed(0)
q, k, v, g = (torch.randn(1, H, n, D, device=dev, dtype=torch.bfloat16, generator=gen) for _ in range(4))
leaves = [t.requires_grad_() for t in (q, k, v)]
results = {}
for name, pattern in (("fixed", Pattern("fixed", 128, 32)), ("local", Pattern("local", 128))):
    lists = SparseLayout.from_mask_mod(pattern.mask_mod(), n, block=128, device=dev).lists
    tiles = [(128, 32), (64, 32), (128, 64), (64, 64), (128, 128)] if name == "fixed" else [(64, 32), (128, 32), (64, 64), (128, 64), (32, 64)]
    for bm, bn in tiles:
        blocks = Blocks(bm, bn)
        step = lambda: torch.autograd.grad(ops.block_attention(q, k, v, lists, blocks=blocks)[0], leaves, g)
        try:
            for _ in range(2):
                step()
            torch.cuda.synchronize()
            iters = 4 if name == "fixed" else 20
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(iters):
                    step()
                torch.cuda.synchronize()
            kern = {e.key[:40]: round(e.device_time_total / iters / 1000, 3) for e in prof.key_averages() if e.device_time_total > 0}
        except Exception as err:
            kern = {"error": repr(err)[:200]}
        results[f"{name} {bm}x{bn}"] = kern
        main = {kk: vv for kk, vv in kern.items() if "block_" in kk or kk == "error"}
        print(f"{tag} {name} {bm}x{bn}: " + " | ".join(f"{kk.split('(')[0]} {vv}" for kk, vv in main.items()), flush=True)
json.dump(results, open(out, "w"), indent=1)
