"""Every kernel's timing per tile config (the autotuner's own do_bench), with an extended
candidate list, for closed-form patterns and block layouts; then fwd+bwd with the winners."""
import json, os, sys, time
import torch, triton
from triton.runtime import autotuner
from sparse_kernels import ops
from sparse_kernels.launch import Launcher
from sparse_transformer import Pattern, SparseLayout, sparse_attention
from layouts import prefix_lm
from attention import time_ms

OUT = os.environ["OUT"]
EXTRA = {
    "forward": [(128, 128, 4, 3), (128, 64, 4, 4), (128, 128, 8, 2), (64, 128, 4, 3), (128, 64, 8, 4)],
    "dq": [(128, 64, 4, 3), (128, 128, 8, 3), (64, 128, 4, 3), (128, 64, 8, 2)],
    "dkdv": [(128, 128, 8, 3), (64, 128, 4, 3), (128, 64, 8, 3), (128, 128, 8, 2)],
}
OLD = {kind: set(ops._SHAPES[kind]) for kind in EXTRA}
ALL = {kind: list(dict.fromkeys(ops._SHAPES[kind] + EXTRA[kind])) for kind in EXTRA}

def pruner(kind, block_sparse):
    def prune(configs, named_args, **kwargs):
        qk, vp = ops._launch_value("QK_PAD", named_args, kwargs), ops._launch_value("V_PAD", named_args, kwargs)
        item = named_args["Q"].element_size()
        kept = [c for c in configs if ops.shared_bytes(kind, c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_stages, qk, vp, item) <= ops.SHARED_MEMORY]
        if block_sparse:
            b = ops._launch_value("BLOCK", named_args, kwargs)
            kept = [c for c in kept if b % c.kwargs["BLOCK_M"] == 0 and b % c.kwargs["BLOCK_N"] == 0]
        return kept
    return prune

def configs(kind):
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in ALL[kind]]

ops._FORWARD = Launcher(ops.attention_forward_kernel, configs("forward"), ops._KEY, ["O", "LSE"], pruner("forward", False))
ops._DKDV = Launcher(ops.attention_dkdv_kernel, configs("dkdv"), ops._KEY, ["DK", "DV"], pruner("dkdv", False))
ops._DQ = Launcher(ops.attention_dq_kernel, configs("dq"), ops._KEY, ["DQ"], pruner("dq", False))
ops._BLOCK_FORWARD = Launcher(ops.block_forward_kernel, configs("forward"), ops._BLOCK_KEY, prune=pruner("forward", True))
ops._BLOCK_DKDV = Launcher(ops.block_dkdv_kernel, configs("dkdv"), ops._BLOCK_KEY, prune=pruner("dkdv", True))
ops._BLOCK_DQ = Launcher(ops.block_dq_kernel, configs("dq"), ops._BLOCK_KEY, prune=pruner("dq", True))

records = []
current = {}
orig = autotuner.Autotuner._bench
def bench(self, *args, config, **meta):
    t = orig(self, *args, config=config, **meta)
    name = self.base_fn.__name__
    kind = "forward" if "forward" in name else ("dkdv" if "dkdv" in name else "dq")
    shape = (config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"], config.num_warps, config.num_stages)
    nargs = {**self.nargs, **meta}
    key = [str(nargs.get(k)) for k in self.keys]
    records.append(dict(case=current.get("case"), kernel=name, key=key, config=list(shape), old=shape in OLD[kind],
                        ms=t[0] if isinstance(t, (list, tuple)) else t))
    return t
autotuner.Autotuner._bench = bench

def fwdbwd(fn, q, k, v, g):
    leaves = [q, k, v]
    return time_ms(lambda: fn(q, k, v), False, None, leaves), time_ms(lambda: fn(q, k, v), True, g, leaves)

n, batch, H = 16384, 4, 8
dev = torch.device("cuda")
cases = {
    "dense": lambda: Pattern("dense", 1),
    "fixed merged": lambda: Pattern("fixed", 128, 32, integration="merged"),
    "prefix-lm": lambda: SparseLayout.from_mask_mod(prefix_lm(n // 4), n, block=128, device=dev),
}  # the cases of the 2026-11-30 sweep
summary = []
for item in sys.argv[1:]:
        name, D = item.split(":")
        D, make = int(D), cases[name]
        current["case"] = f"{name} D={D}"
        g0 = torch.Generator(device="cuda").manual_seed(0)
        q, k, v, g = (torch.randn(batch, H, n, D, device=dev, dtype=torch.bfloat16, generator=g0) for _ in range(4))
        for t in (q, k, v):
            t.requires_grad_()
        p = make()
        start = time.time()
        f, fb = fwdbwd(lambda q, k, v: sparse_attention(q, k, v, p), q, k, v, g)
        row = dict(case=current["case"], fwd_ms=f, fwdbwd_ms=fb, tune_s=time.time() - start)
        # per kernel: best old vs best overall
        for kern in sorted({r["kernel"] for r in records if r["case"] == current["case"]}):
            for key in sorted({tuple(r["key"]) for r in records if r["case"] == current["case"] and r["kernel"] == kern}):
                rs = [r for r in records if r["case"] == current["case"] and r["kernel"] == kern and tuple(r["key"]) == key]
                old = min((r for r in rs if r["old"]), key=lambda r: r["ms"], default=None)
                best = min(rs, key=lambda r: r["ms"])
                row.setdefault("kernels", []).append(dict(kernel=kern, key=list(key), old_best=old and (old["config"], round(old["ms"], 4)),
                                                          best=(best["config"], round(best["ms"], 4))))
        summary.append(row)
        print(json.dumps(row), flush=True)
        json.dump(dict(summary=summary, records=records), open(f"{OUT}/tile_sweep.json", "w"))
