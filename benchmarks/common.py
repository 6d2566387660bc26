"""What the GPU benchmarks share: the device to run on, bf16 autocast, timing fences and
the record of what ran where. The scripts are run as `python benchmarks/<name>.py`, so
this folder is on sys.path and they `import common`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Callable, NoReturn

import numpy as np
import torch

from sparse_transformer import acceleration
from sparse_transformer.config import COMPILE_MODES
from sparse_transformer.errors import UserError


def fail(message: str) -> NoReturn:
    """Stop the benchmark with one line and exit status 2 (a usage problem, not a crash)."""
    print(f"{Path(sys.argv[0]).name}: error: {message}", file=sys.stderr)
    sys.exit(2)


def add_compile_arguments(parser: argparse.ArgumentParser) -> None:
    """--compile and --compile-mode, as train.compile and train.compile_mode."""
    parser.add_argument("--compile", action="store_true", help="torch.compile each residual block")
    parser.add_argument("--compile-mode", default="default", choices=COMPILE_MODES,
                        help="torch.compile's mode with --compile (reduce-overhead: CUDA graphs)")


def for_training(model, args: argparse.Namespace):
    """The model as training runs it (acceleration.for_training): recomputation as its
    config says, compiled with --compile-mode when --compile is given."""
    return acceleration.for_training(model, model.config.recompute, args.compile_mode if args.compile else None)


def run_benchmark(main: Callable[[], int]) -> NoReturn:
    """sys.exit(main()), a bad setting or data file (UserError) reported in one line as the CLI does."""
    try:
        code = main()
    except UserError as err:
        fail(str(err))
    sys.exit(code)


def data_overrides(attributes: dict) -> tuple[str, ...]:
    """--set overrides that fit the experiment's model to the data (applied after the user's):
    images give their shape and a context of one image; streams no image shape (windows of
    the experiment's context)."""
    if attributes["modality"] == "image":
        shape = list(attributes["example_shape"])
        return f"model.image_shape={shape}", f"model.context={int(np.prod(shape))}"
    return ("model.image_shape=null",)


def device_or_exit(name: str, attention: str | None = None) -> torch.device:
    """The device to measure on; exits with a message when it cannot run (CUDA missing, or
    the Triton kernels asked for on the CPU without their interpreter)."""
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        fail("CUDA is not available: this benchmark measures a GPU. For a smoke run with tiny "
             "sizes pass --device cpu (see --help).")
    if device.type == "cpu" and attention == "triton" and os.environ.get("TRITON_INTERPRET") != "1":
        fail("the Triton kernels run on the CPU only under their interpreter: start Python with "
             "TRITON_INTERPRET=1 in the environment, or pass --set model.attention=reference")
    return device


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA, as training and sampling run there; fp32 elsewhere."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


def synchronize(device: torch.device) -> None:
    """Wait for the GPU, so that a clock read next holds finished work, not queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# About 0.1 s of GPU time at H100/H200 clocks: longer than any enqueue loop here takes (40 calls of at most 1.5 ms).
BUSY_CYCLES = 200_000_000


def enqueue_ms(fn: Callable[[], object], calls: int = 40, repeats: int = 5) -> float:
    """Host milliseconds to enqueue one call of fn (CUDA), measured while the GPU is kept
    busy ahead of the calls (a sleep kernel), so that waiting for the GPU does not hide
    the host's work: the host cost of a call. The least of `repeats` measurements, since
    whatever else the host runs can only add to it. Keep calls * launches per call well
    under the driver's queue (about 1,000 launches)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        torch.cuda.synchronize()
        torch.cuda._sleep(BUSY_CYCLES)
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, time.perf_counter() - start)
    torch.cuda.synchronize()
    return best / calls * 1e3


def graph_ms(fn: Callable[[], object]) -> float:
    """GPU milliseconds of fn replayed as a CUDA graph: its device time with no host cost."""
    import triton

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return triton.testing.do_bench(graph.replay, warmup=10, rep=50, return_mode="median")


def device_memory_gib(device: torch.device) -> float | None:
    return torch.cuda.get_device_properties(device).total_memory / 2**30 if device.type == "cuda" else None


def environment(device: torch.device) -> dict:
    """What the measurements ran on, for the JSON record."""
    cuda = device.type == "cuda"
    return dict(device=torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu",
                device_memory_gib=device_memory_gib(device), torch=torch.__version__,
                triton=metadata.version("triton"), python=platform.python_version(), date=time.strftime("%Y-%m-%d"))


def write_json(path: str, record: dict) -> None:
    """Write `record` to `path` whole or not at all: to a temporary name, then renamed."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    partial = f"{path}.partial"
    with open(partial, "w") as fh:
        json.dump(record, fh, indent=1, default=str)  # paths among the arguments as strings
    os.replace(partial, path)
    print(f"wrote {path}")
