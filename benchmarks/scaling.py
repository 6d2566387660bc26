"""Throughput scaling of the Enwik8 model over the GPUs of one host through Lightning's own
strategies, DDP and FSDP (issues 5 and 7: >= 90% scaling efficiency per added GPU).

    python benchmarks/scaling.py --devices 1 2 --strategy ddp fsdp --json out/scaling_h200.json

For each device count N the package's training runs for `--steps` optimizer steps:
training.build_trainer, SparseTransformerModule and the data module, with the model,
optimizer and precision of the params.yaml experiment (`enwik8`: 30 layers, d_model 512,
8 heads, context 12,288, fixed pattern through the Triton kernels, recomputation,
bf16-mixed on CUDA; `--set` overrides as on the command line). Weak scaling: every device
gets `--batch` examples a step (default: the experiment's data.batch_size), so N devices
train on N times the tokens. No validation, no tracking, no checkpoint until the end
(last.ckpt, into a temporary work directory).

Tokens/s over all devices is measured on global rank 0 between the ends of consecutive
training batches after the first `--warmup` steps (the Triton kernels compile and
autotune in the first ones), skipping the first batch of an epoch (its DataLoader
workers start then). Efficiency = tokens/s(N) / (N * tokens/s(1)). The one-device
baseline is plain single-device training (Lightning's strategy "auto"): what adding GPUs
is compared with; DDP or FSDP on one device would only add wrapper overhead to it.

Each (N, strategy) runs in a fresh process, `scaling.py --run --devices-one N --strategy S
--workdir DIR --row FILE ...`, so that each gets a clean process group; Lightning's
launcher starts ranks 1..N-1 by re-running that same command line with LOCAL_RANK set
(Lightning's documented way to launch a script on one host; no launcher of our own). The
driver prints a table (tokens/s, speed-up, efficiency, step time, peak memory) and writes
every row to `--json`.

Data: enwik8 cannot be downloaded everywhere and throughput does not depend on the text,
so the runs train on data/quickstart/text/tinyshakespeare.txt, prepared as bytes (the
package's `prepare`) into the work directory.

A CPU check of the mechanics with a tiny model (DDP over 2 processes on gloo):

    python benchmarks/scaling.py --accelerator cpu --devices 1 2 --steps 8 --warmup 2 \
        --set model.layers=2 --set model.d_model=64 --set model.context=256 \
        --set model.attention=reference --set data.num_workers=0
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from sparse_transformer.config import ExperimentConfig, load_experiment
from sparse_transformer.data.datamodule import data_module_from_config
from sparse_transformer.data.prepare import prepare
from sparse_transformer.checkpoints import check_data_fits_model
from sparse_transformer.training import SparseTransformerModule, build_trainer
from common import write_json  # benchmarks/ is on sys.path

REPO = Path(__file__).resolve().parents[1]
TEXT = REPO / "data" / "quickstart" / "text" / "tinyshakespeare.txt"
TARGET_EFFICIENCY = 0.90  # issues 5 and 7


class StepTimes(Callback):
    """Seconds between the ends of consecutive training batches, per optimizer step, and
    the tokens (targets) of one step over all devices."""

    def __init__(self) -> None:
        self.intervals: dict[int, float] = {}
        self.tokens_per_step = 0
        self._last: float | None = None

    def on_train_epoch_start(self, *_: Any) -> None:
        self._last = None  # the epoch's first batch waits for new DataLoader workers

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: SparseTransformerModule, outputs: Any,
                           batch: torch.Tensor, batch_idx: int) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)  # the step's kernels are done, not just queued
        now = time.perf_counter()
        if self._last is not None:
            self.intervals[trainer.global_step] = now - self._last
        self._last = now
        self.tokens_per_step = pl_module.model.inputs_and_targets(batch)[1].numel() * trainer.world_size


def run_name(devices: int, strategy: str) -> str:
    return f"{devices}-{strategy if devices > 1 else 'single'}"


def run_overrides(args: argparse.Namespace, workdir: Path) -> list[str]:
    """The settings of one measured run, before the user's --set (which may change them)."""
    devices, strategy = args.devices_one, args.strategy[0]
    return [
        "data.dataset=bytes", f"data.input={TEXT}", f"data.hdf5={workdir / 'tinyshakespeare.h5'}",
        "data.download=false",
        *([f"data.batch_size={args.batch}"] if args.batch else []),
        f"train.accelerator={args.accelerator}", f"train.devices={devices}",
        f"train.strategy={'auto' if devices == 1 else strategy}",
        f"train.max_steps={args.steps}", "train.max_epochs=null", "train.val_every_steps=null",
        f"train.checkpoint_dir={workdir / f'checkpoints-{run_name(devices, strategy)}'}",
        f"train.checkpoint_every_steps={args.steps + 1}",  # no interval checkpoint inside the timed steps
        "train.curve_file=null",
        "evaluate.min_context=null",  # the enwik8 value exceeds a small --set model.context
        "tracking.enabled=false",
    ]


