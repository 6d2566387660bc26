"""The compiled kernels on a CUDA GPU, bf16, against a float64 oracle.

Marked `gpu`: skipped on machines without CUDA (CI is CPU-only; see tests/conftest.py).
Run on a GPU with `pytest -m gpu tests/kernels`. The oracle is computed on the GPU in
float64, a slab of query rows at a time with the backward written out by hand, so that
it reaches n = 65,536 without an n x n matrix. The block-sparse kernels are checked
against dense masked attention in float64 (tests/kernels/block_layouts.py) at lengths
where the n x n mask fits. The decoding kernel is checked against the float64 reference
of the gather and softmax it replaces.
"""

from __future__ import annotations

import math

import pytest
import torch

from sparse_kernels import ops
from sparse_kernels.decode import decode_attention
from sparse_kernels.ops import Blocks
from sparse_transformer import Pattern, SparseLayout
from sparse_transformer.attention import sparse_attention_with_lse

from .block_layouts import block_oracle, causal_lists, random_lists
from .custom_ops import check_custom_ops
from .oracle import rel_err
from .test_block_attention import block_inputs
from .test_decode import check_decode, decode_inputs

pytestmark = pytest.mark.gpu

BF16_TOLERANCE = 1e-2
# Fixed tiles keep the number of compilations (and the run) short; the long-sequence
# tests below use the autotuned tiles.
TILES = Blocks(64, 64)


def _scores(q, k, pattern, layer, start, stop):
    """Masked scores of query rows start..stop-1 against all keys: (B, H, rows, n) float64."""
    heads, n, head_dim = q.shape[1], q.shape[2], q.shape[3]
    i = torch.arange(start, stop, device=q.device)[:, None]
    j = torch.arange(n, device=q.device)[None, :]
    head = torch.arange(heads, device=q.device)[:, None, None]
    s = q[:, :, start:stop] @ k.transpose(-1, -2) / math.sqrt(head_dim)
    return s.masked_fill(~pattern.allowed(i, j, layer, head), float("-inf"))


def _probs(s, lse):
    return torch.exp(s - torch.where(torch.isinf(lse), torch.inf, lse)[..., None])


def chunked_oracle(q, k, v, do, pattern, layer, rows=512):
    q, k, v, do = (t.double() for t in (q, k, v, do))
    n = q.shape[2]
    out = q.new_empty(q.shape[:3] + v.shape[-1:])
    lse = q.new_empty(q.shape[:3])
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        s = _scores(q, k, pattern, layer, start, stop)
        lse[:, :, start:stop] = torch.logsumexp(s, -1)
        out[:, :, start:stop] = _probs(s, lse[:, :, start:stop]) @ v
    delta = (do * out).sum(-1)
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    scale = 1 / math.sqrt(q.shape[-1])
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        p = _probs(_scores(q, k, pattern, layer, start, stop), lse[:, :, start:stop])
        dv += p.transpose(-1, -2) @ do[:, :, start:stop]
        ds = p * (do[:, :, start:stop] @ v.transpose(-1, -2) - delta[:, :, start:stop, None])
        dq[:, :, start:stop] = ds @ k * scale
        dk += ds.transpose(-1, -2) @ q[:, :, start:stop] * scale
    return out, lse, (dq, dk, dv)


