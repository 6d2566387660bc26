"""Where the host time of one eager attention call goes, layer by layer (one GPU).

    python benchmarks/host_cost.py --n 1024 4096 --json out/host_cost.json

For each length and pattern it measures the CPU time to enqueue each layer of a call
while the GPU is kept busy ahead of it (common.enqueue_ms): one forward launch through
Triton's own path (`kernel[grid](...)`) and as a planned `launch.Launch` (the compiled
kernel launched directly), all the launches of the forward and of the backward (`ops.forward`,
`ops.backward`), the custom ops that torch.compile sees, and the whole forward +
backward through autograd, from C++ (kernels/native.py: the default once a key has run)
and from Python (`native.python_only`); beside them dense causal SDPA. It also gives the GPU time
of each forward + backward replayed as a CUDA graph (no host work at all), so the two
can be compared: a call is host-bound when its host cost exceeds its GPU time.
"""

from __future__ import annotations

import argparse
import math
import sys

import torch
import torch.nn.functional as F
import triton

from common import enqueue_ms, environment, graph_ms, write_json
from sparse_kernels import native, ops
from sparse_transformer import Pattern
from sparse_transformer.layouts import kernel_spec
from sparse_transformer.attention import sparse_attention


def patterns(stride: int, summary: int) -> dict[str, Pattern]:
    return {
        "local": Pattern("local", stride),
        "strided multihead": Pattern("strided", stride, integration="multihead"),
        "strided merged": Pattern("strided", stride, integration="merged"),
        "fixed merged": Pattern("fixed", stride, summary, integration="merged"),
    }


def fwdbwd_native(q, k, v, pattern) -> bool:
    """Whether a call of this key now runs from C++ (its autograd node is the C++ one)."""
    return "PlannedAttention" in sparse_attention(q, k, v, pattern).grad_fn.name()


def us(fn, calls: int) -> float:
    return enqueue_ms(fn, calls) * 1e3


def run(args) -> list[dict]:
    rows = []
    for n in args.n:
        shape = (args.batch, args.heads, n, args.head_dim)
        q, k, v, grad = (torch.randn(shape, device="cuda", dtype=torch.bfloat16) for _ in range(4))
        leaves = [t.requires_grad_() for t in (q, k, v)]
        qd, kd, vd = (t.detach() for t in leaves)
        scale = 1 / math.sqrt(args.head_dim)

        def sdpa():
            torch.autograd.grad(F.scaled_dot_product_attention(q, k, v, is_causal=True), leaves, grad)

        rows.append(dict(n=n, impl="sdpa dense causal", fwdbwd_host_us=us(sdpa, args.calls),
                         fwdbwd_gpu_us=graph_ms(sdpa) * 1e3,
                         fwdbwd_us=triton.testing.do_bench(sdpa, warmup=25, rep=100, return_mode="median") * 1e3))
        print(rows[-1], flush=True)
        for name, pattern in patterns(args.stride, args.summary).items():
            spec = kernel_spec(pattern)
            out, lse = ops.forward(qd, kd, vd, spec, scale)
            even, odd = spec.passes[0]
            tensors, strides = (qd, kd, vd, out, lse), (*qd.stride()[:3], *kd.stride()[:3], *vd.stride()[:3], *out.stride()[:3])
            launch_kwargs = dict(qk_scale=scale * ops.LOG2E, MODE_EVEN=even, MODE_ODD=odd,
                                 CONTINUE=False, **ops._dims(qd, vd), **ops._common_args(spec, n, args.heads, args.heads))
            tiles = dict(BLOCK_M=64, BLOCK_N=64)

            def grid(meta):
                return triton.cdiv(n, meta["BLOCK_M"]), args.batch * args.heads

            def fwdbwd():
                torch.autograd.grad(sparse_attention(q, k, v, pattern), leaves, grad)

            def fwdbwd_python():
                with native.python_only():
                    fwdbwd()

            def launches():
                o, m = ops.forward(qd, kd, vd, spec, scale)
                ops.backward(grad, qd, kd, vd, o, m, spec, scale)

            planned = ops._FORWARD.bind(grid, *strides, tiles=tiles, **launch_kwargs)
            planned(*tensors)  # the first call goes through Triton and keeps the compiled kernel
            params = ops._op_params(spec, scale, ops.Blocks())
            row = dict(
                n=n, impl=name, passes=len(spec.passes),
                triton_launch_us=us(lambda: ops.attention_forward_kernel[grid](*tensors, *strides, **launch_kwargs, **tiles), args.calls),
                planned_launch_us=us(lambda: planned(*tensors), args.calls),
                forward_us=us(lambda: ops.forward(qd, kd, vd, spec, scale), args.calls),
                backward_us=us(lambda: ops.backward(grad, qd, kd, vd, out, lse, spec, scale), args.calls),
                forward_op_us=us(lambda: ops.attention_forward_op(qd, kd, vd, *params), args.calls),
                backward_op_us=us(lambda: ops.attention_backward_op(grad, qd, kd, vd, out, lse, *params), args.calls),
                launches_fwdbwd_us=us(launches, args.calls),
                fwdbwd_python_host_us=us(fwdbwd_python, args.calls),
                fwdbwd_host_us=us(fwdbwd, args.calls),
                fwdbwd_gpu_us=graph_ms(launches) * 1e3,
                fwdbwd_python_us=triton.testing.do_bench(fwdbwd_python, warmup=25, rep=100, return_mode="median") * 1e3,
                fwdbwd_us=triton.testing.do_bench(fwdbwd, warmup=25, rep=100, return_mode="median") * 1e3,
                native=fwdbwd_native(q, k, v, pattern),
            )
            rows.append(row)
            print({key: round(value, 1) if isinstance(value, float) else value for key, value in row.items()}, flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--stride", type=int, default=128)
    parser.add_argument("--summary", type=int, default=32)
    parser.add_argument("--calls", type=int, default=40, help="calls per host-time measurement")
    parser.add_argument("--json", help="write all measurements here")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/host_cost.py needs a CUDA GPU", file=sys.stderr)
        return 2
    rows = run(args)
    if args.json:
        write_json(args.json, {"meta": dict(environment(torch.device("cuda")), args=vars(args)), "results": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
