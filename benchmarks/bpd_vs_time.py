"""Bits per dim against wall-clock time: short training runs of dense, strided and fixed
attention on the same model, data and time budget, on one GPU - does sparse attention
reach a lower loss in the same time?

    python benchmarks/bpd_vs_time.py --experiment cifar10 --seconds 120 \
        --json out/bpd_vs_time_cifar10.json --plot out/bpd_vs_time_cifar10.png
    python benchmarks/bpd_vs_time.py --experiment enwik8 --seconds 120 \
        --json out/bpd_vs_time_enwik8.json --plot out/bpd_vs_time_enwik8.png

Model: the experiment's in params.yaml (`--set` overrides as on the command line). Only
the pattern changes between runs, as in benchmarks/train_step.py: dense runs PyTorch's
SDPA, strided and fixed the Triton kernels, with the experiment's stride (fixed: its
summary width, 32 where it has none).

Data: what can be carried to a GPU machine - the quickstart text by default
(data/quickstart/text/tinyshakespeare.txt, 1.1 MB), or `--data` a file or folder read as
one byte stream, or any file `sparse-transformer prepare` wrote (.h5). Raw input is
prepared by the package's `bytes` preparation (contiguous 90/5/5 splits) into a
temporary folder. A stream (text, bytes, audio) trains the model as a byte stream
(image_shape null: position embeddings (i div l, i mod l)), in windows of the model's
context. Images train as images: the model takes the file's image shape (row, column
and channel embeddings, the start symbol) and a context of one image, whatever the
experiment says - for example 10,000 CIFAR-10-sized images prepared from a folder
(`sparse-transformer prepare images`, 30 MB) with the cifar10 model.

Training: a plain PyTorch loop. AdamW on `training.parameter_groups` (weight decay on
weight matrices only) at train.learning_rate, linear warmup over --warmup-steps and then
constant: with a constant rate every point of the curves is an equal-time comparison,
where a cosine ending at the budget would make only the last one. Gradient norm clipped
to train.gradient_clip, bf16 autocast on CUDA, the model's recomputation setting,
batches of data.batch_size random windows of the train split. Every pattern starts from
the same initialization and sees the same batches. Every --eval-every seconds the valid
bits per dim over a fixed set of --val-windows consecutive windows of the valid split is
measured. The clock counts training only: validation, and one untimed forward and
backward before the start (kernel compilation and autotuning; with --compile also the
blocks' compilation), are left out. Reduce-overhead records its CUDA graphs over the
next steps, inside the clock.

Output: a line per evaluation, a summary (valid bits per dim of each pattern at the
equal time), `--json` with the curves - rows of (wall_s, step, train_bpd, valid_bpd),
train_bpd the mean since the row before - and `--plot` a PNG of valid bits per dim
against seconds (needs matplotlib), both rewritten at every validation: a run stopped by
a time limit keeps its curve so far, marked `finished: false`. With `--append` the runs
join those already in --json, which must come from the same settings and card (else it
stops and names what differs); a pattern run again replaces its earlier run. So runs
longer than one sitting allows can be made one pattern at a time (`--patterns strided
--append`) and still be one comparison. Runs made at the same time on several GPUs of one host, a pattern each
(CUDA_VISIBLE_DEVICES=N ... --patterns X --json out/X.json), are joined afterwards with
`--merge out/dense.json out/strided.json out/fixed.json --json out/all.json --plot ...`,
which trains nothing and refuses records made with other settings or on another card.
A smoke run on CPU with a tiny model:

    python benchmarks/bpd_vs_time.py --device cpu --seconds 5 --eval-every 1 --set model.layers=2 \
        --set model.d_model=64 --set model.context=256 --set model.attention=reference --set data.batch_size=4
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from sparse_transformer.config import DataConfig, ModelConfig, TrainConfig, load_experiment
from sparse_transformer.data.datamodule import ConsecutiveWindows, OrderedImages, RandomWindows, ShuffledImages
from sparse_transformer.data.hdf5 import read_attributes
from sparse_transformer.data.prepare import prepare
from sparse_transformer.model import SparseTransformer
from sparse_transformer.training import parameter_groups
from train_step import model_config  # the Table 2 rows' pattern swap (benchmarks/ is on sys.path)
from common import (add_compile_arguments, autocast, data_overrides, device_or_exit, environment, fail, for_training,
                    run_benchmark, synchronize, write_json)

QUICKSTART_TEXT = "data/quickstart/text/tinyshakespeare.txt"
PATTERNS = ("dense", "strided", "fixed")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="params.yaml")
    parser.add_argument("--experiment", default="cifar10", help="the model: cifar10 or enwik8 (or any other section)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    parser.add_argument("--patterns", nargs="+", default=list(PATTERNS), choices=PATTERNS)
    parser.add_argument("--seconds", type=float, default=120, help="training time of each run")
    parser.add_argument("--eval-every", type=float, default=10, help="seconds of training between validations")
    parser.add_argument("--val-windows", type=int, default=16, help="valid windows scored at each validation (at most)")
    parser.add_argument("--warmup-steps", type=int, default=50, help="linear learning-rate warmup, then constant")
    parser.add_argument("--data", default=QUICKSTART_TEXT,
                        help="a file or folder of bytes to prepare, or a prepared file (.h5) of any dataset")
    parser.add_argument("--seed", type=int, default=0, help="the initialization and dropout")
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu for a smoke run")
    add_compile_arguments(parser)
    parser.add_argument("--json", help="write the curves here")
    parser.add_argument("--append", action="store_true",
                        help="add to the runs already in --json (same settings) instead of replacing them")
    parser.add_argument("--plot", help="write a PNG of valid bits per dim against seconds here")
    parser.add_argument("--merge", nargs="+", metavar="JSON",
                        help="train nothing: join these records (same settings and card, a pattern in one "
                             "of them only) into --json and --plot")
    return parser.parse_args(argv)


def prepared_file(data: Path, workdir: Path) -> Path:
    """The HDF5 file of `data`: itself when already prepared, else its bytes prepared into workdir."""
    if data.suffix == ".h5":
        return data
    output = workdir / "data.h5"
    prepare(DataConfig(dataset="bytes", input=str(data), hdf5=str(output)))
    return output


@torch.no_grad()
def valid_bpd(model: SparseTransformer, windows: torch.Tensor, batch_size: int) -> float:
    """Mean bits per dim over `windows` (N, context + 1), in eval mode (no dropout)."""
    model.eval()
    total = 0.0
    with autocast(windows.device):
        for chunk in windows.split(batch_size):
            # Every window has the same number of targets: weighting by rows gives the mean over bytes.
            total += model.loss(*model.inputs_and_targets(chunk)).item() * len(chunk)
    model.train()
    return total / len(windows)


def train_for(config: ModelConfig, train: TrainConfig, batches: RandomWindows, windows: torch.Tensor,
              args: argparse.Namespace, device: torch.device, report: Callable[[dict], None]) -> dict:
    """Train a fresh model for args.seconds of training time; its curve and throughput.
    `report` gets the run so far (finished False) after every validation."""
    torch.manual_seed(args.seed)  # the same initialization and dropout masks for every pattern
    model = SparseTransformer(config).to(device).train()
    for_training(model, args)
    optimizer = torch.optim.AdamW(parameter_groups(model, train.weight_decay), lr=train.learning_rate,
                                  betas=train.betas, fused=device.type == "cuda")
    warmup = max(1, args.warmup_steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))

    def loss_of(index: int) -> torch.Tensor:
        batch = torch.from_numpy(batches.batch(index)).to(device)
        with autocast(device):
            loss = model.loss(*model.inputs_and_targets(batch))
        loss.backward()
        return loss

    loss_of(0)  # untimed: compiles and autotunes the kernels for these shapes (and the blocks with --compile)
    optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    curve = [dict(wall_s=0.0, step=0, train_bpd=None, valid_bpd=valid_bpd(model, windows, batches.batch_size))]
    clock, step, losses, next_eval = 0.0, 0, [], args.eval_every

    def run_so_far(finished: bool) -> dict:
        return dict(
            params=model.num_params(), steps=step, train_s=clock, finished=finished,
            tokens_per_s=step * batches.batch_size * config.context / max(clock, 1e-9),
            peak_memory_gib=torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
            curve=list(curve),
        )

    while clock < args.seconds:
        started = time.perf_counter()
        loss = loss_of(step)
        torch.nn.utils.clip_grad_norm_(model.parameters(), train.gradient_clip)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)  # the clock then holds finished work, not work queued on the GPU
        clock += time.perf_counter() - started
        losses.append(loss.item())
        step += 1
        if clock >= next_eval or clock >= args.seconds:
            curve.append(dict(wall_s=clock, step=step, train_bpd=float(np.mean(losses)),
                              valid_bpd=valid_bpd(model, windows, batches.batch_size)))
            print(f"  {clock:7.1f} s  step {step:6d}  train {curve[-1]['train_bpd']:.3f}  "
                  f"valid {curve[-1]['valid_bpd']:.3f} bits per dim", flush=True)
            losses, next_eval = [], (clock // args.eval_every + 1) * args.eval_every
            if clock < args.seconds:
                report(run_so_far(finished=False))
    return run_so_far(finished=True)


def print_summary(runs: list[dict], seconds: float) -> None:
    """Valid bits per dim of each pattern at the equal time, best first."""
    print(f"\nafter {seconds:g} s of training each (valid bits per dim; best: the lowest on the curve):")
    for run in sorted(runs, key=lambda r: r["curve"][-1]["valid_bpd"]):
        last, best = run["curve"][-1], min(run["curve"], key=lambda row: row["valid_bpd"])
        stopped = "" if run.get("finished", True) else "  (stopped before its time)"
        print(f"  {run['pattern']:<8} {run['describe']:<28} valid {last['valid_bpd']:.3f} at {last['wall_s']:.1f} s  "
              f"best {best['valid_bpd']:.3f} at {best['wall_s']:.1f} s  "
              f"{run['steps']:6d} steps  {run['tokens_per_s']:9.0f} tokens/s{stopped}")


def write_plot(runs: list[dict], path: str, title: str) -> None:
    """Valid bits per dim against seconds, a line per pattern; a warning if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display on the GPU machines
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"warning: matplotlib is not installed, no plot written to {path}", file=sys.stderr)
        return
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for run in runs:
        axes.plot([row["wall_s"] for row in run["curve"]], [row["valid_bpd"] for row in run["curve"]],
                  marker=".", label=run["describe"] + ("" if run.get("finished", True) else " (stopped early)"))
    axes.set(xlabel="training time (s)", ylabel="valid bits per dim", title=title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=150)
    plt.close(figure)


