"""Every attention backend against a float64 dense softmax with the pattern's mask."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from layout_checks import masked_float64
from pattern_cases import paper_patterns
from sparse_kernels import decode, ops
from sparse_kernels.geometry import MODES
from sparse_transformer.attention import (BACKENDS, attend, attend_decoding, reference_attention, reference_decoding,
                                         reference_lse)
from sparse_transformer.layouts import SparseLayout
from sparse_transformer.patterns import Pattern

# the paper's patterns, and fixed interleaved with shared summaries: at layer 1, fixed A2
# alone, whose first rows have no key
PATTERNS = [*paper_patterns(summary=3), Pattern("fixed", 8, 3, integration="interleaved")]


def dense_float64(q, k, v, pattern, layer):
    """softmax(q k^T / sqrt(d) + mask) v and the log-sum-exp in float64, n x n at once."""
    n, heads = q.shape[2], q.shape[1]
    return masked_float64(q, k, v, torch.stack([pattern.mask(n, layer, h) for h in range(heads)]))


def random_qkv(batch, heads, n, d_qk, d_v, seed=0, requires_grad=False):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(batch, heads, n, d_qk), (batch, heads, n, d_qk), (batch, heads, n, d_v)]
    return [torch.randn(s, generator=gen).requires_grad_(requires_grad) for s in shapes]


@pytest.mark.parametrize("pattern", PATTERNS, ids=Pattern.describe)
@pytest.mark.parametrize("layer", [0, 1])
def test_reference_equals_float64_softmax(pattern, layer):
    q, k, v = random_qkv(2, 4, 45, 8, 12)  # n=45: not a multiple of any stride or chunk
    expected, expected_lse = dense_float64(q, k, v, pattern, layer)
    out = reference_attention(q, k, v, pattern, layer, chunk_elements=2 * 4 * 45 * 7)  # 7 rows a chunk
    lse = reference_lse(q, k, pattern, layer, chunk_elements=2 * 4 * 45 * 7)
    assert out.dtype == torch.float32 and out.shape == (2, 4, 45, 12)
    assert (out.double() - expected).abs().max() / expected.abs().max() < 1e-5
    finite = torch.isfinite(expected_lse)
    assert torch.equal(torch.isfinite(lse), finite)
    assert (lse.double()[finite] - expected_lse[finite]).abs().max() < 1e-5
    assert torch.allclose(attend(q, k, v, pattern, layer), out, atol=1e-6)  # other chunking, same result


def test_empty_rows_give_zero_output_and_zero_gradients():
    pattern = Pattern("fixed", 8, 3, integration="interleaved")
    q, k, v = random_qkv(1, 2, 20, 4, 4, requires_grad=True)
    out = reference_attention(q, k, v, pattern, layer=1)  # fixed A2 alone: rows 0..4 see no key
    lse = reference_lse(q, k, pattern, layer=1)
    assert torch.equal(pattern.key_counts(20, layer=1)[:6], torch.tensor([0, 0, 0, 0, 0, 1]))
    assert torch.equal(out[:, :, :5], torch.zeros(1, 2, 5, 4))
    assert torch.isneginf(lse[:, :, :5]).all() and torch.isfinite(lse[:, :, 5:]).all()
    (out.sum() + lse[torch.isfinite(lse)].sum()).backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
    assert torch.equal(q.grad[:, :, :5], torch.zeros(1, 2, 5, 4))
    assert q.grad[:, :, 5:].abs().sum() > 0


def test_reference_gradients_equal_float64_softmax():
    pattern = Pattern("strided", 5, integration="merged")
    q, k, v = random_qkv(1, 2, 23, 4, 6, requires_grad=True)
    reference_attention(q, k, v, pattern, chunk_elements=2 * 23 * 4).pow(2).sum().backward()
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    dense_float64(q64, k64, v64, pattern, 0)[0].pow(2).sum().backward()
    for got, want in ((q.grad, q64.grad), (k.grad, k64.grad), (v.grad, v64.grad)):
        assert (got.double() - want).abs().max() / want.abs().max() < 1e-5


def test_reference_runs_at_16k_without_an_n_by_n_matrix():
    """n = 16,384, batch 1, heads 2: a dense fp32 score matrix would take 2 GiB; the
    chunked reference must stay far below that (measured as the process's peak RSS)."""
    script = """
import resource, torch
from sparse_transformer.attention import reference_attention
from sparse_transformer.patterns import Pattern
torch.manual_seed(0)
n = 16384
q, k, v = (torch.randn(1, 2, n, 16) for _ in range(3))
pattern = Pattern("strided", 128)
out = reference_attention(q, k, v, pattern)
peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
rows = torch.tensor([0, 1, 127, 128, 5000, n - 1])
allowed = pattern.allowed(rows[:, None], torch.arange(n)[None, :])     # (6, n)
s = (q[:, :, rows].double() @ k.double().transpose(-1, -2)) / 4.0     # (1, 2, 6, n)
w = torch.softmax(s.masked_fill(~allowed, float("-inf")), dim=-1)
err = ((out[:, :, rows].double() - w @ v.double()).abs().max()).item()
print(err, peak_mib)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True)
    err, peak_mib = result.stdout.split()
    assert float(err) < 1e-5
    assert int(peak_mib) < 1500  # torch itself takes a few hundred MiB


@pytest.mark.slow
def test_flex_equals_reference():
    """Compiled FlexAttention on the CPU (~25 s to compile); q/k narrower than v as with half_qk."""
    pattern = Pattern("fixed", 8, 2, integration="multihead", distinct_summaries=True)
    q, k, v = random_qkv(1, 4, 50, 8, 16)
    expected = reference_attention(q, k, v, pattern)
    assert (attend(q, k, v, pattern, backend="flex") - expected).abs().max() < 1e-5


@pytest.mark.slow
def test_flex_with_a_layout_and_fewer_kv_heads_equals_reference():
    """A layout through its BlockMask (partial and full blocks), grouped-query attention."""
    layout = SparseLayout.from_mask_mod(window_with_globals, 50, heads=4, block=16)
    q, k, v = random_qkv(1, 4, 50, 16, 16)
    k, v = k[:, :2], v[:, :2]
    expected = reference_attention(q, k, v, layout)
    assert (attend(q, k, v, layout, backend="flex") - expected).abs().max() < 1e-5


def window_with_globals(b, h, q, kv):
    """Longformer's mask: a window of 5 (wider for odd heads) plus global tokens 0 and 7."""
    return ((q - kv).abs() < 5 + 3 * (h % 2)) | (q == 0) | (kv == 0) | (q == 7) | (kv == 7)


@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_reference_with_a_layout_and_fewer_kv_heads_equals_float64_softmax(kv_heads):
    """A per-head layout and grouped-query attention: query head h reads kv head h // (4 / kv_heads)."""
    layout = SparseLayout.from_mask_mod(window_with_globals, 45, heads=4, block=16)
    gen = torch.Generator().manual_seed(kv_heads)
    q = torch.randn(2, 4, 45, 8, generator=gen, requires_grad=True)
    k = torch.randn(2, kv_heads, 45, 8, generator=gen, requires_grad=True)
    v = torch.randn(2, kv_heads, 45, 12, generator=gen, requires_grad=True)
    out = reference_attention(q, k, v, layout, chunk_elements=2 * 4 * 45 * 7)  # 7 rows a chunk
    mask = layout.element_mask(torch.arange(45), torch.arange(45))
    expected, expected_lse = masked_float64(q, k, v, mask)
    assert (out.double() - expected).abs().max() / expected.abs().max() < 1e-5
    assert (reference_lse(q, k, layout).double() - expected_lse).abs().max() < 1e-5
    out.pow(2).sum().backward()
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    masked_float64(q64, k64, v64, mask)[0].pow(2).sum().backward()
    for got, want in ((q.grad, q64.grad), (k.grad, k64.grad), (v.grad, v64.grad)):
        assert (got.double() - want).abs().max() / want.abs().max() < 1e-5


@pytest.mark.parametrize("pattern", [Pattern("strided", 4, causal=False), Pattern("fixed", 8, 2, causal=False)],
                         ids=Pattern.describe)
def test_reference_of_a_non_causal_pattern_reads_later_keys(pattern):
    q, k, v = random_qkv(1, 2, 30, 8, 8)
    k, v = k[:, :1], v[:, :1]  # multi-query: one kv head
    expected, _ = masked_float64(q, k, v, pattern.mask(30))
    out = reference_attention(q, k, v, pattern, chunk_elements=2 * 30 * 4)  # 4 rows a chunk
    assert (out.double() - expected).abs().max() < 1e-5
    assert torch.allclose(attend(q, k, v, pattern.layout(30, block=16)), out, atol=1e-6)  # its layout, same result


def test_shapes_a_layout_or_the_kv_heads_cannot_take_are_refused():
    layout = SparseLayout.from_mask_mod(window_with_globals, 32, heads=4, block=16)
    q, k, v = random_qkv(2, 4, 32, 8, 8)
    with pytest.raises(ValueError, match="length 32, but q has length 31"):
        attend(q[:, :, :31], k[:, :, :31], v[:, :, :31], layout)
    with pytest.raises(ValueError, match="4 heads, but q has 2"):
        attend(q[:, :2], k[:, :2], v[:, :2], layout)
    per_batch = SparseLayout.from_mask_mod(lambda b, h, q, kv: kv <= q + b, 32, batch=3, block=16)
    with pytest.raises(ValueError, match="3 batch elements, but q has 2"):
        attend(q, k, v, per_batch)
    with pytest.raises(ValueError, match="does not divide"):
        attend(q, k[:, :3], v[:, :3], Pattern("dense", 1))


def test_triton_backend_runs_the_closed_form_for_causal_patterns_and_lists_otherwise(monkeypatch):
    """What reaches the kernels: a causal Pattern its KernelSpec, a layout or a non-causal
    Pattern its block lists (the kernels themselves are tested in tests/kernels)."""
    calls = []
    monkeypatch.setattr(ops.SparseAttentionFunction, "apply", staticmethod(lambda q, k, v, spec, *rest: calls.append(spec) or q))
    monkeypatch.setattr(ops, "block_attention", lambda q, k, v, lists, *rest: calls.append(lists) or q)
    q, k, v = random_qkv(1, 2, 40, 16, 16)
    strided = Pattern("strided", 4, integration="interleaved")
    layout = SparseLayout.from_mask_mod(window_with_globals, 40, heads=2, block=16)
    non_causal = Pattern("local", 3, causal=False)
    for pattern, layer in ((strided, 1), (strided.layout(40, layer=1), 0), (layout, 0), (non_causal, 0)):
        attend(q, k, v, pattern, layer, backend="triton")
    assert calls[0] == calls[1] == strided.layout(40, layer=1).spec and calls[0].passes == ((MODES["strided"], MODES["strided"]),)
    assert calls[2] is layout.lists
    assert calls[3] is non_causal.layout(40, 2, device=q.device).lists


def test_triton_backend_with_a_layout_equals_reference():
    """The kernels (under the interpreter here) through `attend`: a per-head mask_mod layout,
    a non-causal pattern and grouped-query attention give the reference's output."""
    q, k, v = random_qkv(1, 4, 40, 16, 16)
    k, v = k[:, :2], v[:, :2]
    layout = SparseLayout.from_mask_mod(window_with_globals, 40, heads=4, block=16)
    for pattern in (layout, Pattern("strided", 4, causal=False)):
        expected = reference_attention(q, k, v, pattern)
        assert (attend(q, k, v, pattern, backend="triton") - expected).abs().max() < 1e-5


def test_sdpa_equals_reference_for_dense_and_refuses_sparse():
    q, k, v = random_qkv(2, 2, 33, 8, 8)
    dense = Pattern("dense", 1)
    assert (attend(q, k, v, dense, backend="sdpa") - reference_attention(q, k, v, dense)).abs().max() < 1e-5
    with pytest.raises(ValueError, match="dense attention only"):
        attend(q, k, v, Pattern("strided", 4), backend="sdpa")
    bidirectional = Pattern("dense", 1, causal=False)
    assert (attend(q, k, v, bidirectional, backend="sdpa") - reference_attention(q, k, v, bidirectional)).abs().max() < 1e-5


def test_unknown_backend_names_the_choices():
    q, k, v = random_qkv(1, 1, 4, 2, 2)
    with pytest.raises(ValueError) as info:
        attend(q, k, v, Pattern("dense", 1), backend="cuda")
    for name in BACKENDS:
        assert repr(name) in str(info.value) or name in str(info.value)
    assert "'cuda'" in str(info.value)


def test_auto_uses_reference_on_cpu():
    q, k, v = random_qkv(1, 2, 10, 4, 4)
    pattern = Pattern("strided", 3)
    assert torch.equal(attend(q, k, v, pattern, backend="auto"), reference_attention(q, k, v, pattern))


def test_decoding_on_the_cpu_uses_the_kernel_only_when_triton_is_asked_for(monkeypatch):
    def no_kernel(*args):
        raise AssertionError("the decode kernel was launched")

    monkeypatch.setattr(decode, "decode_attention", no_kernel)
    q, k, v = random_qkv(1, 2, 16, 4, 4)
    slots, valid = torch.randint(0, 16, (2, 5)), torch.rand(2, 5) < 0.5
    for backend in ("auto", "flex", "sdpa", "reference"):
        assert torch.equal(attend_decoding(q[:, :, 0], k, v, slots, valid, backend),
                           reference_decoding(q[:, :, 0], k, v, slots, valid))


def test_reference_accumulates_in_fp32_under_bf16_autocast():
    pattern = Pattern("strided", 4)
    q, k, v = (t.bfloat16() for t in random_qkv(1, 2, 30, 16, 16))
    expected = reference_attention(q.float(), k.float(), v.float(), pattern)  # the same bf16 values, fp32 math
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = reference_attention(q, k, v, pattern)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, expected.bfloat16())


