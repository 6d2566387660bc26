"""Making a plain SparseTransformer fit in memory and run fast, applied from outside it.

For training (`for_training`): recomputation of each residual block in the backward
pass (the paper's section 5.4), torch.compile of each block, and CUDA graphs. For
sampling (`for_decoding`): torch.compile of what a decoding step does around each
block's attention. The model names the seams and nothing more: `run_block`, how its
forward runs a residual block, and `decoding_project` / `decoding_residual`, what a
decoding step does around a block's attention. Replacing them with compiled functions,
rather than compiling each block module, keeps one compiled graph per layer class: the
blocks are arguments of one function, not code of their own.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from .config import CompileMode
from .model import ResidualBlock, SparseTransformer

CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


def _recomputed(block: ResidualBlock, h: torch.Tensor) -> torch.Tensor:
    # Only h (the residual stream) is stored between blocks; the block runs again in the backward pass.
    return checkpoint(block, h, use_reentrant=False) if torch.is_grad_enabled() else block(h)


def for_training(model: SparseTransformer, recompute: bool, compile_mode: CompileMode | None = None) -> SparseTransformer:
    """Recompute each residual block in the backward pass (`recompute`, the config's
    model.recompute) and, given a `compile_mode`, torch.compile (Inductor) each block,
    recomputation included: that fuses the norms, GELU, residual adds and dtype casts
    around the matrix products, and the fused attention kernels stay opaque custom ops.
    Blocks share one compiled graph per layer class, so compiling costs about one block.
    In a CUDA-graph mode each forward pass starts a new step of the graphs."""
    run = _recomputed if recompute else SparseTransformer.run_block
    if compile_mode is not None:
        run = torch.compile(run, mode=compile_mode)
        if compile_mode in CUDA_GRAPH_MODES:  # the graphs' outputs of the step before are no longer read
            model.register_forward_pre_hook(lambda module, args: torch.compiler.cudagraph_mark_step_begin())
    model.run_block = run
    return model


def for_decoding(model: SparseTransformer, **options) -> SparseTransformer:
    """torch.compile (Inductor) what a decoding step does around each block's attention
    (norms, projections, feed-forward, residual adds, dtype casts): a step of a deep model
    is thousands of tiny kernels, and fusing them is most of what replaying it as a CUDA
    graph leaves to gain. The cache writes and the decode kernel run between the two
    compiled parts as they are; all blocks share the two graphs."""
    model.decoding_project = torch.compile(SparseTransformer.decoding_project, **options)
    model.decoding_residual = torch.compile(SparseTransformer.decoding_residual, **options)
    return model