# What makes runs comparable: everything but which patterns run and where the output goes.
NOT_COMPARED = ("patterns", "json", "plot", "append", "merge")


def compared_settings(meta: dict) -> dict:
    return {key: value for key, value in meta["args"].items() if key not in NOT_COMPARED} | {"device": meta["device"]}


def settings_differences(there: dict, here: dict, names: tuple[str, str] = ("there", "here")) -> str:
    """The comparable settings in which two records' meta differ, as `key: A there, B here; ...`
    ("" when they match)."""
    before, now = compared_settings(there), compared_settings(json.loads(json.dumps(here, default=str)))
    differ = sorted(key for key in before.keys() | now.keys() if before.get(key) != now.get(key))
    return "; ".join(f"{key}: {before.get(key)!r} {names[0]}, {now.get(key)!r} {names[1]}" for key in differ)


def read_record(path: str) -> dict:
    """A record this script wrote ({"meta", "runs"}); stops with the reason if it is not one."""
    try:
        with open(path) as fh:
            record = json.load(fh)
    except (OSError, json.JSONDecodeError) as err:
        fail(f"cannot read the record {path}: {err}")
    if not isinstance(record, dict) or not {"meta", "runs"} <= record.keys():
        fail(f"{path} is not a record of bpd_vs_time.py (no meta and runs): give one its --json wrote")
    return record


