"""Oracles for attention under a mask: block lists against an element mask, and masked
softmax attention in float64 (shared by test_layouts, test_patterns and test_attention)."""

from __future__ import annotations

import math

import torch

from sparse_kernels.blocks import BlockLists


def expand_lists(lists: BlockLists, n: int) -> torch.Tensor:
    """(LB, LH, n, n) bool: the pairs the lists allow, read from kv_count / kv_index / kv_mask."""
    lb, lh, nb = lists.kv_count.shape
    block = lists.block
    # Per tile: -2 not listed, -1 full, m >= 0 partial with masks[m].
    tile_kind = torch.full((lb, lh, nb, nb), -2, dtype=torch.int64)
    slots = torch.arange(lists.kv_index.shape[-1]) < lists.kv_count[..., None].long()
    b, h, qb, slot = slots.nonzero().unbind(1)
    tile_kind[b, h, qb, lists.kv_index[b, h, qb, slot].long()] = lists.kv_mask[b, h, qb, slot].long()
    table = torch.cat([torch.zeros(1, block, block, dtype=torch.bool), torch.ones(1, block, block, dtype=torch.bool),
                       lists.masks.cpu()])
    tiles = table[tile_kind + 2]  # (LB, LH, NB, NB, block, block)
    return tiles.transpose(3, 4).reshape(lb, lh, nb * block, nb * block)[..., :n, :n]


def assert_lists_match(lists: BlockLists, mask: torch.Tensor) -> None:
    """The lists describe exactly `mask` (LB, LH, n, n): a tile is listed iff some pair in it
    is allowed, full iff every pair inside n is, a partial tile's mask is the tile's, and
    the transposed lists hold the same tiles with the same mask ids."""
    lb, lh, n, _ = mask.shape
    block = lists.block
    nb = math.ceil(n / block)
    for name in ("kv_count", "kv_partial", "kv_order", "kv_index", "kv_mask", "q_count", "q_partial", "q_order", "q_index",
                 "q_mask"):
        t = getattr(lists, name)
        assert t.dtype == torch.int32, name
        assert t.shape[:3] == (lb, lh, nb), (name, tuple(t.shape))
    assert lists.masks.dtype == torch.bool and lists.masks.shape[1:] == (block, block) and len(lists.masks) >= 1
    assert torch.equal(expand_lists(lists, n), mask)

    padded = torch.zeros(lb, lh, nb * block, nb * block, dtype=torch.bool)
    padded[..., :n, :n] = mask
    per_tile = padded.view(lb, lh, nb, block, nb, block).sum(dim=(3, 5))
    inside = torch.clamp(n - torch.arange(nb) * block, max=block)
    tile_full = per_tile == inside[:, None] * inside[None, :]
    kind = _tile_kinds(lists.kv_count, lists.kv_index, lists.kv_mask, nb)
    assert torch.equal(kind > -2, per_tile > 0)  # listed iff some pair allowed
    assert torch.equal(kind == -1, tile_full)  # full iff every pair inside n allowed
    transposed = _tile_kinds(lists.q_count, lists.q_index, lists.q_mask, nb)
    assert torch.equal(transposed.transpose(-1, -2), kind)
    for count, partial, order, index, mask_id in (
            (lists.kv_count, lists.kv_partial, lists.kv_order, lists.kv_index, lists.kv_mask),
            (lists.q_count, lists.q_partial, lists.q_order, lists.q_index, lists.q_mask)):
        # the order the kernels start their programs in: every block once, longest list first
        assert torch.equal(order.sort(-1).values, torch.arange(nb, dtype=torch.int32).expand_as(order))
        ordered = count.gather(-1, order.long())
        assert (ordered[..., 1:] <= ordered[..., :-1]).all()
        slot = torch.arange(index.shape[-1])
        used = slot < count[..., None]
        assert torch.equal(index[~used], torch.zeros_like(index[~used]))  # past the count: 0
        first = slot < partial[..., None]  # the partial blocks come first, then the full ones
        assert torch.equal(used & (mask_id >= 0), first & used) and (partial <= count).all()
        ascending = index[..., 1:] > index[..., :-1]  # each part ascending
        same_part = used[..., 1:] & (first[..., 1:] == first[..., :-1])
        assert ascending[same_part].all()


def _tile_kinds(count, index, mask_id, nb) -> torch.Tensor:
    """(LB, LH, NB, NB): the mask id of each listed tile (row = the list's own block), -2 elsewhere."""
    kinds = torch.full(count.shape + (nb,), -2, dtype=torch.int64)
    used = torch.arange(index.shape[-1]) < count[..., None].long()
    b, h, row, slot = used.nonzero().unbind(1)
    kinds[b, h, row, index[b, h, row, slot].long()] = mask_id[b, h, row, slot].long()
    return kinds


def masked_float64(q, k, v, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T / sqrt(d) + mask) v and the log-sum-exp in float64, n x n at once;
    mask broadcasts to (B, H, n, n); k and v may have fewer heads (query head h reads
    kv head h // (H / H_kv))."""
    group = q.shape[1] // k.shape[1]
    q, k, v = q.double(), k.double().repeat_interleave(group, 1), v.double().repeat_interleave(group, 1)
    scores = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    weights = torch.exp(scores - lse[..., None]).nan_to_num(0.0)  # empty rows: -inf - -inf
    return weights @ v, lse
