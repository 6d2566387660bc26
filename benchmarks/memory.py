r"""Peak GPU memory of one training step against sequence length and depth, with and
without recomputation (issue 7, "Scale on GPUs").

    python benchmarks/memory.py --json out/memory_h200.json --plot out/memory_h200.png

A step is train_step.py's: forward, backward, gradient clipping and a fused AdamW
update under bf16 autocast, on `--batch` sequences (1). The model is the Enwik8
experiment's from params.yaml (d_model 512, 8 heads, dropout 0.4; `--experiment` and
`--set` as in train_step.py) seen as 1-D data of length n, with the strided pattern
(merged) through the Triton kernels and l the power of two nearest sqrt(n). For each
depth (`--depths`), without and then with recomputation (the paper's section 5.4), n doubles from
`--min-n` to `--max-n`; a step that raises torch.OutOfMemoryError is recorded as "does
not fit" and ends its series, since longer sequences need more memory still.

Peak memory is torch.cuda.max_memory_allocated over the timed steps, after the warmup
ones (where Triton compiles and autotunes): parameters, gradients, AdamW state and
activations - what the tensors hold, not what the caching allocator reserves.

Prints one line per configuration as it finishes, then a markdown table (rows n, columns
depth and recomputation: peak GiB and time per step); `--json` keeps every measurement,
`--plot` draws peak GiB against n (log-log, one line per depth and recomputation; needs
matplotlib). The defaults are sized for a few minutes on one H200; fewer --depths or a
smaller --max-n shorten it.

A smoke run on the CPU (tiny sizes; memory is only measured on CUDA, so it reads None):

    TRITON_INTERPRET=1 python benchmarks/memory.py --device cpu --min-n 256 --max-n 512 \
        --depths 2 --set model.d_model=64 --set model.heads=4

longest_sequence.py imports the helpers below (at_length, measure_step, ...).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import math
import os
import sys
from pathlib import Path

# Before torch touches CUDA: with expandable segments "does not fit" means the memory is
# not there, not that the earlier configurations of the sweep fragmented the cache.
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

import torch  # noqa: E402

from sparse_transformer import acceleration  # noqa: E402
from sparse_transformer.config import ModelConfig, load_experiment  # noqa: E402
from sparse_transformer.model import SparseTransformer  # noqa: E402
from common import device_memory_gib, device_or_exit, environment, run_benchmark, write_json  # noqa: E402
from train_step import model_config, time_steps  # noqa: E402


# ---------------------------------------------------------------------- helpers shared with longest_sequence.py
def sqrt_stride(n: int) -> int:
    """The power of two nearest sqrt(n) (the paper's section 4.3 takes l close to sqrt(n))."""
    root = math.isqrt(n)
    lower = 1 << (root.bit_length() - 1)
    return lower if root - lower <= 2 * lower - root else 2 * lower


def doublings(first: int, last: int) -> list[int]:
    """first, 2 first, 4 first, ... up to last."""
    return [first << k for k in range((last // first).bit_length())]


def at_length(model: ModelConfig, n: int) -> ModelConfig:
    """`model` on 1-D sequences of n bytes, strided through the kernels with l = sqrt_stride(n):
    train_step.py's "strided" row (merged unless the experiment is strided multi-head)."""
    # image_shape None: row/column/channel embeddings would tie n to one image size.
    pattern = dataclasses.replace(model.pattern, stride=sqrt_stride(n))
    return model_config(dataclasses.replace(model, context=n, image_shape=None, pattern=pattern), "strided")


def count_params(config: ModelConfig) -> int:
    """Parameters of the model `config` describes, counted on the meta device (nothing allocated)."""
    with torch.device("meta"):
        return SparseTransformer(config).num_params()


def measure_step(config: ModelConfig, batch: int, steps: int, warmup: int, device: torch.device) -> dict:
    """fits, seconds per training step (step_s) and peak GiB (peak_gib, None off CUDA) of
    `config` on `batch` random sequences; fits False and both None when out of memory."""
    try:
        result = _timed_step(config, batch, steps, warmup, device)
    except torch.OutOfMemoryError:
        result = dict(fits=False, step_s=None, peak_gib=None)
    # After the except block, whose traceback holds the failed step's tensors while it runs.
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def _timed_step(config: ModelConfig, batch: int, steps: int, warmup: int, device: torch.device) -> dict:
    torch.manual_seed(0)
    with device:  # initialized where it trains: no CPU copy of a large model to move
        model = acceleration.for_training(SparseTransformer(config), config.recompute)
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 256, (batch, config.context + 1), generator=generator).to(device)
    if warmup:
        # Outside the measured steps: Triton compiles and autotunes during the first ones,
        # and autotuning holds extra buffers (copies of the outputs, an L2-flushing block).
        time_steps(model, tokens, warmup, 0, device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    # A fresh optimizer: its AdamW state appears in the first timed step, after the
    # backward, so the peak (a backward holding that state) is reached from the second on.
    step_s = time_steps(model, tokens, steps, 0, device)
    return dict(fits=True, step_s=step_s, peak_gib=torch.cuda.max_memory_allocated() / 2**30 if cuda else None)


def add_step_arguments(parser: argparse.ArgumentParser) -> None:
    """The options both benchmarks share (besides --config, --set and their length range)."""
    parser.add_argument("--steps", type=int, default=2, help="timed steps, at least 2 (the median is reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (compiling, autotuning)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--json", help="write the measurements here")


def checked_step_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    if args.min_n > args.max_n:
        parser.error(f"--min-n {args.min_n} is above --max-n {args.max_n}")
    if args.steps < 2:  # see _timed_step: the first timed step does not reach the peak
        parser.error(f"--steps must be at least 2, got {args.steps}")
    return args


def outcome(row: dict) -> str:
    """A measurement in a few words: '12.34 GiB, 456.7 ms', 'does not fit'."""
    if not row["fits"]:
        return "does not fit"
    time_taken = f"{row['step_s'] * 1000:.1f} ms"
    return time_taken if row["peak_gib"] is None else f"{row['peak_gib']:.2f} GiB, {time_taken}"


# ---------------------------------------------------------------------- the sweep
def series_name(layers: int, recompute: bool) -> str:
    return f"{layers} layers" + (", recompute" if recompute else "")


def sweep(base: ModelConfig, args: argparse.Namespace, device: torch.device) -> list[dict]:
    """One row per (depth, recomputation, n) run; each series stops at its first n that does not fit."""
    rows = []
    for layers in args.depths:
        for recompute in (False, True):
            for n in doublings(args.min_n, args.max_n):
                config = at_length(dataclasses.replace(base, layers=layers, recompute=recompute), n)
                row = dict(layers=layers, recompute=recompute, n=n, stride=config.pattern.stride,
                           pattern=config.pattern.describe(), attention=config.attention,
                           params=count_params(config), batch=args.batch,
                           **measure_step(config, args.batch, args.steps, args.warmup, device))
                rows.append(row)
                name = series_name(layers, recompute)
                print(f"{name:<22} n = {n:>9,}  l = {row['stride']:<5} {outcome(row)}", flush=True)
                if not row["fits"]:
                    break
    return rows


def markdown_table(rows: list[dict]) -> str:
    """Rows n, columns (depth, recomputation); a blank cell was not run (a shorter n did not fit)."""
    series = list(dict.fromkeys((row["layers"], row["recompute"]) for row in rows))
    by_key = {(row["layers"], row["recompute"], row["n"]): row for row in rows}
    strides = {row["n"]: row["stride"] for row in rows}
    lines = ["| n | l | " + " | ".join(series_name(*s) for s in series) + " |", "|---" * (len(series) + 2) + "|"]
    for n in sorted(strides):
        cells = [outcome(by_key[(*s, n)]) if (*s, n) in by_key else "" for s in series]
        lines.append(f"| {n:,} | {strides[n]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: str, device_gib: float | None) -> None:
    """Peak GiB against n, log-log, one line per (depth, recomputation); the device's memory as a line."""
    measured = [row for row in rows if row["peak_gib"] is not None]
    if not measured:
        print(f"warning: no memory was measured (CUDA only); no plot written to {path}", file=sys.stderr)
        return
    try:
        import matplotlib
    except ImportError:
        print(f"warning: matplotlib is not installed; no plot written to {path}", file=sys.stderr)
        return
    matplotlib.use("Agg")  # no display on a GPU node
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    depths = list(dict.fromkeys(row["layers"] for row in measured))
    for layers, recompute in dict.fromkeys((row["layers"], row["recompute"]) for row in measured):
        points = [row for row in measured if (row["layers"], row["recompute"]) == (layers, recompute)]
        # One colour per depth, solid with recomputation and dashed without.
        axes.plot([row["n"] for row in points], [row["peak_gib"] for row in points], marker="o",
                  color=f"C{depths.index(layers)}", linestyle="-" if recompute else "--",
                  label=series_name(layers, recompute))
    if device_gib is not None:
        axes.axhline(device_gib, color="grey", linestyle=":", label=f"device memory ({device_gib:.0f} GiB)")
    axes.set_xscale("log", base=2)
    axes.set_yscale("log")
    axes.set_xlabel("sequence length n (tokens)")
    axes.set_ylabel("peak memory of a training step (GiB)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="small")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(figure)
    print(f"wrote {path}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="params.yaml")
    parser.add_argument("--experiment", default="enwik8", help="the params.yaml section giving the model's width")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    parser.add_argument("--depths", type=int, nargs="+", default=[2, 8, 30], help="layer counts (30: Enwik8's)")
    parser.add_argument("--min-n", type=int, default=4096)
    parser.add_argument("--max-n", type=int, default=1 << 20)
    parser.add_argument("--batch", type=int, default=1)
    add_step_arguments(parser)
    parser.add_argument("--plot", help="draw peak memory against n here (PNG, PDF, SVG)")
    return checked_step_arguments(parser, parser.parse_args(argv))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    base = load_experiment(args.config, args.experiment, tuple(args.overrides)).model
    device = device_or_exit(args.device, at_length(base, args.min_n).attention)
    rows = sweep(base, args, device)
    print()
    print(markdown_table(rows))
    if args.json:
        # base_model: the experiment's model before the sweep sets context, layers, recompute and pattern.
        meta = dict(environment(device), alloc_conf=os.environ.get("PYTORCH_CUDA_ALLOC_CONF"), args=vars(args),
                    base_model=dataclasses.asdict(base))
        write_json(args.json, dict(meta=meta, rows=rows))
    if args.plot:
        plot(rows, args.plot, device_memory_gib(device))
    return 0


if __name__ == "__main__":
    run_benchmark(main)