def earlier_runs(args: argparse.Namespace, meta: dict) -> list[dict]:
    """With --append, the runs already in --json; stops if they were made differently."""
    if not args.append:
        return []
    if not args.json:
        fail("--append adds to the runs in --json: give --json")
    if not Path(args.json).exists():
        return []
    record = read_record(args.json)
    if changes := settings_differences(record["meta"], meta):
        fail(f"--append: {args.json} was made with other settings ({changes}): use the same ones, or write to a new --json")
    return record["runs"]


def merge(args: argparse.Namespace) -> int:
    """--merge: the runs of several records made with the same settings and card, as one record."""
    if not args.json:
        fail("--merge writes the joined record to --json: give --json")
    records = {path: read_record(path) for path in args.merge}
    first_path, first = next(iter(records.items()))
    runs: list[dict] = []
    for path, record in records.items():
        if changes := settings_differences(first["meta"], record["meta"], (f"in {first_path}", f"in {path}")):
            fail(f"--merge: {path} was made with other settings than {first_path} ({changes}): join only runs made alike")
        for run in record["runs"]:
            if any(earlier["pattern"] == run["pattern"] for earlier in runs):
                fail(f"--merge: pattern {run['pattern']} is in more than one record (again in {path}): keep one")
            runs.append(run)
    runs.sort(key=lambda run: PATTERNS.index(run["pattern"]))
    # The joined record keeps the first record's settings; each run keeps its own date.
    save(runs, first["meta"], args)
    print_summary(runs, first["meta"]["args"]["seconds"])
    return 0


