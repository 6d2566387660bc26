"""SparseLayout's block lists against the element masks they stand for, built from random
mask_mods (Longformer, BigBird, prefix-LM, packed documents; per head and per batch
element), block tables and packed batches; and its FlexAttention BlockMask."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from layout_checks import assert_lists_match, assert_schedule_covers, expand_lists
from sparse_kernels.blocks import BlockLists, schedule
from sparse_transformer.attention import attend
from sparse_transformer.layouts import SparseLayout
from sparse_transformer.patterns import Pattern

SETTINGS = settings(max_examples=30, deadline=None)


def dense_mask(mask_mod, n: int, heads: int | None, batch: int | None) -> torch.Tensor:
    """(LB, LH, n, n): mask_mod at every pair, all indices at once (no slabs, no tiles)."""
    lb, lh = batch or 1, heads or 1
    idx = torch.arange(n)
    b, h = torch.arange(lb)[:, None, None, None], torch.arange(lh)[None, :, None, None]
    return mask_mod(b, h, idx[:, None], idx[None, :]).expand(lb, lh, n, n)


@st.composite
def mask_mods(draw):
    """(name, mask_mod, n, heads, batch): the masks users ask for, with random parameters."""
    n = draw(st.integers(1, 150))
    kind = draw(st.sampled_from(["longformer", "bigbird", "prefix_lm", "documents", "window_per_head"]))
    heads = batch = None
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    if kind == "longformer":  # a sliding window plus global tokens, which read and are read by everything
        window = draw(st.integers(1, 40))
        is_global = torch.rand(n, generator=gen) < 0.05

        def mask_mod(b, h, q, kv):
            return ((q - kv).abs() < window) | is_global[q] | is_global[kv]
    elif kind == "bigbird":  # window + global + random blocks (of their own granularity)
        window, granule = draw(st.integers(1, 20)), draw(st.sampled_from([8, 16, 24]))
        is_global = torch.arange(n) < draw(st.integers(0, 3))
        cells = math.ceil(n / granule)
        random_blocks = torch.rand(cells, cells, generator=gen) < 0.2

        def mask_mod(b, h, q, kv):
            return ((q - kv).abs() < window) | is_global[q] | is_global[kv] | random_blocks[q // granule, kv // granule]
    elif kind == "prefix_lm":  # bidirectional over a prefix of random length per batch element, causal after it
        batch = draw(st.integers(1, 3))
        prefix = torch.randint(0, n + 1, (batch,), generator=gen)

        def mask_mod(b, h, q, kv):
            return (kv <= q) | (kv < prefix[b])
    elif kind == "documents":  # a packed batch of documents of random lengths, causal in each
        boundaries = torch.rand(n, generator=gen) < 0.1
        document = torch.cumsum(boundaries, 0)

        def mask_mod(b, h, q, kv):
            return (document[q] == document[kv]) & (kv <= q)
    else:  # a causal window of a different width per head
        heads = draw(st.integers(1, 4))
        window = torch.randint(1, 50, (heads,), generator=gen)

        def mask_mod(b, h, q, kv):
            return (kv <= q) & (q - kv < window[h])
    return kind, mask_mod, n, heads, batch


@SETTINGS
@given(case=mask_mods(), block=st.sampled_from([16, 32]), tiles_per_slab=st.sampled_from([1, 3, 1000]))
def test_from_mask_mod_lists_are_the_element_mask(case, block, tiles_per_slab):
    """Listed iff some pair is allowed, full iff all are (inside n), partial masks right:
    with slabs of one tile, a few tiles (ragged against the rows) and whole rows."""
    _, mask_mod, n, heads, batch = case
    tile = (batch or 1) * (heads or 1) * block * block
    layout = SparseLayout.from_mask_mod(mask_mod, n, heads=heads, batch=batch, block=block,
                                        slab_elements=tiles_per_slab * tile)
    mask = dense_mask(mask_mod, n, heads, batch)
    assert_lists_match(layout.lists, mask)
    used = layout.lists.masks[: int(layout.lists.kv_mask.max()) + 1].flatten(1)  # the rest pads to a power of two
    assert len(used.unique(dim=0)) == len(used)  # distinct across slabs too
    assert torch.equal(layout.element_mask(torch.arange(n), torch.arange(n)), mask)
    assert torch.equal(layout.pair_count(), mask.sum(dim=(-1, -2)))


def test_mask_mods_may_look_positions_up_in_tables_of_length_n():
    """The ragged last block's positions past n never reach the mask_mod (they would index out of range)."""
    document = torch.tensor([0] * 10 + [1] * 7)  # n = 17: one position into the second block of 16
    layout = SparseLayout.from_mask_mod(lambda b, h, q, kv: document[q] == document[kv], 17, block=16)
    assert_lists_match(layout.lists, (document[:, None] == document[None, :])[None, None])


