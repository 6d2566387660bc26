"""Launching the kernels: input checks, pass sequencing, autotuning, autograd, custom op.

Two entry points, both with autograd: `attention(q, k, v, spec)` for the paper's
patterns (closed-form passes, `KernelSpec`) and `block_attention(q, k, v, lists)` for any
block-sparse layout (`blocks.BlockLists`). q is (batch, H, n, d_qk); k (batch, H_kv,
n, d_qk) and v (batch, H_kv, n, d_v) may have fewer heads, H_kv dividing H (grouped-query
attention: query head h reads key/value head h // (H // H_kv), in place). Head dims are
any multiple of 16 from 16 to 256, d_qk and d_v separately (half-size query/key
projections give d_qk < d_v); the kernels pad them to a power of two with masked loads.
Any strides with a contiguous last dimension (so the model's (batch, n, heads, head_dim)
projections pass without a copy); the output comes in (batch, n, H, d_v) memory seen as
(batch, H, n, d_v), with the logsumexp (batch, H, n) in fp32, natural log.

The pattern or layout arrives as plain numbers and tensors; this layer never imports the
model package. On CPU tensors the kernels run under Triton's interpreter (TRITON_INTERPRET=1
must be set before triton is imported), which is how CI checks them.

Precision: bf16 and fp16 inputs use the tensor cores with fp32 accumulation; fp32
inputs are accepted and multiplied in tf32 on the GPU (Triton's default for fp32 dots,
about 3e-4 relative error), exactly in the interpreter.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import triton

from . import blocks as block_lists
from .backward import attention_dkdv_kernel, attention_dq_kernel
from .block_sparse import block_combine_kernel, block_dkdv_kernel, block_dq_kernel, block_forward_kernel, block_sum_kernel
from .blocks import BlockLists
from .forward import attention_forward_kernel
from .geometry import MODES
from . import native
from .launch import DTYPES, LOG2E, Grid, Launch, Launcher, _interpreted, cdiv, next_power_of_2, plan, tensor_key

HEAD_DIMS = tuple(range(16, 257, 16))


class KernelSpec(NamedTuple):
    """A pattern as the kernels see it.

    passes: per pass, (mode of even heads, mode of odd heads), each a number of
        geometry.MODES (what the kernels take as constexprs, and what the custom ops
        carry, so no name is looked up again); passes after the first continue the
        first's softmax (merged heads).
    stride: l. summary: c (fixed only; 1 otherwise).
    summary_groups: v, the number of distinct summary sub-blocks in use (1 = shared).
    summary_head_div: head h reads sub-block (h // summary_head_div) % summary_groups.
    """

    passes: tuple[tuple[int, int], ...]
    stride: int
    summary: int = 1
    summary_groups: int = 1
    summary_head_div: int = 1


class Blocks(NamedTuple):
    """Tile sizes for one launch; None fields mean "autotune"."""

    block_m: int | None = None
    block_n: int | None = None


# ---------------------------------------------------------------------- tiles
# Candidate tiles (BLOCK_M, BLOCK_N, warps, stages) per kernel kind for the GPU; Triton
# benchmarks them on first use for each key and keeps the winner (launch.Launcher).
_SHAPES = {
    "forward": [(128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 4, 3), (128, 128, 8, 3), (64, 64, 4, 3), (128, 32, 4, 4),
                (64, 32, 4, 4)],
    "dkdv": [(32, 128, 4, 3), (64, 128, 8, 3), (64, 64, 4, 3), (32, 64, 4, 3), (16, 64, 4, 4), (64, 32, 4, 3)],
    "dq": [(128, 32, 4, 3), (128, 64, 4, 3), (128, 64, 8, 3), (64, 64, 4, 3), (64, 32, 4, 3), (64, 16, 4, 4), (32, 64, 4, 3)],
}
# Extra candidates, only for what the shapes above do not serve: head dims above 128
# (fewer stages, smaller tiles, to fit shared memory) and layouts of 16- or 32-row blocks.
_SMALL = [(64, 64, 4, 2), (64, 32, 4, 2), (32, 32, 4, 2), (32, 16, 4, 2), (16, 32, 4, 2), (16, 16, 4, 2)]
SHARED_MEMORY = 227 * 1024  # bytes a program may use on an H100 or H200 (228 KB per SM)


def _configs(kind: str) -> list[triton.Config]:
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
            for m, n, w, s in _SHAPES[kind] + _SMALL]


def _padded(dim: int) -> int:
    """The power of two a head dim is padded to inside the kernels."""
    return next_power_of_2(dim)


def shared_bytes(kind: str, block_m: int, block_n: int, stages: int, qk_pad: int, v_pad: int, item: int) -> int:
    """An upper estimate of a program's shared memory: the tile it keeps, `stages` copies
    of the tiles it streams, and the probabilities staged for the second product."""
    resident, streamed = {
        "forward": (block_m * qk_pad, block_n * (qk_pad + v_pad)),
        "dq": (block_m * (qk_pad + v_pad), block_n * (qk_pad + v_pad)),
        "dkdv": (block_n * (qk_pad + v_pad), block_m * (qk_pad + v_pad)),
    }[kind]
    return item * (resident + stages * streamed + block_m * block_n)


def _launch_value(name, named_args, kwargs):
    return kwargs.get(name, named_args.get(name))


def _pruner(kind: str, block_sparse: bool):
    """The autotuner's early prune for one kernel kind: tiles that fit in shared memory and,
    for the block kernels, divide the layout's block (a query tile lies in one block).

    The paper kernels take exactly the candidates of `_SHAPES` at head dims up to 128;
    larger dims take the candidates that fit, estimated by `shared_bytes`."""
    shapes = {(m, n, w, s) for m, n, w, s in _SHAPES[kind]}

    def prune(configs, named_args, **kwargs):
        qk_pad, v_pad = _launch_value("QK_PAD", named_args, kwargs), _launch_value("V_PAD", named_args, kwargs)
        item = named_args["Q"].element_size()

        def fits(c):
            m, n = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]
            return shared_bytes(kind, m, n, c.num_stages, qk_pad, v_pad, item) <= SHARED_MEMORY

        if block_sparse:
            block = _launch_value("BLOCK", named_args, kwargs)
            kept = [c for c in configs if block % c.kwargs["BLOCK_M"] == 0 and block % c.kwargs["BLOCK_N"] == 0]
            kept = [c for c in kept if fits(c)] or kept[-1:]  # the smallest tile, 16 x 16, always divides
        elif max(qk_pad, v_pad) <= 128:
            kept = [c for c in configs if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) in shapes]
            if max(qk_pad, v_pad) == 128:  # large tiles with head dim 128 exceed shared memory
                kept = [c for c in kept if c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] <= 128 * 64] or kept
        else:
            kept = [c for c in configs if fits(c)] or configs[-1:]
        return kept

    return prune


_KEY = ["N_BUCKET", "QK_DIM", "V_DIM", "MODE_EVEN", "MODE_ODD", "CONTINUE"]
_FORWARD = Launcher(attention_forward_kernel, _configs("forward"), _KEY, ["O", "LSE"], _pruner("forward", False))
_DKDV = Launcher(attention_dkdv_kernel, _configs("dkdv"), _KEY, ["DK", "DV"], _pruner("dkdv", False))
_DQ = Launcher(attention_dq_kernel, _configs("dq"), _KEY, ["DQ"], _pruner("dq", False))
_BLOCK_KEY = ["N_BUCKET", "QK_DIM", "V_DIM", "BLOCK"]
# The block kernels only store (nothing accumulates in place): no values to restore between trials.
_BLOCK_FORWARD = Launcher(block_forward_kernel, _configs("forward"), _BLOCK_KEY, prune=_pruner("forward", True))
_BLOCK_DKDV = Launcher(block_dkdv_kernel, _configs("dkdv"), _BLOCK_KEY, prune=_pruner("dkdv", True))
_BLOCK_DQ = Launcher(block_dq_kernel, _configs("dq"), _BLOCK_KEY, prune=_pruner("dq", True))
_BLOCK_COMBINE = Launcher(block_combine_kernel)  # short passes over split lists: fixed tiles (`_sum_launches`)
_BLOCK_SUM = Launcher(block_sum_kernel)
_LAUNCHERS = {"forward": _FORWARD, "dkdv": _DKDV, "dq": _DQ,
              "block forward": _BLOCK_FORWARD, "block dkdv": _BLOCK_DKDV, "block dq": _BLOCK_DQ}


def tuned_tiles() -> dict[str, dict[str, str]]:
    """The tiles the autotuner chose in this process, per kernel and key (for benchmark records)."""
    return {name: launcher.chosen_tiles() for name, launcher in _LAUNCHERS.items()}


def forget_tuning() -> None:
    """Forget this process's call plans and autotuned tiles: the next calls plan again and
    tune their tiles by timing them. The autotune key holds no layout, and a call plan
    keeps the kernels it first launched, so without this the first layout a process runs
    picks the tiles of every later layout of the same length and head dims (benchmarks
    that compare layouts call it between rows). The calls registered to run from C++ go
    with the plans: they launch the kernels of the old tiles."""
    _PLANS.clear()
    native.forget()
    for launcher in _LAUNCHERS.values():
        launcher.forget()


INTERPRETER_BLOCKS = Blocks(32, 32)


def _tiles(blocks: Blocks, q: torch.Tensor, v: torch.Tensor, layout_block: int | None = None) -> dict | None:
    """The tiles to launch with: fixed when given (tests) or under the interpreter (at
    most the layout's block), None to autotune. Fixed tiles run with as many pipeline
    stages (3, else 2, else 1) as fit in shared memory for every kernel kind at these
    head dims, since Triton would otherwise refuse them at dims above 128."""
    if blocks.block_m is None and _interpreted():
        blocks = INTERPRETER_BLOCKS if layout_block is None else Blocks(min(32, layout_block), min(32, layout_block))
    if blocks.block_m is None:
        return None
    m, n = blocks.block_m, blocks.block_n or blocks.block_m
    qk_pad, v_pad, item = _padded(q.shape[-1]), _padded(v.shape[-1]), q.element_size()
    stages = next((s for s in (3, 2) if all(shared_bytes(kind, m, n, s, qk_pad, v_pad, item) <= SHARED_MEMORY
                                            for kind in _SHAPES)), 1)
    return {"BLOCK_M": m, "BLOCK_N": n, "num_stages": stages}


# ---------------------------------------------------------------------- checks
def _check_tensors(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Refuse bad q, k, v with a message before anything is launched."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"sparse attention: {name} must have shape (batch, heads, n, head_dim), got {tuple(t.shape)}")
        if t.dtype not in DTYPES:
            raise TypeError(f"sparse attention: {name} has dtype {t.dtype}; use float16, bfloat16 or float32")
        if t.stride(-1) != 1:
            raise ValueError(f"sparse attention: {name} must be contiguous in its last dimension (stride {t.stride(-1)}); call .contiguous()")
    batch, heads, n, d_qk = q.shape
    kv_heads = k.shape[1]
    if k.shape != (batch, kv_heads, n, d_qk) or v.shape[:3] != (batch, kv_heads, n):
        raise ValueError(
            f"sparse attention: shapes must be q (batch, H, n, d_qk), k (batch, H_kv, n, d_qk) and v (batch, H_kv, n, d_v), "
            f"got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if kv_heads == 0 or heads % kv_heads:
        raise ValueError(f"sparse attention: q's {heads} heads must be a multiple of k and v's {kv_heads} heads "
                         "(grouped-query attention: each key/value head serves H // H_kv query heads)")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"sparse attention: q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"sparse attention: q, k, v are on different devices: {q.device}, {k.device}, {v.device}")
    if q.device.type == "cpu" and not _interpreted():
        raise RuntimeError(
            "sparse attention: the Triton kernels need a CUDA tensor; for CPU tensors set TRITON_INTERPRET=1 "
            "before importing triton (slow: for tests) or use the reference backend"
        )
    if q.device.type not in ("cpu", "cuda"):
        raise ValueError(f"sparse attention: unsupported device {q.device}; use CUDA (or CPU with TRITON_INTERPRET=1)")
    for name, dim in (("query/key", d_qk), ("value", v.shape[-1])):
        if dim not in HEAD_DIMS:
            raise ValueError(f"sparse attention: {name} head_dim {dim} is not supported; use a multiple of 16 from 16 to 256")
    if batch * heads > 65535:
        raise ValueError(f"sparse attention: batch * heads = {batch * heads} exceeds the grid limit 65535")


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: KernelSpec) -> None:
    """Refuse bad inputs to `attention` with a message before anything is launched."""
    _check_tensors(q, k, v)
    for even, odd in spec.passes:
        for mode in (even, odd):
            if mode not in MODES.values():
                known = ", ".join(f"{number} ({name})" for name, number in MODES.items())
                raise ValueError(f"sparse attention: unknown mode {mode!r}; modes are {known}")
    if spec.stride < 1 or spec.summary < 1 or spec.summary > spec.stride:
        raise ValueError(f"sparse attention: need stride >= 1 and 1 <= summary <= stride, got {spec.stride}, {spec.summary}")


def check_block_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lists: BlockLists, blocks: Blocks) -> None:
    """Refuse bad inputs to `block_attention` with a message before anything is launched."""
    _check_tensors(q, k, v)
    block_lists.check(lists, q.shape[0], q.shape[1], q.shape[2])
    if lists.kv_count.device != q.device:
        raise ValueError(f"sparse attention: the block lists are on {lists.kv_count.device} and q on {q.device}; "
                         "build the layout on q's device")
    for name, tile in (("block_m", blocks.block_m), ("block_n", blocks.block_n)):
        if tile is not None and (tile < 16 or lists.block % tile):
            raise ValueError(f"sparse attention: tile {name}={tile} must be at least 16 and divide the layout's block {lists.block}")


# ---------------------------------------------------------------------- programs
# What a call runs is planned once per call key (the tensors' `tensor_key`s and the call's
# options) as a `Program`: the arithmetic below runs on a key's first call; later calls
# only allocate their buffers and launch, from Python (`run`) or, once a key's first call
# has compiled its kernels, from C++ (native.py).
_PLANS: dict = {}


class Buffer(NamedTuple):
    """A tensor a call allocates, uninitialized unless `zero`: its shape, strides (an
    output is (batch, H, n, d) seen over (batch, n, H, d) memory) and dtype."""

    size: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype
    zero: bool = False


class Program(NamedTuple):
    """Everything one call runs: slots 0.. hold the call's tensors, the next ones its
    `buffers`, allocated per call; each launch names its tensors by slot, in the kernel's
    order, and `outputs` names the slots the call returns."""

    buffers: tuple[Buffer, ...]
    launches: tuple[tuple[Launch, tuple[int, ...]], ...]
    outputs: tuple[int, ...]


def _allocate(buffer: Buffer, device: torch.device) -> torch.Tensor:
    """Every buffer a call allocates comes from here (tests poison them to catch elements a
    kernel never writes)."""
    tensor = torch.empty_strided(buffer.size, buffer.stride, dtype=buffer.dtype, device=device)
    return tensor.zero_() if buffer.zero else tensor


def run(program: Program, tensors: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    """Run a program on the current stream: allocate its buffers, launch, return its outputs."""
    device = tensors[0].device
    slots = [*tensors, *(_allocate(buffer, device) for buffer in program.buffers)]
    for launch, args in program.launches:
        launch(*[slots[i] for i in args])
    return [slots[i] for i in program.outputs]


def _slots(*names: str) -> dict[str, int]:
    """Slot numbers by name, in order (the call's tensors; buffers are added after them)."""
    return {name: index for index, name in enumerate(names)}


def _at(slot: dict[str, int], *names: str) -> tuple[int, ...]:
    """The slots of a launch's tensors, in the kernel's order."""
    return tuple(slot[name] for name in names)


def _output(t: torch.Tensor, heads: int | None = None, zero: bool = False) -> Buffer:
    """A (batch, heads, n, head_dim) buffer shaped as `t` (with `heads` heads if given),
    stored as (batch, n, heads, head_dim): the layout the model's projections use, so its
    output needs no copy to merge the heads."""
    batch, own_heads, n, head_dim = t.shape
    heads = heads or own_heads
    return Buffer((batch, heads, n, head_dim), (n * heads * head_dim, head_dim, heads * head_dim, 1), t.dtype, zero)


def _row_stats(q: torch.Tensor) -> Buffer:
    """A (batch, heads, n) fp32 buffer: logsumexp or delta per row."""
    batch, heads, n, _ = q.shape
    return Buffer((batch, heads, n), (heads * n, n, 1), torch.float32)


def _d_out(do: torch.Tensor) -> torch.Tensor:
    """dO with a contiguous last dimension, as the kernels take it."""
    return do if do.stride(-1) == 1 else do.contiguous()


def _rows(modes: tuple[int, int], n: int, stride: int) -> int:
    """Extent of the virtual row index over the modes of one pass."""
    return stride * cdiv(n, stride) if MODES["strided"] in modes else n


def _grid(rows: int, tile: str, programs: int) -> Grid:
    """ceil(rows / tile) row tiles by `programs`, where `tile` names the constexpr that tiles the rows."""
    return lambda meta: (cdiv(rows, meta[tile]), programs)


def _common_args(spec: KernelSpec, n: int, heads: int, kv_heads: int) -> dict:
    return dict(
        H=heads, GROUP=heads // kv_heads, n=n, L=spec.stride, G=cdiv(n, spec.stride), C=spec.summary,
        SUMMARY_GROUPS=spec.summary_groups, SUMMARY_HEAD_DIV=spec.summary_head_div,
        N_BUCKET=next_power_of_2(n),
    )


def _dims(q: torch.Tensor, v: torch.Tensor) -> dict:
    return dict(QK_DIM=q.shape[-1], V_DIM=v.shape[-1], QK_PAD=_padded(q.shape[-1]), V_PAD=_padded(v.shape[-1]))


def _forward_key(q, k, v, spec: KernelSpec, sm_scale: float, blocks: Blocks) -> tuple:
    return ("forward", tensor_key(q), tensor_key(k), tensor_key(v), spec, sm_scale, blocks)


def forward_program(q, k, v, spec: KernelSpec, sm_scale: float, blocks: Blocks = Blocks()) -> Program:
    """The program of `forward` for these tensors, planned (and the inputs checked: every
    check reads only what the key holds) on its key's first call."""
    return plan(_PLANS, _forward_key(q, k, v, spec, sm_scale, blocks), lambda: _forward_program(q, k, v, spec, sm_scale, blocks))


def forward(q, k, v, spec: KernelSpec, sm_scale: float, blocks: Blocks = Blocks()):
    """Output (layout of q) and logsumexp (batch, heads, n) fp32."""
    return run(forward_program(q, k, v, spec, sm_scale, blocks), (q, k, v))


def _forward_program(q, k, v, spec: KernelSpec, sm_scale: float, blocks: Blocks) -> Program:
    """Slots q, k, v | out, lse. One launch per pass; a pass after the first continues the
    first's softmax."""
    check_inputs(q, k, v, spec)
    batch, heads, n, _ = q.shape
    out = _output(v, heads)
    tiles, common, dims = _tiles(blocks, q, v), _common_args(spec, n, heads, k.shape[1]), _dims(q, v)
    strides = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride[:3])
    launches = tuple(
        (_FORWARD.bind(_grid(_rows((even, odd), n, spec.stride), "BLOCK_M", batch * heads), *strides, tiles=tiles,
                       qk_scale=sm_scale * LOG2E, MODE_EVEN=even, MODE_ODD=odd, CONTINUE=index > 0,
                       **dims, **common), (0, 1, 2, 3, 4))
        for index, (even, odd) in enumerate(spec.passes)
    )
    return Program((out, _row_stats(q)), launches, (3, 4))


def _dkdv_launches(even: int, odd: int, spec: KernelSpec, group: int) -> list[tuple[int, int]]:
    """(first query head in the group, how many) per dK/dV launch of one pass. One launch
    sums the whole group in registers when its heads visit keys in one order; otherwise
    (modes that differ by head, or distinct summary columns) each query head gets its own
    launch, each adding to what the previous stored."""
    shared_order = group == 1 or (even == odd and not (even == MODES["summary"] and spec.summary_groups > 1))
    return [(0, group)] if shared_order else [(member, 1) for member in range(group)]


def backward_program(do, q, k, v, out, lse, spec: KernelSpec, sm_scale: float, blocks: Blocks = Blocks()) -> Program:
    """The program of `backward` for these tensors (dO with a contiguous last dimension),
    planned on its key's first call."""
    key = ("backward", *map(tensor_key, (do, q, k, v, out, lse)), spec, sm_scale, blocks)
    return plan(_PLANS, key, lambda: _backward_program(do, q, k, v, out, spec, sm_scale, blocks))


def backward(do, q, k, v, out, lse, spec: KernelSpec, sm_scale: float, blocks: Blocks = Blocks()):
    """dq, dk, dv (layouts of q, k, v)."""
    do = _d_out(do)
    return run(backward_program(do, q, k, v, out, lse, spec, sm_scale, blocks), (do, q, k, v, out, lse))


def _backward_program(do, q, k, v, out, spec: KernelSpec, sm_scale: float, blocks: Blocks) -> Program:
    """Slots do, q, k, v, out, lse | delta, dq, dk, dv. Per pass, the dQ launch first (the
    first one also writes delta = rowsum(dO * O)), then the dK/dV launches that read it."""
    batch, heads, n, _ = q.shape
    kv_heads = k.shape[1]
    # Keys no program owns stay zero: a first pass over summaries owns only summary columns.
    unowned = MODES["summary"] in spec.passes[0]
    dq, dk, dv = _output(q), _output(k, zero=unowned), _output(v, zero=unowned)
    slot = _slots("do", "q", "k", "v", "out", "lse", "delta", "dq", "dk", "dv")
    dq_args = _at(slot, "q", "k", "v", "out", "do", "lse", "delta", "dq")
    dkdv_args = _at(slot, "q", "k", "v", "do", "lse", "delta", "dk", "dv")
    tiles, common, dims = _tiles(blocks, q, v), _common_args(spec, n, heads, kv_heads), _dims(q, v)
    scales = dict(qk_scale=sm_scale * LOG2E, sm_scale=sm_scale)
    inputs = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3])
    launches = []
    for index, (even, odd) in enumerate(spec.passes):
        rows = _rows((even, odd), n, spec.stride)
        flags = dict(MODE_EVEN=even, MODE_ODD=odd, CONTINUE=index > 0)
        launches.append((_DQ.bind(
            _grid(rows, "BLOCK_M", batch * heads), *inputs, *out.stride()[:3], *do.stride()[:3], *dq.stride[:3],
            tiles=tiles, **scales, **common, **flags, WRITE_DELTA=index == 0, **dims,
        ), dq_args))
        launches.extend((_DKDV.bind(
            _grid(rows, "BLOCK_N", batch * kv_heads), *inputs, *do.stride()[:3], *dk.stride[:3], *dv.stride[:3],
            tiles=tiles, **scales, **common, **flags, HEAD_FIRST=first, HEADS=count,
            ACCUMULATE=index > 0 or number > 0, **dims,
        ), dkdv_args) for number, (first, count) in enumerate(_dkdv_launches(even, odd, spec, common["GROUP"])))
    return Program((_row_stats(q), dq, dk, dv), tuple(launches), (7, 8, 9))


