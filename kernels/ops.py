"""Launching the kernels: input checks, pass sequencing, autotuning, autograd, custom op.

`attention(q, k, v, spec)` is the entry point: q, k of shape (batch, heads, n, d_qk)
and v of shape (batch, heads, n, d_v) (half-size query/key projections give d_qk < d_v),
any strides with a contiguous last dimension (so the model's
(batch, n, heads, head_dim) projections pass without a copy), returning the output in
(batch, n, heads, head_dim) memory seen as (batch, heads, n, head_dim), and the logsumexp (batch, heads, n) in fp32, natural log.

The pattern arrives as plain numbers (`KernelSpec`); this layer never imports the model
package. On CPU tensors the kernels run under Triton's interpreter (TRITON_INTERPRET=1
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

from .backward import attention_dkdv_kernel, attention_dq_kernel
from .forward import attention_forward_kernel
from .geometry import MODES
from .launch import Launcher, _interpreted

HEAD_DIMS = (16, 32, 64, 128)
DTYPES = (torch.float16, torch.bfloat16, torch.float32)


class KernelSpec(NamedTuple):
    """A pattern as the kernels see it.

    passes: per pass, (mode of even heads, mode of odd heads), modes from geometry.MODES;
        passes after the first continue the first's softmax (merged heads).
    stride: l. summary: c (fixed only; 1 otherwise).
    summary_groups: v, the number of distinct summary sub-blocks in use (1 = shared).
    summary_head_div: head h reads sub-block (h // summary_head_div) % summary_groups.
    """

    passes: tuple[tuple[str, str], ...]
    stride: int
    summary: int = 1
    summary_groups: int = 1
    summary_head_div: int = 1


class Blocks(NamedTuple):
    """Tile sizes for one launch; None fields mean "autotune"."""

    block_m: int | None = None
    block_n: int | None = None


# ---------------------------------------------------------------------- tiles
def _configs(kind: str) -> list[triton.Config]:
    """Candidate tiles per kernel kind for the GPU; Triton benchmarks them on first use
    for each key (modes, head dim, length bucket) and keeps the winner (launch.Launcher)."""
    shapes = {
        "forward": [(128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (64, 64, 4, 3), (128, 32, 4, 4), (64, 32, 4, 4)],
        "dkdv": [(32, 128, 4, 3), (64, 128, 8, 3), (64, 64, 4, 3), (32, 64, 4, 3), (16, 64, 4, 4), (64, 32, 4, 3)],
        "dq": [(128, 32, 4, 3), (128, 64, 8, 3), (64, 64, 4, 3), (64, 32, 4, 3), (64, 16, 4, 4), (32, 64, 4, 3)],
    }[kind]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in shapes]


def _prune_for_head_dim(configs, named_args, **kwargs):
    """Large tiles with head dim 128 exceed shared memory: keep the smaller ones."""
    head_dim = max(kwargs.get("QK_DIM", named_args.get("QK_DIM", 0)), kwargs.get("V_DIM", named_args.get("V_DIM", 0)))
    if head_dim < 128:
        return configs
    small = [c for c in configs if c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] <= 128 * 64]
    return small or configs


_KEY = ["N_BUCKET", "QK_DIM", "V_DIM", "MODE_EVEN", "MODE_ODD", "CONTINUE"]
_FORWARD = Launcher(attention_forward_kernel, _configs("forward"), _KEY, ["O", "LSE"], _prune_for_head_dim)
_DKDV = Launcher(attention_dkdv_kernel, _configs("dkdv"), _KEY, ["DK", "DV"], _prune_for_head_dim)
_DQ = Launcher(attention_dq_kernel, _configs("dq"), _KEY, ["DQ"], _prune_for_head_dim)


def tuned_tiles() -> dict[str, dict[str, str]]:
    """The tiles the autotuner chose in this process, per kernel and key (for benchmark records)."""
    return {name: launcher.chosen_tiles() for name, launcher in (("forward", _FORWARD), ("dkdv", _DKDV), ("dq", _DQ))}


INTERPRETER_BLOCKS = Blocks(32, 32)


def _tiles(blocks: Blocks) -> dict | None:
    """The tile constexprs to launch with: fixed when given (tests) or under the
    interpreter, None to autotune."""
    if blocks.block_m is None and _interpreted():
        blocks = INTERPRETER_BLOCKS
    if blocks.block_m is None:
        return None
    return {"BLOCK_M": blocks.block_m, "BLOCK_N": blocks.block_n or blocks.block_m}


# ---------------------------------------------------------------------- checks
def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: KernelSpec) -> None:
    """Refuse bad inputs with a message before anything is launched."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"sparse attention: {name} must have shape (batch, heads, n, head_dim), got {tuple(t.shape)}")
        if t.dtype not in DTYPES:
            raise TypeError(f"sparse attention: {name} has dtype {t.dtype}; use float16, bfloat16 or float32")
        if t.stride(-1) != 1:
            raise ValueError(f"sparse attention: {name} must be contiguous in its last dimension (stride {t.stride(-1)}); call .contiguous()")
    if q.shape != k.shape or q.shape[:3] != v.shape[:3]:
        raise ValueError(
            f"sparse attention: shapes must be q, k (batch, heads, n, d_qk) and v (batch, heads, n, d_v), "
            f"got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
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
    for name, dim in (("query/key", q.shape[-1]), ("value", v.shape[-1])):
        if dim not in HEAD_DIMS:
            raise ValueError(f"sparse attention: {name} head_dim {dim} is not supported; use one of {HEAD_DIMS}")
    if q.shape[0] * q.shape[1] > 65535:
        raise ValueError(f"sparse attention: batch * heads = {q.shape[0] * q.shape[1]} exceeds the grid limit 65535")
    for even, odd in spec.passes:
        for mode in (even, odd):
            if mode not in MODES:
                raise ValueError(f"sparse attention: unknown mode {mode!r}; modes are {', '.join(MODES)}")
    if spec.stride < 1 or spec.summary < 1 or spec.summary > spec.stride:
        raise ValueError(f"sparse attention: need stride >= 1 and 1 <= summary <= stride, got {spec.stride}, {spec.summary}")


# ---------------------------------------------------------------------- launches
def _rows(modes: tuple[str, str], n: int, stride: int) -> int:
    """Extent of the virtual row index over the modes of one pass."""
    return stride * triton.cdiv(n, stride) if "strided" in modes else n


def _common_args(spec: KernelSpec, n: int, heads: int) -> dict:
    return dict(
        H=heads, n=n, L=spec.stride, G=triton.cdiv(n, spec.stride), C=spec.summary,
        SUMMARY_GROUPS=spec.summary_groups, SUMMARY_HEAD_DIV=spec.summary_head_div,
        N_BUCKET=triton.next_power_of_2(n),
    )


def _like(t: torch.Tensor) -> torch.Tensor:
    """An uninitialized (batch, heads, n, head_dim) buffer stored as (batch, n, heads,
    head_dim): the layout the model's projections use, so its output needs no copy to
    merge the heads. Every output buffer comes from here or `_row_stats`, so tests can
    poison them and catch elements a kernel never writes."""
    batch, heads, n, head_dim = t.shape
    return torch.empty(batch, n, heads, head_dim, device=t.device, dtype=t.dtype).transpose(1, 2)


def _row_stats(q: torch.Tensor) -> torch.Tensor:
    """An uninitialized (batch, heads, n) fp32 buffer: logsumexp or delta per row."""
    return torch.empty(q.shape[:3], device=q.device, dtype=torch.float32)


def forward(q, k, v, spec: KernelSpec, sm_scale: float, blocks: Blocks = Blocks()):
    """Output (layout of q) and logsumexp (batch, heads, n) fp32."""
    batch, heads, n, _ = q.shape
    out = _like(v)
    lse = _row_stats(q)
    tiles, common = _tiles(blocks), _common_args(spec, n, heads)
    for index, (even, odd) in enumerate(spec.passes):
        rows = _rows((even, odd), n, spec.stride)
        _FORWARD(
            lambda meta: (triton.cdiv(rows, meta["BLOCK_M"]), batch * heads),
            q, k, v, out, lse, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3], tiles=tiles,
            qk_scale=sm_scale * 1.4426950408889634, MODE_EVEN=MODES[even], MODE_ODD=MODES[odd], CONTINUE=index > 0,
            QK_DIM=q.shape[-1], V_DIM=v.shape[-1], **common,
        )
    return out, lse


def backward(do, q, k, v, out, lse, spec: KernelSpec, sm_scale: float, blocks: Blocks = Blocks()):
    """dq, dk, dv (layouts of q, k, v). Per pass, the dQ launch first (the first one also
    writes delta = rowsum(dO * O)), then the dK/dV launch that reads it."""
    batch, heads, n, _ = q.shape
    if do.stride(-1) != 1:
        do = do.contiguous()
    delta = _row_stats(q)
    dq, dk, dv = _like(q), _like(k), _like(v)
    # Keys no program owns stay zero: a first pass over summaries owns only summary columns.
    if "summary" in spec.passes[0]:
        dk.zero_()
        dv.zero_()
    tiles, common = _tiles(blocks), _common_args(spec, n, heads)
    scales = dict(qk_scale=sm_scale * 1.4426950408889634, sm_scale=sm_scale)
    for index, (even, odd) in enumerate(spec.passes):
        rows = _rows((even, odd), n, spec.stride)
        flags = dict(MODE_EVEN=MODES[even], MODE_ODD=MODES[odd], CONTINUE=index > 0)
        dims = dict(QK_DIM=q.shape[-1], V_DIM=v.shape[-1])
        _DQ(
            lambda meta: (triton.cdiv(rows, meta["BLOCK_M"]), batch * heads),
            q, k, v, out, do, lse, delta, dq, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3],
            *out.stride()[:3], *do.stride()[:3], *dq.stride()[:3], tiles=tiles,
            **scales, **common, **flags, WRITE_DELTA=index == 0, **dims,
        )
        _DKDV(
            lambda meta: (triton.cdiv(rows, meta["BLOCK_N"]), batch * heads),
            q, k, v, do, lse, delta, dk, dv, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3],
            *do.stride()[:3], *dk.stride()[:3], *dv.stride()[:3], tiles=tiles, **scales, **common, **flags, **dims,
        )
    return dq, dk, dv


