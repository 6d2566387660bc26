"""Block-sparse layouts for the kernel tests, and their float64 ground truth.

`lists_from_kinds` builds `BlockLists` from a block-level description (empty, full or
partial per (query block, key block)) without the layout package, so the kernel tests
stand on their own; `dense_mask` expands lists back to the (.., n, n) bool mask they mean,
and `block_oracle` is masked softmax attention over it in float64.
"""

from __future__ import annotations

import torch

from sparse_kernels.blocks import FULL, BlockLists, schedule

EMPTY, WHOLE, PARTIAL = 0, 1, 2  # block kinds


def _lists(kinds: torch.Tensor, ids: torch.Tensor, piece: int | None):
    """count, partial count, work, split, index, mask of the listed blocks along the last
    dimension of kinds (.., NB, NB): partial blocks first, then full ones, each ascending;
    lists longer than `piece` blocks are split (None: the kernels' default)."""
    listed = kinds != EMPTY
    nb = kinds.shape[-1]
    count = listed.sum(-1).to(torch.int32)
    partial = (kinds == PARTIAL).sum(-1).to(torch.int32)
    width = max(1, int(count.max()))
    columns = torch.arange(nb, device=kinds.device).expand_as(kinds)
    rank = torch.where(kinds == PARTIAL, columns, torch.where(kinds == WHOLE, columns + nb, columns + 2 * nb))
    order = rank.argsort(-1)[..., :width]
    present = torch.arange(width, device=kinds.device) < count[..., None]
    index = torch.where(present, order, 0).to(torch.int32)
    mask = torch.where(kinds.gather(-1, order) == WHOLE, FULL, ids.gather(-1, order))
    return count, partial, *schedule(count, piece), index, torch.where(present, mask, 0).to(torch.int32)


def lists_from_kinds(kinds: torch.Tensor, masks: torch.Tensor, ids: torch.Tensor, block: int,
                     piece: int | None = None) -> BlockLists:
    """BlockLists of kinds (LB, LH, NB, NB) (EMPTY, WHOLE or PARTIAL per query block i and
    key block j), with partial block (i, j) reading masks[ids[.., i, j]]; lists longer
    than `piece` blocks are split into pieces (`blocks.schedule`)."""
    kv = _lists(kinds, ids, piece)
    q = _lists(kinds.transpose(-1, -2), ids.transpose(-1, -2), piece)
    return BlockLists(block, *kv, *q, masks)


def random_lists(batch: int, heads: int, n: int, block: int, gen: torch.Generator, device="cpu",
                 per_batch=False, per_head=False, empty_rows=True, piece: int | None = None) -> BlockLists:
    """A random layout: blocks empty, full or partial (random masks, some all False), with
    some query blocks reading nothing when `empty_rows`; lists longer than `piece`
    blocks split into pieces."""
    nb = -(-n // block)
    shape = (batch if per_batch else 1, heads if per_head else 1, nb, nb)
    kinds = torch.randint(0, 3, shape, generator=gen)
    if empty_rows and nb > 1:
        kinds[..., torch.randint(0, nb, (1,), generator=gen), :] = EMPTY
    partial = int((kinds == PARTIAL).sum())
    masks = torch.rand(max(partial, 1), block, block, generator=gen) < torch.rand(max(partial, 1), 1, 1, generator=gen)
    masks[0] = False  # an allowed block of nothing, and (with row masks below) rows with no key
    if partial > 2:
        masks[1, : block // 2] = False
    ids = torch.zeros(shape, dtype=torch.int32)
    ids[kinds == PARTIAL] = torch.randperm(partial, generator=gen).to(torch.int32)
    return lists_from_kinds(kinds.to(device), masks.to(device), ids.to(device), block, piece)


def global_line_lists(line: str, nb: int, block: int, piece: int, device="cpu") -> BlockLists:
    """Causal diagonal blocks and one global `line`, full blocks: a row (query block nb // 3
    reads every key block) or a column (every query block reads key block nb // 3); lists
    longer than `piece` blocks are split. A row splits only the key lists, a column only
    the query lists."""
    kinds = torch.diag(torch.full((nb,), PARTIAL))
    if line == "row":
        kinds[nb // 3] = WHOLE
    else:
        kinds[:, nb // 3] = WHOLE
    masks = torch.ones(1, block, block, dtype=torch.bool).tril()
    ids = torch.zeros(1, 1, nb, nb, dtype=torch.int32)
    return lists_from_kinds(kinds[None, None].to(device), masks.to(device), ids.to(device), block, piece)


def causal_lists(n: int, block: int, device="cpu") -> BlockLists:
    """Dense causal attention as lists: full blocks below the diagonal, causal diagonal blocks."""
    nb = -(-n // block)
    i, j = torch.arange(nb)[:, None], torch.arange(nb)[None, :]
    kinds = torch.where(j < i, WHOLE, torch.where(j == i, PARTIAL, EMPTY))[None, None]
    masks = torch.ones(block, block, dtype=torch.bool).tril()[None]
    return lists_from_kinds(kinds.to(device), masks.to(device), torch.zeros_like(kinds, dtype=torch.int32).to(device), block)


def dense_mask(lists: BlockLists, n: int) -> torch.Tensor:
    """(LB, LH, n, n) bool: the pairs the kernels' lists allow (read from the kv lists)."""
    lb, lh, nb = lists.kv_count.shape
    block = lists.block
    width = lists.kv_index.shape[-1]
    present = torch.arange(width, device=lists.kv_index.device) < lists.kv_count[..., None]
    # Per block: -2 not listed, -1 full, m >= 0 partial with masks[m]; entries past the count go to a spare column.
    kind = torch.full((lb, lh, nb, nb + 1), -2, dtype=torch.long, device=lists.kv_index.device)
    column = torch.where(present, lists.kv_index.long(), nb)
    kind.scatter_(-1, column, torch.where(present, lists.kv_mask.long(), -2))
    kind = kind[..., :nb]
    blocks = torch.where((kind >= 0)[..., None, None], lists.masks[kind.clamp_min(0)], (kind == -1)[..., None, None])
    return blocks.permute(0, 1, 2, 4, 3, 5).reshape(lb, lh, nb * block, nb * block)[..., :n, :n]


def block_oracle(q, k, v, do, lists: BlockLists, sm_scale=None):
    """Output, logsumexp and (dq, dk, dv) in float64 of attention over `lists`; k and v
    may have fewer heads (each serves H // H_kv consecutive query heads). A row with no
    allowed key gets output 0, logsumexp -inf and zero gradients."""
    n, group = q.shape[2], q.shape[1] // k.shape[1]
    scale = q.shape[-1] ** -0.5 if sm_scale is None else sm_scale
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    allowed = dense_mask(lists, n)
    s = q64 @ k64.repeat_interleave(group, 1).transpose(-1, -2) * scale
    # A finite fill keeps empty rows finite; multiplying by the mask then zeroes them.
    p = torch.softmax(s.masked_fill(~allowed, -1e300), -1) * allowed
    out = p @ v64.repeat_interleave(group, 1)
    grads = torch.autograd.grad(out, (q64, k64, v64), do.double())
    lse = torch.logsumexp(s.detach().masked_fill(~allowed, float("-inf")), -1)
    return out.detach(), lse, grads
