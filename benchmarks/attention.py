"""Time the fused kernels against dense causal SDPA and FlexAttention, on one GPU.

    python benchmarks/attention.py --n 4096 16384 65536 262144 1048576 --head-dim 64 128 \
        --json out/attention.json

For every length n (batch = tokens // n, at least 1), head dim and pattern it times the
forward pass and forward+backward (bf16, median of triton.testing.do_bench), and
reports useful TFLOP/s that count only the allowed (query, key) pairs: 4 * D FLOPs per
pair forward, 2.5 times that backward (FlashAttention's convention). Dense causal SDPA
(FlashAttention/cuDNN) is the baseline; FlexAttention gets each pattern as a mask_mod
built from `Pattern.allowed`, as a user would write it.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F
import triton

from common import environment, write_json
from sparse_kernels.ops import tuned_tiles
from sparse_transformer import Pattern
from sparse_transformer.triton_attention import sparse_attention

BACKWARD_FLOP_FACTOR = 2.5


def patterns(stride: int, summary: int) -> dict[str, Pattern]:
    return {
        "strided multihead": Pattern("strided", stride, integration="multihead"),
        "strided merged": Pattern("strided", stride, integration="merged"),
        f"fixed merged c={summary}": Pattern("fixed", stride, summary, integration="merged"),
        f"fixed multihead c={summary}": Pattern("fixed", stride, summary, integration="multihead"),
        "dense (ours)": Pattern("dense", stride),
    }


def useful_pairs(pattern: Pattern, n: int, heads: int) -> int:
    return sum(pattern.pair_count(n, 0, h) for h in range(heads))


def time_ms(fn, backward: bool, grad: torch.Tensor | None, leaves) -> float:
    if not backward:
        with torch.no_grad():
            return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")

    def step():
        out = fn()
        torch.autograd.grad(out, leaves, grad)

    return triton.testing.do_bench(step, warmup=25, rep=100, return_mode="median")


def flex_fn(pattern: Pattern, q, k, v):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    heads, n = q.shape[1], q.shape[2]

    def mask_mod(b, h, q_idx, kv_idx):
        return pattern.allowed(q_idx, kv_idx, 0, h)

    start = time.perf_counter()
    block_mask = create_block_mask(mask_mod, None, heads, n, n, device=q.device)
    build_s = time.perf_counter() - start
    compiled = torch.compile(flex_attention)
    return (lambda: compiled(q, k, v, block_mask=block_mask)), build_s


def run(args) -> list[dict]:
    device = torch.cuda.get_device_name()
    results = []
    for n in args.n:
        batch = max(1, args.tokens // n)
        for head_dim in args.head_dim:
            gen = torch.Generator(device="cuda").manual_seed(0)
            shape = (batch, args.heads, n, head_dim)
            q, k, v, grad = (torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(4))
            leaves = [t.requires_grad_() for t in (q, k, v)]
            dense_pairs = batch * args.heads * n * (n + 1) // 2
            candidates = []
            if n <= args.sdpa_max_n:
                candidates.append(("sdpa dense causal", None, lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), dense_pairs, None))
            for name, pattern in patterns(args.stride, args.summary).items():
                if (name == "dense (ours)" and n > args.sdpa_max_n) or not any(word in name for word in args.patterns):
                    continue
                pairs = batch * useful_pairs(pattern, n, args.heads)
                candidates.append((f"ours: {name}", pattern, lambda p=pattern: sparse_attention(q, k, v, p), pairs, None))
                if n <= args.flex_max_n and name in args.flex_patterns:
                    try:
                        fn, build_s = flex_fn(pattern, q, k, v)
                        candidates.append((f"flex: {name}", pattern, fn, pairs, build_s))
                    except Exception as err:  # record and go on: the table says why
                        results.append(dict(n=n, head_dim=head_dim, impl=f"flex: {name}", error=repr(err)[:200]))
            for impl, pattern, fn, pairs, build_s in candidates:
                row = dict(device=device, n=n, batch=batch, heads=args.heads, head_dim=head_dim, impl=impl, pairs=pairs,
                           stride=args.stride, summary=args.summary, block_mask_build_s=build_s)
                try:
                    row["fwd_ms"] = time_ms(fn, False, None, leaves)
                    row["fwdbwd_ms"] = time_ms(fn, True, grad, leaves)
                except torch.OutOfMemoryError as err:
                    row["error"] = f"out of memory: {str(err)[:120]}"
                    torch.cuda.empty_cache()
                    results.append(row)
                    continue
                flops = 4 * head_dim * pairs
                row["fwd_tflops"] = flops / row["fwd_ms"] / 1e9
                row["fwdbwd_tflops"] = flops * (1 + BACKWARD_FLOP_FACTOR) / row["fwdbwd_ms"] / 1e9
                results.append(row)
                print(f"n={n:>8} d={head_dim:>3} {impl:<32} fwd {row['fwd_ms']:9.3f} ms {row['fwd_tflops']:6.1f} TF/s"
                      f" | fwd+bwd {row['fwdbwd_ms']:9.3f} ms {row['fwdbwd_tflops']:6.1f} TF/s", flush=True)
            del q, k, v, grad, leaves
            torch.cuda.empty_cache()
    return results


def table(results: list[dict]) -> str:
    lines = ["| n | D | implementation | fwd ms | fwd+bwd ms | useful TFLOP/s (fwd+bwd) | speed-up vs SDPA (fwd+bwd) | TFLOP/s vs SDPA |",
             "|---|---|---|---|---|---|---|---|"]
    sdpa = {(r["n"], r["head_dim"]): r for r in results if r["impl"] == "sdpa dense causal" and "fwdbwd_ms" in r}
    for r in results:
        if "fwdbwd_ms" not in r:
            lines.append(f"| {r['n']} | {r['head_dim']} | {r['impl']} | - | - | {r.get('error', '')} | | |")
            continue
        base = sdpa.get((r["n"], r["head_dim"]))
        speed = f"{base['fwdbwd_ms'] / r['fwdbwd_ms']:.1f}x" if base else "-"
        eff = f"{100 * r['fwdbwd_tflops'] / base['fwdbwd_tflops']:.0f}%" if base else "-"
        lines.append(f"| {r['n']} | {r['head_dim']} | {r['impl']} | {r['fwd_ms']:.3f} | {r['fwdbwd_ms']:.3f} | "
                     f"{r['fwdbwd_tflops']:.0f} | {speed} | {eff} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[4096, 16384, 65536, 262144, 1048576])
    parser.add_argument("--head-dim", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=65536, help="batch * n (default 65,536)")
    parser.add_argument("--stride", type=int, default=256)
    parser.add_argument("--summary", type=int, default=32)
    parser.add_argument("--sdpa-max-n", type=int, default=262144, help="skip dense attention above this length")
    parser.add_argument("--flex-max-n", type=int, default=65536, help="skip FlexAttention above this length (block masks get slow)")
    parser.add_argument("--patterns", nargs="*", default=["strided", "fixed", "dense"],
                        help="run our patterns whose name contains one of these words")
    parser.add_argument("--flex-patterns", nargs="*", default=["strided multihead", "fixed merged c=32"])
    parser.add_argument("--json", help="write all measurements here")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/attention.py needs a CUDA GPU", file=sys.stderr)
        return 2
    results = run(args)
    print(table(results))
    if args.json:
        meta = dict(environment(torch.device("cuda")), args=vars(args), tuned_tiles=tuned_tiles())
        write_json(args.json, {"meta": meta, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
