"""from_mask_mod build times (ms, median of do_bench after a first call) for the tree on PYTHONPATH."""
import json, sys
import torch, triton
from sparse_transformer import SparseLayout
from layouts import document_ids, sliding_window_global, causal_documents, prefix_lm, blocks_mask_mod, bigbird_blocks

tag = sys.argv[1]
device = torch.device("cuda")
for n in (65536, 262144):
    cu, ids = document_ids(n, 2048, seed=0)
    mods = {"sliding window + global": sliding_window_global(256, 64, causal=False),
            "documents": causal_documents(ids.to(device)),
            "prefix-lm": prefix_lm(n // 4),
            "bigbird": blocks_mask_mod(bigbird_blocks(n, 128, 3, seed=0).to(device), 128)}
    for name, mod in mods.items():
        fn = lambda: SparseLayout.from_mask_mod(mod, n, block=128, device=device)
        fn(); torch.cuda.synchronize()
        ms = triton.testing.do_bench(fn, warmup=2, rep=20, return_mode="median")
        print(json.dumps(dict(tag=tag, n=n, build=name, ms=round(ms, 3))), flush=True)
