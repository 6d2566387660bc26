"""Oracles for attention under a mask: block lists against an element mask, and masked
softmax attention in float64 (shared by test_layouts, test_patterns and test_attention)."""

from __future__ import annotations

import math

import torch

from sparse_kernels.blocks import OPEN, BlockLists


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
    for name in BlockLists._fields[1:-1]:
        t = getattr(lists, name)
        assert t.dtype == torch.int32, name
        assert t.shape[:2] == (lb, lh), (name, tuple(t.shape))
        assert name.endswith(("work", "split")) or t.shape[2] == nb, (name, tuple(t.shape))
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
    for count, partial, work, split, index, mask_id in (
            (lists.kv_count, lists.kv_partial, lists.kv_work, lists.kv_split, lists.kv_index, lists.kv_mask),
            (lists.q_count, lists.q_partial, lists.q_work, lists.q_split, lists.q_index, lists.q_mask)):
        assert_schedule_covers(count, work, split)
        slot = torch.arange(index.shape[-1])
        used = slot < count[..., None]
        assert torch.equal(index[~used], torch.zeros_like(index[~used]))  # past the count: 0
        first = slot < partial[..., None]  # the partial blocks come first, then the full ones
        assert torch.equal(used & (mask_id >= 0), first & used) and (partial <= count).all()
        ascending = index[..., 1:] > index[..., :-1]  # each part ascending
        same_part = used[..., 1:] & (first[..., 1:] == first[..., :-1])
        assert ascending[same_part].all()


def assert_schedule_covers(count: torch.Tensor, work: torch.Tensor, split: torch.Tensor) -> None:
    """The work table walks every entry of every list exactly once, longest piece first,
    and the split table names each split list's slots, which no two pieces share."""
    lb, lh, nb = count.shape
    for b in range(lb):
        for h in range(lh):
            rows = work[b, h][work[b, h, :, 0] >= 0].long()
            block, first, end, slot = rows.unbind(1)
            end = torch.where(end == OPEN, count[b, h, block].long(), end)
            lengths = end - first
            assert (lengths[1:] <= lengths[:-1]).all()  # longest first
            walked = torch.zeros(nb, dtype=torch.long)
            walked.index_add_(0, block, lengths)
            assert torch.equal(walked, count[b, h].long())
            assert torch.equal(torch.bincount(block, minlength=nb).clamp(max=1), torch.ones(nb, dtype=torch.long))
            pieces = torch.bincount(block, minlength=nb)
            used = slot[slot >= 0]
            assert len(used.unique()) == len(used)
            listed = split[b, h][split[b, h, :, 0] >= 0].long()
            assert torch.equal(listed[:, 0].sort().values, (pieces > 1).nonzero().flatten())
            for row_block, first_slot, parts in listed.tolist():
                assert parts == pieces[row_block]
                mine = rows[block == row_block]
                assert sorted(mine[:, 3].tolist()) == list(range(first_slot, first_slot + parts))


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
