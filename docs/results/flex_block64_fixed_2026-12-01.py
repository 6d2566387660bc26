import sys, time, torch
sys.path.insert(0, "benchmarks")
from torch.nn.attention.flex_attention import create_block_mask, flex_attention
from triton.testing import do_bench
from sparse_transformer import Pattern
n, dev = 65536, "cuda"
mod = Pattern("fixed", 128, 32).mask_mod()
gen = torch.Generator(device=dev).manual_seed(0)
q, k, v, g = (torch.randn(1, 8, n, 64, device=dev, dtype=torch.bfloat16, generator=gen) for _ in range(4))
leaves = [t.requires_grad_() for t in (q, k, v)]
for bs in (64,):
    t = time.perf_counter()
    bm = torch.compile(create_block_mask)(mod, None, None, n, n, device=dev, BLOCK_SIZE=bs)
    fa = torch.compile(flex_attention, dynamic=False)
    try:
        opts = dict(BLOCK_M=64, BLOCK_N=64, BLOCK_M1=32, BLOCK_N1=64, BLOCK_M2=64, BLOCK_N2=32)
        ms = do_bench(lambda: torch.autograd.grad(fa(q, k, v, block_mask=bm, kernel_options=opts), leaves, g), warmup=3, rep=300)
        print(f"flex BLOCK_SIZE={bs} fixed as mask_mod n={n}: fwd+bwd {ms:.3f} ms (setup {time.perf_counter() - t:.1f} s)", flush=True)
    except Exception as err:
        print(f"flex BLOCK_SIZE={bs}: {repr(err)[:300]}", flush=True)
