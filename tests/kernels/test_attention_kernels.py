"""The fused kernels against the float64 reference attention, on the CPU.

Without a GPU the kernels run under Triton's interpreter (tests/conftest.py sets
TRITON_INTERPRET=1). The interpreter multiplies fp32 exactly, so fp32 inputs must
match the float64 reference to about 1e-6; fp16 is checked too (the interpreter's bf16
dot is broken, NOTES.md: bf16 is checked on the GPU, tests/kernels/test_kernels_gpu.py).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparse_kernels import ops
from sparse_kernels.ops import Blocks, KernelSpec
from sparse_transformer import Pattern
from sparse_transformer.attention import sparse_attention, sparse_attention_with_lse
from sparse_transformer.layouts import kernel_spec

from .custom_ops import check_custom_ops
from .oracle import assert_matches, oracle, rel_err

pytestmark = pytest.mark.interpreter

PATTERNS = [
    Pattern("dense", 8),
    Pattern("local", 7),
    Pattern("strided", 6, integration="merged"),
    Pattern("strided", 5, integration="interleaved"),
    Pattern("strided", 8, integration="multihead"),
    Pattern("fixed", 8, 3, integration="merged"),
    Pattern("fixed", 8, 2, integration="interleaved"),
    Pattern("fixed", 6, 2, integration="multihead"),
    Pattern("fixed", 8, 2, integration="merged", distinct_summaries=True),
    Pattern("fixed", 12, 3, integration="multihead", distinct_summaries=True),
    Pattern("fixed", 8, 4, integration="interleaved", distinct_summaries=True),
]


def _inputs(batch, heads, n, head_dim, dtype, seed, v_dim=None, kv_heads=None):
    gen = torch.Generator().manual_seed(seed)
    kv_heads = kv_heads or heads
    shapes = ((heads, head_dim), (kv_heads, head_dim), (kv_heads, v_dim or head_dim), (heads, v_dim or head_dim))  # q, k, v, dout
    q, k, v, do = (torch.randn(batch, h, n, d, generator=gen).to(dtype) for h, d in shapes)
    return q, k, v, do


def _check(pattern, layer, batch, heads, n, head_dim, blocks, dtype=torch.float32, tol=2e-6, seed=0, v_dim=None,
           kv_heads=None):
    q, k, v, do = _inputs(batch, heads, n, head_dim, dtype, seed, v_dim, kv_heads)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    out, lse = sparse_attention_with_lse(q, k, v, pattern, layer, blocks=blocks)
    grads = torch.autograd.grad(out, (q, k, v), do)
    assert_matches(out, lse, grads, *oracle(q, k, v, do, pattern, layer), tol)


@pytest.mark.parametrize("pattern", PATTERNS, ids=Pattern.describe)
@pytest.mark.parametrize("layer", [0, 1])
def test_matches_reference_on_ragged_lengths(pattern, layer):
    # n = 45 is a multiple of neither the tiles (16) nor any stride above.
    _check(pattern, layer, batch=2, heads=4, n=45, head_dim=16, blocks=Blocks(16, 16))


@pytest.mark.parametrize("blocks", [Blocks(16, 32), Blocks(32, 16)])
@pytest.mark.parametrize("pattern", [PATTERNS[2], PATTERNS[5], PATTERNS[9]], ids=Pattern.describe)
def test_unequal_tiles_and_head_dim_32(pattern, blocks):
    _check(pattern, 0, batch=1, heads=2, n=70, head_dim=32, blocks=blocks)


@pytest.mark.parametrize("pattern", [PATTERNS[4], PATTERNS[5]], ids=Pattern.describe)
def test_half_size_query_key(pattern):
    """d_qk = d_v / 2, as in the CIFAR-10 model's half-size query/key projections."""
    _check(pattern, 0, batch=1, heads=2, n=40, head_dim=16, v_dim=32, blocks=Blocks(16, 16))


@pytest.mark.parametrize("kv_heads", [2, 1])
@pytest.mark.parametrize("pattern", [PATTERNS[2], PATTERNS[4], PATTERNS[7], PATTERNS[9]], ids=Pattern.describe)
def test_grouped_query_attention(pattern, kv_heads):
    """k and v with fewer heads than q: merged passes (one dK/dV launch sums the group),
    the multi-head integration and distinct summaries (a launch per query head)."""
    _check(pattern, 0, batch=1, heads=4, n=45, head_dim=16, kv_heads=kv_heads, blocks=Blocks(16, 16))


@pytest.mark.parametrize("pattern", [PATTERNS[3], PATTERNS[6]], ids=Pattern.describe)
def test_head_dim_96(pattern):
    """A head dim that is not a power of two: padded to 128 inside the kernels, masked."""
    _check(pattern, 0, batch=1, heads=2, n=40, head_dim=96, v_dim=48, blocks=Blocks(16, 16))


