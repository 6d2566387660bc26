"""Ours (carried list addresses) against FlexAttention in one process, n = 16,384, batch 4,
H = 8, bf16, forward and forward+backward (do_bench medians via layouts.timed). The block
kernels' tiles are autotuned afresh for every row (the autotune key does not include the
layout, so without this every row would run the first row's tiles)."""
import argparse, json, time
import torch
import layouts as rows
import sparse_kernels.ops as ops
from sparse_transformer import sparse_attention

p = argparse.ArgumentParser()
p.add_argument("--d", type=int, nargs="+", default=[128, 64])
p.add_argument("--layouts", nargs="+", default=["prefix-lm", "documents", "longformer", "bigbird"])
p.add_argument("--out", required=True)
a = p.parse_args()
TUNED = [ops._BLOCK_FORWARD, ops._BLOCK_DQ, ops._BLOCK_DKDV]
for launcher in TUNED:
    launcher.tuned.cache_results = False
dev = torch.device("cuda")
n, batch = 16384, 4
settings = argparse.Namespace(layouts=a.layouts, window=256, globals=64, block=128, document=2048, stride=128,
                              summary=32, heads=8, gqa_heads=32)
res = []
for d in a.d:
    for case in rows.cases(settings, n, dev):
        for launcher in TUNED:
            launcher.tuned.cache.clear()
        q, k, v, grad = rows.inputs(batch, 8, 8, n, d, dev)
        layout = case["ours"]()
        t0 = time.time()
        ours = rows.timed(lambda q, k, v: sparse_attention(q, k, v, layout), q, k, v, grad)
        tiles = {name: launcher.chosen_tiles() for name, launcher in zip(("forward", "dq", "dkdv"), TUNED)}
        print(f"d={d} {case['name']:<24} ours fwd {ours['fwd_ms']:.3f} fwd+bwd {ours['fwdbwd_ms']:.3f} ({time.time() - t0:.0f} s)", flush=True)
        row = dict(d=d, layout=case["name"], ours=ours, tiles=tiles)
        res.append(row)
        json.dump(res, open(a.out, "w"), indent=1)
        try:
            fn = rows.flex(case["mask_mod"], n, dev)
            flex = rows.timed(fn, q, k, v, grad)
            row["flex"] = flex
            print(f"d={d} {case['name']:<24} flex fwd {flex['fwd_ms']:.3f} fwd+bwd {flex['fwdbwd_ms']:.3f}  "
                  f"flex/ours {flex['fwdbwd_ms'] / ours['fwdbwd_ms']:.2f}x", flush=True)
        except Exception as err:
            row["flex_error"] = repr(err)[:300]
            print("flex failed", repr(err)[:300], flush=True)
        json.dump(res, open(a.out, "w"), indent=1)