def test_an_eager_call_reaches_the_kernel_launch_through_six_of_our_functions():
    """The route from `attend` to a kernel launch stays short (docs/architecture.md,
    "The route of a parameter"): attend, sparse_attention, ops.attention, the autograd
    Function's forward, ops.run and the planned Launch, counted on the call stack at the
    launch. (On a GPU a key's later calls leave Python at ops.attention: native.py.)"""
    from sparse_kernels import launch

    q, k, v = random_qkv(1, 2, 48, 16, 16, requires_grad=True)
    pattern = Pattern("strided", 8, integration="merged")
    attend(q, k, v, pattern, 0, "triton")  # the first call of a key plans its launches
    stacks = []

    def at_launch(frame, event, arg):
        if event == "call" and frame.f_code is launch.Launch.__call__.__code__:
            ours, caller = [], frame
            while caller is not None:
                module = caller.f_globals.get("__name__", "")
                if module.startswith(("sparse_transformer.", "sparse_kernels.")):
                    ours.append(f"{module}.{caller.f_code.co_name}")
                caller = caller.f_back
            stacks.append(ours[::-1])

    sys.setprofile(at_launch)
    try:
        attend(q, k, v, pattern, 0, "triton")
    finally:
        sys.setprofile(None)
    assert len(stacks) == 2  # the merged pattern's two passes
    assert stacks[0] == [
        "sparse_transformer.attention.attend", "sparse_transformer.attention.sparse_attention",
        "sparse_kernels.ops.attention", "sparse_kernels.ops.forward",  # SparseAttentionFunction.forward
        "sparse_kernels.ops.run", "sparse_kernels.launch.__call__",  # Launch.__call__
    ]
