"""Time the fused kernels against dense causal SDPA, FlexAttention and a stock assembly,
on one GPU, each row against its floor.

    python benchmarks/attention.py --n 4096 16384 65536 262144 1048576 --head-dim 64 128 \
        --json out/attention.json

For every length n (batch = tokens // n, at least 1), head dim, stride l and pattern it
times the forward pass and forward+backward (bf16, median of triton.testing.do_bench),
and reports useful TFLOP/s that count only the allowed (query, key) pairs: 4 * D FLOPs
per pair forward, 2.5 times that backward (FlashAttention's convention).

Each row also gets:
- its floor: the larger of its useful FLOPs at SDPA's dense forward+backward rate and
  its minimal HBM traffic at the card's copy bandwidth (the forward reads q, k, v and
  writes o and lse; the backward reads q, k, v, o, do and lse and writes dq, dk and dv,
  each once), both ceilings measured in the same run; and time / floor;
- its host cost: the CPU time to enqueue one forward+backward while the GPU is kept
  busy ahead of it (common.enqueue_ms). `--trace` writes a profiler trace of eager calls;
- its GPU time alone: the same forward+backward replayed as a CUDA graph (no host work;
  common.graph_ms), and that time over the floor. Where the eager call is host-bound,
  this column, not do_bench's, says how far the kernels are from their floor.

Dense causal SDPA (FlashAttention/cuDNN) is the baseline; FlexAttention gets each
pattern as a mask_mod built from `Pattern.allowed`, as a user would write it, with its
block mask built compiled; "stock" is the best assembly of strided multihead from stock
parts: FlexAttention with a local block mask on the even heads, and SDPA on
residue-permuted keys (positions with equal i mod l made contiguous, dense causal per
residue) on the odd heads. The FlexAttention and stock outputs are checked against ours.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F
import triton

from common import enqueue_ms, environment, graph_ms, write_json
from sparse_kernels.ops import tuned_tiles
from sparse_transformer import Pattern
from sparse_transformer.attention import sparse_attention

BACKWARD_FLOP_FACTOR = 2.5
CEILING_TOKENS = 65536  # SDPA's rate is measured at n = 16,384, batch 4: long enough to reach it
CEILING_N = 16384


def patterns(stride: int, summary: int) -> dict[str, Pattern]:
    return {
        "strided multihead": Pattern("strided", stride, integration="multihead"),
        "strided merged": Pattern("strided", stride, integration="merged"),
        f"fixed merged c={summary}": Pattern("fixed", stride, summary, integration="merged"),
        f"fixed multihead c={summary}": Pattern("fixed", stride, summary, integration="multihead"),
        "local": Pattern("local", stride),
        "dense (ours)": Pattern("dense", stride),
    }


def useful_pairs(pattern: Pattern, n: int, heads: int) -> int:
    return sum(pattern.pair_count(n, 0, h) for h in range(heads))


def minimal_bytes(batch: int, heads: int, n: int, d_qk: int, d_v: int, element: int = 2) -> int:
    """HBM bytes a forward+backward must move at least: each input read once, each output written once."""
    rows = batch * heads * n
    forward = rows * ((2 * d_qk + 2 * d_v) * element + 4)  # q, k, v, o; lse (fp32)
    backward = rows * ((4 * d_qk + 4 * d_v) * element + 4)  # q, k, v, o, do, dq, dk, dv; lse
    return forward + backward


def time_ms(fn, backward: bool, grad: torch.Tensor | None, leaves) -> float:
    if not backward:
        with torch.no_grad():
            return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
    return triton.testing.do_bench(lambda: torch.autograd.grad(fn(), leaves, grad), warmup=25, rep=100,
                                   return_mode="median")


def copy_bandwidth() -> float:
    """Bytes per second of a 1 GiB device-to-device copy, counting bytes read and written."""
    src = torch.randn(2**29, device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=25, rep=100, return_mode="median")
    return 2 * src.numel() * src.element_size() / (ms * 1e-3)


def sdpa_rate(heads: int, head_dim: int) -> float:
    """Dense causal SDPA's forward+backward FLOP/s at n = 16,384, batch 4."""
    batch = CEILING_TOKENS // CEILING_N
    q, k, v, grad = (torch.randn(batch, heads, CEILING_N, head_dim, device="cuda", dtype=torch.bfloat16)
                     for _ in range(4))
    leaves = [t.requires_grad_() for t in (q, k, v)]
    ms = time_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), True, grad, leaves)
    pairs = batch * heads * CEILING_N * (CEILING_N + 1) // 2
    return 4 * head_dim * pairs * (1 + BACKWARD_FLOP_FACTOR) / (ms * 1e-3)


