"""A block-sparse attention layout as the block kernels read it (`BlockLists`).

The paper's patterns reach the kernels as closed-form modes (geometry.py); any other
layout arrives as lists: per query block, the key blocks it reads, and per key block the
query blocks that read it (the transpose, which the dK/dV kernel walks). A listed block
is either full (every pair allowed: no mask is loaded) or partial (its pairs are one of
the `masks`). The layout side (`sparse_transformer.layouts`) builds them; this module
only describes and checks them, so the kernels never import the model package.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

BLOCK_SIZES = (16, 32, 64, 128)
FULL = -1  # kv_mask / q_mask entry of a block whose every pair is allowed


class BlockLists(NamedTuple):
    """A block-sparse attention layout as the kernels read it. All index tensors int32 on
    q's device; LB is 1 (shared by the batch) or batch, LH is 1 (shared by the heads) or
    H (the number of QUERY heads); NB = ceil(n / block).

    block: the granularity, a power of two 16..128; the kernels' tiles divide it.
    kv_count: (LB, LH, NB) how many key blocks query block i reads.
    kv_partial: (LB, LH, NB) how many of them are partial; they come first in the list.
    kv_order: (LB, LH, NB) the query blocks by list length, longest first (`longest_first`):
        the order the kernels' programs start in.
    kv_index: (LB, LH, NB, W) those key blocks: the partial ones ascending, then the full
        ones ascending; entries past the count are ignored (0).
    kv_mask: (LB, LH, NB, W) -1 = every pair of the block allowed ("full"), m >= 0 =
        partial: masks[m] says which pairs.
    q_count: (LB, LH, NB) the transpose: how many query blocks read key block j.
    q_partial: (LB, LH, NB) how many of them are partial (first in the list).
    q_order: (LB, LH, NB) the key blocks by transposed list length, longest first.
    q_index: (LB, LH, NB, W2) those query blocks, partial ones first, each part ascending.
    q_mask: (LB, LH, NB, W2) -1 full, else an index into masks (the same ids as kv_mask).

    The kernels walk the partial blocks in one loop and the full blocks in another whose
    body has no mask and no branch, so the order and the partial counts must agree with
    the masks: a listed block before the partial count is read as partial, after it as full.
    masks: (U, block, block) bool, U >= 1 (one all-False dummy when no block is
        partial): masks[m][r, c] = query row r of the query block may read key column c
        of the key block.

    Positions >= n (the ragged last block) are masked by the kernels whatever the masks
    say; a partial block whose mask is all False is allowed (wasted work, not an error).
    """

    block: int
    kv_count: torch.Tensor
    kv_partial: torch.Tensor
    kv_order: torch.Tensor
    kv_index: torch.Tensor
    kv_mask: torch.Tensor
    q_count: torch.Tensor
    q_partial: torch.Tensor
    q_order: torch.Tensor
    q_index: torch.Tensor
    q_mask: torch.Tensor
    masks: torch.Tensor


def check(lists: BlockLists, batch: int, heads: int, n: int) -> None:
    """Raise ValueError naming the field whose shape, dtype or device does not fit
    queries of (batch, heads, n). Shapes only: the indices' values stay on the device."""
    if lists.block not in BLOCK_SIZES:
        raise ValueError(f"BlockLists.block is {lists.block}; use one of {BLOCK_SIZES}")
    blocks = -(-n // lists.block)
    device = lists.kv_count.device
    for name in BlockLists._fields[1:]:
        t = getattr(lists, name)
        want = torch.bool if name == "masks" else torch.int32
        if t.dtype != want:
            raise ValueError(f"BlockLists.{name} has dtype {t.dtype}; it must be {want}")
        if t.device != device:
            raise ValueError(f"BlockLists.{name} is on {t.device}, kv_count on {device}; put them on one device")
    lb, lh = lists.kv_count.shape[:2] if lists.kv_count.dim() == 3 else (None, None)
    if lb not in (1, batch) or lh not in (1, heads) or lists.kv_count.dim() != 3 or lists.kv_count.shape[2] != blocks:
        raise ValueError(
            f"BlockLists.kv_count has shape {tuple(lists.kv_count.shape)}; it must be (LB, LH, {blocks}) with LB 1 or "
            f"{batch} (batch) and LH 1 or {heads} (query heads), for n = {n} in blocks of {lists.block}"
        )
    for count, partial, order, index, mask in (("kv_count", "kv_partial", "kv_order", "kv_index", "kv_mask"),
                                               ("q_count", "q_partial", "q_order", "q_index", "q_mask")):
        lead = (lb, lh, blocks)
        for name in (count, partial, order):
            if tuple(getattr(lists, name).shape) != lead:
                raise ValueError(f"BlockLists.{name} has shape {tuple(getattr(lists, name).shape)}; it must be {lead}")
        index_shape = tuple(getattr(lists, index).shape)
        if len(index_shape) != 4 or index_shape[:3] != lead:
            raise ValueError(f"BlockLists.{index} has shape {index_shape}; it must be {lead} + (width,)")
        if tuple(getattr(lists, mask).shape) != index_shape:
            raise ValueError(f"BlockLists.{mask} has shape {tuple(getattr(lists, mask).shape)}; it must match {index}'s {index_shape}")
    masks = tuple(lists.masks.shape)
    if len(masks) != 3 or masks[0] < 1 or masks[1:] != (lists.block, lists.block):
        raise ValueError(f"BlockLists.masks has shape {masks}; it must be (U >= 1, {lists.block}, {lists.block})")


def longest_first(count: torch.Tensor) -> torch.Tensor:
    """(..., NB) int32: the blocks of each list by `count` descending (ties by block), the
    order in which the kernels start their programs. Starting the longest lists first
    (a global row or column, the last rows of a causal layout) overlaps them with the
    rest of the launch instead of leaving them to run alone at its end."""
    return torch.sort(count, dim=-1, descending=True, stable=True).indices.to(torch.int32)
