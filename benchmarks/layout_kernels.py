"""Per-kernel device time of the layout rows, ours and FlexAttention's, forward+backward.

    python benchmarks/layout_kernels.py --n 65536 --d 64 --flex --json out/layout_kernels.json

Where `benchmarks/layouts.py` gives one time per row, this splits it by kernel
(torch.profiler, mean of 10 steps after 3 warm-up steps), runs the local and fixed
rows' closed forms beside their mask_mods, and adds three variants of BigBird without
its global row, its global column or both: the cost of one long list in a pass is the
difference. The wall column is host-timed (20 steps, synchronized). Each of our rows is
planned and autotuned afresh (`ops.forget_tuning`: the autotune key holds no layout), and
the JSON records its tiles (`tuned_tiles`).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.profiler import ProfilerActivity, profile

import layouts as rows
from sparse_kernels.ops import forget_tuning, tuned_tiles
from sparse_transformer import SparseLayout, sparse_attention


def kernel_times(fn, q, k, v, grad, iters: int = 10) -> tuple[dict[str, float], float]:
    """(ms per step of each kernel, host-timed ms per step) of forward+backward."""
    leaves = [q, k, v]

    def step():
        return torch.autograd.grad(fn(q, k, v), leaves, grad)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            step()
        torch.cuda.synchronize()
    kernels = {e.key[:70]: e.device_time_total / iters / 1000 for e in prof.key_averages() if e.device_time_total > 0}
    start = time.perf_counter()
    for _ in range(20):
        step()
    torch.cuda.synchronize()
    return kernels, (time.perf_counter() - start) / 20 * 1000


def bigbird_variants(n: int, block: int) -> dict[str, torch.Tensor]:
    """BigBird's blocks (rows.bigbird_blocks) without the global row, column or both."""
    nb = -(-n // block)
    index = torch.arange(nb)
    picks = torch.randint(0, nb, (nb, 3), generator=torch.Generator().manual_seed(0))
    variants = {}
    for name, global_row, global_col in (("no global row", False, True), ("no global col", True, False),
                                         ("no globals", False, False)):
        blocks = (index[:, None] - index[None, :]).abs() <= 1
        blocks[0, :] |= global_row
        blocks[:, 0] |= global_col
        blocks[index[:, None], picks] = True
        variants["bigbird " + name] = blocks
    return variants


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=65536)
    parser.add_argument("--d", type=int, default=64, help="head dim")
    parser.add_argument("--flex", action="store_true", help="also FlexAttention (compiled) on each row")
    parser.add_argument("--tag", default="ours", help="a label printed on each line")
    parser.add_argument("--layouts", nargs="*", default=["longformer", "bigbird", "prefix-lm", "documents"])
    parser.add_argument("--json", help="write all measurements here")
    args = parser.parse_args(argv)
    device = torch.device("cuda")
    settings = argparse.Namespace(layouts=args.layouts, window=256, globals=64, block=128, document=2048, stride=128,
                                  summary=32, heads=8, gqa_heads=32)
    batch = max(1, 65536 // args.n)
    results = {}

    def report(name, fn, q, k, v, grad, ours=True):
        if ours:
            forget_tuning()  # this row's own tiles, not the first row's
        kernels, wall = kernel_times(fn, q, k, v, grad)
        top = sorted(kernels.items(), key=lambda item: -item[1])[:6]
        print(f"{args.tag} {name:<28} wall {wall:7.3f} ms | " + " | ".join(f"{key[:38]} {ms:.3f}" for key, ms in top),
              flush=True)
        results[name] = dict(wall_ms=wall, kernels=kernels)
        if ours:
            results[name]["tuned_tiles"] = {kind: tiles for kind, tiles in tuned_tiles().items() if tiles}

    for case in rows.cases(settings, args.n, device):
        heads = case.get("heads", settings.heads)  # the gqa rows have their own query and key/value heads
        q, k, v, grad = rows.inputs(batch, heads, case.get("kv_heads", heads), args.n, args.d, device)
        layout = case["ours"]()
        report(case["name"], lambda q, k, v, layout=layout: sparse_attention(q, k, v, layout), q, k, v, grad)
        if "closed" in case:  # the built-in pattern's closed form, what its mask_mod is measured against
            closed = case["closed"]()
            report(case["name"].replace("as mask_mod", "closed form"),
                   lambda q, k, v, layout=closed: sparse_attention(q, k, v, layout), q, k, v, grad)
        if args.flex:
            report(case["name"] + " FLEX", rows.flex(case["mask_mod"], args.n, device), q, k, v, grad, ours=False)
    if "bigbird" in args.layouts:
        q, k, v, grad = rows.inputs(batch, settings.heads, settings.heads, args.n, args.d, device)
        for name, blocks in bigbird_variants(args.n, settings.block).items():
            layout = SparseLayout.from_blocks(blocks.to(device), block=settings.block, causal=False)
            report(name, lambda q, k, v, layout=layout: sparse_attention(q, k, v, layout), q, k, v, grad)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
