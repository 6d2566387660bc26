"""Host cost of eager calls through the public API (any version of the tree): min of repeats."""
import math, sys, torch, json
import torch.nn.functional as F
from common import enqueue_ms
from sparse_kernels import ops
from sparse_transformer import Pattern
from sparse_transformer.attention import sparse_attention
from sparse_transformer.layouts import kernel_spec
tag = sys.argv[1]
rows = []
x = torch.zeros(16, device="cuda")
rows.append(dict(tag=tag, impl="tiny add_ (1 launch)", host_us=enqueue_ms(lambda: x.add_(1), 200, 7) * 1e3))
rows.append(dict(tag=tag, impl="sleep(0) (1 launch)", host_us=enqueue_ms(lambda: torch.cuda._sleep(0), 200, 7) * 1e3))
for n in (1024, 4096):
    q, k, v, g = (torch.randn(1, 8, n, 64, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    leaves = [t.requires_grad_() for t in (q, k, v)]
    qd, kd, vd = (t.detach() for t in leaves)
    rows.append(dict(tag=tag, n=n, impl="sdpa", host_us=enqueue_ms(lambda: torch.autograd.grad(F.scaled_dot_product_attention(q, k, v, is_causal=True), leaves, g), 40, 7) * 1e3))
    for name, p in {"local": Pattern("local", 128), "strided multihead": Pattern("strided", 128, integration="multihead"),
                    "strided merged": Pattern("strided", 128, integration="merged"), "fixed merged": Pattern("fixed", 128, 32, integration="merged")}.items():
        spec = kernel_spec(p)
        def launches():
            o, m = ops.forward(qd, kd, vd, spec, 0.125)
            ops.backward(g, qd, kd, vd, o, m, spec, 0.125)
        fwdbwd = lambda: torch.autograd.grad(sparse_attention(q, k, v, p), leaves, g)
        rows.append(dict(tag=tag, n=n, impl=name, launches_us=enqueue_ms(launches, 40, 7) * 1e3,
                         host_us=enqueue_ms(fwdbwd, 40, 7) * 1e3))
for r in rows:
    print(json.dumps({k: (round(v, 1) if isinstance(v, float) else v) for k, v in r.items()}), flush=True)
