"""The block-sparse kernels (`ops.block_attention`) against float64 masked attention, on the CPU.

Without a GPU the kernels run under Triton's interpreter (tests/conftest.py); fp32 is
multiplied exactly there, so results match float64 to about 1e-6. The layouts are built
by tests/kernels/block_layouts.py from random block kinds and masks, independently of the
layout package; the oracle expands the lists back to a dense mask.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sparse_kernels import blocks as block_lists
from sparse_kernels import native, ops
from sparse_kernels.geometry import MODES
from sparse_kernels.ops import Blocks, KernelSpec

from .block_layouts import block_oracle, causal_lists, global_line_lists, random_lists
from .oracle import assert_matches, rel_err

pytestmark = pytest.mark.interpreter


def block_inputs(batch, heads, kv_heads, n, d_qk, d_v, seed, dtype=torch.float32, device="cpu"):
    """q, k, v, dout with H = heads and H_kv = kv_heads."""
    gen = torch.Generator(device=device).manual_seed(seed)
    shapes = ((heads, d_qk), (kv_heads, d_qk), (kv_heads, d_v), (heads, d_v))  # q, k, v, dout
    return [torch.randn(batch, h, n, d, generator=gen, device=device).to(dtype) for h, d in shapes]


def check_block_attention(lists, batch, heads, kv_heads, n, d_qk=16, d_v=16, blocks=Blocks(), seed=0,
                          dtype=torch.float32, tol=2e-6):
    q, k, v, do = block_inputs(batch, heads, kv_heads, n, d_qk, d_v, seed, dtype)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out, lse = ops.block_attention(*leaves, lists, blocks=blocks)
    grads = torch.autograd.grad(out, leaves, do)
    ref_out, ref_lse, ref_grads = block_oracle(q, k, v, do, lists)
    return assert_matches(out, lse, grads, ref_out, ref_lse.expand_as(lse), ref_grads, tol)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    block=st.sampled_from([16, 32, 64]),
    n=st.integers(1, 80),
    batch=st.integers(1, 2),
    group=st.sampled_from([1, 2, 4]),
    kv_heads=st.integers(1, 2),
    per_batch=st.booleans(),
    per_head=st.booleans(),
    sub_tiles=st.booleans(),
    piece=st.sampled_from([None, 1, 2]),
    seed=st.integers(0, 1000),
)
# n a multiple of the block: the kernels' unmasked loads and branch-free full-block loops (EVEN_N)
@example(block=16, n=64, batch=2, group=2, kv_heads=2, per_batch=True, per_head=True, sub_tiles=False, piece=None,
         seed=3)
@example(block=32, n=64, batch=1, group=4, kv_heads=1, per_batch=False, per_head=False, sub_tiles=True, piece=None,
         seed=4)
# lists split into pieces of one block, GQA over per-head lists (the dK/dV pieces follow the group's first head)
@example(block=16, n=75, batch=2, group=2, kv_heads=2, per_batch=True, per_head=True, sub_tiles=False, piece=1, seed=5)
# six (batch, head) pairs: a group of PAIR_GROUP = 4 and a smaller last group (block_sparse._scheduled_tile)
@example(block=16, n=40, batch=2, group=1, kv_heads=3, per_batch=True, per_head=True, sub_tiles=False, piece=1, seed=6)
def test_random_layouts(block, n, batch, group, kv_heads, per_batch, per_head, sub_tiles, piece, seed):
    """Random full, partial and empty blocks, layouts shared or per batch and head, GQA,
    ragged n; tiles of the block or 16 x 16 sub-tiles of it; long lists whole or split
    into pieces of `piece` blocks."""
    heads = group * kv_heads
    lists = random_lists(batch, heads, n, block, torch.Generator().manual_seed(seed), per_batch=per_batch,
                         per_head=per_head, piece=piece)
    check_block_attention(lists, batch, heads, kv_heads, n, blocks=Blocks(16, 16) if sub_tiles else Blocks(), seed=seed)


@pytest.mark.parametrize("block", [16, 32, 64])
def test_rows_without_keys_get_zero(block):
    """n = 50 leaves a ragged last block; a query block lists nothing and some partial
    masks allow nothing: those rows output 0 with logsumexp -inf and zero gradients."""
    lists = random_lists(1, 2, 50, block, torch.Generator().manual_seed(block), per_head=True)
    empty = check_block_attention(lists, 1, 2, 1, 50, seed=block)
    assert empty.any()


@pytest.mark.parametrize("d_qk, d_v", [(48, 16), (16, 80), (80, 48)])
def test_head_dims_not_powers_of_two(d_qk, d_v):
    lists = random_lists(1, 2, 40, 16, torch.Generator().manual_seed(d_qk + d_v))
    check_block_attention(lists, 1, 2, 2, 40, d_qk=d_qk, d_v=d_v, seed=1)


def test_half_precision_inputs():
    lists = random_lists(1, 2, 40, 16, torch.Generator().manual_seed(7))
    check_block_attention(lists, 1, 2, 1, 40, dtype=torch.float16, tol=3e-3)


@pytest.mark.parametrize("kv_heads", [2, 1])
def test_dense_causal_layout_is_the_dense_mode(kv_heads):
    """Lists of full blocks below the diagonal and causal diagonal blocks: the paper's
    dense mode, output and gradients, GQA included."""
    q, k, v, do = block_inputs(1, 2, kv_heads, 45, 16, 16, seed=3)
    runs = []
    for attend in (lambda *t: ops.block_attention(*t, causal_lists(45, 16), blocks=Blocks(16, 16)),
                   lambda *t: ops.attention(*t, KernelSpec(((MODES["dense"], MODES["dense"]),), 1), blocks=Blocks(16, 16))):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out, lse = attend(*leaves)
        runs.append((out, lse, *torch.autograd.grad(out, leaves, do)))
    for got, want in zip(*runs):
        assert rel_err(got, want) < 1e-6


def test_every_output_element_is_written(monkeypatch):
    allocate = ops._allocate
    monkeypatch.setattr(ops, "_allocate",
                        lambda buffer, device: allocate(buffer, device).fill_(0 if buffer.zero else float("nan")))
    for piece in (None, 1):  # the split lists' outputs and gradients are written by the combining launches
        lists = random_lists(1, 4, 33, 16, torch.Generator().manual_seed(4), per_head=True, piece=piece)
        check_block_attention(lists, 1, 4, 2, 33, seed=4)


@pytest.mark.parametrize("line", ["row", "column"])
def test_lists_split_in_one_direction_only(line):
    """A global row splits only the key lists (the dQ pass has pieces, the dK/dV pass
    none), a global column only the query lists: each pass's scratch has its own slots."""
    lists = global_line_lists(line, 5, 16, piece=2)
    split = (lists.kv_split.shape[2] > 0, lists.q_split.shape[2] > 0)
    assert split == ((True, False) if line == "row" else (False, True))
    check_block_attention(lists, 1, 2, 2, 16 * 5)


