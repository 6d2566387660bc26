"""Per-config autotune timings of the block kernels on full-block-heavy layouts, D=128 (and 64)."""
import argparse, json, time
import torch, triton
import layouts as rows
import layout_kernels as lk
from sparse_transformer import sparse_attention
import sparse_kernels.ops as ops
import sparse_kernels.block_sparse as bs

p = argparse.ArgumentParser()
p.add_argument("--tag", required=True)
p.add_argument("--d", type=int, nargs="+", default=[128])
p.add_argument("--layouts", nargs="+", default=["documents", "prefix-lm"])
p.add_argument("--out", required=True)
a = p.parse_args()
EXTRA = {"_BLOCK_FORWARD": [(128, 64, 8, 2), (128, 64, 4, 2), (128, 32, 4, 2)],
         "_BLOCK_DQ": [(128, 64, 8, 2), (128, 64, 4, 2), (64, 64, 4, 2)],
         "_BLOCK_DKDV": [(64, 128, 8, 2), (32, 128, 4, 2), (64, 64, 8, 2)]}
for name, extra in EXTRA.items():
    t = getattr(ops, name).tuned
    t.cache_results = False
    t.configs.extend(triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in extra)
dev = torch.device("cuda")
n = 16384
settings = argparse.Namespace(layouts=a.layouts, window=256, globals=64, block=128, document=2048, stride=128,
                              summary=32, heads=8, gqa_heads=32)
res = {}
for d in a.d:
    for case in rows.cases(settings, n, dev):
        for name in EXTRA:
            getattr(ops, name).tuned.cache.clear()
        q, k, v, grad = rows.inputs(4, 8, 8, n, d, dev)
        layout = case["ours"]()
        t0 = time.time()
        kern, wall = lk.kernel_times(lambda q, k, v: sparse_attention(q, k, v, layout), q, k, v, grad)
        timings = {}
        for name in EXTRA:
            t = getattr(ops, name).tuned
            ct = getattr(t, "configs_timings", {}) or {}
            timings[name] = sorted(((str(c), float(v[0] if isinstance(v, (list, tuple)) else v)) for c, v in ct.items()), key=lambda x: x[1])
        compiled = {}
        for kname in ("block_forward_kernel", "block_dq_kernel", "block_dkdv_kernel"):
            for dc in getattr(bs, kname).device_caches.values():
                for kern_ in dc[0].values():
                    c = getattr(getattr(kern_, "src", None), "constants", {})
                    compiled.setdefault(kname, []).append((str({str(x): y for x, y in c.items() if isinstance(y, int)}), kern_.metadata.num_warps, kern_.metadata.num_stages, kern_.n_regs, kern_.n_spills))
        key = f"{a.tag} d{d} {case['name']}"
        res[key] = dict(wall=wall, kernels=kern, timings=timings, chosen=ops.tuned_tiles(), compiled=compiled)
        print(key, f"wall {wall:.3f} ({time.time()-t0:.0f}s)", {x[:22]: round(y, 3) for x, y in kern.items()}, flush=True)
        for name, tl_ in timings.items():
            print("   ", name, " | ".join(f"{c.split(', num_ctas')[0].replace('BLOCK_','')} {t:.3f}" for c, t in tl_[:6]), flush=True)
        json.dump(res, open(a.out, "w"), indent=1)
