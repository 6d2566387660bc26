"""Where the time of one fused attention call goes: each kernel launch, forward and
backward, for a few patterns and tile choices, on one GPU (torch.profiler).

    python benchmarks/kernel_breakdown.py --n 65536 --heads 8 --head-dim 64 --stride 256
"""

from __future__ import annotations

import argparse
import sys

import torch
import triton
from torch.profiler import ProfilerActivity, profile

from sparse_kernels import ops
from sparse_kernels.ops import Blocks
from sparse_transformer import Pattern
from sparse_transformer.attention import sparse_attention_with_lse


def launches(fn) -> list[tuple[str, float]]:
    """(kernel name, microseconds) of every GPU kernel fn launches, in order."""
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return [(e.name, e.device_time) for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=65536)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--stride", type=int, default=256, help="l of both patterns")
    parser.add_argument("--tiles", nargs="*", default=["auto", "64x64", "128x64", "64x128", "128x32"],
                        help="BLOCK_MxBLOCK_N for every kernel, or auto")
    args = parser.parse_args(argv)
    shape = (1, args.heads, args.n, args.head_dim)
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v, grad = (torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(4))
    leaves = [t.requires_grad_() for t in (q, k, v)]
    for pattern in (Pattern("strided", args.stride, integration="multihead"),
                    Pattern("fixed", args.stride, 32, integration="merged")):
        for tiles in args.tiles:
            blocks = Blocks() if tiles == "auto" else Blocks(*map(int, tiles.split("x")))

            def step():
                out, _ = sparse_attention_with_lse(*leaves, pattern, blocks=blocks)
                torch.autograd.grad(out, leaves, grad)

            total = triton.testing.do_bench(step, warmup=25, rep=100, return_mode="median")
            rows = launches(step)
            detail = ", ".join(f"{name.split('_kernel')[0].replace('attention_', '')} {us / 1000:.3f}" for name, us in rows)
            print(f"{pattern.describe():<28} tiles {tiles:>7}: fwd+bwd {total:.3f} ms | kernels (ms): {detail}", flush=True)
    for name, chosen in ops.tuned_tiles().items():
        for key, config in chosen.items():
            print(f"autotuned {name}: key {key} -> {config}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
