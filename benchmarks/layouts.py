"""Time user-written sparsity (SparseLayout) against FlexAttention with the same mask, on one GPU.

    python benchmarks/layouts.py --n 16384 65536 --head-dim 64 128 --json out/layouts.json

The layouts are the ones FlexAttention's and blocksparse's users write most, each given
to both as the same mask_mod (FlexAttention's convention) and built once, outside the
timing: ours with `SparseLayout.from_mask_mod`, FlexAttention's with a compiled
`create_block_mask`, its attention compiled.

    longformer     sliding window |i - j| < w plus g global tokens (rows and columns), not causal
    bigbird        blocks: a window of 3 blocks, the first block global, 3 random blocks a row,
                   not causal (ours from `SparseLayout.from_blocks`, FlexAttention from the same
                   blocks as a mask_mod)
    prefix-lm      causal, plus every key of the first n / 4 positions (the prefix)
    documents      a packed batch of documents of random lengths (mean --document), causal
                   within each (`SparseLayout.packed`)
    local          the local pattern as a mask_mod, against its closed form too (`Pattern.layout`)
    fixed          fixed merged (l, c = 32) as a mask_mod, against its closed form too
    gqa            a causal sliding window with H query heads and H / 4 key/value heads,
                   against the same call with H key/value heads

Per row: forward and forward+backward ms (bf16, median of triton.testing.do_bench),
useful TFLOP/s over the allowed pairs (4 D FLOPs a pair forward, 2.5 times that
backward), FlexAttention's time over ours, and the output's relative difference. Each of
our rows is planned and autotuned afresh (`ops.forget_tuning`; the JSON records its
tiles): the autotune key holds no layout, so a row would otherwise run on the tiles of
the first row of its length and head dims (prefix-LM at D = 128: 10-12% slower on
Longformer's, docs/benchmarks.md, "Carried addresses").

`--build-n` times building the layout alone (`from_mask_mod`) against FlexAttention's
compiled `create_block_mask` for the same mask_mod (both after a first, compiling call),
for longformer, documents, prefix-lm and bigbird's blocks as a mask_mod, at each length.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import torch
import triton

from attention import BACKWARD_FLOP_FACTOR, time_ms
from common import environment, write_json
from sparse_kernels.ops import forget_tuning, tuned_tiles
from sparse_transformer import Pattern, SparseLayout, sparse_attention


# ---------------------------------------------------------------------- masks
def sliding_window_global(window: int, globals_: int, causal: bool):
    def mask_mod(b, h, q_idx, kv_idx):
        near = (q_idx - kv_idx).abs() < window
        glob = (q_idx < globals_) | (kv_idx < globals_)
        allowed = near | glob
        return allowed & (kv_idx <= q_idx) if causal else allowed
    return mask_mod


def prefix_lm(prefix: int):
    def mask_mod(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) | (kv_idx < prefix)
    return mask_mod


def causal_documents(document: torch.Tensor):
    """document: (n,) the document id of each position."""
    def mask_mod(b, h, q_idx, kv_idx):
        return (document[q_idx] == document[kv_idx]) & (kv_idx <= q_idx)
    return mask_mod


def bigbird_blocks(n: int, block: int, random_blocks: int, seed: int) -> torch.Tensor:
    """(nb, nb) bool: window of 3 blocks, block 0 global (row and column), random blocks."""
    nb = math.ceil(n / block)
    index = torch.arange(nb)
    blocks = (index[:, None] - index[None, :]).abs() <= 1
    blocks[0, :] = True
    blocks[:, 0] = True
    gen = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, nb, (nb, random_blocks), generator=gen)
    blocks[index[:, None], picks] = True
    return blocks


def blocks_mask_mod(blocks: torch.Tensor, block: int):
    def mask_mod(b, h, q_idx, kv_idx):
        return blocks[q_idx // block, kv_idx // block]
    return mask_mod


def document_ids(n: int, mean: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random document lengths (exponential, at least 1) filling n: (cu_seqlens, ids per position)."""
    gen = torch.Generator().manual_seed(seed)
    lengths = []
    while sum(lengths) < n:
        lengths.append(max(1, int(torch.empty(1).exponential_(1 / mean, generator=gen))))
    lengths[-1] -= sum(lengths) - n
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    ids = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    return cu, ids


