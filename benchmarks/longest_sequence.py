r"""The longest sequence one GPU trains on: a full training step of the paper's
1,048,576-sample audio model (3M parameters, strided), then doubling n until a step
does not fit (issue 7, "Scale on GPUs").

    python benchmarks/longest_sequence.py --json out/longest_sequence_h200.json

The model is params.yaml's audio section with THREE_M_MODEL below applied first and any
`--set` after it (as in train_step.py, e.g. `--set model.pattern.integration=multihead`):
14 layers, d_model 128, 2 heads of 64, recomputation on, strided (merged) through the
Triton kernels; 3.10M parameters at n = 1,048,576 (2.81M without the embeddings). The
paper (section 7.4) gives only "3M" and that it was the largest model fitting one 16 GB GPU at this length,
not its depth or width (as for the 152M model at 65,536). Narrow and deep is what fits:
with recomputation a step holds the residual stream of every layer plus the activations
of one block, and the latter grow with d_model; 3 layers of 256 have as many parameters
but twice the block activations. Heads of 64 are the size the kernels are measured at.

The step is train_step.py's (forward, backward, clipping, fused AdamW, bf16 autocast) on
one sequence of n samples. n starts at 1,048,576 (87 s of 12 kHz audio) with l = 1024 =
sqrt(n) and doubles, l following the power of two nearest sqrt(n) (1024, 1024, 2048,
2048, ...) and the position embedding's tables (n / l rows and l columns) with it, until
a step raises torch.OutOfMemoryError or n passes --max-n. Prints parameters, time per
step and peak memory (torch.cuda.max_memory_allocated, logits included) per n, then the
longest n that fits; `--json` keeps it all.

A smoke run on the CPU (tiny sizes; memory is only measured on CUDA, so it reads None):

    TRITON_INTERPRET=1 python benchmarks/longest_sequence.py --device cpu --min-n 256 --max-n 512 \
        --set model.layers=2 --set model.d_model=64
"""

from __future__ import annotations

import argparse
import dataclasses
import os

# memory first: it configures the CUDA allocator before torch is imported.
from memory import add_step_arguments, at_length, checked_step_arguments, count_params, doublings, measure_step, outcome

from common import device_or_exit, environment, run_benchmark, write_json

import torch
from sparse_transformer.config import ModelConfig, load_experiment

THREE_M_MODEL = ("model.layers=14", "model.d_model=128", "model.heads=2", "model.recompute=true",
                 "model.pattern.kind=strided", "model.pattern.integration=merged")


def search(base: ModelConfig, args: argparse.Namespace, device: torch.device, sample_rate: int) -> list[dict]:
    """One row per n from --min-n, doubling until the first n that does not fit (included) or --max-n."""
    rows = []
    for n in doublings(args.min_n, args.max_n):
        config = at_length(base, n)
        row = dict(n=n, stride=config.pattern.stride, pattern=config.pattern.describe(),
                   attention=config.attention, audio_s=n / sample_rate, params=count_params(config), batch=1,
                   **measure_step(config, 1, args.steps, args.warmup, device))
        row["tokens_per_s"] = n / row["step_s"] if row["fits"] else None
        rows.append(row)
        print(f"n = {n:>11,}  l = {row['stride']:<5} {row['params'] / 1e6:.2f}M params  {outcome(row)}", flush=True)
        if not row["fits"]:
            break
    return rows


def markdown_table(rows: list[dict]) -> str:
    lines = ["| n | audio | l | params | time per step | tokens/s | peak memory |", "|---" * 7 + "|"]
    for row in rows:
        if row["fits"]:
            peak = "-" if row["peak_gib"] is None else f"{row['peak_gib']:.2f} GiB"
            measured = f"{row['step_s']:.3f} s | {row['tokens_per_s']:,.0f} | {peak}"
        else:
            measured = "does not fit | | "
        lines.append(f"| {row['n']:,} | {row['audio_s']:,.1f} s | {row['stride']} | "
                     f"{row['params'] / 1e6:.2f}M | {measured} |")
    return "\n".join(lines)


def longest(rows: list[dict]) -> str:
    fitting = [row for row in rows if row["fits"]]
    if not fitting:
        return f"not even n = {rows[0]['n']:,} fits"
    best = fitting[-1]
    peak = "" if best["peak_gib"] is None else f", peak {best['peak_gib']:.2f} GiB"
    ended = f"n = {rows[-1]['n']:,} does not fit" if not rows[-1]["fits"] else "stopped at --max-n, not out of memory"
    return (f"longest that fits: n = {best['n']:,} ({best['audio_s']:,.1f} s of audio), "
            f"{best['step_s']:.3f} s per step{peak}; {ended}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="params.yaml")
    parser.add_argument("--experiment", default="audio")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="applied after THREE_M_MODEL")
    parser.add_argument("--min-n", type=int, default=1 << 20)
    parser.add_argument("--max-n", type=int, default=1 << 26, help="stop here if memory has not run out")
    add_step_arguments(parser)
    return checked_step_arguments(parser, parser.parse_args(argv))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    experiment = load_experiment(args.config, args.experiment, THREE_M_MODEL + tuple(args.overrides))
    base = experiment.model
    device = device_or_exit(args.device, at_length(base, args.min_n).attention)
    rows = search(base, args, device, experiment.data.sample_rate)
    print()
    print(markdown_table(rows))
    print(longest(rows))
    if args.json:
        # base_model: the model before each n sets its context and stride.
        meta = dict(environment(device), alloc_conf=os.environ.get("PYTORCH_CUDA_ALLOC_CONF"), args=vars(args),
                    sample_rate=experiment.data.sample_rate,
                    base_model=dataclasses.asdict(base))
        write_json(args.json, dict(meta=meta, rows=rows))
    return 0


if __name__ == "__main__":
    run_benchmark(main)