def test_a_causal_mask_has_one_distinct_partial_mask_across_slabs():
    layout = SparseLayout.from_mask_mod(lambda b, h, q, kv: kv <= q, 512, block=32, slab_elements=32 * 32 * 5)
    lists = layout.lists
    assert torch.equal(lists.masks, torch.ones(1, 32, 32, dtype=torch.bool).tril())
    assert torch.equal(lists.kv_count[0, 0], torch.arange(1, 17, dtype=torch.int32))
    # The diagonal block is the one partial block of each list: listed first, with mask 0.
    assert torch.equal(lists.kv_partial[0, 0], torch.ones(16, dtype=torch.int32))
    assert torch.equal(lists.kv_index[0, 0, :, 0], torch.arange(16, dtype=torch.int32))
    assert torch.equal(lists.kv_mask[0, 0, :, 0], torch.zeros(16, dtype=torch.int32))
    assert int((lists.kv_mask[0, 0] == -1).sum()) == 16 * 15 // 2  # below the diagonal: full


def test_a_sliding_window_keeps_only_its_distinct_edge_masks():
    """A band of width 40 on tiles of 32: every row of tiles has the same three partial
    tiles (two edges and the diagonal), so however long the sequence, three masks."""
    window = 40
    layout = SparseLayout.from_mask_mod(lambda b, h, q, kv: (kv <= q) & (q - kv < window), 1024, block=32,
                                        slab_elements=32 * 32 * 7)
    assert int(layout.lists.kv_mask.max()) + 1 == 3  # mask ids 0, 1, 2
    assert len(layout.lists.masks) == 4 and not layout.lists.masks[3].any()  # padded to a power of two
    assert_lists_match(layout.lists, dense_mask(lambda b, h, q, kv: (kv <= q) & (q - kv < window), 1024, None, None))


