"""Launching a Triton kernel with as little host work as possible.

Triton's own launch (`kernel[grid](...)`) binds every argument, computes the
specialization of each, builds a cache key from them and the options, and through the
autotuner looks up the tile choice: about 27 µs of Python per launch on an H200 host,
50 µs autotuned (docs/benchmarks.md, "Host cost"). A short attention call needs less GPU
time than that for all its launches together. `Launcher` pays it once per distinct call
signature: the first launch goes through Triton (compiling and autotuning as needed)
and keeps the compiled kernel with the tiles it was compiled for; a later launch with
the same signature calls the compiled kernel directly (`CompiledKernel[grid](*args)`,
which still honours Triton's launch hooks).

The signature is a superset of what Triton specializes on: each tensor's dtype, device
and 16-byte alignment, and the exact value of every other argument. Whatever Triton
would compile differently therefore gets a signature of its own. Under Triton's
interpreter nothing is compiled, so every launch takes Triton's path.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import torch
import triton
from triton.compiler import CompiledKernel

Grid = Callable[[dict], tuple[int, ...]]


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for launch arithmetic. Triton's own `triton.cdiv` and
    `triton.next_power_of_2` are constexpr functions whose wrapper costs microseconds of
    host time per call, which a short attention call cannot spare."""
    return -(-a // b)


def next_power_of_2(x: int) -> int:
    """The smallest power of two >= x, as `triton.next_power_of_2` (0 for 0)."""
    return 0 if x <= 0 else 1 << (x - 1).bit_length()


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _signature(args: tuple, kwargs: dict) -> tuple:
    parts: list[Any] = []
    for arg in args:
        if isinstance(arg, torch.Tensor):
            parts.append((arg.dtype, arg.device, arg.data_ptr() % 16 == 0))
        else:
            parts.append(arg)
    parts.extend(kwargs.items())
    return tuple(parts)


class Launcher:
    """One Triton kernel, autotuned over `configs` (keyed by `key`) unless a launch fixes
    its tiles (without `configs`, every launch must). Call it as
    `launcher(grid, *args, tiles=None, **kwargs)`, where `grid` maps the tile constexprs
    (BLOCK_M, BLOCK_N) to the launch grid."""

    def __init__(self, kernel: triton.runtime.JITFunction, configs: list[triton.Config] | None = None,
                 key: list[str] = (), restore_value: list[str] = (), prune: Callable | None = None):
        self.kernel = kernel
        self.names = kernel.arg_names
        # cache_results: the winner is kept in Triton's cache directory (keyed by the kernel's
        # source, the GPU and the key), so only the first process on a machine pays for tuning.
        self.tuned = configs and triton.autotune(
            configs, key=key, restore_value=restore_value, cache_results=True,
            prune_configs_by={"early_config_prune": prune} if prune else None)(kernel)
        self._compiled: dict[tuple, tuple[CompiledKernel, dict]] = {}

    def __call__(self, grid: Grid, *args: Any, tiles: dict | None = None, **kwargs: Any) -> None:
        signature = (None if tiles is None else tuple(tiles.items()), _signature(args, kwargs))
        found = self._compiled.get(signature)
        if found is not None:
            compiled, meta = found
            values = {**kwargs, **meta}
            compiled[(*grid(meta), 1, 1)[:3]](*args, *(values[name] for name in self.names[len(args):]))
            return
        if tiles is not None:
            compiled, meta = self.kernel[grid](*args, **kwargs, **tiles), tiles
        else:
            compiled = self.tuned[grid](*args, **kwargs)
            meta = dict(self.tuned.best_config.kwargs)
        if isinstance(compiled, CompiledKernel) and not _interpreted():
            self._compiled[signature] = (compiled, meta)

    def chosen_tiles(self) -> dict[str, str]:
        """The autotuner's choice per key in this process (for benchmark records)."""
        return {str(key): str(config) for key, config in self.tuned.cache.items()} if self.tuned else {}
