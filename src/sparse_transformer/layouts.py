"""Block-sparse attention layouts: what the kernels run, for any sparsity.

A `SparseLayout` says which (query, key) pairs of a self-attention of length n may
interact, in one of two forms:

- `spec`, the closed-form passes of a causal built-in `Pattern` (`Pattern.layout`): the
  kernels' fast path for the paper's patterns;
- `lists` (`sparse_kernels.blocks.BlockLists`): per query block of `block` positions, the
  key blocks it reads, each either full (every pair allowed) or partial, with an index
  into a table of the distinct (block x block) masks of the partial ones; and the
  transposed lists, per key block the query blocks that read it, for the backward pass.
  A built-in pattern's lists are built when first asked for (FlexAttention interop,
  analysis, and non-causal patterns, which have no closed form).

Each layout also keeps the element predicate it stands for, `mask_mod`, in FlexAttention's
convention mask_mod(b, h, q_idx, kv_idx) -> bool tensor (the index arguments broadcast
against each other): the reference backend evaluates it and `to_block_mask` hands it on.

A layout is shared by the batch and the heads (`batch`, `heads` None) or has one entry
per batch element or query head (LB = batch, LH = heads); grouped-query attention reads
the layout of the query head.

Built blockwise, never n x n: `from_mask_mod` first calls the predicate once per slab of
tiles with each tile's range of positions (`mask_bounds`), which decides most tiles (all
pairs allowed, or none) in O(tiles); it evaluates element by element only the tiles left
open, a bounded number of elements at a time, and keeps per tile only whether it is
listed, full or which distinct mask it has (packed into int64 words and deduplicated):
memory O(listed blocks + distinct masks).
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Callable

import torch

from sparse_kernels.blocks import BlockLists, schedule

from .mask_bounds import tile_bounds
from .patterns import Pattern

if TYPE_CHECKING:
    from sparse_kernels.ops import KernelSpec

MaskMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

BLOCK_SIZES = (16, 32, 64, 128)
# Mask elements from_mask_mod evaluates at once (16 MiB of bool, a few times that in
# temporaries): large enough that a slab is many tiles, small next to any device.
SLAB_ELEMENTS = 1 << 24


@functools.lru_cache(maxsize=256)
def kernel_spec(pattern: Pattern, layer: int = 0) -> KernelSpec:
    """A causal pattern's passes for `layer` with its stride and summary parameters: what
    the kernels are told of it, built once per (pattern, layer)."""
    from sparse_kernels.geometry import MODES  # imports triton: only once the kernels are used
    from sparse_kernels.ops import KernelSpec

    passes = tuple((MODES[even], MODES[odd]) for even, odd in pattern.kernel_passes(layer))  # refuses a non-causal pattern
    if pattern.kind != "fixed":
        return KernelSpec(passes, pattern.stride)
    groups = pattern.stride // pattern.summary if pattern.distinct_summaries else 1
    head_div = 2 if pattern.integration == "multihead" else 1
    return KernelSpec(passes, pattern.stride, pattern.summary, groups, head_div)


class SparseLayout:
    """A block-sparse self-attention layout of length n; see the module docstring.

    Made by `from_mask_mod`, `from_blocks`, `packed` / `from_documents` or
    `Pattern.layout`, not directly.

    Attributes:
        n: the sequence length (queries and keys).
        block: the granularity of `lists`, a power of two from 16 to 128.
        mask_mod: the element predicate, FlexAttention's mask_mod(b, h, q_idx, kv_idx).
        heads: LH when the layout differs per query head, None when shared.
        batch: LB when it differs per batch element, None when shared.
        device: where the lists live (and are built).
    """

    def __init__(
        self, n: int, block: int, mask_mod: MaskMod, *, heads: int | None = None, batch: int | None = None,
        device: torch.device | str | None = None, lists: BlockLists | None = None,
        pattern: Pattern | None = None, layer: int = 0,
    ):
        self.n, self.block, self.mask_mod = n, block, mask_mod
        self.heads, self.batch = heads, batch
        self.device = torch.device(device if device is not None else "cpu")
        self._lists = lists
        self._pattern, self._layer = pattern, layer
        self._block_mask = None

    # ------------------------------------------------------------------ builders
    @classmethod
    def from_mask_mod(
        cls, mask_mod: MaskMod, n: int, heads: int | None = None, batch: int | None = None, block: int = 128,
        device: torch.device | str | None = None, *, slab_elements: int = SLAB_ELEMENTS,
    ) -> SparseLayout:
        """The layout of an element predicate, FlexAttention's mask_mod(b, h, q_idx, kv_idx)
        -> bool tensor, called with broadcasting index tensors. heads / batch None: the
        predicate does not depend on h / b (it is called with index 0). The positions it
        sees are < n (the ragged last block's others are masked), so it may look them up
        in tables of length n. Built on `device`, `slab_elements` mask elements at a time."""
        _check_shape_args(n, block, heads=heads, batch=batch)
        layout = cls(n, block, mask_mod, heads=heads, batch=batch, device=device)
        layout._lists = _lists_of_mask_mod(mask_mod, n, block, heads or 1, batch or 1, layout.device, slab_elements)
        return layout

    @classmethod
    def from_blocks(cls, blocks: torch.Tensor, block: int = 64, causal: bool = False, n: int | None = None) -> SparseLayout:
        """A bool block layout as openai/blocksparse and DeepSpeed take it: every element
        of a True block attended. blocks (NB, NB) shared by the heads, (heads, NB, NB), or
        (batch, heads, NB, NB). causal: drop blocks above the diagonal and keep j <= i
        inside diagonal blocks. n defaults to NB * block; a given n needs NB = ceil(n / block)."""
        table = torch.as_tensor(blocks)
        if table.dtype != torch.bool:
            raise ValueError(f"from_blocks: blocks must be a bool tensor, got dtype {table.dtype}")
        if not 2 <= table.dim() <= 4 or table.shape[-1] != table.shape[-2]:
            raise ValueError(f"from_blocks: blocks must be (NB, NB), (heads, NB, NB) or (batch, heads, NB, NB), got {tuple(table.shape)}")
        table = table.reshape((1,) * (4 - table.dim()) + tuple(table.shape))  # (LB, LH, NB, NB)
        lb, lh, nb, _ = table.shape
        n = nb * block if n is None else n
        _check_shape_args(n, block)
        if math.ceil(n / block) != nb:
            raise ValueError(f"from_blocks: n={n} needs ceil(n / block) = {math.ceil(n / block)} blocks a side, got {nb}")
        if causal:
            table = table & torch.ones(nb, nb, dtype=torch.bool, device=table.device).tril()
        listed = table.nonzero()  # (L, 4): b, h, query block, key block
        if causal:
            # Diagonal tiles keep j <= i: one shared mask, needless only where a ragged last block has one row.
            rows_in = _positions_in_blocks(n, block, table.device)
            partial = (listed[:, 2] == listed[:, 3]) & (rows_in[listed[:, 2]] > 1)
            mask_id = torch.where(partial, 0, -1)
            masks = torch.ones(1, block, block, dtype=torch.bool, device=table.device).tril()
        else:
            mask_id = torch.full((len(listed),), -1, device=table.device)
            masks = _no_masks(block, table.device)
        lists = _assemble(block, lb, lh, nb, listed, mask_id, masks)

        def mask_mod(b, h, q_idx, kv_idx):
            allowed = table[b if lb > 1 else 0, h if lh > 1 else 0, q_idx // block, kv_idx // block]
            return allowed & (kv_idx <= q_idx) if causal else allowed

        return cls(n, block, mask_mod, heads=lh if lh > 1 else None, batch=lb if lb > 1 else None,
                   device=table.device, lists=lists)

    @classmethod
    def packed(
        cls, cu_seqlens: torch.Tensor, base: Pattern | MaskMod, n: int | None = None, *, heads: int | None = None,
        layer: int = 0, block: int = 128, device: torch.device | str | None = None,
    ) -> SparseLayout:
        """Documents packed into one sequence, document d at positions cu_seqlens[d] ..
        cu_seqlens[d + 1] - 1 (cu_seqlens starts at 0 and never decreases); see
        `from_documents`. Positions from cu_seqlens[-1] up to n (default cu_seqlens[-1])
        are padding, which reads and is read by nothing."""
        cu = torch.as_tensor(cu_seqlens, device=device).long()
        if cu.dim() != 1 or len(cu) < 2 or cu[0] != 0 or (cu.diff() < 0).any():
            raise ValueError(f"packed: cu_seqlens must be 1-D, start at 0 and never decrease, got {cu.tolist()}")
        total = int(cu[-1])
        n = total if n is None else n
        if n < total:
            raise ValueError(f"packed: n={n} is shorter than the documents' total length {total}")
        document = torch.searchsorted(cu[1:], torch.arange(n, device=cu.device), right=True)
        return cls.from_documents(torch.where(document < len(cu) - 1, document, -1), base,
                                  heads=heads, layer=layer, block=block, device=device)

    @classmethod
    def from_documents(
        cls, document_ids: torch.Tensor, base: Pattern | MaskMod, *, heads: int | None = None, layer: int = 0,
        block: int = 128, device: torch.device | str | None = None,
    ) -> SparseLayout:
        """A packed sequence from a document id per position: (n,) shared by the batch or
        (batch, n); a document's positions are contiguous, -1 marks padding. Each document
        attends within itself under `base` (a Pattern at `layer`, or a mask_mod) with its
        positions counted from its own start, so a packed batch gives what running each
        document alone gives."""
        ids = torch.as_tensor(document_ids, device=device).long()
        if ids.dim() not in (1, 2) or ids.shape[-1] == 0:
            raise ValueError(f"from_documents: document_ids must be (n,) or (batch, n), got {tuple(ids.shape)}")
        batch = ids.shape[0] if ids.dim() == 2 else None
        ids = ids.reshape(-1, ids.shape[-1])
        n = ids.shape[-1]
        position = torch.arange(n, device=ids.device)
        first = torch.ones_like(ids, dtype=torch.bool)
        first[:, 1:] = ids[:, 1:] != ids[:, :-1]
        local = position - torch.where(first, position, 0).cummax(dim=-1).values  # position within its document
        if isinstance(base, Pattern):
            if heads is None and base.depends_on_head():
                raise ValueError(f"from_documents: {base.describe()} differs per head: give heads=")
            heads = heads if base.depends_on_head() else None
            base = base.mask_mod(layer)

        def mask_mod(b, h, q_idx, kv_idx):
            row = b if batch is not None else 0
            document = ids[row, q_idx]
            same = (document == ids[row, kv_idx]) & (document >= 0)
            return same & base(b, h, local[row, q_idx], local[row, kv_idx])

        return cls.from_mask_mod(mask_mod, n, heads=heads, batch=batch, block=block, device=ids.device)

    # ------------------------------------------------------------------ the two forms
    @property
    def spec(self) -> KernelSpec | None:
        """The closed-form passes of a causal built-in pattern (the fast path), else None."""
        if self._pattern is None or not self._pattern.causal:
            return None
        return kernel_spec(self._pattern, self._layer)

    @property
    def lists(self) -> BlockLists:
        """The block lists (built now for a built-in pattern's layout, then kept)."""
        if self._lists is None:
            self._lists = _lists_of_mask_mod(self.mask_mod, self.n, self.block, self.heads or 1, self.batch or 1,
                                             self.device, SLAB_ELEMENTS)
        return self._lists

    # ------------------------------------------------------------------ reading
    def check(self, batch: int, heads: int, n: int) -> None:
        """Refuse attention inputs the layout does not fit: q of (batch, heads, n, d)."""
        if n != self.n:
            raise ValueError(f"the layout is for sequences of length {self.n}, but q has length {n}: build it for n={n}")
        if self.heads is not None and self.heads != heads:
            raise ValueError(f"the layout has {self.heads} heads, but q has {heads}: build it with heads={heads} (or None, shared)")
        if self.batch is not None and self.batch != batch:
            raise ValueError(f"the layout has {self.batch} batch elements, but q has {batch}: build it with batch={batch} (or None, shared)")

    def element_mask(self, rows: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """(LB, LH, len(rows), len(keys)) bool: may query rows[r] read key keys[c]? False
        for positions >= n. LB and LH are 1 where the layout is shared."""
        return _evaluate(self.mask_mod, self.batch or 1, self.heads or 1, rows, keys, self.n)

    def pair_count(self) -> torch.Tensor:
        """(LB, LH) int64: the allowed (query, key) pairs inside n, from the lists (for
        useful-FLOP counts)."""
        lists = self.lists
        inside = _positions_in_blocks(self.n, self.block, lists.masks.device)
        # Pairs of each distinct mask within its first r rows and c columns, r, c = 0 .. block.
        corner = torch.nn.functional.pad(lists.masks.long().cumsum(1).cumsum(2), (1, 0, 1, 0))
        listed = torch.arange(lists.kv_index.shape[-1], device=inside.device) < lists.kv_count[..., None]
        rows = inside[:, None].expand(lists.kv_index.shape)  # (LB, LH, NB, W): the query block's rows
        cols = inside[lists.kv_index.long()]
        partial = corner[lists.kv_mask.long().clamp(min=0), rows, cols]
        pairs = torch.where(lists.kv_mask < 0, rows * cols, partial)
        return torch.where(listed, pairs, 0).sum(dim=(-1, -2))

    def to_block_mask(self):
        """This layout as a FlexAttention BlockMask (kept after the first call)."""
        if self._block_mask is None:
            from torch.nn.attention.flex_attention import BlockMask

            lists = self.lists
            nb = lists.kv_count.shape[-1]
            listed = torch.arange(lists.kv_index.shape[-1], device=lists.kv_count.device) < lists.kv_count[..., None]
            partial = _compact(lists.kv_index, listed & (lists.kv_mask >= 0), nb)
            full = _compact(lists.kv_index, listed & (lists.kv_mask < 0), nb)
            self._block_mask = BlockMask.from_kv_blocks(*partial, *full, BLOCK_SIZE=self.block, mask_mod=self.mask_mod,
                                                        seq_lengths=(self.n, self.n))
        return self._block_mask

    def __repr__(self) -> str:
        form = f"pattern {self._pattern.describe()}" if self._pattern is not None else "block lists"
        return f"SparseLayout(n={self.n}, block={self.block}, heads={self.heads}, batch={self.batch}, {form})"


def pattern_layout(pattern: Pattern, n: int, heads: int | None, layer_class: int, device, block: int) -> SparseLayout:
    """`Pattern.layout`'s cache, keyed on what tells layouts apart."""
    return _pattern_layout(pattern, n, heads, layer_class, torch.device(device if device is not None else "cpu"), block)


@functools.lru_cache(maxsize=64)
def _pattern_layout(pattern: Pattern, n: int, heads: int | None, layer: int, device: torch.device, block: int) -> SparseLayout:
    _check_shape_args(n, block, heads=heads)
    return SparseLayout(n, block, pattern.mask_mod(layer), heads=heads, device=device, pattern=pattern, layer=layer)


# ---------------------------------------------------------------------- building lists
def _check_shape_args(n: int, block: int, **counts: int | None) -> None:
    if block not in BLOCK_SIZES:
        raise ValueError(f"layout block {block!r} is not a power of two from 16 to 128: choose one of {BLOCK_SIZES}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"layout n must be a positive integer, got {n!r}")
    for name, count in counts.items():
        if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
            raise ValueError(f"layout {name} must be a positive integer or None (shared), got {count!r}")


def _positions_in_blocks(n: int, block: int, device) -> torch.Tensor:
    """(NB,) int64: how many of each block's positions are < n."""
    return torch.clamp(n - torch.arange(math.ceil(n / block), device=device) * block, max=block)


def _evaluate(mask_mod: MaskMod, lb: int, lh: int, rows: torch.Tensor, keys: torch.Tensor, n: int) -> torch.Tensor:
    """(lb, lh, len(rows), len(keys)) bool: mask_mod over batch 0..lb-1, heads 0..lh-1, the
    given rows and keys, False outside [0, n)."""
    b = torch.arange(lb, device=rows.device).view(-1, 1, 1, 1)
    h = torch.arange(lh, device=rows.device).view(1, -1, 1, 1)
    allowed = _inside_n(mask_mod, b, h, rows.view(1, 1, -1, 1), keys.view(1, 1, 1, -1), n)
    return allowed.expand(lb, lh, len(rows), len(keys))


def _inside_n(mask_mod: MaskMod, b, h, q_idx: torch.Tensor, kv_idx: torch.Tensor, n: int) -> torch.Tensor:
    """mask_mod at broadcasting indices, False where a position is >= n. Positions are
    clamped below n before the call, so a mask_mod that looks them up in a table of
    length n stays in range."""
    allowed = mask_mod(b, h, q_idx.clamp(max=n - 1), kv_idx.clamp(max=n - 1))
    return torch.as_tensor(allowed, dtype=torch.bool, device=q_idx.device) & (q_idx < n) & (kv_idx < n)


def _lists_of_mask_mod(mask_mod: MaskMod, n: int, block: int, lh: int, lb: int, device: torch.device,
                       slab_elements: int) -> BlockLists:
    """List the tiles of mask_mod. A slab of query-block rows at a time, each tile's range
    first (`mask_bounds.tile_bounds`: all pairs, none, or some); then, element by element,
    only the tiles whose range leaves them open, `slab_elements` elements at a time. A
    mask_mod that ranges do not follow leaves every tile open."""
    nb = math.ceil(n / block)
    in_block = _positions_in_blocks(n, block, device)
    rows_per_slab = max(1, slab_elements // (8 * lb * lh * nb))  # the range pass holds a few int64 temporaries a tile
    tiles_per_chunk = max(1, slab_elements // (block * block))
    tables: dict = {}  # the range pass's lookup tables, built once for all slabs
    bounded = True
    listed, mask_ids, uniques = [], [], []
    unique_count = 0
    for q0 in range(0, nb, rows_per_slab):
        rows = range(q0, min(nb, q0 + rows_per_slab))
        if bounded:
            # Any failure of the range pass only means evaluating the elements: a real
            # error in the mask_mod shows there.
            try:
                always, ever = tile_bounds(mask_mod, n, block, lb, lh, rows, nb, device, tables)
            except Exception:  # noqa: BLE001
                bounded = False
        if not bounded:
            always = torch.zeros(lb, lh, len(rows), nb, dtype=torch.bool, device=device)
            ever = ~always
        offset = torch.tensor([0, 0, q0, 0], device=device)
        full = always.nonzero() + offset  # (F, 4): b, h, query block, key block
        listed.append(full)
        mask_ids.append(torch.full((len(full),), -1, dtype=torch.int64, device=device))
        for tiles in ((ever & ~always).nonzero() + offset).split(tiles_per_chunk):
            allowed = _evaluate_tiles(mask_mod, tiles, block, n)  # (P, block, block)
            count = allowed.sum(dim=(1, 2))
            is_full = count == in_block[tiles[:, 2]] * in_block[tiles[:, 3]]
            partial = (count > 0) & ~is_full
            mask_id = torch.full((len(tiles),), -1, dtype=torch.int64, device=device)
            if partial.any():
                unique, inverse = _distinct_rows(_pack_bits(allowed[partial]))
                mask_id[partial] = inverse + unique_count
                unique_count += len(unique)
                uniques.append(unique)
            listed.append(tiles[count > 0])
            mask_ids.append(mask_id[count > 0])
    listed, mask_id = torch.cat(listed), torch.cat(mask_ids)
    if len(uniques) > 1:  # the chunks' distinct masks, made distinct across chunks too
        unique, remap = _distinct_rows(torch.cat(uniques))
        mask_id = torch.where(mask_id >= 0, remap[mask_id.clamp(min=0)], -1)
        masks = _unpack_bits(unique, block)
    elif uniques:  # one chunk: its masks are distinct already
        masks = _unpack_bits(uniques[0], block)
    else:
        masks = _no_masks(block, device)
    return _assemble(block, lb, lh, nb, listed, mask_id, masks)


def _evaluate_tiles(mask_mod: MaskMod, tiles: torch.Tensor, block: int, n: int) -> torch.Tensor:
    """(P, block, block) bool: mask_mod over the tiles (P, 4) = (b, h, query block, key
    block), False outside [0, n)."""
    b, h, qb, kb = tiles.unbind(1)
    offsets = torch.arange(block, device=tiles.device)
    rows, keys = qb[:, None] * block + offsets, kb[:, None] * block + offsets  # (P, block) each
    allowed = _inside_n(mask_mod, b.view(-1, 1, 1, 1), h.view(-1, 1, 1, 1), rows.view(-1, 1, block, 1),
                        keys.view(-1, 1, 1, block), n)
    return allowed.reshape(len(tiles), block, block)


def _pack_bits(tiles: torch.Tensor) -> torch.Tensor:
    """(P, block, block) bool -> (P, block * block // 64) int64, eight bits a byte."""
    bits = tiles.reshape(len(tiles), -1, 8).to(torch.uint8)
    weights = 1 << torch.arange(8, dtype=torch.uint8, device=tiles.device)
    return (bits * weights).sum(dim=-1, dtype=torch.uint8).view(torch.int64)


def _distinct_rows(words: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct rows of words (P, W) int64 and, per row, the index of its distinct row:
    what torch.unique(words, dim=0, return_inverse=True) gives, in another order. Rows are
    told apart by a 62-bit hash, a 1-D sort instead of unique's row-by-row comparisons
    (thousands of small launches on a GPU); a hash collision is found by comparing every
    row with its representative, and then unique decides."""
    pieces = words.view(torch.int16).long() & 0xFFFF  # 16-bit pieces, each below the prime
    key = torch.zeros(len(words), dtype=torch.int64, device=words.device)
    for multipliers in _HASH_MULTIPLIERS:  # two independent hashes: sum of piece x random weight, mod a prime
        weights = multipliers[: pieces.shape[1]].to(words.device)
        key = key * _HASH_PRIME + (pieces * weights).sum(1).remainder(_HASH_PRIME)  # sums below 2^57
    distinct, inverse = torch.unique(key, return_inverse=True)
    first = torch.full((len(distinct),), len(words), dtype=torch.int64, device=words.device)
    first.scatter_reduce_(0, inverse, torch.arange(len(words), device=words.device), reduce="amin")
    if not torch.equal(words, words[first[inverse]]):  # a collision: two different rows, one hash
        return torch.unique(words, dim=0, return_inverse=True)
    return words[first], inverse


_HASH_PRIME = 2**31 - 1
_HASH_MULTIPLIERS = torch.randint(1, _HASH_PRIME, (2, 128 * 128 // 16), generator=torch.Generator().manual_seed(0))


def _unpack_bits(words: torch.Tensor, block: int) -> torch.Tensor:
    """The inverse of `_pack_bits`: (U, block * block // 64) int64 -> (U, block, block) bool."""
    octets = words.contiguous().view(torch.uint8)
    shifts = torch.arange(8, dtype=torch.uint8, device=words.device)
    return ((octets[..., None] >> shifts) & 1).bool().reshape(len(words), block, block)


def _no_masks(block: int, device) -> torch.Tensor:
    """The masks table when no tile is partial: one all-False mask, as the kernels expect."""
    return torch.zeros(1, block, block, dtype=torch.bool, device=device)


def _assemble(block: int, lb: int, lh: int, nb: int, listed: torch.Tensor, mask_id: torch.Tensor,
              masks: torch.Tensor) -> BlockLists:
    """BlockLists from the listed tiles (L, 4) = (b, h, query block, key block) and their
    mask ids (-1 full): the lists per query block and, transposed, per key block."""
    b, h, qb, kb = listed.unbind(1)
    kv = _ragged_rows(b, h, qb, kb, mask_id, lb, lh, nb)
    q = _ragged_rows(b, h, kb, qb, mask_id, lb, lh, nb)
    unused = (1 << (len(masks) - 1).bit_length()) - len(masks)  # a power of two of masks, as the widths
    masks = torch.cat([masks, masks.new_zeros(unused, block, block)])
    return BlockLists(block, *kv, *q, masks)


def _ragged_rows(b, h, row, col, value, lb: int, lh: int, nb: int):
    """Per (b, h, row): how many entries and how many of them partial (mask id `value` >= 0),
    (lb, lh, nb) int32 each; the kernels' work and split tables over the rows
    (`blocks.schedule`); their cols (partial ones first, each part ascending) and their
    values, (lb, lh, nb, W) int32 each, padded with 0 to W, the longest row rounded up to
    a power of two (at most nb). Rounding keeps the shapes of layouts that differ a little
    (a new packed batch) equal, so that a compiled call taking them is not compiled again."""
    row_id = (b * lh + h) * nb + row
    full = (value < 0).long()
    order = torch.argsort((row_id * 2 + full) * nb + col)
    row_id, col, value = row_id[order], col[order], value[order]
    count = torch.bincount(row_id, minlength=lb * lh * nb)
    partial = torch.bincount(row_id[value >= 0], minlength=lb * lh * nb)
    width = min(nb, 1 << (int(count.max()) - 1).bit_length()) if len(row_id) else 1
    slot = torch.arange(len(row_id), device=row_id.device) - (torch.cumsum(count, 0) - count)[row_id]
    index = torch.zeros(lb * lh * nb, width, dtype=torch.int32, device=row_id.device)
    values = torch.zeros_like(index)
    index[row_id, slot] = col.int()
    values[row_id, slot] = value.int()
    shape = (lb, lh, nb)
    count = count.int().view(shape)
    return count, partial.int().view(shape), *schedule(count), index.view(*shape, width), values.view(*shape, width)


def _compact(index: torch.Tensor, keep: torch.Tensor, nb: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The kept entries of each row of `index`, ascending, as FlexAttention stores them:
    counts (..., NB) int32 and indices (..., NB, NB) int32 (one column per key block)."""
    width = index.shape[-1]
    key = torch.where(keep, index.long(), nb)  # dropped entries sort last
    ordered = key.sort(dim=-1).values
    if width < nb:
        ordered = torch.cat([ordered, ordered.new_full(ordered.shape[:-1] + (nb - width,), nb)], dim=-1)
    ordered = ordered[..., :nb]
    return keep.sum(-1).int(), torch.where(ordered < nb, ordered, 0).int()