def flex_fn(mask_mod, heads: int | None, n: int, device):
    """A compiled FlexAttention call with the block mask of mask_mod, and the block mask's build time."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    start = time.perf_counter()
    block_mask = torch.compile(create_block_mask)(mask_mod, None, heads, n, n, device=device)
    torch.cuda.synchronize()
    build_s = time.perf_counter() - start
    compiled = torch.compile(flex_attention, dynamic=False)
    return (lambda q, k, v: compiled(q, k, v, block_mask=block_mask)), build_s


def stock_strided_multihead(stride: int, n: int, device):
    """Strided multihead from stock parts: FlexAttention (local block mask) on the even
    heads, SDPA per residue class of i mod l on the odd heads (n must divide by l)."""
    local, build_s = flex_fn(Pattern("local", stride).mask_mod(), None, n, device)

    def residue_major(t):  # (B, h, n, D) -> (B, h * l, n / l, D): equal i mod l contiguous
        batch, heads, _, dim = t.shape
        return t.reshape(batch, heads, n // stride, stride, dim).transpose(2, 3).reshape(batch, heads * stride, -1, dim)

    def attend(q, k, v):
        batch, heads, _, dim = q.shape
        even = local(q[:, 0::2], k[:, 0::2], v[:, 0::2])
        odd = F.scaled_dot_product_attention(*(residue_major(t[:, 1::2]) for t in (q, k, v)), is_causal=True)
        odd = odd.reshape(batch, heads // 2, stride, n // stride, dim).transpose(2, 3).reshape(batch, heads // 2, n, dim)
        return torch.stack((even, odd), dim=2).reshape(batch, heads, n, dim)  # head 2i even, 2i + 1 odd

    return attend, build_s


def candidates(args, n: int, stride: int, batch: int, device) -> list[tuple]:
    """The rows at (n, stride): (impl, factory, pairs, reference impl or None). A factory
    returns (function of (q, k, v), block-mask build seconds or None) and is called only
    when its row is timed, so that a slow FlexAttention compile delays its own row, not
    every row before it."""
    rows = []
    dense_pairs = batch * args.heads * n * (n + 1) // 2
    if n <= args.sdpa_max_n and stride == args.stride[0]:
        rows.append(("sdpa dense causal",
                     lambda: (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), None),
                     dense_pairs, None))
    for pname, pattern in patterns(stride, args.summary).items():
        if not any(word in pname for word in args.patterns) or (pattern.kind == "dense" and (n > args.sdpa_max_n or stride != args.stride[0])):
            continue
        pairs = batch * useful_pairs(pattern, n, args.heads)
        ours = f"ours: {pname}"
        rows.append((ours, lambda p=pattern: (lambda q, k, v: sparse_attention(q, k, v, p), None), pairs, None))
        if n <= args.flex_max_n and pname in args.flex_patterns:
            heads = args.heads if pattern.depends_on_head() else None
            rows.append((f"flex: {pname}", lambda p=pattern, h=heads: flex_fn(p.mask_mod(), h, n, device), pairs, ours))
        if pname == "strided multihead" and args.stock and n % stride == 0:
            rows.append(("stock: flex local + sdpa per residue", lambda: stock_strided_multihead(stride, n, device), pairs, ours))
    return rows


def run(args, record) -> tuple[list[dict], dict]:
    """Time every row; `record(results, ceilings)` is called after each, so that a run cut
    short keeps what it measured."""
    device = torch.device("cuda")
    name = torch.cuda.get_device_name()
    bandwidth = copy_bandwidth()
    rates = {d: sdpa_rate(args.heads, d) for d in args.head_dim}
    ceilings = dict(copy_bytes_per_s=bandwidth, sdpa_fwdbwd_flops_per_s={str(d): r for d, r in rates.items()})
    print(f"ceilings: copy {bandwidth / 1e12:.2f} TB/s; SDPA fwd+bwd "
          + ", ".join(f"D={d}: {r / 1e12:.0f} TFLOP/s" for d, r in rates.items()), flush=True)
    results = []
    for n in args.n:
        batch = max(1, args.tokens // n)
        for head_dim in args.head_dim:
            gen = torch.Generator(device="cuda").manual_seed(0)
            shape = (batch, args.heads, n, head_dim)
            q, k, v, grad = (torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(4))
            leaves = [t.requires_grad_() for t in (q, k, v)]
            data_bytes = minimal_bytes(batch, args.heads, n, head_dim, head_dim)
            for stride in args.stride:
                outputs = {}
                for impl, factory, pairs, reference in candidates(args, n, stride, batch, device):
                    row = dict(device=name, n=n, batch=batch, heads=args.heads, head_dim=head_dim, stride=stride,
                               summary=args.summary, impl=impl, pairs=pairs)
                    results.append(row)
                    try:
                        fn, row["block_mask_build_s"] = factory()
                        call = lambda fn=fn, inputs=(q, k, v): fn(*inputs)  # noqa: E731
                        with torch.no_grad():
                            out = call().float()
                        if impl.startswith("ours"):
                            outputs[impl] = out
                        elif reference in outputs:
                            ref = outputs[reference]
                            row["rel_error_vs_ours"] = float((out - ref).norm() / ref.norm())
                        del out
                        row["fwd_ms"] = time_ms(call, False, None, leaves)
                        row["fwdbwd_ms"] = time_ms(call, True, grad, leaves)
                        step = lambda call=call, leaves=leaves, grad=grad: torch.autograd.grad(call(), leaves, grad)  # noqa: E731
                        calls = max(2, min(args.host_calls, round(500 / row["fwdbwd_ms"])))  # about 0.5 s of GPU work
                        row["host_ms"] = enqueue_ms(step, calls)
                        try:
                            row["graph_ms"] = graph_ms(step)
                        except Exception as err:  # a call that cannot be captured: the table says why
                            row["graph_error"] = repr(err)[:200]
                    except torch.OutOfMemoryError as err:
                        row["error"] = f"out of memory: {str(err)[:120]}"
                        torch.cuda.empty_cache()
                    except Exception as err:  # a FlexAttention build that fails: the table says why
                        if impl.startswith("ours"):
                            raise
                        row["error"] = repr(err)[:200]
                    if "fwdbwd_ms" in row:
                        flops = 4 * head_dim * pairs
                        row["fwd_tflops"] = flops / row["fwd_ms"] / 1e9
                        row["fwdbwd_tflops"] = flops * (1 + BACKWARD_FLOP_FACTOR) / row["fwdbwd_ms"] / 1e9
                        compute_ms = flops * (1 + BACKWARD_FLOP_FACTOR) / rates[head_dim] * 1e3
                        memory_ms = data_bytes / bandwidth * 1e3
                        row.update(floor_ms=max(compute_ms, memory_ms), floor_bound="compute" if compute_ms >= memory_ms else "memory")
                        row["time_over_floor"] = row["fwdbwd_ms"] / row["floor_ms"]
                        if "graph_ms" in row:
                            row["graph_over_floor"] = row["graph_ms"] / row["floor_ms"]
                        graph = f"{row['graph_ms']:.3f} x{row['graph_over_floor']:.2f}" if "graph_ms" in row else "-"
                        agree = f" err {row['rel_error_vs_ours']:.1e}" if "rel_error_vs_ours" in row else ""
                        print(f"n={n:>8} d={head_dim:>3} l={stride:>3} {impl:<38} fwd {row['fwd_ms']:8.3f} | fwd+bwd "
                              f"{row['fwdbwd_ms']:8.3f} ms {row['fwdbwd_tflops']:6.1f} TF/s | host {row['host_ms']:.3f} ms | "
                              f"floor {row['floor_ms']:.3f} ({row['floor_bound']}) x{row['time_over_floor']:.2f} | graph {graph}{agree}", flush=True)
                    else:
                        print(f"n={n:>8} d={head_dim:>3} l={stride:>3} {impl:<38} {row['error']}", flush=True)
                    record(results, ceilings)
                del outputs
            del q, k, v, grad, leaves
            torch.cuda.empty_cache()
    return results, ceilings


def trace(args, path: str) -> None:
    """A Chrome trace of three eager forward+backward calls of each of our patterns at the
    first length, head dim and stride: where the host time of a call goes."""
    from torch.profiler import ProfilerActivity, profile

    n, head_dim, stride = args.n[0], args.head_dim[0], args.stride[0]
    shape = (max(1, args.tokens // n), args.heads, n, head_dim)
    q, k, v, grad = (torch.randn(shape, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    leaves = [t.requires_grad_() for t in (q, k, v)]
    chosen = [p for name, p in patterns(stride, args.summary).items() if any(w in name for w in args.patterns)]
    for pattern in chosen:  # compiled and tuned before tracing
        torch.autograd.grad(sparse_attention(q, k, v, pattern), leaves, grad)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for pattern in chosen:
            for _ in range(3):
                with torch.profiler.record_function(pattern.describe()):
                    torch.autograd.grad(sparse_attention(q, k, v, pattern), leaves, grad)
        torch.cuda.synchronize()
    prof.export_chrome_trace(path)
    print(f"wrote {path}")


def table(results: list[dict]) -> str:
    lines = ["| n | D | l | implementation | fwd ms | fwd+bwd ms | useful TFLOP/s (fwd+bwd) | vs SDPA (fwd+bwd) | "
             "host ms | floor ms | time / floor | graph ms | graph / floor |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    sdpa = {(r["n"], r["head_dim"]): r for r in results if r["impl"] == "sdpa dense causal" and "fwdbwd_ms" in r}
    for r in results:
        if "fwdbwd_ms" not in r:
            lines.append(f"| {r['n']} | {r['head_dim']} | {r['stride']} | {r['impl']} | - | - | {r.get('error', '')} | | | | | | |")
            continue
        base = sdpa.get((r["n"], r["head_dim"]))
        speed = f"{base['fwdbwd_ms'] / r['fwdbwd_ms']:.2f}x" if base else "-"
        graph = f"{r['graph_ms']:.3f} | {r['graph_over_floor']:.2f}" if "graph_ms" in r else "- | -"
        lines.append(f"| {r['n']} | {r['head_dim']} | {r['stride']} | {r['impl']} | {r['fwd_ms']:.3f} | {r['fwdbwd_ms']:.3f} | "
                     f"{r['fwdbwd_tflops']:.0f} | {speed} | {r['host_ms']:.3f} | {r['floor_ms']:.3f} | "
                     f"{r['time_over_floor']:.2f} | {graph} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[4096, 16384, 65536, 262144, 1048576])
    parser.add_argument("--head-dim", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=65536, help="batch * n (default 65,536)")
    parser.add_argument("--stride", type=int, nargs="+", default=[256], help="l (several: each pattern at each)")
    parser.add_argument("--summary", type=int, default=32)
    parser.add_argument("--sdpa-max-n", type=int, default=262144, help="skip dense attention above this length")
    parser.add_argument("--flex-max-n", type=int, default=65536, help="skip FlexAttention above this length (block masks get slow)")
    parser.add_argument("--patterns", nargs="*", default=["strided", "fixed", "local", "dense"],
                        help="run our patterns whose name contains one of these words")
    parser.add_argument("--flex-patterns", nargs="*", default=["strided multihead", "fixed merged c=32", "local"])
    parser.add_argument("--no-stock", dest="stock", action="store_false", help="skip the stock assembly of strided multihead")
    parser.add_argument("--host-calls", type=int, default=20, help="calls per host-cost measurement")
    parser.add_argument("--trace", metavar="FILE.json", help="also write a Chrome trace of eager calls (see trace())")
    parser.add_argument("--json", help="write all measurements here")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/attention.py needs a CUDA GPU", file=sys.stderr)
        return 2
    # FlexAttention compiles anew for every length, head dim and grad mode; past Dynamo's
    # default of 8 recompiles it would run unfused, with n^2 memory (an out-of-memory at
    # n = 262,144 on 2026-11-30 was that, not FlexAttention's kernels).
    torch._dynamo.config.recompile_limit = 64
    def record(results: list[dict], ceilings: dict) -> None:
        if args.json:
            meta = dict(environment(torch.device("cuda")), args=vars(args), ceilings=ceilings, tuned_tiles=tuned_tiles())
            write_json(args.json, {"meta": meta, "results": results})

    results, ceilings = run(args, record)
    print(table(results))
    if args.trace:
        trace(args, args.trace)
    return 0


if __name__ == "__main__":
    sys.exit(main())