def save(runs: list[dict], meta: dict, args: argparse.Namespace) -> None:
    """The curves so far to --json and --plot, where asked for."""
    if args.json:
        write_json(args.json, {"meta": meta, "runs": runs})
    if args.plot:
        write_plot(runs, args.plot, meta["title"])


def save_along(runs: list[dict], about: dict, meta: dict, args: argparse.Namespace, run: dict) -> None:
    """The finished runs and the one in progress (`about` | `run`), in pattern order."""
    save(sorted([*runs, about | run], key=lambda r: PATTERNS.index(r["pattern"])), meta, args)


def carried_data(args: argparse.Namespace, model: ModelConfig, data: DataConfig, path: Path,
                 device: torch.device) -> tuple[ShuffledImages | RandomWindows, torch.Tensor]:
    """The training batches and the fixed validation examples (on `device`) of the prepared --data."""
    if model.image_shape is not None:
        examples = OrderedImages(path, "valid", args.val_windows).batch(0)
        batches = ShuffledImages(path, "train", data.batch_size, data.seed)
    else:
        window = model.context + 1
        examples = ConsecutiveWindows(path, "valid", window, args.val_windows).batch(0)
        batches = RandomWindows(path, "train", window, data.batch_size, data.seed)
    if len(examples) == 0:
        fail(f"{args.data}: its valid split holds no {'image' if model.image_shape else f'window of {model.context + 1} bytes'}: "
             "give more data")
    return batches, torch.from_numpy(examples).to(device)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.merge:
        return merge(args)
    with tempfile.TemporaryDirectory() as workdir:
        path = prepared_file(Path(args.data), Path(workdir))
        attributes = read_attributes(path)
        experiment = load_experiment(args.config, args.experiment, (*args.overrides, *data_overrides(attributes)))
        model, data = experiment.model, experiment.data
        backends = {model_config(model, kind).attention for kind in args.patterns}
        device = device_or_exit(args.device, "triton" if "triton" in backends else None)
        if device.type == "cuda":
            torch.set_float32_matmul_precision("high")
        batches, windows = carried_data(args, model, data, path, device)
        shown = f"images {list(model.image_shape)}" if model.image_shape else f"{attributes['modality']}, a byte stream"
        print(f"{args.experiment} model on {args.data} ({shown}): context {model.context}, batch {data.batch_size}, "
              f"{len(windows)} valid examples, {args.seconds:g} s per pattern, {device}", flush=True)
        meta = dict(environment(device), args=vars(args),
                    title=f"{args.experiment}-sized model on {Path(args.data).name}, {args.seconds:g} s each",
                    data=f"{args.data} ({shown})", model=dataclasses.asdict(model),
                    batch_size=data.batch_size, learning_rate=experiment.train.learning_rate)
        earlier = earlier_runs(args, meta)
        runs = [run for run in earlier if run["pattern"] not in args.patterns]
        for kind in args.patterns:
            config = model_config(model, kind)
            describe = config.pattern.describe()
            print(f"{kind}: {describe}, attention {config.attention}", flush=True)
            about = dict(pattern=kind, describe=describe, attention=config.attention, date=meta["date"])
            # Saved at every validation, so that a run stopped at a time limit keeps its curve so
            # far (finished: false) and the runs before it.
            report = functools.partial(save_along, runs, about, meta, args)
            run = about | train_for(config, experiment.train, batches, windows, args, device, report)
            save_along(runs, about, meta, args, run)
            runs.append(run)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    print_summary(runs, args.seconds)
    return 0


if __name__ == "__main__":
    run_benchmark(main)