@SETTINGS
@given(
    shape=st.sampled_from([(), (3,), (2, 3)]),
    nb=st.integers(1, 6),
    block=st.sampled_from([16, 32]),
    cut=st.integers(0, 15),
    causal=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_from_blocks_attends_every_element_of_a_true_block(shape, nb, block, cut, causal, seed):
    table = torch.rand(*shape, nb, nb, generator=torch.Generator().manual_seed(seed)) < 0.4
    n = max(nb * block - cut, (nb - 1) * block + 1)  # a ragged last block as often as not
    layout = SparseLayout.from_blocks(table, block=block, causal=causal, n=n)
    elements = table.repeat_interleave(block, -1).repeat_interleave(block, -2)[..., :n, :n]
    if causal:
        elements = elements & torch.ones(n, n, dtype=torch.bool).tril()
    expected = elements.reshape((1,) * (4 - elements.dim()) + tuple(elements.shape))
    assert (layout.batch, layout.heads) == ((shape[0] if len(shape) == 2 else None), (shape[-1] if shape else None))
    assert_lists_match(layout.lists, expected)
    assert torch.equal(layout.element_mask(torch.arange(n), torch.arange(n)), expected)  # its derived mask_mod
    assert len(layout.lists.masks) == 1  # all-False (nothing partial) or the causal diagonal


def test_from_blocks_refuses_what_it_cannot_read():
    with pytest.raises(ValueError, match="bool"):
        SparseLayout.from_blocks(torch.ones(2, 2), block=16)
    with pytest.raises(ValueError, match=r"\(NB, NB\)"):
        SparseLayout.from_blocks(torch.ones(2, 3, dtype=torch.bool), block=16)
    with pytest.raises(ValueError, match="ceil"):
        SparseLayout.from_blocks(torch.ones(2, 2, dtype=torch.bool), block=16, n=40)
    with pytest.raises(ValueError, match="power of two"):
        SparseLayout.from_blocks(torch.ones(2, 2, dtype=torch.bool), block=24)


def random_lengths(gen: torch.Generator, documents: int) -> list[int]:
    return torch.randint(1, 40, (documents,), generator=gen).tolist()


def qkv(batch, heads, n, d=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, n, d, generator=gen) for _ in range(3)]


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16), documents=st.integers(1, 5), padding=st.integers(0, 20))
def test_a_packed_batch_gives_what_each_document_gives_alone(seed, documents, padding):
    """Under a head-dependent Pattern and under a mask_mod (prefix-LM over 3 positions):
    positions restart at each document's start; padding reads and gives nothing."""
    gen = torch.Generator().manual_seed(seed)
    lengths = random_lengths(gen, documents)
    cu = torch.tensor([0, *lengths]).cumsum(0)
    n = int(cu[-1]) + padding
    pattern = Pattern("fixed", 4, 1, "multihead", distinct_summaries=True)

    def prefix_lm(b, h, q, kv):
        return (kv <= q) | (kv < 3)

    q, k, v = qkv(1, 4, n, seed=seed)
    for base, alone in ((pattern, lambda m: pattern), (prefix_lm, lambda m: SparseLayout.from_mask_mod(prefix_lm, m, block=16))):
        packed = attend(q, k, v, SparseLayout.packed(cu, base, n, heads=4, block=16))
        for start, stop in zip(cu[:-1].tolist(), cu[1:].tolist()):
            one = attend(q[:, :, start:stop], k[:, :, start:stop], v[:, :, start:stop], alone(stop - start))
            assert torch.allclose(packed[:, :, start:stop], one, atol=1e-6)
        assert torch.equal(packed[:, :, int(cu[-1]):], torch.zeros(1, 4, padding, 8))


def test_packed_batches_of_one_length_have_lists_of_one_shape():
    """The lists' widths are rounded up to powers of two, so a new packed batch of the same
    length with other document lengths keeps the shapes of its lists. (The masks table,
    also rounded, can still change size: it holds one mask per distinct document boundary
    offset within a block.)"""
    first = SparseLayout.packed(torch.tensor([0, 100, 160, 256]), Pattern("dense", 1), block=16).lists
    second = SparseLayout.packed(torch.tensor([0, 60, 156, 256]), Pattern("dense", 1), block=16).lists
    for name in BlockLists._fields[1:-1]:
        assert getattr(first, name).shape == getattr(second, name).shape, name
    assert not torch.equal(first.kv_count, second.kv_count)
    assert len(first.masks) in (1, 2, 4, 8) and len(second.masks) in (1, 2, 4, 8)


def test_document_ids_per_batch_element_build_per_batch_lists():
    ids = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 2], [0, 1, 1, 1, 1, 1, -1, -1]])
    layout = SparseLayout.from_documents(ids, Pattern("local", 2), block=16)
    assert layout.batch == 2 and layout.heads is None
    local = torch.tensor([[0, 1, 2, 0, 1, 2, 3, 0], [0, 0, 1, 2, 3, 4, 0, 0]])
    same = (ids[:, :, None] == ids[:, None, :]) & (ids[:, :, None] >= 0)
    band = (local[:, None, :] <= local[:, :, None]) & (local[:, :, None] - local[:, None, :] < 2)
    assert_lists_match(layout.lists, (same & band)[:, None])
    q, k, v = qkv(2, 2, 8)
    out = attend(q, k, v, layout)
    assert torch.allclose(out[1:, :, 1:6], attend(q[1:, :, 1:6], k[1:, :, 1:6], v[1:, :, 1:6], Pattern("local", 2)), atol=1e-6)