def _run_and_compare(pattern, layer, batch, heads, n, head_dim, dtype=torch.bfloat16, tol=BF16_TOLERANCE, seed=0,
                     blocks=TILES, v_dim=None, layout=lambda t: t, kv_heads=None):
    """`layout` maps each of q, k, v to the tensor passed in (same values, other memory);
    k and v have `kv_heads` heads (grouped-query attention) when given."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    kv_heads = kv_heads or heads
    shapes = ((heads, head_dim), (kv_heads, head_dim), (kv_heads, v_dim or head_dim), (heads, v_dim or head_dim))
    q, k, v, do = (torch.randn(batch, h, n, d, device="cuda", generator=gen).to(dtype) for h, d in shapes)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out, lse = sparse_attention_with_lse(*(layout(t) for t in leaves), pattern, layer, blocks=blocks)
    grads = torch.autograd.grad(out, leaves, do)
    group = heads // kv_heads
    ref_out, ref_lse, (ref_dq, ref_dk, ref_dv) = chunked_oracle(
        q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1), do, pattern, layer)
    ref_grads = (ref_dq, *(t.unflatten(1, (kv_heads, group)).sum(2) for t in (ref_dk, ref_dv)))
    empty = torch.isinf(ref_lse)
    assert torch.equal(torch.isinf(lse), empty)
    errors = {"out": rel_err(out, ref_out), "lse": rel_err(lse[~empty], ref_lse[~empty])}
    errors.update({name: rel_err(g, r) for name, g, r in zip(("dq", "dk", "dv"), grads, ref_grads)})
    assert max(errors.values()) < tol, f"{pattern.describe()} n={n} d={head_dim} {dtype}: {errors}"


GPU_PATTERNS = [
    Pattern("dense", 64),
    Pattern("local", 64),
    Pattern("strided", 64, integration="merged"),
    Pattern("strided", 64, integration="interleaved"),
    Pattern("strided", 64, integration="multihead"),
    Pattern("fixed", 64, 16, integration="merged"),
    Pattern("fixed", 64, 8, integration="interleaved", distinct_summaries=True),
    Pattern("fixed", 128, 32, integration="multihead", distinct_summaries=True),
]


@pytest.mark.parametrize("pattern", GPU_PATTERNS, ids=Pattern.describe)
@pytest.mark.parametrize("n", [1000, 4096])
@pytest.mark.parametrize("layer", [0, 1])
def test_bf16_matches_float64(pattern, n, layer):
    _run_and_compare(pattern, layer, batch=2, heads=4, n=n, head_dim=64)


@pytest.mark.parametrize("head_dim", [32, 96, 128, 192, 256])
@pytest.mark.parametrize("pattern", [GPU_PATTERNS[2], GPU_PATTERNS[5]], ids=Pattern.describe)
def test_head_dims(pattern, head_dim):
    _run_and_compare(pattern, 0, batch=1, heads=4, n=3000, head_dim=head_dim)


@pytest.mark.parametrize("head_dim", [96, 192, 256])
def test_autotuned_tiles_fit_large_head_dims(head_dim):
    """The autotuner's candidates at padded head dims 128 and 256 (ops._pruner) compile and fit shared memory."""
    _run_and_compare(GPU_PATTERNS[7], 0, batch=1, heads=2, n=2048, head_dim=head_dim, v_dim=head_dim // 2 // 16 * 16,
                     blocks=Blocks())


@pytest.mark.parametrize("pattern", [GPU_PATTERNS[2], GPU_PATTERNS[4], GPU_PATTERNS[7]], ids=Pattern.describe)
@pytest.mark.parametrize("blocks", [TILES, Blocks()], ids=["fixed tiles", "autotuned"])
def test_grouped_query_attention_32_8(pattern, blocks):
    """H = 32 query heads on H_kv = 8 key/value heads: one dK/dV launch per group (merged)
    or one per query head (multihead, distinct summaries)."""
    _run_and_compare(pattern, 0, batch=1, heads=32, n=2048, head_dim=64, kv_heads=8, blocks=blocks)


def _one_element_later(t):
    """The same values one element further into a buffer: a data pointer not 16-byte aligned."""
    return torch.cat([t.new_zeros(1), t.flatten()])[1:].view(t.shape)


def _heads_inner(t):
    """The same values stored (batch, n, heads, head_dim), as the model's projections are."""
    return t.transpose(1, 2).contiguous().transpose(1, 2)


@pytest.mark.parametrize("blocks", [TILES, Blocks()], ids=["fixed tiles", "autotuned"])
def test_reused_launches_follow_alignment_and_strides(blocks):
    """A call's launches are planned and its compiled kernels reused per call key
    (launch.plan): calls with unaligned or differently strided inputs after aligned
    contiguous ones (whose plans are then cached) must still get the oracle's results."""
    pattern = Pattern("strided", 64, integration="merged")
    for layout in (lambda t: t, _one_element_later, _heads_inner, lambda t: t):
        _run_and_compare(pattern, 0, batch=1, heads=2, n=1000, head_dim=64, blocks=blocks, layout=layout)


