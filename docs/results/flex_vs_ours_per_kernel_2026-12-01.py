"""Per-kernel times of prefix-LM and documents, ours vs Flex, D=64 and 128, plus regs/spills."""
import argparse, json, sys
import torch
import layouts as rows
import layout_kernels as lk
from sparse_transformer import sparse_attention
import sparse_kernels.block_sparse as bs
from sparse_kernels.ops import tuned_tiles

p = argparse.ArgumentParser()
p.add_argument("--n", type=int, default=16384)
p.add_argument("--d", type=int, nargs="+", default=[64, 128])
p.add_argument("--layouts", nargs="+", default=["prefix-lm", "documents"])
p.add_argument("--flex", action="store_true")
p.add_argument("--out", required=True)
a = p.parse_args()
dev = torch.device("cuda")
settings = argparse.Namespace(layouts=a.layouts, window=256, globals=64, block=128, document=2048, stride=128,
                              summary=32, heads=8, gqa_heads=32)
batch = max(1, 65536 // a.n)
res = {}


def compiled_info():
    info = {}
    for name in ("block_forward_kernel", "block_dq_kernel", "block_dkdv_kernel"):
        fn = getattr(bs, name)
        for dc in fn.device_caches.values():
            for key, kern in dc[0].items():
                consts = getattr(getattr(kern, "src", None), "constants", {})
                c = {str(k): v for k, v in consts.items() if isinstance(v, (int, bool))}
                info.setdefault(name, []).append(dict(regs=kern.n_regs, spills=kern.n_spills,
                    warps=kern.metadata.num_warps, stages=kern.metadata.num_stages, shared=kern.metadata.shared,
                    consts={k: v for k, v in c.items()}))
    return info


for d in a.d:
    for case in rows.cases(settings, a.n, dev):
        q, k, v, grad = rows.inputs(batch, 8, 8, a.n, d, dev)
        layout = case["ours"]()
        kern, wall = lk.kernel_times(lambda q, k, v: sparse_attention(q, k, v, layout), q, k, v, grad)
        res[f"d{d} {case['name']} ours"] = dict(wall=wall, kernels=kern)
        print(d, case["name"], "ours", f"{wall:.3f}", {k_[:40]: round(t, 3) for k_, t in kern.items()}, flush=True)
        if a.flex:
            fn = rows.flex(case["mask_mod"], a.n, dev)
            kern, wall = lk.kernel_times(fn, q, k, v, grad)
            res[f"d{d} {case['name']} flex"] = dict(wall=wall, kernels=kern)
            print(d, case["name"], "flex", f"{wall:.3f}", {k_[:40]: round(t, 3) for k_, t in kern.items()}, flush=True)
    # dense causal SDPA as the rate reference
    q, k, v, grad = rows.inputs(batch, 8, 8, a.n, d, dev)
    sd = lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    kern, wall = lk.kernel_times(sd, q, k, v, grad)
    res[f"d{d} sdpa causal"] = dict(wall=wall, kernels=kern)
    print(d, "sdpa", f"{wall:.3f}", {k_[:40]: round(t, 3) for k_, t in kern.items()}, flush=True)
res["tiles"] = tuned_tiles()
res["compiled"] = compiled_info()
print(json.dumps(res["tiles"], indent=1))
print(json.dumps(res["compiled"], indent=1))
json.dump(res, open(a.out, "w"), indent=1)