def test_packed_refuses_bad_offsets_and_a_head_dependent_pattern_without_heads():
    with pytest.raises(ValueError, match="cu_seqlens"):
        SparseLayout.packed(torch.tensor([0, 5, 3]), Pattern("dense", 1))
    with pytest.raises(ValueError, match="shorter"):
        SparseLayout.packed(torch.tensor([0, 5, 9]), Pattern("dense", 1), n=8)
    with pytest.raises(ValueError, match="heads="):
        SparseLayout.packed(torch.tensor([0, 5]), Pattern("strided", 2, integration="multihead"))


def block_mask_elements(block_mask, n: int) -> torch.Tensor:
    """(B, H, n, n): what a FlexAttention BlockMask allows, from its own block-level
    `to_dense()` (partial and full tiles), its full lists and its mask_mod."""
    listed = block_mask.to_dense().bool()
    b, h, nq, nk = listed.shape
    full = torch.zeros_like(listed)
    used = torch.arange(block_mask.full_kv_indices.shape[-1]) < block_mask.full_kv_num_blocks[..., None]
    bi, hi, qi, slot = used.nonzero().unbind(1)
    full[bi, hi, qi, block_mask.full_kv_indices[bi, hi, qi, slot].long()] = True
    size = block_mask.BLOCK_SIZE[0]

    def spread(tiles):
        return tiles.repeat_interleave(size, -1).repeat_interleave(size, -2)[..., :n, :n]

    return spread(listed) & (spread(full) | dense_mask(block_mask.mask_mod, n, h, b))


@settings(max_examples=15, deadline=None)
@given(case=mask_mods(), block=st.sampled_from([16, 32]))
def test_to_block_mask_allows_exactly_the_layout(case, block):
    _, mask_mod, n, heads, batch = case
    layout = SparseLayout.from_mask_mod(mask_mod, n, heads=heads, batch=batch, block=block)
    block_mask = layout.to_block_mask()
    assert block_mask.seq_lengths == (n, n) and block_mask.BLOCK_SIZE == (block, block)
    assert torch.equal(block_mask_elements(block_mask, n), expand_lists(layout.lists, n))
    assert layout.to_block_mask() is block_mask


def test_to_block_mask_of_blocks_and_patterns():
    table = torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(0)) < 0.5
    layout = SparseLayout.from_blocks(table, block=16, causal=True, n=60)
    assert torch.equal(block_mask_elements(layout.to_block_mask(), 60), expand_lists(layout.lists, 60))
    pattern = Pattern("fixed", 16, 4, "multihead", distinct_summaries=True)
    layout = pattern.layout(100, heads=4, block=16)
    expected = torch.stack([pattern.mask(100, 0, h) for h in range(4)])[None]
    assert torch.equal(block_mask_elements(layout.to_block_mask(), 100), expected)


def test_builders_refuse_bad_sizes():
    causal = lambda b, h, q, kv: kv <= q  # noqa: E731
    with pytest.raises(ValueError, match="power of two"):
        SparseLayout.from_mask_mod(causal, 64, block=48)
    with pytest.raises(ValueError, match="positive integer"):
        SparseLayout.from_mask_mod(causal, 0)
    with pytest.raises(ValueError, match="heads"):
        SparseLayout.from_mask_mod(causal, 64, heads=0)


@settings(max_examples=30, deadline=None)
@given(lb=st.integers(1, 2), lh=st.integers(1, 3), nb=st.integers(1, 40), piece=st.integers(1, 8),
       seed=st.integers(0, 10_000))
