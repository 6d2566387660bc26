"""Eager calls without Python in between: a planned call's launches and autograd node in C++.

An eager forward+backward through a Python `autograd.Function` costs about 150-190 µs of
host time on an H200 host before it launches anything (docs/benchmarks.md, "Host cost"),
as much as dense SDPA's whole call. So once a call key has run from Python (planning,
compiling and autotuning its kernels: ops.Program), its programs are handed to a small C++
extension (csrc/planned_call.cpp): each launch becomes the compiled kernel's handle, grid
and parameter bytes, and later calls with that key allocate, launch with cuLaunchKernel
and record their autograd node without entering Python again.

The extension is built by `torch.utils.cpp_extension` on first use (about a minute, once
per machine and torch version; CPU headers only). If it cannot be built, or under
`SPARSE_KERNELS_NATIVE=0`, every call stays on the Python path: same kernels, same
results, more host time. Launches with a Triton launch hook installed (its profiler) go
through Python too, so that the hooks see them.
"""

from __future__ import annotations

import contextlib
import os
import struct
import warnings
from pathlib import Path

import torch

from .launch import Launch, _hooked, _interpreted

_SOURCE = Path(__file__).with_name("csrc") / "planned_call.cpp"
_CALLS: dict[int, object] = {}  # id(forward ops.Program) -> its native Call (the program is kept alive in _PACKED)
# id(ops.Program) -> (the program, kept alive so that its id is not reused; the extension's
# Program, or None if a launch cannot be packed)
_PACKED: dict[int, tuple[object, object]] = {}
_extension = None  # the built module; False once it failed
_python_only = False  # inside `python_only()`
# How each scalar parameter type of a Triton signature is laid out in the kernel's parameters.
_SCALARS = {"i1": "b", "i8": "b", "u1": "B", "u8": "B", "i16": "h", "u16": "H", "i32": "i", "u32": "I",
            "i64": "q", "u64": "Q", "fp32": "f", "f32": "f", "fp64": "d"}
_MAX_SHARED = 228 * 1024  # above it Triton's launcher sets an attribute that cuLaunchKernel cannot


def enabled() -> bool:
    """Whether eager CUDA calls may run from C++ (not under Triton's interpreter, not turned off)."""
    return os.environ.get("SPARSE_KERNELS_NATIVE", "1") != "0" and not _interpreted()


def extension():
    """The built C++ module, built on the first call; None if it cannot be (warned once)."""
    global _extension
    if _extension is None:
        try:
            from torch.utils.cpp_extension import load

            # The torch version among the flags: torch rebuilds when the flags change, not when
            # torch does, and a module built against other headers would not load.
            version = f"-DSPARSE_KERNELS_TORCH_VERSION={torch.__version__}"
            _extension = load(name="sparse_kernels_native", sources=[str(_SOURCE)], extra_cflags=["-O2", version])
        except Exception as error:  # a missing compiler or ninja: slower, never wrong
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
            warnings.warn(f"sparse attention: the C++ launcher could not be built ({first_line}); eager calls stay "
                          "in Python (same results, more host time). Install a C++ compiler and ninja to build it, "
                          "or set SPARSE_KERNELS_NATIVE=0 to skip the build.", stacklevel=2)
            _extension = False
    return _extension or None


def register(forward, backward=None, d_out: torch.Tensor | None = None) -> None:
    """After `forward` (and `backward`, planned for dO like `d_out`) ran from Python: the
    next eager calls with `forward`'s key run both from C++. A program with a launch that
    cannot be packed (see `_kernel`) stays in Python."""
    known = _CALLS.get(id(forward))
    if (known is not None and (backward is None or known.has_backward)) or not enabled():
        return
    module = extension()
    forward_native = module and _packed(module, forward)
    if not forward_native:
        return
    backward_native = backward is not None and _packed(module, backward)
    if backward_native:
        _CALLS[id(forward)] = module.Call(forward_native, backward_native, list(d_out.stride()))
    else:
        _CALLS[id(forward)] = module.Call(forward_native)


def attention(forward, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra: tuple = ()) -> torch.Tensor | None:
    """The output of a call planned as `forward` (slots q, k, v, *extra), run from C++ with
    its autograd node; None when it must run from Python (not registered yet, a gradient
    needed before a backward has been planned, a launch hook installed)."""
    call = _CALLS.get(id(forward))
    if call is None or _python_only or _hooked():
        return None
    return _extension.attention(q, k, v, list(extra), call)


def forget() -> None:
    """Drop every registered call: later calls run from Python until registered again
    (ops.forget_tuning, with the plans)."""
    _CALLS.clear()
    _PACKED.clear()


@contextlib.contextmanager
def python_only():
    """Eager calls inside run from Python, as before a key's first call (for tests and
    benchmarks that compare the two paths)."""
    global _python_only
    before, _python_only = _python_only, True
    try:
        yield
    finally:
        _python_only = before


def _packed(module, program):
    """An ops.Program as the extension's Program, or None if a launch cannot be packed;
    worked out once per program, so that a refused one costs later calls a lookup."""
    if id(program) not in _PACKED:
        kernels = [_kernel(launch, slots) for launch, slots in program.launches]
        buffers = [(list(b.size), list(b.stride), str(b.dtype).removeprefix("torch."), b.zero) for b in program.buffers]
        _PACKED[id(program)] = (program, None if any(kernel is None for kernel in kernels)
                                else module.Program(buffers, kernels, list(program.outputs)))
    return _PACKED[id(program)][1]


def _kernel(launch: Launch, slots: tuple[int, ...]):
    """One launch as the extension takes it: (CUfunction, grid, threads, shared bytes,
    parameter bytes, each parameter's offset, (offset, slot) per tensor). The parameters
    are what Triton's launcher passes: every argument that is not a constexpr in the
    compiled signature (ints equal to 1 are specialized into constexprs), then its global
    and profile scratch pointers, both null here. None for what plain cuLaunchKernel does
    not cover: clusters, cooperative or programmatic launches, scratch memory."""
    resolved = launch.resolved()
    if resolved is None:
        return None
    compiled, grid, rest = resolved
    meta = compiled.metadata
    if (getattr(meta, "num_ctas", 1) != 1 or getattr(meta, "launch_cooperative_grid", False)
            or getattr(meta, "launch_pdl", False) or getattr(meta, "global_scratch_size", 0)
            or getattr(meta, "profile_scratch_size", 0) or meta.shared > _MAX_SHARED):
        return None
    types = list(compiled.src.signature.values())
    values = [*slots, *rest]
    if len(types) != len(values):
        return None
    data, offsets, pointers = bytearray(), [], []
    for index, (kind, value) in enumerate(zip(types, values)):
        if kind == "constexpr":
            continue
        offsets.append(len(data))
        if kind.startswith("*") and index < len(slots):
            pointers.append((len(data), value))
            data += bytes(8)
        elif kind in _SCALARS:
            data += struct.pack(_SCALARS[kind], value).ljust(8, b"\0")
        else:  # a pointer among the fixed arguments, a half-precision scalar, a tensor descriptor
            return None
    scratch = ("global_scratch_size", "profile_scratch_size")
    for _ in range(sum(hasattr(meta, name) for name in scratch)):
        offsets.append(len(data))
        data += bytes(8)
    return compiled.function, list(grid), 32 * meta.num_warps, meta.shared, bytes(data), offsets, pointers