def _list_args(lists: BlockLists, n: int, heads: int, kv_heads: int) -> dict:
    """The block kernels' scalar arguments for a layout: which of its (LB, LH) lists a
    (batch, head) reads (stride 0 along a dimension the layout shares) and its block."""
    lb, lh, nb = lists.kv_count.shape
    return dict(H=heads, GROUP=heads // kv_heads, n=n, NB=nb, LIST_SB=lh if lb > 1 else 0, LIST_SH=int(lh > 1),
                N_BUCKET=next_power_of_2(n), BLOCK=lists.block, EVEN_N=n % lists.block == 0)


def _split_args(work: torch.Tensor, split: torch.Tensor, nb: int) -> dict:
    """A pass's work and split table sizes, from the shapes alone (no sync)."""
    return dict(NW=work.shape[2], NS=split.shape[2], NSLOTS=block_lists.slots(work, split, nb))


def _scratch(slot: dict[str, int], buffers: list[Buffer], sizes: dict, pairs: int, block: int,
             stand_in: str, **widths: int) -> None:
    """The fp32 rows that hold split lists' partial results in one pass: pairs * NSLOTS *
    block rows of each width, added to `buffers` and `slot` under their names; when the
    pass splits nothing, the slot `stand_in` (any fp32 tensor) takes their place."""
    for name, width in widths.items():
        if sizes["NS"]:
            slot[name] = max(slot.values()) + 1  # the next slot (names that stand in for another take none)
            rows = pairs * sizes["NSLOTS"] * block
            buffers.append(Buffer((rows, width), (width, 1), torch.float32))
        else:
            slot[name] = slot[stand_in]