def measure(cfg: ExperimentConfig, warmup: int) -> dict | None:
    """Train as training.train does (without tracking) and time the steps after `warmup`;
    the measurement on global rank 0, None on the other ranks."""
    prepare(cfg.data)  # rank 0 before Lightning starts the other ranks; they find it up to date
    datamodule = data_module_from_config(cfg.data, cfg.model.context)
    check_data_fits_model(datamodule.attributes, cfg.model, cfg.data.hdf5)
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    module = SparseTransformerModule(dataclasses.asdict(cfg.model), dataclasses.asdict(cfg.train))
    params = module.model.num_params()  # before FSDP shards them
    timer = StepTimes()
    trainer = build_trainer(cfg.train, callbacks=[timer])
    trainer.fit(module, datamodule=datamodule)
    if not trainer.is_global_zero:
        return None
    steady = [seconds for step, seconds in timer.intervals.items() if step > warmup]
    if not steady:
        raise SystemExit(f"no step after the {warmup} warmup steps was timed: raise --steps")
    cuda = trainer.strategy.root_device.type == "cuda"
    # "auto" resolved as attention.attend resolves it
    backend = cfg.model.attention if cfg.model.attention != "auto" else ("triton" if cuda else "reference")
    return dict(
        devices=trainer.world_size, strategy=type(trainer.strategy).__name__, precision=trainer.precision,
        attention=backend, params=params, batch_per_device=cfg.data.batch_size, context=cfg.model.context,
        tokens_per_step=timer.tokens_per_step, steps=trainer.global_step, measured_steps=len(steady),
        step_s_median=statistics.median(steady), tokens_per_s=timer.tokens_per_step * len(steady) / sum(steady),
        step_s=timer.intervals,  # every timed step, warmup included: outliers show here
        peak_memory_gib=torch.cuda.max_memory_allocated(trainer.strategy.root_device) / 2**30 if cuda else None,
    )


def run_one(args: argparse.Namespace) -> None:
    """`--run`: one measured run (executed by every rank); rank 0 writes its row to --row."""
    workdir = Path(args.workdir)
    overrides = (*run_overrides(args, workdir), *args.overrides)
    row = measure(load_experiment(args.config, args.experiment, overrides), args.warmup)
    if row is not None:
        Path(args.row).write_text(json.dumps(row, indent=1))


def launch(args: argparse.Namespace, devices: int, strategy: str, workdir: Path) -> dict | None:
    """One run in a fresh process (a clean process group each); its row, None if it failed."""
    row = workdir / f"row-{run_name(devices, strategy)}.json"
    command = [
        sys.executable, str(Path(__file__).resolve()), "--run", "--devices-one", str(devices), "--strategy", strategy,
        "--workdir", str(workdir), "--row", str(row), "--config", str(args.config), "--experiment", args.experiment,
        "--steps", str(args.steps), "--warmup", str(args.warmup), "--accelerator", args.accelerator,
        *(["--batch", str(args.batch)] if args.batch else []), *(f"--set={o}" for o in args.overrides),
    ]
    print(f"\n=== {devices} device(s), {strategy if devices > 1 else 'single device'}: {' '.join(command)}", flush=True)
    if subprocess.run(command).returncode != 0:
        return None
    return json.loads(row.read_text())