def test_schedule_walks_every_entry_once_longest_first(lb, lh, nb, piece, seed):
    """Lists longer than `piece` are cut into pieces with slots of their own; the work
    rows cover each list exactly, longest first, and the tables' shapes are rounded."""
    gen = torch.Generator().manual_seed(seed)
    count = torch.randint(0, nb + 1, (lb, lh, nb), generator=gen, dtype=torch.int32)
    work, split = schedule(count, piece)
    assert_schedule_covers(count, work, split)
    extra, splits = work.shape[2] - nb, split.shape[2]
    assert extra == 0 or extra & (extra - 1) == 0
    assert splits == 0 or splits & (splits - 1) == 0
    assert (count <= piece).all() == (splits == 0)


@pytest.mark.parametrize("collide", [False, True])
def test_distinct_rows_are_uniques_rows(monkeypatch, collide):
    """The hashed deduplication of partial masks gives unique's rows and inverse (in its
    own order), without unique's row comparisons; when hashes collide (forced: every
    multiplier 0) unique decides."""
    from sparse_transformer import layouts

    if collide:
        monkeypatch.setattr(layouts, "_HASH_MULTIPLIERS", torch.zeros_like(layouts._HASH_MULTIPLIERS))
    by_rows = []
    unique = torch.unique
    monkeypatch.setattr(torch, "unique", lambda *a, **k: (by_rows.append(k.get("dim")), unique(*a, **k))[1])
    gen = torch.Generator().manual_seed(1)
    rows = torch.randint(-2**62, 2**62, (7, 256), generator=gen)
    rows[:2] = torch.tensor([-2, -(2**32)])[:, None]  # 32-bit halves 2^32 - 2 and 0: once a collision
    words = rows[torch.randint(0, 7, (50,), generator=gen)]
    words[3, 5] ^= 1 << 63  # a row differing from another only in a sign bit
    distinct, inverse = layouts._distinct_rows(words)
    assert torch.equal(distinct[inverse], words)
    assert len(distinct) == len(unique(words, dim=0))
    assert (0 in by_rows) == collide  # unique's row comparisons only after a collision


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["longformer", "documents", "window per head", "prefix per batch", "floats"])
def test_lists_built_on_the_gpu_are_the_cpus(kind):
    """The range pass and the hashed deduplication on CUDA tensors give the CPU's lists,
    tensor for tensor (n = 5,000, block 64; a float mask_mod takes the element path)."""
    n, heads, batch = 5000, None, None
    gen = torch.Generator().manual_seed(0)
    if kind == "longformer":
        tables = {"is_global": torch.rand(n, generator=gen) < 0.01}
        make = lambda t: lambda b, h, q, kv: ((q - kv).abs() < 200) | t["is_global"][q] | t["is_global"][kv]  # noqa: E731
    elif kind == "documents":
        tables = {"document": torch.cumsum(torch.rand(n, generator=gen) < 0.003, 0)}
        make = lambda t: lambda b, h, q, kv: (t["document"][q] == t["document"][kv]) & (kv <= q)  # noqa: E731
    elif kind == "window per head":
        heads, tables = 3, {"window": torch.tensor([10, 300, 2000])}
        make = lambda t: lambda b, h, q, kv: (kv <= q) & (q - kv < t["window"][h])  # noqa: E731
    elif kind == "prefix per batch":
        batch, tables = 2, {"prefix": torch.tensor([100, 3333])}
        make = lambda t: lambda b, h, q, kv: (kv <= q) | (kv < t["prefix"][b])  # noqa: E731
    else:
        tables = {}
        make = lambda t: lambda b, h, q, kv: (q.float() - kv.float()).abs() < 99.5  # noqa: E731
    built = {}
    for device in ("cpu", "cuda"):
        on_device = {name: table.to(device) for name, table in tables.items()}
        built[device] = SparseLayout.from_mask_mod(make(on_device), n, heads=heads, batch=batch, block=64,
                                                   device=device).lists
    for name, on_cpu, on_gpu in zip(BlockLists._fields, built["cpu"], built["cuda"]):
        assert on_cpu == on_gpu if name == "block" else torch.equal(on_cpu, on_gpu.cpu()), name