def test_half_precision_inputs():
    _check(Pattern("fixed", 8, 2, "merged"), 0, batch=1, heads=2, n=40, head_dim=16,
           blocks=Blocks(16, 16), dtype=torch.float16, tol=3e-3)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(["strided", "fixed"]),
    integration=st.sampled_from(["merged", "interleaved", "multihead"]),
    stride=st.integers(2, 12),
    summary_frac=st.floats(0.05, 0.95),
    distinct=st.booleans(),
    n=st.integers(1, 60),
    heads=st.integers(1, 4),
    layer=st.integers(0, 1),
)
def test_random_patterns(kind, integration, stride, summary_frac, distinct, n, heads, layer):
    if kind == "fixed":
        summary = min(stride - 1, max(1, round(summary_frac * stride)))
        pattern = Pattern(kind, stride, summary, integration, distinct)
    else:
        pattern = Pattern(kind, stride, integration=integration)
    _check(pattern, layer, batch=1, heads=heads, n=n, head_dim=16, blocks=Blocks(16, 16), seed=n)


def _poison(monkeypatch):
    """Every output buffer starts as NaN, so an element no kernel writes fails the check."""
    allocate = ops._allocate
    monkeypatch.setattr(ops, "_allocate",
                        lambda buffer, device: allocate(buffer, device).fill_(0 if buffer.zero else float("nan")))


@pytest.mark.parametrize("pattern", PATTERNS, ids=Pattern.describe)
def test_every_output_element_is_written(pattern, monkeypatch):
    _poison(monkeypatch)
    # heads=3: odd head count; n=33 leaves a one-row tail tile.
    _check(pattern, 1, batch=1, heads=3, n=33, head_dim=16, blocks=Blocks(16, 16))


def test_model_layout_views_need_no_copy():
    """(batch, n, heads, head_dim) projections viewed as (batch, heads, n, head_dim)."""
    gen = torch.Generator().manual_seed(3)
    qkv = torch.randn(2, 40, 3, 2, 16, generator=gen)  # (B, n, {q,k,v}, H, D)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    pattern = Pattern("strided", 6)
    out = sparse_attention(q, k, v, pattern)
    assert out.shape == q.shape and out.transpose(1, 2).is_contiguous(), "output stored as (B, n, H, D)"
    ref, _, _ = oracle(q, k, v, torch.zeros_like(q), pattern, 0)
    assert rel_err(out, ref) < 2e-6


def test_backward_is_deterministic():
    pattern = Pattern("fixed", 8, 2, "merged")
    q, k, v, do = _inputs(1, 2, 50, 16, torch.float32, seed=5)
    runs = []
    for _ in range(2):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out, _ = sparse_attention_with_lse(*leaves, pattern, blocks=Blocks(16, 16))
        runs.append(torch.autograd.grad(out, leaves, do))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_default_scale_is_inverse_sqrt_head_dim():
    q, k, v, _ = _inputs(1, 1, 20, 16, torch.float32, seed=1)
    pattern = Pattern("dense", 4)
    spec = kernel_spec(pattern)
    default, _ = ops.attention(q, k, v, spec)
    explicit, _ = ops.attention(q, k, v, spec, sm_scale=1 / math.sqrt(16))
    doubled, _ = ops.attention(q, k, v, spec, sm_scale=2 / math.sqrt(16))
    assert torch.equal(default, explicit)
    assert not torch.allclose(default, doubled)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda q: q[..., :12].contiguous(), "head_dim 12"),
        (lambda q: torch.cat([q] * 17, -1), "head_dim 272"),
        (lambda q: q.double(), "dtype"),
        (lambda q: q.transpose(-1, -2).contiguous().transpose(-1, -2), "contiguous"),
        (lambda q: q[0], "shape"),
        (lambda q: q.half(), "dtypes differ"),
    ],
)
def test_bad_inputs_are_refused_before_launch(change, message):
    q, k, v, _ = _inputs(1, 2, 16, 16, torch.float32, seed=0)
    bad = change(q)
    if message == "dtypes differ":
        args = (bad, k, v)
    else:
        args = (bad, change(k), change(v))
    with pytest.raises((ValueError, TypeError), match=message):
        ops.attention(*args, kernel_spec(Pattern("strided", 4)))


def test_heads_not_a_multiple_of_kv_heads_are_refused():
    q, k, v, _ = _inputs(1, 3, 16, 16, torch.float32, seed=0, kv_heads=2)
    with pytest.raises(ValueError, match="q's 3 heads must be a multiple of k and v's 2 heads"):
        ops.attention(q, k, v, kernel_spec(Pattern("strided", 4)))


