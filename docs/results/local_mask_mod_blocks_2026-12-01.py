"""Local (l = 128) as a mask_mod at blocks 64 and 128 against its closed form, each row
tuned afresh (ops.forget_tuning), do_bench medians; then the host cost of eager layout
calls at n = 4096, batch 1."""
import argparse, json, time
import torch
import layouts as rows
from common import enqueue_ms, graph_ms
from sparse_kernels import ops
from sparse_transformer import Pattern, SparseLayout, sparse_attention

p = argparse.ArgumentParser()
p.add_argument("--n", type=int, nargs="+", default=[16384, 65536])
p.add_argument("--d", type=int, nargs="+", default=[64])
p.add_argument("--blocks", type=int, nargs="+", default=[64, 128])
p.add_argument("--out", required=True)
a = p.parse_args()
dev = torch.device("cuda")
res = []
pattern = Pattern("local", 128)
for d in a.d:
    for n in a.n:
        batch = max(1, 65536 // n)
        q, k, v, grad = rows.inputs(batch, 8, 8, n, d, dev)
        cands = {"closed form": pattern.layout(n, heads=8, device=dev)}
        for b in a.blocks:
            cands[f"mask_mod block {b}"] = SparseLayout.from_mask_mod(pattern.mask_mod(), n, block=b, device=dev)
        for name, layout in cands.items():
            ops.forget_tuning()
            t0 = time.time()
            r = rows.timed(lambda q, k, v, layout=layout: sparse_attention(q, k, v, layout), q, k, v, grad)
            r.update(n=n, d=d, batch=batch, layout=name, tiles={kk: t for kk, t in ops.tuned_tiles().items() if t})
            res.append(r)
            print(f"n={n} d={d} {name:<20} fwd {r['fwd_ms']:.3f} fwd+bwd {r['fwdbwd_ms']:.3f} ({time.time()-t0:.0f} s)", flush=True)
            json.dump(res, open(a.out, "w"), indent=1)
        closed = next(r["fwdbwd_ms"] for r in res if r["n"] == n and r["d"] == d and r["layout"] == "closed form")
        for r in res:
            if r["n"] == n and r["d"] == d and r["layout"] != "closed form":
                print(f"   {r['layout']}: {r['fwdbwd_ms'] / closed:.2f}x the closed form", flush=True)

# host cost of eager calls, n = 4096, batch 1, D = 64 (GPU kept busy ahead)
n = 4096
q, k, v, grad = rows.inputs(1, 8, 8, n, 64, dev)
leaves = [q, k, v]
host = []
cands = {"local closed form": Pattern("local", 128).layout(n, heads=8, device=dev),
         "longformer mask_mod": SparseLayout.from_mask_mod(rows.sliding_window_global(256, 64, False), n, block=128, device=dev),
         "prefix-lm mask_mod": SparseLayout.from_mask_mod(rows.prefix_lm(n // 4), n, block=128, device=dev),
         "sdpa causal": None}
for name, layout in cands.items():
    if layout is None:
        fn = lambda: torch.autograd.grad(torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True), leaves, grad)
    else:
        fn = lambda layout=layout: torch.autograd.grad(sparse_attention(q, k, v, layout), leaves, grad)
    for _ in range(3):
        fn()
    r = dict(layout=name, n=n, host_ms=enqueue_ms(fn, 20), graph_ms=graph_ms(fn))
    if layout is not None:
        r["grad_fn"] = sparse_attention(q, k, v, layout).grad_fn.name()
    host.append(r)
    print(f"host n={n} {name:<22} host {r['host_ms']*1e3:.0f} us, GPU {r['graph_ms']*1e3:.0f} us {r.get('grad_fn', '')}", flush=True)
json.dump(dict(rows=res, host=host), open(a.out, "w"), indent=1)