# ---------------------------------------------------------------------- custom ops
# The launches are wrapped as torch.library custom ops with fake (shape-only)
# implementations, so torch.compile and torch.export treat them as opaque operators
# instead of breaking the graph. Eager calls skip them (see `_eager`): a custom op's
# dispatch costs more host time than the kernels of a short call need on the GPU.
_MODE_NAMES = {value: name for name, value in MODES.items()}


def _flat_passes(spec: KernelSpec) -> list[int]:
    return [MODES[mode] for pair in spec.passes for mode in pair]


def _spec(passes: list[int], stride: int, summary: int, summary_groups: int, summary_head_div: int) -> KernelSpec:
    pairs = tuple((_MODE_NAMES[passes[i]], _MODE_NAMES[passes[i + 1]]) for i in range(0, len(passes), 2))
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
    return _like(v), _row_stats(q)


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
    return _like(q), _like(k), _like(v)


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
class SparseAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, spec: KernelSpec, sm_scale: float, blocks: Blocks):
        if _eager(q):
            out, lse = forward(q, k, v, spec, sm_scale, blocks)
        else:
            out, lse = attention_forward_op(q, k, v, *_op_params(spec, sm_scale, blocks))
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.args = (spec, sm_scale, blocks)
        ctx.mark_non_differentiable(lse)
        ctx.set_materialize_grads(False)  # lse's gradient is never used: no zeros allocated and filled for it
        return out, lse

    @staticmethod
    def backward(ctx, do, _dlse):
        if do is None:  # the output was not used
            return None, None, None, None, None, None
        q, k, v, out, lse = ctx.saved_tensors
        spec, sm_scale, blocks = ctx.args
        if _eager(do):
            dq, dk, dv = backward(do, q, k, v, out, lse, spec, sm_scale, blocks)
        else:
            dq, dk, dv = attention_backward_op(do, q, k, v, out, lse, *_op_params(spec, sm_scale, blocks))
        return dq, dk, dv, None, None, None


def attention(q, k, v, spec: KernelSpec, sm_scale: float | None = None, blocks: Blocks = Blocks()):
    """Sparse causal attention with autograd: (output, logsumexp)."""
    check_inputs(q, k, v, spec)
    scale = 1.0 / math.sqrt(q.shape[-1]) if sm_scale is None else sm_scale
    return SparseAttentionFunction.apply(q, k, v, spec, scale, blocks)
