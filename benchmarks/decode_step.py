"""Where a decoding step's time goes, on one GPU: the kernels of one step as the sampler
replays it, and the fused decode kernel alone at each split setting.

    python benchmarks/decode_step.py --experiment enwik8 --batch 8 --json out/decode_step_enwik8.json

Step: the experiment's model (random weights), decoding as `sampling.generate` does on
CUDA (bf16 autocast, the Linear weights cast once, a bf16 cache, `acceleration.for_decoding`
unless --no-compile, the step captured as a CUDA graph), timed over 50 replays, then 3
replays under the profiler: kernels per step, and per kernel name its count and time.

Decode kernel: `decode_attention` at the step's shapes (batch, heads, cache slots, keys
read per query, head dims of the experiment's last layer), timed with
triton.testing.do_bench_cudagraph (a graph, so that launch time does not hide the
kernel's), for each (SPLIT_MIN_KEYS, TARGET_PROGRAMS) of --splits: the constants from
which `decode_splits` picks the number of key ranges.
"""

from __future__ import annotations

import argparse
import collections
import time

import torch
import triton
from torch.profiler import ProfilerActivity, profile

import sparse_kernels.decode as decode
from sparse_transformer import acceleration
from sparse_transformer.config import load_experiment
from sparse_transformer.model import DecodingCache
from sparse_transformer.sampling import CUDAGraphDecoder, matmul_weights_cast
from common import autocast, environment, fail, run_benchmark, write_json
from sampling import build_model

SPLIT_SETTINGS = ["256,512", "128,1024", "128,2048", "64,2048", "64,4096"]


def step_profile(model, batch: int, device: torch.device, replays: int = 50) -> dict:
    """ms per replayed step, and the kernels of one step by name: count and microseconds."""
    cache = DecodingCache(model, batch, device, torch.bfloat16)
    tokens = torch.zeros(batch, dtype=torch.long, device=device)
    with torch.no_grad(), autocast(device), matmul_weights_cast(model, torch.bfloat16):
        step = CUDAGraphDecoder(model, cache, tokens)
        for _ in range(20):  # the cache must not fill: the replays stay below the context
            step(tokens)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(replays):
            step(tokens)
        torch.cuda.synchronize()
        step_ms = (time.perf_counter() - start) / replays * 1e3
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                step(tokens)
            torch.cuda.synchronize()
    kernels = collections.defaultdict(lambda: [0, 0.0])
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            kernels[event.name][0] += 1
            kernels[event.name][1] += event.device_time
    ranked = sorted(kernels.items(), key=lambda item: -item[1][1])
    return dict(step_ms=step_ms, kernels_per_step=sum(c for c, _ in kernels.values()) / 3,
                kernel_us_per_step=sum(t for _, t in kernels.values()) / 3,
                kernels=[dict(name=name, per_step=c / 3, us_per_step=t / 3) for name, (c, t) in ranked])


def decode_kernel_times(model, batch: int, device: torch.device, settings: list[str]) -> list[dict]:
    """decode_attention alone at the model's decoding shapes, for each split setting."""
    config, layer = model.config, model.config.layers - 1
    cache = DecodingCache(model, batch, device, torch.bfloat16)
    slots, valid = cache.reads(layer)
    key_cache, value_cache = torch.randn_like(cache.keys[layer]), torch.randn_like(cache.values[layer])
    q = torch.randn(batch, config.heads, key_cache.shape[-1], device=device, dtype=torch.bfloat16)
    kept = decode.SPLIT_MIN_KEYS, decode.TARGET_PROGRAMS
    rows = []
    try:
        for setting in settings:
            decode.SPLIT_MIN_KEYS, decode.TARGET_PROGRAMS = (int(x) for x in setting.split(","))
            call = lambda: decode.decode_attention(q, key_cache, value_cache, slots, valid, 0.125)  # noqa: E731
            call()
            us = triton.testing.do_bench_cudagraph(call, rep=50) * 1e3
            rows.append(dict(split_min_keys=decode.SPLIT_MIN_KEYS, target_programs=decode.TARGET_PROGRAMS,
                             splits=decode.decode_splits(batch * config.heads, slots.shape[1]), us=us))
    finally:
        decode.SPLIT_MIN_KEYS, decode.TARGET_PROGRAMS = kept
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="params.yaml")
    parser.add_argument("--experiment", default="cifar10")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="leave the step uncompiled")
    parser.add_argument("--splits", nargs="*", default=SPLIT_SETTINGS, metavar="MIN_KEYS,PROGRAMS",
                        help="split settings at which to time the decode kernel alone")
    parser.add_argument("--top", type=int, default=12, help="kernels printed (all go to --json)")
    parser.add_argument("--json", help="write the measurements here")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        fail("CUDA is not available: this benchmark profiles a decoding step replayed as a CUDA graph, on a GPU")
    device = torch.device("cuda")
    experiment = load_experiment(args.config, args.experiment, args.overrides)
    model = build_model(experiment.model, device, seed=0)
    if args.compile:
        acceleration.for_decoding(model)
    step = step_profile(model, args.batch, device)
    print(f"{args.experiment}, batch {args.batch}, compiled {args.compile}: {step['step_ms']:.3f} ms per replayed step, "
          f"{step['kernels_per_step']:.0f} kernels ({step['kernel_us_per_step'] / 1e3:.3f} ms of kernel time)")
    for kernel in step["kernels"][:args.top]:
        print(f"  {kernel['per_step']:7.1f} per step {kernel['us_per_step']:9.1f} us  {kernel['name'][:100]}")
    kernel_rows = decode_kernel_times(model, args.batch, device, args.splits)
    for row in kernel_rows:
        print(f"decode kernel, split_min_keys {row['split_min_keys']:4} target_programs {row['target_programs']:5} "
              f"({row['splits']:2} splits): {row['us']:7.2f} us")
    if args.json:
        write_json(args.json, dict(meta=dict(environment(device), args=vars(args)), step=step, decode_kernel=kernel_rows))
    return 0


if __name__ == "__main__":
    run_benchmark(main)
