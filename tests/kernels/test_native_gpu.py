"""Eager calls from C++ (kernels/native.py) against the same calls from Python, on a GPU
(skipped in CI, which has none): once a call key has run, its later calls run the same
programs from C++, so outputs and gradients must be equal bit for bit."""

from __future__ import annotations

import pytest
import torch

from sparse_kernels import native, ops
from sparse_transformer import ModelConfig, Pattern, SparseTransformer
from sparse_transformer.attention import sparse_attention

from .block_layouts import causal_lists, global_line_lists, random_lists

pytestmark = pytest.mark.gpu

PATTERNS = [
    Pattern("local", 64),
    Pattern("strided", 64, integration="merged"),
    Pattern("strided", 64, integration="multihead"),
    Pattern("fixed", 64, 16, integration="merged"),
    Pattern("fixed", 64, 16, integration="multihead", distinct_summaries=True),
    Pattern("dense", 64),
]


def _inputs(heads=4, kv_heads=4, n=1000, d=64, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    shapes = ((heads, d), (kv_heads, d), (kv_heads, d), (heads, d))  # q, k, v, dout
    return [torch.randn(2, h, n, dd, generator=gen, device="cuda", dtype=torch.bfloat16) for h, dd in shapes]


def _fwd_bwd(attend, q, k, v, do):
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = attend(*leaves)
    return out.grad_fn.name(), [out, *torch.autograd.grad(out, leaves, do)]


def _same(got, want):
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


def _check(attend, q, k, v, do):
    with native.python_only():
        python_node, want = _fwd_bwd(attend, q, k, v, do)  # the key's first call also registers it
    native_node, got = _fwd_bwd(attend, q, k, v, do)
    assert "PlannedAttention" not in python_node and "PlannedAttention" in native_node
    _same(got, want)


@pytest.mark.parametrize("pattern", PATTERNS, ids=Pattern.describe)
def test_paper_patterns_from_cpp_equal_python(pattern):
    _check(lambda q, k, v: sparse_attention(q, k, v, pattern), *_inputs())


def test_grouped_query_attention_from_cpp_equals_python():
    _check(lambda q, k, v: sparse_attention(q, k, v, Pattern("strided", 64, integration="merged")),
           *_inputs(heads=8, kv_heads=2))


@pytest.mark.parametrize("piece", [None, 2], ids=["whole lists", "split lists"])
def test_block_layouts_from_cpp_equal_python(piece):
    """Random layouts with partial blocks, per head; split lists add scratch buffers and
    the launches that add up their pieces."""
    lists = random_lists(1, 4, 1000, 64, torch.Generator().manual_seed(1), device="cuda", per_head=True, piece=piece)
    _check(lambda q, k, v: ops.block_attention(q, k, v, lists, with_lse=False), *_inputs())


@pytest.mark.parametrize("line", ["row", "column"])
def test_layouts_split_in_one_direction_from_cpp_equal_python(line):
    """A global row splits only the key lists, a global column only the query lists: the
    backward's scratch slots of one pass stand in for nothing of the other's."""
    lists = global_line_lists(line, 16, 64, piece=4, device="cuda")
    _check(lambda q, k, v: ops.block_attention(q, k, v, lists, with_lse=False), *_inputs(n=64 * 16))


def test_a_new_layout_of_the_same_shapes_runs_from_cpp_at_once():
    """A new packed batch: other lists and masks of the same shapes reuse the call planned
    for the first layout."""
    q, k, v, do = _inputs()
    first = random_lists(1, 4, 1000, 64, torch.Generator().manual_seed(2), device="cuda", per_head=True)
    second = first._replace(masks=~first.masks)
    attend = lambda lists: lambda *t: ops.block_attention(*t, lists, with_lse=False)  # noqa: E731
    _fwd_bwd(attend(first), q, k, v, do)  # plans and registers the shapes' key
    with native.python_only():
        _, want = _fwd_bwd(attend(second), q, k, v, do)
    node, got = _fwd_bwd(attend(second), q, k, v, do)
    assert "PlannedAttention" in node
    _same(got, want)


def test_without_gradients_the_forward_runs_alone():
    q, k, v, do = _inputs()
    pattern = Pattern("fixed", 64, 16, integration="merged")
    with native.python_only():
        want = sparse_attention(q, k, v, pattern)
    with torch.no_grad():
        got = sparse_attention(q, k, v, pattern)
    assert got.grad_fn is None and torch.equal(got, want)


def test_another_layout_of_d_out_is_copied_into_the_planned_one():
    q, k, v, do = _inputs()
    pattern = Pattern("strided", 64, integration="merged")
    attend = lambda *t: sparse_attention(*t, pattern)  # noqa: E731
    _fwd_bwd(attend, q, k, v, do)  # planned for a contiguous dO
    other = do.transpose(1, 2).contiguous().transpose(1, 2)  # (batch, n, H, d) memory
    with native.python_only():
        _, want = _fwd_bwd(attend, q, k, v, other)
    node, got = _fwd_bwd(attend, q, k, v, other)
    assert "PlannedAttention" in node
    _same(got, want)


def test_cuda_graphs_capture_calls_from_cpp():
    q, k, v, do = _inputs()
    pattern = Pattern("fixed", 64, 16, integration="merged")
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]

    def step():  # the output detached: a graph kept alive would tie the leaves to the stream it ran on
        out = sparse_attention(*leaves, pattern)
        return [out.detach(), *torch.autograd.grad(out, leaves, do)]

    with native.python_only():
        want = step()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()  # registered: from here on the calls run from C++
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    for leaf in leaves:
        leaf.data.zero_()
    graph.replay()  # zeros in: the replay recomputes
    assert not torch.equal(captured[0], want[0])
    for leaf, t in zip(leaves, (q, k, v)):
        leaf.data.copy_(t)
    graph.replay()
    _same(captured, want)


@pytest.mark.parametrize("recompute", [False, True], ids=["stored", "recomputed"])
def test_a_model_step_from_cpp_equals_python(recompute):
    """Every parameter's gradient, through the model's projections, residual blocks and
    (recomputed) checkpoints."""
    config = ModelConfig(context=512, layers=2, d_model=128, heads=2, attention="triton", recompute=recompute,
                         pattern=Pattern("strided", 32, integration="merged"))
    torch.manual_seed(0)
    model = SparseTransformer(config).cuda()
    torch.nn.init.normal_(model.out.weight, std=0.02)  # zero at initialization, which would stop every gradient
    tokens = torch.randint(0, 256, (2, 512), device="cuda")

    def grads():
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(tokens).float().logsumexp(-1).mean()
        loss.backward()
        return [loss, *(p.grad for p in model.parameters())]

    with native.python_only():
        want = grads()
    grads()  # registers the keys the step's calls use
    _same(grads(), want)


def test_dense_causal_lists_from_cpp_equal_python():
    _check(lambda q, k, v: ops.block_attention(q, k, v, causal_lists(1000, 64, device="cuda"), with_lse=False),
           *_inputs())
