"""Table 2 of the paper, end to end: one training step of a paper model with dense,
strided and fixed attention, same batch, on one device.

    python benchmarks/train_step.py --experiment enwik8 --batch 1 --json out/table2_enwik8.json
    python benchmarks/train_step.py --experiment cifar10 --batch 4 --json out/table2_cifar10.json

A step is forward, backward, gradient clipping and a fused AdamW update, with bf16
autocast on CUDA and the experiment's recomputation setting (on for the paper's
models). Every pattern's model is built and warmed up first; then the timed steps run
in rounds with the patterns taking turns (`--rounds` of `--steps` each, the median over
all), so that a drift in the host's speed falls on every pattern alike. `--compile`
also runs each residual block through torch.compile (acceleration.for_training;
`--compile-mode reduce-overhead` adds CUDA graphs), timed after the compiling warmup
steps; `--profile DIR` writes one step's operator tables per pattern (by device and by
host time) and records its kernel count, host events and the share of the step the GPU
was busy. The model and hyperparameters come from params.yaml (`--set` overrides, as on
the command line); only the pattern changes between rows: dense uses PyTorch's SDPA,
strided and fixed the Triton kernels with the experiment's stride (fixed: its summary
width, 32 where the experiment has none).
Prints tokens per second, peak memory and the dense/sparse time ratios beside the
paper's; `--json` keeps everything.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Callable

import torch

from common import add_compile_arguments, autocast, for_training, environment, run_benchmark, synchronize, write_json
from sparse_transformer.config import load_experiment
from sparse_transformer.model import SparseTransformer
from sparse_transformer.patterns import Pattern
from sparse_transformer.training import parameter_groups

# Table 2 of the paper: seconds per iteration (unit not given), dense / fixed / strided.
PAPER_TIMES = {"enwik8": {"dense": 1.31, "fixed": 0.55, "strided": 0.35},
               "cifar10": {"dense": 0.54, "fixed": 0.47, "strided": 0.38}}


def model_config(model, kind: str):
    """The experiment's model with the pattern of Table 2's row `kind`."""
    pattern = model.pattern
    integration = pattern.integration if kind == pattern.kind else "merged"
    if kind == "dense":
        return dataclasses.replace(model, pattern=Pattern("dense", pattern.stride), attention="sdpa")
    summary = (pattern.summary or 32) if kind == "fixed" else None
    attention = "triton" if model.attention in ("auto", "sdpa") else model.attention
    return dataclasses.replace(model, pattern=Pattern(kind, pattern.stride, summary, integration), attention=attention)


def training_step(model: SparseTransformer, batch: torch.Tensor, device: torch.device) -> Callable[[], None]:
    """One training step on `batch` as a closure: forward, backward, clipping, fused AdamW."""
    optimizer = torch.optim.AdamW(parameter_groups(model, 0.01), lr=1e-4, fused=device.type == "cuda")
    inputs, targets = model.inputs_and_targets(batch)

    def step():
        with autocast(device):
            loss = model.loss(inputs, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def step_seconds(step: Callable[[], None], steps: int, device: torch.device) -> list[float]:
    """Seconds of each of `steps` calls of `step`, timed on the device (CUDA events) or the host."""
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            stop.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(stop) / 1000)
        else:
            began = time.perf_counter()
            step()
            times.append(time.perf_counter() - began)
    return times


def profile_step(step: Callable[[], None], device: torch.device, path: Path) -> dict:
    """Run one (warm) step under torch.profiler and write its operator tables to `path`: by
    device time (what the GPU spends the step on) and by host time (what the host does
    meanwhile). Returns the step's wall time, its kernels' time and count, the operator
    events the host recorded, and the share of the wall time the GPU spent running
    kernels: well under 1, the step waits on the host (launches, Python), not on
    arithmetic. The profiler's own cost lowers the share a little."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        began = time.perf_counter()
        step()
        synchronize(device)
        wall_s = time.perf_counter() - began
    events = prof.events()
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    kernel_s = sum(e.device_time for e in kernels) / 1e6
    table = prof.key_averages()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("by device time\n" + table.table(sort_by="self_device_time_total", row_limit=40)
                    + "\n\nby host time\n" + table.table(sort_by="self_cpu_time_total", row_limit=40))
    return dict(profiled_step_s=wall_s, kernel_s=kernel_s, kernels=len(kernels),
                host_events=len(events) - len(kernels),
                gpu_busy_share=kernel_s / wall_s if device.type == "cuda" else None)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="params.yaml")
    parser.add_argument("--experiment", default="enwik8")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    parser.add_argument("--patterns", nargs="+", default=["dense", "fixed", "strided"], choices=["dense", "fixed", "strided"])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per pattern and round")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of timed steps, the patterns taking turns (the median is over all)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_compile_arguments(parser)
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="also profile one step per pattern: DIR/<pattern>.txt, and the GPU-busy share in the rows")
    parser.add_argument("--json", help="write the measurements here")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.rounds < 1:
        parser.error(f"--steps {args.steps} --rounds {args.rounds}: each must be at least 1 (a median needs a timed step)")
    device = torch.device(args.device)
    experiment = load_experiment(args.config, args.experiment, tuple(args.overrides))
    context = experiment.model.context
    generator = torch.Generator().manual_seed(0)
    batch = torch.randint(0, 256, (args.batch, context + (experiment.model.image_shape is None)), generator=generator)

    # Every pattern's model is built and warmed up first; the timed steps then run in
    # rounds, each round `steps` steps of every pattern in turn. The host's speed drifts by
    # up to 30% over tens of seconds on a shared machine (docs/benchmarks.md), and an eager
    # step is bound by the host: rounds put that drift on every pattern alike.
    rows, steps = [], {}
    for kind in args.patterns:
        config = model_config(experiment.model, kind)
        torch.manual_seed(0)
        baseline = torch.cuda.memory_allocated() if device.type == "cuda" else 0  # the other patterns' models
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        model = for_training(SparseTransformer(config).to(device), args)
        steps[kind] = training_step(model, batch.to(device), device)
        for _ in range(args.warmup):
            steps[kind]()
        synchronize(device)
        rows.append(dict(pattern=kind, describe=config.pattern.describe(), attention=config.attention,
                         compiled=args.compile, compile_mode=args.compile_mode if args.compile else None,
                         params=model.num_params(), batch=args.batch, context=context, steps_s=[],
                         peak_memory_gb=(torch.cuda.max_memory_allocated() - baseline) / 2**30
                         if device.type == "cuda" else None))
    for _ in range(args.rounds):
        for row in rows:
            row["steps_s"] += step_seconds(steps[row["pattern"]], args.steps, device)
    for row in rows:
        kind, seconds = row["pattern"], sorted(row["steps_s"])[len(row["steps_s"]) // 2]
        row.update(step_s=seconds, tokens_per_s=args.batch * context / seconds)
        if args.profile:
            row.update(profile_step(steps[kind], device, args.profile / f"{kind}.txt"))
        print(f"{kind:<8} {row['describe']:<28} {seconds * 1000:9.1f} ms/step {row['tokens_per_s']:10.0f} tokens/s"
              + (f"  peak {row['peak_memory_gb']:.1f} GiB" if row["peak_memory_gb"] is not None else "")
              + (f"  GPU busy {100 * row['gpu_busy_share']:.0f}%" if row.get("gpu_busy_share") is not None else "")
              + (f"  profiled: {row['kernels']} kernels, {row['host_events']} host events" if "kernels" in row else ""),
              flush=True)

    times = {row["pattern"]: row["step_s"] for row in rows}
    paper = PAPER_TIMES.get(args.experiment, {})
    if "dense" in times:
        for kind in ("fixed", "strided"):
            if kind in times:
                ours = times["dense"] / times[kind]
                theirs = f"{paper['dense'] / paper[kind]:.2f}x" if kind in paper else "-"
                print(f"dense / {kind}: {ours:.2f}x here, {theirs} in the paper")
    if args.json:
        write_json(args.json, {"meta": dict(environment(device), args=vars(args)), "rows": rows})
    return 0


if __name__ == "__main__":
    run_benchmark(main)