# ---------------------------------------------------------------------- rows
def count_pairs(mask_mod, n: int, device, rows: int = 1024) -> int:
    """Allowed (query, key) pairs of one head (the masks here are shared by the heads), a slab of rows at a time."""
    keys = torch.arange(n, device=device)
    zero = torch.tensor(0, device=device)
    total = 0
    for start in range(0, n, rows):
        q = torch.arange(start, min(n, start + rows), device=device)
        total += int(mask_mod(zero, zero, q[:, None], keys[None, :]).sum())
    return total


def cases(args, n: int, device) -> list[dict]:
    """Per layout: mask_mod (for FlexAttention), a factory of our layout, heads of k/v,
    and optionally a closed form to compare with."""
    out = []
    want = set(args.layouts)
    w = args.window
    if "longformer" in want:
        mod = sliding_window_global(w, args.globals, causal=False)
        out.append(dict(name="longformer", mask_mod=mod,
                        ours=lambda mod=mod: SparseLayout.from_mask_mod(mod, n, block=args.block, device=device)))
    if "bigbird" in want:
        blocks = bigbird_blocks(n, args.block, 3, seed=0)
        mod = blocks_mask_mod(blocks.to(device), args.block)
        out.append(dict(name="bigbird", mask_mod=mod,
                        ours=lambda blocks=blocks: SparseLayout.from_blocks(blocks.to(device), block=args.block, causal=False)))
    if "prefix-lm" in want:
        mod = prefix_lm(n // 4)
        out.append(dict(name="prefix-lm", mask_mod=mod,
                        ours=lambda mod=mod: SparseLayout.from_mask_mod(mod, n, block=args.block, device=device)))
    if "documents" in want:
        cu, ids = document_ids(n, args.document, seed=0)
        mod = causal_documents(ids.to(device))
        out.append(dict(name=f"documents (mean {args.document})", mask_mod=mod,
                        ours=lambda cu=cu: SparseLayout.packed(cu, Pattern("dense", 1), block=args.block, device=device)))
    for kind in ("local", "fixed"):
        if kind in want:
            pattern = Pattern("local", args.stride) if kind == "local" else Pattern("fixed", args.stride, args.summary)
            mod = pattern.mask_mod()
            out.append(dict(name=f"{pattern.describe()} as mask_mod", mask_mod=mod,
                            ours=lambda mod=mod: SparseLayout.from_mask_mod(mod, n, block=args.block, device=device),
                            closed=lambda p=pattern: p.layout(n, heads=args.heads, device=device)))
    if "gqa" in want:
        mod = sliding_window_global(w, 0, causal=True)
        for kv_heads in (args.gqa_heads // 4, args.gqa_heads):
            out.append(dict(name=f"gqa H={args.gqa_heads} H_kv={kv_heads} (causal window {w})", mask_mod=mod,
                            heads=args.gqa_heads, kv_heads=kv_heads,
                            ours=lambda mod=mod: SparseLayout.from_mask_mod(mod, n, block=args.block, device=device)))
    return out


def flex(mask_mod, n: int, device):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    torch._dynamo.reset()  # each row's mask_mod is a new guard on the same function: stay under the recompile limit
    start = time.perf_counter()
    block_mask = torch.compile(create_block_mask)(mask_mod, None, None, n, n, device=device)
    print(f"  flex: compiled create_block_mask and built the mask in {time.perf_counter() - start:.1f} s", flush=True)
    compiled = torch.compile(flex_attention, dynamic=False)
    return lambda q, k, v: compiled(q, k, v, block_mask=block_mask, enable_gqa=k.shape[1] != q.shape[1])


def timed(fn, q, k, v, grad) -> dict:
    leaves = [q, k, v]
    call = lambda: fn(q, k, v)  # noqa: E731
    fwd = time_ms(call, False, None, leaves)
    fwdbwd = time_ms(call, True, grad, leaves)
    return dict(fwd_ms=fwd, fwdbwd_ms=fwdbwd)


def inputs(batch: int, heads: int, kv_heads: int, n: int, head_dim: int, device):
    """The same q, k, v and output gradient whenever asked (a fixed seed)."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(batch, heads, n, head_dim, device=device, dtype=torch.bfloat16, generator=gen)
    k, v = (torch.randn(batch, kv_heads, n, head_dim, device=device, dtype=torch.bfloat16, generator=gen) for _ in range(2))
    grad = torch.randn(q.shape, device=device, dtype=torch.bfloat16, generator=gen)
    return q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), grad


def run_attention(args, record) -> list[dict]:
    """All our rows first, then FlexAttention's (each of its compiles takes minutes), so
    that a run cut short keeps every row of ours."""
    device = torch.device("cuda")
    results, ours_outputs = [], {}
    for phase in args.phases:
        for n in args.n:
            batch = max(1, args.tokens // n)
            for head_dim in args.head_dim:
                for case in cases(args, n, device):
                    heads, kv_heads = case.get("heads", args.heads), case.get("kv_heads", case.get("heads", args.heads))
                    key = (n, head_dim, case["name"])
                    if phase == "ours":
                        layout = case["ours"]()
                        impls = {"ours": lambda q, k, v, layout=layout: sparse_attention(q, k, v, layout)}
                        if "closed" in case:
                            closed = case["closed"]()
                            impls["ours, closed form"] = lambda q, k, v, closed=closed: sparse_attention(q, k, v, closed)
                    else:
                        impls = {"flex": lambda mod=case["mask_mod"], n=n: flex(mod, n, device)}
                    q, k, v, grad = inputs(batch, heads, kv_heads, n, head_dim, device)
                    pairs = batch * heads * count_pairs(case["mask_mod"], n, device)
                    flops = 4 * head_dim * pairs
                    for impl, make in impls.items():
                        row = dict(device=torch.cuda.get_device_name(), layout=case["name"], impl=impl, n=n, batch=batch,
                                   heads=heads, kv_heads=kv_heads, head_dim=head_dim, block=args.block, pairs=pairs)
                        results.append(row)
                        if impl != "flex":
                            forget_tuning()  # this row's own tiles (and only its own in the record), not the first row's
                        try:
                            start = time.perf_counter()
                            fn = make() if impl == "flex" else make
                            with torch.no_grad():
                                out = fn(q, k, v).float()
                            row["first_call_s"] = time.perf_counter() - start
                            if key in ours_outputs:
                                ref = ours_outputs[key].to(device)
                                row["rel_difference_vs_ours"] = float((out - ref).norm() / ref.norm())
                            else:
                                ours_outputs[key] = out.cpu()
                            del out
                            row.update(timed(fn, q, k, v, grad))
                            row["fwdbwd_tflops"] = flops * (1 + BACKWARD_FLOP_FACTOR) / row["fwdbwd_ms"] / 1e9
                            if impl != "flex":
                                row["tuned_tiles"] = {kind: tiles for kind, tiles in tuned_tiles().items() if tiles}
                            diff = f" diff {row['rel_difference_vs_ours']:.1e}" if "rel_difference_vs_ours" in row else ""
                            print(f"n={n:>7} d={head_dim:>3} {case['name']:<44} {impl:<18} fwd {row['fwd_ms']:8.3f} | "
                                  f"fwd+bwd {row['fwdbwd_ms']:8.3f} ms {row['fwdbwd_tflops']:6.1f} TF/s{diff} "
                                  f"(first call {row['first_call_s']:.1f} s)", flush=True)
                        except torch.OutOfMemoryError as err:
                            row["error"] = f"out of memory: {str(err)[:120]}"
                            torch.cuda.empty_cache()
                        except Exception as err:
                            if impl.startswith("ours"):
                                raise
                            row["error"] = repr(err)[:200]
                            print(f"n={n:>7} d={head_dim:>3} {case['name']:<44} {impl:<18} {row['error']}", flush=True)
                        record(results)
                    del q, k, v, grad, impls
                    torch.cuda.empty_cache()
    return results


def run_build(args, record, results: list[dict]) -> list[dict]:
    """Layout build time against FlexAttention's compiled create_block_mask."""
    from torch.nn.attention.flex_attention import create_block_mask

    device = torch.device("cuda")
    build_mask = torch.compile(create_block_mask)
    for n in args.build_n:
        cu, ids = document_ids(n, args.document, seed=0)
        mods = {"sliding window + global": sliding_window_global(args.window, args.globals, causal=False),
                "documents": causal_documents(ids.to(device)),
                "prefix-lm": prefix_lm(n // 4),
                "bigbird": blocks_mask_mod(bigbird_blocks(n, args.block, 3, seed=0).to(device), args.block)}
        for name, mod in mods.items():
            row = dict(device=torch.cuda.get_device_name(), build=name, n=n, block=args.block)
            results.append(row)
            for impl, fn in (("ours", lambda: SparseLayout.from_mask_mod(mod, n, block=args.block, device=device)),
                             ("flex", lambda: build_mask(mod, None, None, n, n, device=device, BLOCK_SIZE=args.block))):
                try:
                    torch._dynamo.reset()  # each mask_mod compiles create_block_mask anew: stay under the recompile limit
                    fn()  # compiles
                    torch.cuda.synchronize()
                    row[f"{impl}_ms"] = triton.testing.do_bench(fn, warmup=1, rep=5, return_mode="median")
                except torch.OutOfMemoryError as err:
                    row[f"{impl}_error"] = f"out of memory: {str(err)[:120]}"
                    torch.cuda.empty_cache()
            speedup = f"{row['flex_ms'] / row['ours_ms']:.1f}x" if "flex_ms" in row and "ours_ms" in row else "-"
            print(f"build n={n:>8} {name:<26} ours {row.get('ours_ms', float('nan')):9.2f} ms | "
                  f"flex create_block_mask {row.get('flex_ms', float('nan')):9.2f} ms | flex / ours {speedup}", flush=True)
            record(results)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="*", default=[16384, 65536])
    parser.add_argument("--head-dim", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--gqa-heads", type=int, default=32, help="query heads of the gqa rows")
    parser.add_argument("--tokens", type=int, default=65536, help="batch * n (default 65,536)")
    parser.add_argument("--block", type=int, default=128, help="the layouts' block")
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--globals", type=int, default=64, help="global tokens of longformer")
    parser.add_argument("--document", type=int, default=2048, help="mean document length")
    parser.add_argument("--stride", type=int, default=128)
    parser.add_argument("--summary", type=int, default=32)
    parser.add_argument("--layouts", nargs="*",
                        default=["longformer", "bigbird", "prefix-lm", "documents", "local", "fixed", "gqa"])
    parser.add_argument("--phases", nargs="+", choices=["ours", "flex"], default=["ours", "flex"],
                        help="whose rows to time (all of ours run before any of FlexAttention's)")
    parser.add_argument("--build-n", type=int, nargs="*", default=[65536, 262144, 1048576],
                        help="lengths at which to time building the layout alone (none: skip)")
    parser.add_argument("--json", help="write all measurements here")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/layouts.py needs a CUDA GPU", file=sys.stderr)
        return 2

    def record(results: list[dict]) -> None:
        if args.json:
            meta = dict(environment(torch.device("cuda")), args=vars(args))
            write_json(args.json, {"meta": meta, "results": results})

    results = run_attention(args, record)
    run_build(args, record, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