def _scheduled(sizes: dict, block: int, pairs: int, tile: str) -> Grid:
    """The 1-D grid of a block pass: every tile of every work row for every pair
    (block_sparse._scheduled_tile)."""
    return lambda meta: (sizes["NW"] * (block // meta[tile]) * pairs,)


def _sum_launches(launcher: Launcher, sizes: dict, pairs: int, common: dict, outputs: tuple, **kwargs) -> list:
    """The launches that add up split lists' pieces into `outputs` ((slots of the part,
    of the output and of the split table), the output's buffer, its own arguments) each,
    one launch per output); none when the pass splits nothing."""
    if not sizes["NS"]:
        return []
    block = common["BLOCK"]
    split = dict(n=common["n"], NS=sizes["NS"], NSLOTS=sizes["NSLOTS"], LIST_SB=common["LIST_SB"],
                 LIST_SH=common["LIST_SH"], BLOCK=block)
    return [(launcher.bind(lambda meta: (sizes["NS"] * (block // meta["BLOCK_M"]), pairs), *dst.stride[:3],
                           tiles={"BLOCK_M": min(block, 64)}, **split, **kwargs, **own), args)  # short passes: fixed tiles
            for args, dst, own in outputs]


def list_inputs(lists: BlockLists) -> tuple[torch.Tensor, ...]:
    """A layout's tensors as the block kernels take them: contiguous, in BlockLists order,
    the masks as bytes."""
    *tables, masks = (t.contiguous() for t in lists[1:])
    return (*tables, masks.view(torch.uint8))


_LIST_FIELDS = BlockLists._fields[1:]  # the tensors, in BlockLists order
_KV_LISTS = ("kv_count", "kv_partial", "kv_work", "kv_index", "kv_mask", "masks")
_Q_LISTS = ("q_count", "q_partial", "q_work", "q_index", "q_mask", "masks")


def _block_key(kind: str, tensors: tuple, lists: BlockLists, sm_scale: float, blocks: Blocks) -> tuple:
    return (kind, *map(tensor_key, tensors), *map(tensor_key, lists[1:]), lists.block, sm_scale, blocks)


def block_forward_program(q, k, v, lists: BlockLists, sm_scale: float, blocks: Blocks = Blocks()) -> Program:
    """The program of `block_forward`, planned (and the inputs checked) on its key's first call."""
    key = _block_key("block forward", (q, k, v), lists, sm_scale, blocks)
    return plan(_PLANS, key, lambda: _block_forward_program(q, k, v, lists, sm_scale, blocks))


def block_forward(q, k, v, lists: BlockLists, sm_scale: float, blocks: Blocks = Blocks()):
    """Output (layout of q) and logsumexp (batch, heads, n) fp32 of a block-sparse layout:
    the forward launch, then (when the layout splits a list) the launch that combines
    the pieces' partial results."""
    return run(block_forward_program(q, k, v, lists, sm_scale, blocks), (q, k, v, *list_inputs(lists)))


def _block_forward_program(q, k, v, lists: BlockLists, sm_scale: float, blocks: Blocks) -> Program:
    """Slots q, k, v, the layout's tensors (`list_inputs`) | out, lse, the pieces' parts."""
    check_block_inputs(q, k, v, lists, blocks)
    batch, heads, n, _ = q.shape
    dims, common = _dims(q, v), _list_args(lists, n, heads, k.shape[1])
    sizes, pairs = _split_args(lists.kv_work, lists.kv_split, common["NB"]), batch * heads
    out = _output(v, heads)
    buffers = [out, _row_stats(q)]
    slot = _slots("q", "k", "v", *_LIST_FIELDS, "out", "lse")
    _scratch(slot, buffers, sizes, pairs, lists.block, "lse", o_part=dims["V_PAD"], lse_part=1)
    main = _BLOCK_FORWARD.bind(
        _scheduled(sizes, lists.block, pairs, "BLOCK_M"),
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride[:3], tiles=_tiles(blocks, q, v, lists.block),
        KV_WIDTH=lists.kv_index.shape[-1], qk_scale=sm_scale * LOG2E, NW=sizes["NW"], NSLOTS=sizes["NSLOTS"],
        **common, **dims,
    )
    combine = _sum_launches(_BLOCK_COMBINE, sizes, pairs, common,
                            ((_at(slot, "o_part", "lse_part", "out", "lse", "kv_split"), out, {}),),
                            H=heads, V_DIM=dims["V_DIM"], V_PAD=dims["V_PAD"])
    main_args = _at(slot, "q", "k", "v", "out", "lse", "o_part", "lse_part", *_KV_LISTS)
    return Program(tuple(buffers), ((main, main_args), *combine), _at(slot, "out", "lse"))


def block_backward_program(do, q, k, v, out, lse, lists: BlockLists, sm_scale: float, blocks: Blocks = Blocks()) -> Program:
    """The program of `block_backward` (dO with a contiguous last dimension), planned on its key's first call."""
    key = _block_key("block backward", (do, q, k, v, out, lse), lists, sm_scale, blocks)
    return plan(_PLANS, key, lambda: _block_backward_program(do, q, k, v, out, lists, sm_scale, blocks))


def block_backward(do, q, k, v, out, lse, lists: BlockLists, sm_scale: float, blocks: Blocks = Blocks()):
    """dq, dk, dv (layouts of q, k, v) of a block-sparse layout: the dQ launch (which also
    writes delta = rowsum(dO * O)), then the dK/dV launch that reads it, then (for the
    lists the layout splits) the launches that add up their pieces' parts."""
    do = _d_out(do)
    program = block_backward_program(do, q, k, v, out, lse, lists, sm_scale, blocks)
    return run(program, (do, q, k, v, out, lse, *list_inputs(lists)))


def _block_backward_program(do, q, k, v, out, lists: BlockLists, sm_scale: float, blocks: Blocks) -> Program:
    """Slots do, q, k, v, out, lse, the layout's tensors | delta, dq, dk, dv, the pieces'
    parts. The dQ pass over the key lists, the dK/dV pass over the query lists, then the
    sums of split lists."""
    batch, heads, n, _ = q.shape
    kv_heads = k.shape[1]
    tiles, common, dims = _tiles(blocks, q, v, lists.block), _list_args(lists, n, heads, kv_heads), _dims(q, v)
    scales = dict(qk_scale=sm_scale * LOG2E, sm_scale=sm_scale)
    inputs = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3])
    kv_sizes = _split_args(lists.kv_work, lists.kv_split, common["NB"])
    q_sizes = _split_args(lists.q_work, lists.q_split, common["NB"])
    dq, dk, dv = _output(q), _output(k), _output(v)
    buffers = [_row_stats(q), dq, dk, dv]
    slot = _slots("do", "q", "k", "v", "out", "lse", *_LIST_FIELDS, "delta", "dq", "dk", "dv")
    _scratch(slot, buffers, kv_sizes, batch * heads, lists.block, "delta", dq_part=dims["QK_PAD"])
    _scratch(slot, buffers, q_sizes, batch * kv_heads, lists.block, "delta", dk_part=dims["QK_PAD"], dv_part=dims["V_PAD"])
    dq_main = _BLOCK_DQ.bind(
        _scheduled(kv_sizes, lists.block, batch * heads, "BLOCK_M"),
        *inputs, *out.stride()[:3], *do.stride()[:3], *dq.stride[:3], tiles=tiles,
        KV_WIDTH=lists.kv_index.shape[-1], NW=kv_sizes["NW"], NSLOTS=kv_sizes["NSLOTS"], **scales, **common, **dims,
    )
    dkdv_main = _BLOCK_DKDV.bind(
        _scheduled(q_sizes, lists.block, batch * kv_heads, "BLOCK_N"),
        *inputs, *do.stride()[:3], *dk.stride[:3], *dv.stride[:3], tiles=tiles,
        Q_WIDTH=lists.q_index.shape[-1], NW=q_sizes["NW"], NSLOTS=q_sizes["NSLOTS"], **scales, **common, **dims,
    )
    qk, vd = dict(DIM=dims["QK_DIM"], PAD=dims["QK_PAD"]), dict(DIM=dims["V_DIM"], PAD=dims["V_PAD"])
    dq_sums = _sum_launches(_BLOCK_SUM, kv_sizes, batch * heads, common, ((_at(slot, "dq_part", "dq", "kv_split"), dq, qk),),
                            H=heads, GROUP=1)
    dkdv_sums = _sum_launches(_BLOCK_SUM, q_sizes, batch * kv_heads, common,
                              ((_at(slot, "dk_part", "dk", "q_split"), dk, qk), (_at(slot, "dv_part", "dv", "q_split"), dv, vd)),
                              H=kv_heads, GROUP=heads // kv_heads)
    launches = ((dq_main, _at(slot, "q", "k", "v", "out", "do", "lse", "delta", "dq", "dq_part", *_KV_LISTS)),
                (dkdv_main, _at(slot, "q", "k", "v", "do", "lse", "delta", "dk", "dv", "dk_part", "dv_part", *_Q_LISTS)),
                *dq_sums, *dkdv_sums)
    return Program(tuple(buffers), launches, _at(slot, "dq", "dk", "dv"))


# ---------------------------------------------------------------------- custom ops
# The launches are wrapped as torch.library custom ops with fake (shape-only)
# implementations, so torch.compile and torch.export treat them as opaque operators
# instead of breaking the graph. Eager calls skip them (see `_eager`): a custom op's
# dispatch costs more host time than the kernels of a short call need on the GPU.
def _flat_passes(spec: KernelSpec) -> list[int]:
    return [mode for pair in spec.passes for mode in pair]


def _spec(passes: list[int], stride: int, summary: int, summary_groups: int, summary_head_div: int) -> KernelSpec:
    pairs = tuple((passes[i], passes[i + 1]) for i in range(0, len(passes), 2))
    return KernelSpec(pairs, stride, summary, summary_groups, summary_head_div)


@torch.library.custom_op("sparse_kernels::attention_forward", mutates_args=())
def attention_forward_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, passes: list[int], stride: int, summary: int,
    summary_groups: int, summary_head_div: int, sm_scale: float, block_m: int, block_n: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    spec = _spec(passes, stride, summary, summary_groups, summary_head_div)
    return forward(q, k, v, spec, sm_scale, Blocks(block_m or None, block_n or None))


@attention_forward_op.register_fake
def _(q, k, v, passes, stride, summary, summary_groups, summary_head_div, sm_scale, block_m, block_n):
    return _allocate(_output(v, q.shape[1]), q.device), _allocate(_row_stats(q), q.device)


@torch.library.custom_op("sparse_kernels::attention_backward", mutates_args=())
def attention_backward_op(
    do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
    passes: list[int], stride: int, summary: int, summary_groups: int, summary_head_div: int, sm_scale: float,
    block_m: int, block_n: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    spec = _spec(passes, stride, summary, summary_groups, summary_head_div)
    return backward(do, q, k, v, out, lse, spec, sm_scale, Blocks(block_m or None, block_n or None))


@attention_backward_op.register_fake
def _(do, q, k, v, out, lse, passes, stride, summary, summary_groups, summary_head_div, sm_scale, block_m, block_n):
    return tuple(_allocate(_output(t), t.device) for t in (q, k, v))


def _op_params(spec: KernelSpec, sm_scale: float, blocks: Blocks) -> tuple:
    return (_flat_passes(spec), spec.stride, spec.summary, spec.summary_groups, spec.summary_head_div,
            sm_scale, blocks.block_m or 0, blocks.block_n or 0)


def _eager(t: torch.Tensor) -> bool:
    """True for a plain eager call: no tracing (torch.compile, export, make_fx), no tensor
    subclass (fake or functional tensors) and no dispatch mode, which must all see the
    custom op rather than the launches inside it."""
    return (type(t) is torch.Tensor and not torch.compiler.is_compiling()
            and torch._C._len_torch_dispatch_stack() == 0)


# ---------------------------------------------------------------------- autograd
def softmax_scale(q: torch.Tensor, sm_scale: float | None) -> float:
    """1 / sqrt(d_qk) by default. A given scale must be positive: the kernels take each
    row's running maximum over unscaled scores and scale it afterwards, which a negative
    scale would turn into the minimum."""
    if sm_scale is None:
        return 1.0 / math.sqrt(q.shape[-1])
    if not sm_scale > 0:
        raise ValueError(f"sparse attention: sm_scale must be positive, got {sm_scale}")
    return sm_scale


# Both Functions return the logsumexp only when asked (`with_lse`): an output more costs the
# autograd engine about 35 µs of host time per forward+backward on an H200 host.
# In eager mode they also hand their programs to native.py after running them, so that the
# next call with the same key runs from C++ (`attention`, `block_attention`).
class SparseAttentionFunction(torch.autograd.Function):
    """Autograd of `attention`. Its forward checks the inputs (`forward_program` does, on
    a new call key) and takes the default scale itself."""

    @staticmethod
    def forward(ctx, q, k, v, spec: KernelSpec, sm_scale: float | None, blocks: Blocks, with_lse: bool):
        sm_scale = softmax_scale(q, sm_scale)
        if _eager(q):
            ctx.program = forward_program(q, k, v, spec, sm_scale, blocks)
            out, lse = run(ctx.program, (q, k, v))
            native.register(ctx.program)
        else:  # traced: checked here, before the fake implementation shapes anything
            check_inputs(q, k, v, spec)
            out, lse = attention_forward_op(q, k, v, *_op_params(spec, sm_scale, blocks))
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.args = (spec, sm_scale, blocks)
        return _outputs(ctx, out, lse, with_lse)

    @staticmethod
    def backward(ctx, do, *_dlse):
        if do is None:  # the output was not used
            return None, None, None, None, None, None, None
        q, k, v, out, lse = ctx.saved_tensors
        spec, sm_scale, blocks = ctx.args
        if _eager(do):
            do = _d_out(do)
            program = backward_program(do, q, k, v, out, lse, spec, sm_scale, blocks)
            dq, dk, dv = run(program, (do, q, k, v, out, lse))
            if hasattr(ctx, "program"):  # the forward ran eagerly too
                native.register(ctx.program, program, do)
        else:
            dq, dk, dv = attention_backward_op(do, q, k, v, out, lse, *_op_params(spec, sm_scale, blocks))
        return dq, dk, dv, None, None, None, None


def _outputs(ctx, out: torch.Tensor, lse: torch.Tensor, with_lse: bool):
    if not with_lse:
        return out
    ctx.mark_non_differentiable(lse)
    ctx.set_materialize_grads(False)  # lse's gradient is never used: no zeros allocated and filled for it
    return out, lse


def attention(q, k, v, spec: KernelSpec, sm_scale: float | None = None, blocks: Blocks = Blocks(), with_lse: bool = True):
    """Sparse causal attention of a paper pattern with autograd: (output, logsumexp), or
    the output alone without `with_lse`; k and v may have fewer heads than q
    (grouped-query attention). An eager call whose key has run before runs from C++."""
    if not with_lse and _eager(q) and q.is_cuda:
        program = _PLANS.get(_forward_key(q, k, v, spec, softmax_scale(q, sm_scale), blocks))
        out = None if program is None else native.attention(program, q, k, v)
        if out is not None:
            return out
    return SparseAttentionFunction.apply(q, k, v, spec, sm_scale, blocks, with_lse)


# ---------------------------------------------------------------------- block-sparse layouts
# The same arrangement as `attention`'s: custom ops for tracing, direct launches when
# eager. The ops take the layout's tensors as tensor arguments, so a compiled graph serves
# every layout of the same shapes (a new packed batch does not recompile).


def _lists(block: int, tensors) -> BlockLists:
    return BlockLists(block, *tensors)


@torch.library.custom_op("sparse_kernels::block_attention_forward", mutates_args=())
def block_attention_forward_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_count: torch.Tensor, kv_partial: torch.Tensor,
    kv_work: torch.Tensor, kv_split: torch.Tensor, kv_index: torch.Tensor, kv_mask: torch.Tensor,
    q_count: torch.Tensor, q_partial: torch.Tensor, q_work: torch.Tensor, q_split: torch.Tensor,
    q_index: torch.Tensor, q_mask: torch.Tensor, masks: torch.Tensor,
    block: int, sm_scale: float, block_m: int, block_n: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    lists = _lists(block, (kv_count, kv_partial, kv_work, kv_split, kv_index, kv_mask, q_count, q_partial, q_work,
                           q_split, q_index, q_mask, masks))
    return block_forward(q, k, v, lists, sm_scale, Blocks(block_m or None, block_n or None))


@block_attention_forward_op.register_fake
def _(q, k, v, kv_count, kv_partial, kv_work, kv_split, kv_index, kv_mask, q_count, q_partial, q_work, q_split, q_index,
      q_mask, masks, block, sm_scale, block_m, block_n):
    return _allocate(_output(v, q.shape[1]), q.device), _allocate(_row_stats(q), q.device)


@torch.library.custom_op("sparse_kernels::block_attention_backward", mutates_args=())
def block_attention_backward_op(
    do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
    kv_count: torch.Tensor, kv_partial: torch.Tensor, kv_work: torch.Tensor, kv_split: torch.Tensor,
    kv_index: torch.Tensor, kv_mask: torch.Tensor, q_count: torch.Tensor, q_partial: torch.Tensor,
    q_work: torch.Tensor, q_split: torch.Tensor, q_index: torch.Tensor, q_mask: torch.Tensor, masks: torch.Tensor,
    block: int, sm_scale: float, block_m: int, block_n: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    lists = _lists(block, (kv_count, kv_partial, kv_work, kv_split, kv_index, kv_mask, q_count, q_partial, q_work,
                           q_split, q_index, q_mask, masks))
    return block_backward(do, q, k, v, out, lse, lists, sm_scale, Blocks(block_m or None, block_n or None))


@block_attention_backward_op.register_fake
def _(do, q, k, v, out, lse, kv_count, kv_partial, kv_work, kv_split, kv_index, kv_mask, q_count, q_partial, q_work,
      q_split, q_index, q_mask, masks, block, sm_scale, block_m, block_n):
    return tuple(_allocate(_output(t), t.device) for t in (q, k, v))


class BlockAttentionFunction(torch.autograd.Function):
    """Autograd of `block_attention`; the layout's tensors come as separate arguments."""

    @staticmethod
    def forward(ctx, q, k, v, sm_scale: float, blocks: Blocks, with_lse: bool, block: int, *tensors):
        params = (block, sm_scale, blocks.block_m or 0, blocks.block_n or 0)
        if _eager(q):
            lists = _lists(block, tensors)
            ctx.program = block_forward_program(q, k, v, lists, sm_scale, blocks)
            out, lse = run(ctx.program, (q, k, v, *list_inputs(lists)))
            native.register(ctx.program)
        else:  # traced: checked here, before the fake implementation shapes anything
            check_block_inputs(q, k, v, _lists(block, tensors), blocks)
            out, lse = block_attention_forward_op(q, k, v, *tensors, *params)
        ctx.save_for_backward(q, k, v, out, lse, *tensors)
        ctx.args = (sm_scale, blocks, block, params)
        return _outputs(ctx, out, lse, with_lse)

    @staticmethod
    def backward(ctx, do, *_dlse):
        nothing = (None,) * (6 + len(_LIST_FIELDS))
        if do is None:  # the output was not used
            return None, None, None, *nothing
        q, k, v, out, lse, *tensors = ctx.saved_tensors
        sm_scale, blocks, block, params = ctx.args
        if _eager(do):
            do, lists = _d_out(do), _lists(block, tensors)
            program = block_backward_program(do, q, k, v, out, lse, lists, sm_scale, blocks)
            dq, dk, dv = run(program, (do, q, k, v, out, lse, *list_inputs(lists)))
            if hasattr(ctx, "program"):  # the forward ran eagerly too
                native.register(ctx.program, program, do)
        else:
            dq, dk, dv = block_attention_backward_op(do, q, k, v, out, lse, *tensors, *params)
        return dq, dk, dv, *nothing


def block_attention(q, k, v, lists: BlockLists, sm_scale: float | None = None, blocks: Blocks = Blocks(),
                    with_lse: bool = True):
    """Attention restricted to a block-sparse layout, with autograd: (output (batch, H, n,
    d_v) in v's dtype, logsumexp (batch, H, n) fp32 natural log), or the output alone
    without `with_lse`. Not causal by itself:
    the lists and masks say which pairs are allowed; a row with none gets output 0,
    logsumexp -inf and zero gradients. `blocks` fixes the tiles (each must divide
    lists.block); by default they are autotuned. An eager call whose key has run before
    runs from C++."""
    sm_scale = softmax_scale(q, sm_scale)
    if not with_lse and _eager(q) and q.is_cuda:
        program = _PLANS.get(_block_key("block forward", (q, k, v), lists, sm_scale, blocks))
        out = None if program is None else native.attention(program, q, k, v, list_inputs(lists))
        if out is not None:
            return out
    return BlockAttentionFunction.apply(q, k, v, sm_scale, blocks, with_lse, lists.block, *lists[1:])