def with_efficiency(rows: list[dict]) -> list[dict]:
    """Speed-up and efficiency of each row against the one-device row (when there is one)."""
    base = next((row["tokens_per_s"] for row in rows if row["devices"] == 1), None)
    for row in rows:
        row["speedup"] = row["tokens_per_s"] / base if base else None
        row["efficiency"] = row["speedup"] / row["devices"] if base else None
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"\n{'devices':>7}  {'strategy':<20} {'tokens/s':>11} {'speed-up':>8} {'efficiency':>10} "
          f"{'step ms':>8} {'peak GiB':>8}")
    for row in rows:
        speedup = f"{row['speedup']:.2f}x" if row["speedup"] is not None else "-"
        efficiency = f"{row['efficiency']:.1%}" if row["efficiency"] is not None else "-"
        memory = f"{row['peak_memory_gib']:.1f}" if row["peak_memory_gib"] is not None else "-"
        print(f"{row['devices']:>7}  {row['strategy']:<20} {row['tokens_per_s']:>11,.0f} {speedup:>8} {efficiency:>10} "
              f"{row['step_s_median'] * 1000:>8.1f} {memory:>8}")
    added = [row for row in rows if row["devices"] > 1 and row["efficiency"] is not None]
    if added:
        worst = min(added, key=lambda row: row["efficiency"])
        verdict = "met" if worst["efficiency"] >= TARGET_EFFICIENCY else "missed"
        print(f"target >= {TARGET_EFFICIENCY:.0%} efficiency per added GPU: {verdict} "
              f"(lowest {worst['efficiency']:.1%}, {worst['devices']} devices, {worst['strategy']})")


def default_devices() -> list[int]:
    """1, 2, 4, ... up to the GPUs visible (1 without any)."""
    visible = max(1, torch.cuda.device_count())
    return [2**k for k in range(int(math.log2(visible)) + 1)]


def drive(args: argparse.Namespace) -> int:
    """The driver: every device count (one run for N = 1, one per strategy above it). A
    failed run is reported and the others still measured; the exit status is then 1."""
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="scaling-"))
    workdir.mkdir(parents=True, exist_ok=True)
    rows, failed = [], []
    try:
        for n in sorted(set(args.devices or default_devices())):
            for strategy in args.strategy[:1] if n == 1 else args.strategy:
                row = launch(args, n, strategy, workdir)
                if row is None:
                    failed.append(run_name(n, strategy))
                else:
                    rows.append(row)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)  # checkpoints of the Enwik8 model are about 1 GB each
    rows = with_efficiency(rows)
    print_table(rows)
    if failed:
        print(f"failed runs (their output is above): {', '.join(failed)}")
    if args.json:
        device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu"
        meta = dict(device=device, gpus_visible=torch.cuda.device_count(), torch=torch.__version__,
                    lightning=L.__version__, date=time.strftime("%Y-%m-%d"), args=vars(args), failed=failed)
        write_json(args.json, {"meta": meta, "rows": rows})
    return 1 if failed else 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--experiment", default="enwik8")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    parser.add_argument("--devices", type=int, nargs="+",
                        help="device counts to measure (default: 1, 2, 4, ... up to the GPUs visible)")
    parser.add_argument("--strategy", nargs="+", default=["ddp"], choices=["ddp", "fsdp"],
                        help="Lightning strategies for N > 1 (N = 1 is single-device training)")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=10, help="first steps left out of the measurement")
    parser.add_argument("--batch", type=int,
                        help="examples per device and step (default: the experiment's data.batch_size)")
    parser.add_argument("--accelerator", default="auto", help="Lightning accelerator: auto, gpu, cpu")
    parser.add_argument("--json", help="write the rows and the machine here")
    parser.add_argument("--workdir",
                        help="prepared data and checkpoints (default: a temporary directory, removed after)")
    run = parser.add_argument_group("one measured run (what the driver starts; Lightning re-runs it per rank)")
    run.add_argument("--run", action="store_true")
    run.add_argument("--devices-one", type=int, metavar="N")
    run.add_argument("--row", help="the JSON file rank 0 writes its measurement to")
    args = parser.parse_args(argv)
    if args.run and (args.devices_one is None or not args.workdir or not args.row or len(args.strategy) != 1):
        parser.error("--run needs --devices-one N, --workdir, --row and one --strategy")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.run:
        run_one(args)
        return 0
    return drive(args)


if __name__ == "__main__":
    sys.exit(main())
