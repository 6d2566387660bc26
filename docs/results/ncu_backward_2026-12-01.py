"""One fwd+bwd of ours (documents, D = 128, n = 16,384, batch 4) and of FlexAttention,
inside torch.cuda.profiler.start/stop for ncu --profile-from-start off."""
import argparse, sys, time
import torch
import layouts as rows
from sparse_transformer import sparse_attention

p = argparse.ArgumentParser()
p.add_argument("--flex", action="store_true")
a = p.parse_args()
dev = torch.device("cuda")
n, d = 16384, 128
settings = argparse.Namespace(layouts=["documents"], window=256, globals=64, block=128, document=2048, stride=128,
                              summary=32, heads=8, gqa_heads=32)
case = rows.cases(settings, n, dev)[0]
q, k, v, grad = rows.inputs(4, 8, 8, n, d, dev)
layout = case["ours"]()
fns = {"ours": lambda q, k, v: sparse_attention(q, k, v, layout)}
if a.flex:
    fns["flex"] = rows.flex(case["mask_mod"], n, dev)
for name, fn in fns.items():
    t0 = time.time()
    for _ in range(3):
        torch.autograd.grad(fn(q, k, v), [q, k, v], grad)
    torch.cuda.synchronize()
    print(f"{name} warm in {time.time() - t0:.0f} s", flush=True)
    torch.cuda.profiler.start()
    torch.autograd.grad(fn(q, k, v), [q, k, v], grad)
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()