def test_backward_is_deterministic():
    """Two runs give the same bits, with lists split into pieces (added in a fixed order)."""
    q, k, v, do = block_inputs(1, 4, 1, 40, 16, 16, seed=5)
    lists = random_lists(1, 4, 40, 16, torch.Generator().manual_seed(5), per_head=True, piece=1)
    assert lists.kv_split.shape[2] > 0 and lists.q_split.shape[2] > 0
    runs = []
    for _ in range(2):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out, _ = ops.block_attention(*leaves, lists)
        runs.append(torch.autograd.grad(out, leaves, do))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_forget_tuning_plans_afresh_with_the_same_results():
    """After `forget_tuning` no plan or tile choice is left, the autotuner times its
    candidates again instead of reading Triton's disk cache, and the next call plans anew
    and gives the same bits. (The interpreter fixes the tiles, so a choice and the disk
    cache are set here by hand, as a GPU's first call would leave them.)"""
    q, k, v, do = block_inputs(1, 2, 1, 40, 16, 16, seed=6)
    lists = random_lists(1, 2, 40, 16, torch.Generator().manual_seed(6))
    tuners = [launcher.tuned for launcher in (ops._BLOCK_FORWARD, ops._BLOCK_DQ, ops._BLOCK_DKDV)]
    before = [(tuner.cache_results, dict(tuner.cache)) for tuner in tuners]
    runs = []
    try:
        for _ in range(2):
            leaves = [t.clone().requires_grad_() for t in (q, k, v)]
            out, _ = ops.block_attention(*leaves, lists)
            runs.append((out, *torch.autograd.grad(out, leaves, do)))
            assert ops._PLANS
            for tuner in tuners:
                tuner.cache[("a key",)] = tuner.configs[0]
                tuner.cache_results = True
            native._CALLS[0] = "a call registered to run from C++"
            ops.forget_tuning()
            assert not ops._PLANS and not native._CALLS
            assert all(not tuner.cache and not tuner.cache_results for tuner in tuners)
    finally:
        for tuner, (cache_results, cache) in zip(tuners, before):
            tuner.cache_results = cache_results
            tuner.cache.update(cache)
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_custom_ops_pass_torch_library_checks():
    q, k, v, do = block_inputs(1, 4, 2, 24, 16, 16, seed=2)
    lists = random_lists(1, 4, 24, 16, torch.Generator().manual_seed(2))
    params = (lists.block, 0.25, 16, 16)
    checks = ("test_schema", "test_faketensor")
    torch.library.opcheck(ops.block_attention_forward_op, (q, k, v, *lists[1:], *params), test_utils=checks)
    out, lse = ops.block_attention_forward_op(q, k, v, *lists[1:], *params)
    torch.library.opcheck(ops.block_attention_backward_op, (do, q, k, v, out, lse, *lists[1:], *params), test_utils=checks)


