"""fwd and fwd+bwd (autotuned) of one tree, per case, with the autotuner's time of each chosen kernel config."""
import json, os, sys
import torch
from triton.runtime import autotuner
from sparse_transformer import Pattern, SparseLayout, sparse_attention
from layouts import prefix_lm, document_ids
from attention import time_ms

tag = sys.argv[1]
OUT = os.environ["OUT"]
records = []
orig = autotuner.Autotuner._bench
def bench(self, *args, config, **meta):
    t = orig(self, *args, config=config, **meta)
    nargs = {**self.nargs, **meta}
    records.append((self.base_fn.__name__, tuple(str(nargs.get(k)) for k in self.keys), str(config), t[0]))
    return t
autotuner.Autotuner._bench = bench

n, batch, H = 16384, 4, 8
dev = torch.device("cuda")
cu, _ = document_ids(n, 2048, seed=0)
cases = {
    "dense": lambda: Pattern("dense", 1),
    "fixed merged": lambda: Pattern("fixed", 128, 32, integration="merged"),
    "strided merged": lambda: Pattern("strided", 128, integration="merged"),
    "strided multihead": lambda: Pattern("strided", 128, integration="multihead"),
    "local": lambda: Pattern("local", 128),
    "prefix-lm": lambda: SparseLayout.from_mask_mod(prefix_lm(n // 4), n, block=128, device=dev),
    "documents": lambda: SparseLayout.packed(cu, Pattern("dense", 1), block=128, device=dev),
}
rows = []
for item in sys.argv[2:]:
    name, D = item.split(":")
    D = int(D)
    g0 = torch.Generator(device="cuda").manual_seed(0)
    q, k, v, g = (torch.randn(batch, H, n, D, device=dev, dtype=torch.bfloat16, generator=g0) for _ in range(4))
    leaves = [t.requires_grad_() for t in (q, k, v)]
    p = cases[name]()
    start = len(records)
    fn = lambda: sparse_attention(q, k, v, p)
    f = time_ms(fn, False, None, leaves)
    fb = time_ms(fn, True, g, leaves)
    chosen = {}
    for kern, key, cfg, t in records[start:]:
        if (kern, key) not in chosen or t < chosen[(kern, key)][1]:
            chosen[(kern, key)] = (cfg, round(t, 4))
    row = dict(tag=tag, case=item, fwd_ms=round(f, 4), fwdbwd_ms=round(fb, 4),
               kernels=[[k[0], "/".join(k[1][3:]), *c] for k, c in chosen.items()])
    rows.append(row)
    print(json.dumps(row), flush=True)
json.dump(rows, open(f"{OUT}/compare_{tag}.json", "w"), indent=1)
