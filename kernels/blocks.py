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
    kv_work: (LB, LH, NW, 4) the forward and dQ programs' work (`schedule`), longest
        first: rows (query block, first entry, end entry, slot) of its list, slot -1 for
        a whole list (the result is stored in place), else the partial-result slot of a
        piece of a long list; padding rows (-1, 0, 0, -1).
    kv_split: (LB, LH, NS, 3) the split lists: rows (query block, first slot, pieces),
        whose pieces' results are combined after the pass; padding rows (-1, 0, 0).
    kv_index: (LB, LH, NB, W) those key blocks: the partial ones ascending, then the full
        ones ascending; entries past the count are ignored (0).
    kv_mask: (LB, LH, NB, W) -1 = every pair of the block allowed ("full"), m >= 0 =
        partial: masks[m] says which pairs.
    q_count: (LB, LH, NB) the transpose: how many query blocks read key block j.
    q_partial: (LB, LH, NB) how many of them are partial (first in the list).
    q_work: (LB, LH, NW2, 4) the dK/dV programs' work, as kv_work over the transposed lists.
    q_split: (LB, LH, NS2, 3) the split transposed lists, as kv_split.
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
    kv_work: torch.Tensor
    kv_split: torch.Tensor
    kv_index: torch.Tensor
    kv_mask: torch.Tensor
    q_count: torch.Tensor
    q_partial: torch.Tensor
    q_work: torch.Tensor
    q_split: torch.Tensor
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
    for side in ("kv", "q"):
        count, partial, work, split, index, mask = (f"{side}_{field}" for field in
                                                    ("count", "partial", "work", "split", "index", "mask"))
        lead = (lb, lh, blocks)
        for name in (count, partial):
            if tuple(getattr(lists, name).shape) != lead:
                raise ValueError(f"BlockLists.{name} has shape {tuple(getattr(lists, name).shape)}; it must be {lead}")
        for name, row in ((work, 4), (split, 3)):
            shape = tuple(getattr(lists, name).shape)
            if len(shape) != 4 or shape[:2] != (lb, lh) or shape[3] != row or (name == work and shape[2] < blocks):
                raise ValueError(f"BlockLists.{name} has shape {shape}; it must be ({lb}, {lh}, rows, {row})"
                                 + (f" with at least {blocks} rows" if name == work else "") + " (see blocks.schedule)")
        index_shape = tuple(getattr(lists, index).shape)
        if len(index_shape) != 4 or index_shape[:3] != lead:
            raise ValueError(f"BlockLists.{index} has shape {index_shape}; it must be {lead} + (width,)")
        if tuple(getattr(lists, mask).shape) != index_shape:
            raise ValueError(f"BlockLists.{mask} has shape {tuple(getattr(lists, mask).shape)}; it must match {index}'s {index_shape}")
    masks = tuple(lists.masks.shape)
    if len(masks) != 3 or masks[0] < 1 or masks[1:] != (lists.block, lists.block):
        raise ValueError(f"BlockLists.masks has shape {masks}; it must be (U >= 1, {lists.block}, {lists.block})")


OPEN = 1 << 30  # end entry of a list's last piece: the list's end, whichever head's list it is
MIN_PIECE = 32  # blocks: a list is split only when longer, so short sequences keep one launch a pass


def _power_of_two_or_zero(x: int) -> int:
    return 0 if x <= 0 else 1 << (x - 1).bit_length()


def schedule(count: torch.Tensor, piece: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The programs' work over one direction's lists, count (LB, LH, NB): (work, split) as
    `BlockLists` holds them (kv_work and kv_split, or q_work and q_split).

    A pass's time is at least its longest list's: a global row or column (Longformer's,
    BigBird's) walks every block while the others walk a few, and would run on alone
    after the rest of the launch. So a list longer than `piece` blocks is cut into
    near-equal pieces of at most `piece`, each a program of its own writing a partial
    result to a slot, which a combine step adds up in a fixed order (deterministic, no
    atomics); and the work runs longest first, so that long pieces start in the first
    wave. `piece` defaults to twice the mean list length, at least MIN_PIECE.

    A list's last piece ends at OPEN (the end of the list): the dK/dV programs of a
    key/value head walk the lists of every query head of its group by the schedule of
    the group's first head, and a longer list of another head is then still walked whole.
    The row counts are rounded up (NW - NB and NS to powers of two) so that layouts that
    differ a little (a new packed batch) keep their shapes."""
    lb, lh, nb = count.shape
    lengths = count.long().reshape(-1)  # (T,) T = LB * LH * NB lists
    if piece is None:
        piece = max(MIN_PIECE, 2 * -(-int(lengths.sum()) // max(1, len(lengths))))
    pieces = torch.where(lengths > piece, -(-lengths // piece), 1)
    tables = lb * lh
    split = (pieces > 1).view(tables, nb)
    nw = nb + _power_of_two_or_zero(int((pieces - 1).view(tables, nb).sum(-1).max()))
    ns = _power_of_two_or_zero(int(split.sum(-1).max()))
    device = count.device

    # one row per piece: its list, its number k among the list's pieces, its entry range
    owner = torch.repeat_interleave(torch.arange(len(lengths), device=device), pieces)
    k = torch.arange(len(owner), device=device) - (torch.cumsum(pieces, 0) - pieces)[owner]
    total, parts = lengths[owner], pieces[owner]
    first, end = k * total // parts, (k + 1) * total // parts
    table, block = owner // nb, owner % nb
    # slots: the pieces of split lists, numbered within each table in list order
    is_split = parts > 1
    split_pieces = torch.bincount(table[is_split], minlength=tables)
    slot = torch.where(is_split, torch.cumsum(is_split.long(), 0) - 1 - (torch.cumsum(split_pieces, 0) - split_pieces)[table], -1)
    # longest first within each table (stable: ties keep block order)
    order = torch.sort(table * (nb + 1) + (nb - (end - first)), stable=True).indices
    rank = torch.arange(len(owner), device=device) - torch.searchsorted(table[order], table[order], right=False)
    work = torch.tensor([-1, 0, 0, -1], dtype=torch.int32, device=device).repeat(tables, nw, 1)
    rows = torch.stack([block, first, torch.where(k == parts - 1, OPEN, end), slot], 1)[order]
    work[table[order], rank] = rows.int()

    splits = torch.tensor([-1, 0, 0], dtype=torch.int32, device=device).repeat(tables, ns, 1)
    if ns:
        heads = is_split & (k == 0)  # a split list's first piece: where its slots start
        t = table[heads]
        at = torch.arange(len(t), device=device) - torch.searchsorted(t, t, right=False)
        splits[t, at] = torch.stack([block[heads], slot[heads], parts[heads]], 1).int()
    return work.view(lb, lh, nw, 4), splits.view(lb, lh, ns, 3)


def slots(work: torch.Tensor, split: torch.Tensor, nb: int) -> int:
    """Partial-result slots a (batch, head) needs at most, from the shapes alone (no
    sync): the pieces beyond one per list (NW - NB) plus one per split list (NS)."""
    return work.shape[2] - nb + split.shape[2]