def test_a_scale_that_is_not_positive_is_refused():
    """The kernels scale each row's running maximum after taking it over raw scores."""
    q, k, v, _ = _inputs(1, 1, 16, 16, torch.float32, seed=0)
    for scale in (0.0, -0.25):
        with pytest.raises(ValueError, match="sm_scale must be positive, got"):
            ops.attention(q, k, v, kernel_spec(Pattern("strided", 4)), sm_scale=scale)


def test_inputs_are_checked_on_every_new_call_key():
    """The checks run when a call's launches are planned, so bad inputs are refused after
    good ones with the same pattern were planned: each differs in its call key."""
    q, k, v, _ = _inputs(1, 2, 16, 16, torch.float32, seed=0)
    spec = kernel_spec(Pattern("strided", 4))
    ops.attention(q, k, v, spec)
    with pytest.raises(TypeError, match="dtypes differ"):
        ops.attention(q, k, v.half(), spec)
    strided_v = torch.randn(*v.shape, 2)[..., 0]  # a last dimension of stride 2
    with pytest.raises(ValueError, match="v must be contiguous in its last dimension"):
        ops.attention(q, k, strided_v, spec)


def test_unknown_mode_is_refused():
    q, k, v, _ = _inputs(1, 1, 16, 16, torch.float32, seed=0)
    with pytest.raises(ValueError, match=r"unknown mode 9; modes are 0 \(dense\), 1 \(band\)"):
        ops.attention(q, k, v, KernelSpec(((9, 9),), 4))


def test_custom_ops_pass_torch_library_checks():
    """Schema and fake (shape-only) implementations agree with the real kernels."""
    q, k, v, do = _inputs(1, 2, 24, 16, torch.float32, seed=2)
    check_custom_ops(q, k, v, do, Pattern("fixed", 8, 2, "merged"), block=16)


def test_works_under_torch_compile():
    """The kernels are opaque custom ops to torch.compile: a full graph, same numbers."""
    pattern = Pattern("strided", 6, integration="multihead")
    q, k, v, do = _inputs(1, 2, 30, 16, torch.float32, seed=4)

    def loss(q, k, v):
        return (sparse_attention(q, k, v, pattern) * do).sum()

    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    eager_leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    got = torch.autograd.grad(compiled(*leaves), leaves)
    want = torch.autograd.grad(loss(*eager_leaves), eager_leaves)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


def _op_events(fn) -> set[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {event.name for event in prof.events() if event.name.startswith("sparse_kernels::")}


def test_eager_calls_skip_the_custom_ops_that_compiled_calls_use():
    """Eager calls launch the kernels directly (a custom op's dispatch costs host time);
    torch.compile sees the custom ops, which it needs to keep the kernels opaque."""
    pattern = Pattern("strided", 6, integration="merged")
    q, k, v, do = _inputs(1, 2, 20, 16, torch.float32, seed=6)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]

    def step(attend):
        torch.autograd.grad(attend(*leaves), leaves, do)

    assert _op_events(lambda: step(lambda q, k, v: sparse_attention(q, k, v, pattern))) == set()
    compiled = torch.compile(lambda q, k, v: sparse_attention(q, k, v, pattern), backend="aot_eager", fullgraph=True)
    assert _op_events(lambda: step(compiled)) == {"sparse_kernels::attention_forward", "sparse_kernels::attention_backward"}


def test_call_keys_tell_apart_what_triton_specializes_on():
    """A call's launches are planned once per key (launch.plan): tensors of another shape,
    strides, dtype or 16-byte alignment get keys of their own."""
    from sparse_kernels.launch import tensor_key

    base = torch.zeros(4, 16)
    assert tensor_key(base) == tensor_key(torch.zeros(4, 16))
    for other in (torch.zeros(2, 16), torch.zeros(16, 4).t(), base.half(), torch.zeros(65)[1:].view(4, 16)):
        assert tensor_key(other) != tensor_key(base)


def test_a_planned_call_launches_what_its_first_call_did():
    """The second call of a key replays the planned launches: same results as the first,
    with new tensors (the plan holds no tensor of the first call)."""
    pattern = Pattern("fixed", 8, 2, integration="merged")
    results = []
    for seed in (7, 7, 8):
        q, k, v, do = _inputs(1, 2, 40, 16, torch.float32, seed=seed)
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out = sparse_attention(*leaves, pattern)
        results.append((out, *torch.autograd.grad(out, leaves, do)))
    for first, second in zip(results[0], results[1]):
        assert torch.equal(first, second)
    assert not torch.equal(results[0][0], results[2][0])


def test_public_interface():
    """`from sparse_transformer import sparse_attention` is the kernels' entry point."""
    from sparse_transformer import sparse_attention as public

    assert public is sparse_attention
