"""from_mask_mod on the GPU gives the same lists as on the CPU (the range pass on CUDA tensors)."""
import time
import torch
from layouts import sliding_window_global, causal_documents, document_ids, prefix_lm, bigbird_blocks, blocks_mask_mod
from sparse_transformer import SparseLayout

n = 65536
cu, ids = document_ids(n, 2048, 0)
window = torch.tensor([64, 300, 1000, 5])
prefix = torch.tensor([0, 777, 40000])
cases = {
    "swg": (lambda dev: sliding_window_global(256, 64, False), None, None),
    "documents": (lambda dev: causal_documents(ids.to(dev)), None, None),
    "prefix": (lambda dev: prefix_lm(n // 4), None, None),
    "bigbird": (lambda dev: blocks_mask_mod(bigbird_blocks(n, 128, 3, 0).to(dev), 128), None, None),
    "window per head": (lambda dev: (lambda b, h, q, kv, w=window.to(dev): (kv <= q) & (q - kv < w[h])), 4, None),
    "prefix per batch": (lambda dev: (lambda b, h, q, kv, p=prefix.to(dev): (kv <= q) | (kv < p[b])), None, 3),
}
for name, (make, heads, batch) in cases.items():
    lists = {}
    for dev in ("cpu", "cuda"):
        t = time.perf_counter()
        lists[dev] = SparseLayout.from_mask_mod(make(dev), n, heads=heads, batch=batch, block=128, device=dev).lists
        torch.cuda.synchronize()
        print(f"{name} {dev} built in {time.perf_counter() - t:.3f} s", flush=True)
    same = all(torch.equal(a.cpu(), b.cpu()) if isinstance(a, torch.Tensor) else a == b
               for a, b in zip(lists["cpu"], lists["cuda"]))
    print(f"{name}: cuda lists {'EQUAL' if same else 'DIFFER'} to cpu lists", flush=True)