def test_works_under_torch_compile_and_a_new_layout_does_not_recompile():
    """The kernels are opaque custom ops taking the lists as tensors: one full graph, the
    eager numbers, and a second layout of the same shapes runs without recompiling."""
    q, k, v, do = block_inputs(1, 2, 1, 30, 16, 16, seed=4)
    compiles = []

    def counting_backend(gm, example_inputs):
        compiles.append(gm)
        return torch._dynamo.backends.debugging.aot_eager(gm, example_inputs)

    def loss(q, k, v, lists):
        return (ops.block_attention(q, k, v, lists)[0] * do).sum()

    torch._dynamo.reset()
    compiled = torch.compile(loss, backend=counting_backend, fullgraph=True)
    first = random_lists(1, 2, 30, 16, torch.Generator().manual_seed(1), empty_rows=False)
    second = first._replace(masks=torch.rand(first.masks.shape, generator=torch.Generator().manual_seed(2)) < 0.5)
    for lists in (first, second):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        eager_leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        got = torch.autograd.grad(compiled(*leaves, lists), leaves)
        want = torch.autograd.grad(loss(*eager_leaves, lists), eager_leaves)
        for a, b in zip(got, want):
            assert torch.equal(a, b)
    assert len(compiles) == 1


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda lists: lists._replace(kv_count=lists.kv_count.long()), "kv_count has dtype"),
        (lambda lists: lists._replace(q_index=lists.q_index[..., :1, :]), "q_index has shape"),
        (lambda lists: lists._replace(masks=lists.masks[:, :8]), "masks has shape"),
        (lambda lists: lists._replace(block=24), "block is 24"),
        (lambda lists: lists._replace(kv_count=lists.kv_count.expand(3, -1, -1)), "kv_count has shape"),
    ],
)
def test_bad_lists_are_refused_naming_the_field(change, message):
    q, k, v, _ = block_inputs(2, 2, 1, 20, 16, 16, seed=0)
    lists = change(random_lists(2, 2, 20, 16, torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match=message):
        ops.block_attention(q, k, v, lists)


def test_a_scale_that_is_not_positive_is_refused():
    """The kernels scale each row's running maximum after taking it over raw scores."""
    q, k, v, _ = block_inputs(1, 2, 2, 20, 16, 16, seed=0)
    for scale in (0.0, -0.25):
        with pytest.raises(ValueError, match="sm_scale must be positive"):
            ops.block_attention(q, k, v, random_lists(1, 2, 20, 16, torch.Generator()), sm_scale=scale)


def test_tiles_must_divide_the_block():
    q, k, v, _ = block_inputs(1, 2, 2, 20, 16, 16, seed=0)
    with pytest.raises(ValueError, match="divide the layout's block 16"):
        ops.block_attention(q, k, v, random_lists(1, 2, 20, 16, torch.Generator()), blocks=Blocks(32, 16))


def test_check_accepts_what_the_kernels_take():
    lists = random_lists(2, 4, 70, 32, torch.Generator().manual_seed(1), per_batch=True, per_head=True)
    block_lists.check(lists, 2, 4, 70)
    with pytest.raises(ValueError, match="kv_count has shape"):
        block_lists.check(lists, 2, 4, 100)  # another n: another number of blocks
