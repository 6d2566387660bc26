"""Pattern against brute force written straight from the paper's definitions (section 4.3), plus its properties."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from layout_checks import assert_lists_match
from sparse_transformer.layouts import kernel_spec
from sparse_transformer.patterns import INTEGRATIONS, Pattern, PatternError

SETTINGS = settings(max_examples=150, deadline=None)


def brute_allowed(p: Pattern, i: int, j: int, layer: int, head: int) -> bool:
    """The paper's section 4.3, one pair at a time (without j <= i for a non-causal pattern)."""
    if p.causal and j > i:
        return False
    l = p.stride
    if p.kind == "dense":
        return True
    if p.kind == "local":
        return abs(i - j) < l
    if p.kind == "strided":
        a1 = abs(i - j) < l
        a2 = (i - j) % l == 0
    else:
        c = p.summary
        a1 = j // l == i // l
        if p.distinct_summaries:
            v = l // c
            a2_head = head // 2 if p.integration == "multihead" else head  # rank among the heads that use A2
            g = a2_head % v
            a2 = l - (g + 1) * c <= j % l < l - g * c
        else:
            a2 = j % l >= l - c
    if p.integration == "merged":
        return a1 or a2
    if p.integration == "interleaved":
        return a1 if layer % 2 == 0 else a2
    return a1 if head % 2 == 0 else a2


def brute_mask(p: Pattern, n: int, layer: int, head: int) -> torch.Tensor:
    return torch.tensor([[brute_allowed(p, i, j, layer, head) for j in range(n)] for i in range(n)], dtype=torch.bool)


@st.composite
def patterns(draw, kinds=("dense", "local", "strided", "fixed"), causal=(True,)) -> Pattern:
    kind = draw(st.sampled_from(kinds))
    is_causal = draw(st.sampled_from(causal))
    if kind == "fixed":
        stride = draw(st.integers(2, 12))
        summary = draw(st.integers(1, stride - 1))
        return Pattern(kind, stride, summary, draw(st.sampled_from(INTEGRATIONS)), draw(st.booleans()), is_causal)
    integration = draw(st.sampled_from(INTEGRATIONS)) if kind == "strided" else "merged"
    return Pattern(kind, draw(st.integers(1, 12)), integration=integration, causal=is_causal)


EITHER = (True, False)  # causal or not


@SETTINGS
@given(p=patterns(causal=EITHER), n=st.integers(1, 40), layer=st.integers(0, 3), head=st.integers(0, 5))
def test_mask_equals_brute_force(p, n, layer, head):
    assert torch.equal(p.mask(n, layer, head), brute_mask(p, n, layer, head))


def test_non_causal_patterns_are_symmetric_where_their_sets_are():
    """A1 and A2 of strided and local are symmetric in i and j; dense is everything."""
    for p in (Pattern("dense", 1, causal=False), Pattern("local", 3, causal=False), Pattern("strided", 4, causal=False)):
        mask = p.mask(30)
        assert torch.equal(mask, mask.T) and mask.any(1).all()
    assert Pattern("dense", 1, causal=False).mask(7).all()
    fixed = Pattern("fixed", 4, 1, causal=False).mask(12)
    assert fixed[0, 11] and fixed[0, 3] and not fixed[0, 10]  # a later chunk's summary, not its other columns


@pytest.mark.parametrize("integration", INTEGRATIONS)
def test_distinct_summaries_of_every_head_equal_brute_force(integration):
    """Random draws rarely combine distinct summaries with many heads; cover them all here."""
    p = Pattern("fixed", 12, 3, integration, distinct_summaries=True)  # v = 4 sub-blocks
    for layer in (0, 1):
        for head in range(9):
            assert torch.equal(p.mask(50, layer, head), brute_mask(p, 50, layer, head)), (layer, head)


@SETTINGS
@given(p=patterns(causal=EITHER), n=st.integers(1, 30), layer=st.integers(0, 3), heads=st.integers(1, 6))
def test_allowed_with_a_tensor_head_gives_every_head_at_once(p, n, layer, heads):
    idx = torch.arange(n)
    all_heads = p.allowed(idx[:, None], idx[None, :], layer, torch.arange(heads)[:, None, None])
    for h in range(heads):
        assert torch.equal(all_heads.expand(heads, n, n)[h], p.mask(n, layer, h))


@SETTINGS
@given(p=patterns(causal=EITHER), n=st.integers(1, 60), layer=st.integers(0, 3), head=st.integers(0, 5))
def test_key_counts_are_mask_row_sums(p, n, layer, head):
    assert torch.equal(p.key_counts(n, layer, head), p.mask(n, layer, head).sum(1))
    assert p.pair_count(n, layer, head) == int(p.mask(n, layer, head).sum())


@settings(max_examples=40, deadline=None)
@given(p=patterns(causal=EITHER), n=st.integers(1, 100), block=st.sampled_from((16, 32)), layer=st.integers(0, 1),
       heads=st.integers(1, 4))