def test_planned_launches_call_launch_hooks_while_one_is_installed():
    """Planned calls launch the compiled kernels directly, except while a launch hook is
    installed (Triton's profiler): then through Triton, which calls the hook. Both give
    the same results."""
    knobs = pytest.importorskip("triton.knobs")
    pattern = Pattern("fixed", 64, 16, integration="merged")
    q, k, v, do = (torch.randn(1, 2, 1000, 64, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]

    def call():
        out, _ = sparse_attention_with_lse(*leaves, pattern, blocks=TILES)
        return (out, *torch.autograd.grad(out, leaves, do))

    direct = call()
    seen, installed = [], knobs.runtime.launch_enter_hook
    knobs.runtime.launch_enter_hook = lambda metadata: seen.append(metadata.get()["name"])
    try:
        hooked = call()
    finally:
        knobs.runtime.launch_enter_hook = installed
    assert len(seen) == 2 + 2 * 2  # two passes: a forward launch each, and a dQ and a dK/dV launch each
    for got, want in zip(hooked, direct):
        assert torch.equal(got, want)


def test_half_size_query_key():
    _run_and_compare(Pattern("strided", 64, integration="multihead"), 0, batch=1, heads=2, n=3072, head_dim=64, v_dim=128)


# fp32 inputs are multiplied in tf32 (10-bit mantissa): about 1e-3 relative error, not 1e-6.
@pytest.mark.parametrize("dtype, tol", [(torch.float16, 5e-3), (torch.float32, 5e-3)])
def test_fp16_and_fp32_inputs(dtype, tol):
    _run_and_compare(Pattern("strided", 64, integration="merged"), 0, batch=1, heads=4, n=2500, head_dim=64, dtype=dtype, tol=tol)


@pytest.mark.parametrize(
    "pattern", [Pattern("strided", 256, integration="multihead"), Pattern("fixed", 256, 32, integration="merged")],
    ids=Pattern.describe,
)
@pytest.mark.parametrize("n", [16384, 65536])
def test_long_sequences(pattern, n):
    _run_and_compare(pattern, 0, batch=1, heads=2, n=n, head_dim=64, blocks=Blocks())


def test_million_tokens_forward_and_backward():
    """n = 1,048,576: 64-bit offsets. Sampled rows of the output and dq against float64."""
    n, heads, head_dim = 1 << 20, 2, 64
    pattern = Pattern("strided", 1024, integration="multihead")
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v, do = (torch.randn(1, heads, n, head_dim, device="cuda", generator=gen).bfloat16() for _ in range(4))
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out, lse = sparse_attention_with_lse(*leaves, pattern)
    dq, dk, dv = torch.autograd.grad(out, leaves, do)
    for t in (out, lse, dq, dk, dv):
        assert torch.isfinite(t).all()
    rows = torch.cat([torch.arange(0, 8, device="cuda"), torch.randint(8, n, (24,), generator=gen, device="cuda"), torch.tensor([n - 1], device="cuda")])
    q64, k64, v64, do64 = (t.double() for t in (q, k, v, do))
    ref_out, ref_dq = [], []
    for row in rows.tolist():
        s = _scores(q64, k64, pattern, 0, row, row + 1)  # (1, H, 1, n)
        p = _probs(s, torch.logsumexp(s, -1))
        ref_out.append(p @ v64)
        delta = (do64[:, :, row : row + 1] * ref_out[-1]).sum(-1, keepdim=True)
        ref_dq.append((p * (do64[:, :, row : row + 1] @ v64.transpose(-1, -2) - delta)) @ k64 / math.sqrt(head_dim))
    # Compared over all sampled rows together: a row with a single key has dq = 0 exactly,
    # where a per-row relative error would only measure bf16 rounding of zero.
    assert rel_err(out[:, :, rows], torch.cat(ref_out, dim=2)) < BF16_TOLERANCE
    assert rel_err(dq[:, :, rows], torch.cat(ref_dq, dim=2)) < BF16_TOLERANCE


def test_custom_ops_on_gpu():
    """The torch.library ops' schemas and fake (meta) kernels hold for CUDA tensors."""
    gen = torch.Generator(device="cuda").manual_seed(3)
    q, k, v, do = (torch.randn(1, 2, 300, 64, device="cuda", generator=gen).bfloat16() for _ in range(4))
    check_custom_ops(q, k, v, do, Pattern("fixed", 64, 16, "merged"), block=64)


def test_inductor_full_graph_matches_eager():
    """torch.compile with the default (Inductor) backend around the kernels: one graph, the same numbers."""
    pattern = Pattern("fixed", 64, 16, integration="merged")
    gen = torch.Generator(device="cuda").manual_seed(4)
    x, do = (torch.randn(2, 1000, 256, device="cuda", generator=gen).bfloat16() for _ in range(2))
    weight = (torch.randn(3 * 256, 256, device="cuda", generator=gen) / 16).bfloat16()

    def block(x, weight):  # projections around the attention: work Inductor fuses and the op it must leave alone
        q, k, v = (t.view(2, 1000, 4, 64).transpose(1, 2) for t in torch.nn.functional.linear(x, weight).chunk(3, -1))
        return torch.nn.functional.gelu(sparse_attention_with_lse(q, k, v, pattern, blocks=TILES)[0]).transpose(1, 2).reshape(2, 1000, 256)

    compiled = torch.compile(block, fullgraph=True)
    results = []
    for fn in (block, compiled):
        leaves = [t.clone().requires_grad_() for t in (x, weight)]
        out = fn(*leaves)
        results.append((out, *torch.autograd.grad(out, leaves, do)))
    for got, want in zip(*results):
        assert rel_err(got, want) < BF16_TOLERANCE


# ---------------------------------------------------------------------- block-sparse layouts
def _compare_block_attention(lists, batch, heads, kv_heads, n, d_qk, d_v, blocks=Blocks(), seed=0):
    q, k, v, do = block_inputs(batch, heads, kv_heads, n, d_qk, d_v, seed, torch.bfloat16, device="cuda")
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out, lse = ops.block_attention(*leaves, lists, blocks=blocks)
    grads = torch.autograd.grad(out, leaves, do)
    ref_out, ref_lse, ref_grads = block_oracle(q, k, v, do, lists)
    ref_lse = ref_lse.expand_as(lse)
    empty = torch.isinf(ref_lse)
    assert torch.equal(torch.isinf(lse), empty)
    errors = {"out": rel_err(out, ref_out), "lse": rel_err(lse[~empty], ref_lse[~empty])}
    errors.update({name: rel_err(g, r) for name, g, r in zip(("dq", "dk", "dv"), grads, ref_grads)})
    assert max(errors.values()) < BF16_TOLERANCE, f"block={lists.block} n={n} d={d_qk}/{d_v} H={heads}/{kv_heads}: {errors}"


@pytest.mark.parametrize("block", [16, 32, 64, 128])
@pytest.mark.parametrize("blocks", [Blocks(16, 16), Blocks()], ids=["16x16 tiles", "autotuned"])
def test_block_attention_random_layouts(block, blocks):
    lists = random_lists(2, 4, 1000, block, torch.Generator().manual_seed(block), device="cuda",
                         per_batch=True, per_head=True)
    _compare_block_attention(lists, 2, 4, 2, 1000, 64, 64, blocks=blocks, seed=block)


@pytest.mark.parametrize("d_qk, d_v", [(64, 64), (96, 96), (128, 128), (192, 192), (256, 256), (64, 128), (80, 48)], ids=str)
def test_block_attention_head_dims(d_qk, d_v):
    """Autotuned tiles at every padded size up to 256 (the candidates ops._pruner keeps must fit)."""
    lists = random_lists(1, 4, 1500, 64, torch.Generator().manual_seed(d_qk), device="cuda", per_head=True)
    _compare_block_attention(lists, 1, 4, 4, 1500, d_qk, d_v, seed=d_qk)


@pytest.mark.parametrize("per_head", [False, True], ids=["shared layout", "layout per head"])
def test_block_attention_grouped_query_32_8(per_head):
    lists = random_lists(1, 32, 2048, 128, torch.Generator().manual_seed(5), device="cuda", per_head=per_head)
    _compare_block_attention(lists, 1, 32, 8, 2048, 128, 128)


@pytest.mark.parametrize("piece", [1, 4])
def test_block_attention_split_lists(piece):
    """Lists cut into pieces of `piece` blocks: partial results combined and summed by
    their own launches, GQA over per-head lists, autotuned tiles."""
    lists = random_lists(2, 4, 1000, 32, torch.Generator().manual_seed(piece), device="cuda", per_batch=True,
                         per_head=True, piece=piece)
    assert lists.kv_split.shape[2] > 0 and lists.q_split.shape[2] > 0
    _compare_block_attention(lists, 2, 4, 2, 1000, 64, 64, seed=piece)


def test_global_tokens_are_split_by_default():
    """A sliding window with global tokens: the global row and column are cut into pieces
    by the default schedule (n = 8,192 in blocks of 64: 128-block lists, the others ~5)."""
    def mask_mod(b, h, q_idx, kv_idx):
        return ((q_idx - kv_idx).abs() < 128) | (q_idx < 16) | (kv_idx < 16)

    lists = SparseLayout.from_mask_mod(mask_mod, 8192, block=64, device="cuda").lists
    assert lists.kv_split.shape[2] > 0 and lists.q_split.shape[2] > 0
    _compare_block_attention(lists, 1, 2, 2, 8192, 64, 64, seed=3)


def test_dense_causal_layout_matches_the_dense_mode():
    pattern = Pattern("dense", 64)
    gen = torch.Generator(device="cuda").manual_seed(6)
    q, k, v, do = (torch.randn(1, 4, 3000, 64, device="cuda", generator=gen).bfloat16() for _ in range(4))
    runs = []
    for attend in (lambda *t: ops.block_attention(*t, causal_lists(3000, 128, device="cuda")),
                   lambda *t: sparse_attention_with_lse(*t, pattern)):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out, lse = attend(*leaves)
        runs.append((out, lse, *torch.autograd.grad(out, leaves, do)))
    for got, want in zip(*runs):
        assert rel_err(got, want) < BF16_TOLERANCE


def test_block_attention_inductor_full_graph_without_recompiling():
    """Under Inductor the lists are tensor inputs: a second layout of the same shapes reuses the graph."""
    gen = torch.Generator(device="cuda").manual_seed(7)
    q, k, v, do = (torch.randn(1, 4, 1000, 64, device="cuda", generator=gen).bfloat16() for _ in range(4))
    first = random_lists(1, 4, 1000, 64, torch.Generator().manual_seed(1), device="cuda", empty_rows=False)
    second = first._replace(masks=torch.rand(first.masks.shape, device="cuda", generator=gen) < 0.5)

    def loss(q, k, v, lists):
        return (torch.nn.functional.gelu(ops.block_attention(q, k, v, lists)[0]).float() * do).sum()

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = torch.compile(loss, fullgraph=True)
    for lists in (first, second):
        results = []
        for fn in (loss, compiled):
            leaves = [t.clone().requires_grad_() for t in (q, k, v)]
            results.append(torch.autograd.grad(fn(*leaves, lists), leaves))
        for got, want in zip(*results):
            assert rel_err(got, want) < BF16_TOLERANCE
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1


# ---------------------------------------------------------------------- decoding
@pytest.mark.parametrize("dtype, tol", [(torch.bfloat16, BF16_TOLERANCE), (torch.float32, 1e-5)], ids=["bf16", "fp32"])
@pytest.mark.parametrize("keys, d_qk, d_v", [
    (127, 64, 128),  # the CIFAR-10 model's step: one program per query
    (4096, 128, 128),  # dense at n = 4,096: 16 splits
    (9000, 96, 48),  # padded head dims, the most splits
    (700, 256, 256),
], ids=str)
def test_decode_kernel_matches_float64(keys, d_qk, d_v, dtype, tol):
    check_decode(batch=4, heads=4, slots=keys + 100, keys=keys, d_qk=d_qk, d_v=d_v, dtype=dtype, tol=tol, device="cuda")


@pytest.mark.parametrize("keys", [127, 4096], ids=["one split", "split"])
def test_decode_kernel_replays_in_a_cuda_graph(keys):
    """Captured once, replayed on new queries, caches and key lists: the eager call's output."""
    inputs = decode_inputs(4, 4, 5000, keys, 64, 64, torch.bfloat16, device="cuda")
    decode_attention(*inputs, 0.125)  # the first launch compiles, which a capture cannot hold
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = decode_attention(*inputs, 0.125)
    for held, new in zip(inputs, decode_inputs(4, 4, 5000, keys, 64, 64, torch.bfloat16, seed=1, device="cuda")):
        held.copy_(new)
    graph.replay()
    assert torch.equal(out, decode_attention(*inputs, 0.125))
