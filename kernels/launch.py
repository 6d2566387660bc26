"""Launching Triton kernels with as little host work as possible: call plans.

Triton's own launch (`kernel[grid](...)`) binds every argument, computes the
specialization of each, builds a cache key from them and the options, and through the
autotuner looks up the tile choice: 30-50 µs of Python per launch on an H200 host
(docs/benchmarks.md, "Host cost"), more than the GPU needs for all the launches of a
short attention call.

But what a call launches (which kernels, their grids, every argument except its
tensors) depends only on what Triton specializes on (each tensor's shape, strides,
dtype, device and 16-byte alignment: `tensor_key`) and on the call's options. So ops.py
describes a call once per such key as `Launch`es with the buffers they write
(`ops.Program`; decode.py as a tuple of them, `plan`), and a later call with the same key
only allocates its outputs and calls them (or, from C++, native.py). A `Launch`'s first call
goes through Triton (compiling and autotuning as needed) and keeps the compiled kernel
with its grid and arguments resolved; later calls hand them straight to the kernel's
compiled launcher (`CompiledKernel.run`). While a launch hook is installed (Triton's
profiler), launches go through Triton's path, which calls the hooks; under Triton's
interpreter nothing is compiled, so every launch takes Triton's path.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Hashable

import torch
import triton
from triton import knobs
from triton.compiler import CompiledKernel

from . import tiles


def _hooked() -> bool:
    """Whether a launch hook is installed: None or a function in older Triton (3.4, the
    oldest that pyproject.toml admits), a chain of functions (empty when none) in newer."""
    hook = knobs.runtime.launch_enter_hook
    return hook is not None and bool(getattr(hook, "calls", True))


Grid = Callable[[dict], tuple[int, ...]]
LOG2E = tiles.LOG2E.value  # log2(e) as a float, for the host's qk_scale: the kernels' softmax runs in base 2
DTYPES = (torch.float16, torch.bfloat16, torch.float32)  # what every kernel takes (ops and decode check it)


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


def tensor_key(t: torch.Tensor) -> tuple:
    """What Triton compiles a kernel for, of one tensor argument, and what a plan's
    arithmetic reads from it."""
    return t.shape, t.stride(), t.dtype, t.device, t.data_ptr() % 16 == 0


def plan(plans: dict, key: Hashable, build: Callable[[], Any]) -> Any:
    """What a call runs (ops.Program, decode.py's launches): `plans[key]`, built (by
    `build`) on the key's first call."""
    launches = plans.get(key)
    if launches is None:
        launches = plans[key] = build()
    return launches


class Launcher:
    """One Triton kernel, autotuned over `configs` (keyed by `key`) unless a launch fixes
    its tiles (without `configs`, every launch must). `launcher.bind(grid, *args,
    tiles=None, **kwargs)` describes one launch, where `grid` maps the tile constexprs
    (BLOCK_M, BLOCK_N) to the launch grid and `args` are the arguments after the
    kernel's leading tensors, which come with each call of the `Launch`."""

    def __init__(self, kernel: triton.runtime.JITFunction, configs: list[triton.Config] | None = None,
                 key: list[str] = (), restore_value: list[str] = (), prune: Callable | None = None):
        self.kernel = kernel
        self.names = kernel.arg_names
        # cache_results: the winner is kept in Triton's cache directory (keyed by the kernel's
        # source, the GPU and the key), so only the first process on a machine pays for tuning.
        self.tuned = configs and triton.autotune(
            configs, key=key, restore_value=restore_value, cache_results=True,
            prune_configs_by={"early_config_prune": prune} if prune else None)(kernel)

    def bind(self, grid: Grid, *args: Any, tiles: dict | None = None, **kwargs: Any) -> Launch:
        return Launch(self, grid, args, tiles, kwargs)

    def forget(self) -> None:
        """Drop the tile choices made in this process and tune the next launches by timing
        them, not from Triton's disk cache (which would hand back the same choices)."""
        if self.tuned:
            self.tuned.cache.clear()
            self.tuned.cache_results = False

    def chosen_tiles(self) -> dict[str, str]:
        """The autotuner's choice per key in this process (for benchmark records)."""
        return {str(key): str(config) for key, config in self.tuned.cache.items()} if self.tuned else {}


class Launch:
    """One launch of a call plan: a kernel with its grid, tiles and every argument but its
    leading tensors fixed. Called with those tensors, it launches on the current stream."""

    def __init__(self, launcher: Launcher, grid: Grid, args: tuple, tiles: dict | None, kwargs: dict):
        self.launcher, self.grid, self.args, self.tiles, self.kwargs = launcher, grid, args, tiles, kwargs
        self._direct: tuple | None = None  # what the compiled launcher takes, after the first launch
        self.compiled: CompiledKernel | None = None

    def __call__(self, *tensors: torch.Tensor) -> None:
        if self._direct is None or _hooked():
            self._through_triton(tensors)
            return
        run, grid, stream, device, function, metadata, rest = self._direct
        run(*grid, stream(device()), function, metadata, None, None, None, *tensors, *rest)

    def _through_triton(self, tensors: tuple) -> None:
        launcher = self.launcher
        if self.tiles is not None:
            compiled, meta = launcher.kernel[self.grid](*tensors, *self.args, **self.kwargs, **self.tiles), self.tiles
        else:
            compiled = launcher.tuned[self.grid](*tensors, *self.args, **self.kwargs)
            meta = dict(launcher.tuned.best_config.kwargs)
        if self._direct is None and isinstance(compiled, CompiledKernel) and not _interpreted():
            # The arguments in the kernel's order: the given ones, then every constexpr by name.
            values = {**self.kwargs, **meta}
            rest = (*self.args, *(values[name] for name in launcher.names[len(tensors) + len(self.args):]))
            driver = triton.runtime.driver.active
            self._direct = (compiled.run, (*self.grid(meta), 1, 1)[:3], driver.get_current_stream,
                            driver.get_current_device, compiled.function, compiled.packed_metadata, rest)
            self.compiled = compiled

    def resolved(self) -> tuple[CompiledKernel, tuple[int, int, int], tuple] | None:
        """After the first launch: the compiled kernel, the grid, and the arguments after
        the leading tensors, every constexpr included (what native.py packs); None before."""
        return None if self._direct is None else (self.compiled, self._direct[1], self._direct[6])