def test_layout_lists_cover_exactly_the_mask(p, n, block, layer, heads):
    layout = p.layout(n, heads, layer, block=block)
    assert layout.heads == (heads if p.depends_on_head() else None)
    mask = torch.stack([p.mask(n, layer, h) for h in range(layout.heads or 1)])[None]  # (1, LH, n, n)
    assert_lists_match(layout.lists, mask)
    assert layout.pair_count()[0].tolist() == [p.pair_count(n, layer, h) for h in range(layout.heads or 1)]
    assert layout.spec == (kernel_spec(p, layer) if p.causal else None)  # the closed form is the causal fast path


def test_layout_is_cached_per_layer_class_and_device():
    p = Pattern("strided", 4, integration="interleaved")
    assert p.layout(64, heads=2, layer=0) is p.layout(64, heads=8, layer=2, device="cpu")  # heads shared, same parity
    assert p.layout(64, layer=1) is not p.layout(64, layer=0)
    assert p.layout(64).lists is p.layout(64).lists  # built once


def test_non_causal_patterns_have_no_closed_form():
    with pytest.raises(ValueError, match="runs as block lists"):
        Pattern("strided", 4, causal=False).kernel_passes()


def pass_allows(p: Pattern, name: str, i: torch.Tensor, j: torch.Tensor, head: int) -> torch.Tensor:
    """The key sets named by `kernel_passes`, written from the paper's definitions."""
    l, causal = p.stride, j <= i
    if name == "dense":
        return causal
    if name == "band":
        return causal & (i - j < l)
    if name == "strided":
        return causal & ((i - j) % l == 0)
    if name == "chunk":
        return causal & (j // l == i // l)
    lo, hi = p.summary_columns(head)
    return causal & (j % l >= lo) & (j % l < hi)


@SETTINGS
@given(p=patterns(), n=st.integers(1, 40), layer=st.integers(0, 3), head=st.integers(0, 5))
def test_kernel_passes_union_is_the_mask(p, n, layer, head):
    idx = torch.arange(n)
    i, j = idx[:, None], idx[None, :]
    union = torch.zeros(n, n, dtype=torch.bool)
    for even_set, odd_set in p.kernel_passes(layer):
        union |= pass_allows(p, odd_set if head % 2 else even_set, i, j, head)
    assert torch.equal(union, p.mask(n, layer, head))


def reaches_within_two_hops(p: Pattern, n: int, heads: int, first_layer: int = 0) -> torch.Tensor:
    """(n, n) bool: j's information is at i after layers r, r+1 (residual included), any heads."""
    eye = torch.eye(n, dtype=torch.bool)
    hop1 = (p.layer_mask(n, first_layer, heads) | eye).to(torch.int64)
    hop2 = (p.layer_mask(n, first_layer + 1, heads) | eye).to(torch.int64)
    return (hop2 @ hop1) > 0


@SETTINGS
@given(p=patterns(kinds=("dense", "strided", "fixed")), n=st.integers(1, 70), heads=st.integers(1, 6))
def test_every_pattern_is_valid_within_two_hops(p, n, heads):
    if p.integration == "multihead" and p.factorized:
        heads = max(heads, 2)  # with one head, multihead never uses A2 (config refuses it)
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    assert torch.equal(reaches_within_two_hops(p, n, heads), causal)


def test_local_alone_is_not_valid():
    """The validity check can fail: a band of width l cannot span 2l in two hops."""
    p = Pattern("local", 4)
    reach = reaches_within_two_hops(p, 20, heads=1)
    assert not reach[19, 0]
    assert reach[19, 19 - 6]


def test_raw_head_indexing_of_summaries_would_break_multihead_validity():
    """Why summary sub-blocks are dealt among the A2 heads: with heads 1 and 3 indexing
    by raw head number, sub-block 0 (the chunk's last c columns) would never be read."""
    p = Pattern("fixed", 8, 2, "multihead", distinct_summaries=True)
    assert {p.summary_group(h) for h in (1, 3)} == {0, 1}
    assert torch.equal(reaches_within_two_hops(p, 40, heads=4), torch.ones(40, 40, dtype=torch.bool).tril())


@pytest.mark.parametrize("n", [256, 1024, 4096])
def test_strided_attends_to_about_two_sqrt_n_keys(n):
    root = math.isqrt(n)
    counts = Pattern("strided", root).key_counts(n).double()
    assert counts.max() <= 2 * root
    assert root <= counts.mean() <= 2 * root


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        (dict(kind="sparse", stride=4), "kind"),
        (dict(kind="strided", stride=0), "stride"),
        (dict(kind="strided", stride=4, integration="mixed"), "integration"),
        (dict(kind="fixed", stride=4), "summary"),
        (dict(kind="fixed", stride=4, summary=4), "summary"),
        (dict(kind="strided", stride=4, summary=2), "summary"),
        (dict(kind="strided", stride=4, distinct_summaries=True), "distinct_summaries"),
        (dict(kind="strided", stride=4, causal="no"), "causal"),
    ],
)
def test_invalid_arguments_name_the_field(kwargs, field):
    with pytest.raises(PatternError) as info:
        Pattern(**kwargs)
    assert info.value.field == field
    assert field in str(info.value)
