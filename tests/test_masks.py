"""Named masks: their predicates, their checks, and the model's layout of pattern and mask."""

from __future__ import annotations

import pytest
import torch

from sparse_transformer.masks import MASKS, MaskError, MaskSpec
from sparse_transformer.patterns import Pattern

N = 40


def grid(mask_mod) -> torch.Tensor:
    """(N, N) bool: mask_mod over every (query, key) pair, head and batch 0."""
    i = torch.arange(N)
    return mask_mod(0, 0, i[:, None], i[None, :])


def test_sliding_window_allows_the_keys_less_than_w_away():
    got = grid(MASKS["sliding_window"](window=5))
    want = torch.tensor([[abs(i - j) < 5 for j in range(N)] for i in range(N)])
    assert torch.equal(got, want)


def test_sliding_window_global_adds_rows_and_columns_of_the_first_g_positions():
    got = grid(MASKS["sliding_window_global"](window=5, globals=3))
    want = torch.tensor([[abs(i - j) < 5 or i < 3 or j < 3 for j in range(N)] for i in range(N)])
    assert torch.equal(got, want)
    assert got[N - 1, 0] and got[0, N - 1] and not got[N - 1, 10]


def test_a_spec_keeps_the_parameters_in_the_factorys_order():
    spec = MaskSpec.parse({"globals": 3, "window": 5, "name": "sliding_window_global"})
    assert spec == MaskSpec("sliding_window_global", (("window", 5), ("globals", 3)))
    assert spec.describe() == "sliding_window_global, window=5, globals=3"
    assert hash(spec) == hash(MaskSpec.parse({"name": "sliding_window_global", "window": 5, "globals": 3}))


@pytest.mark.parametrize(("section", "message"), [
    ({"name": "dilated", "window": 5}, "unknown name 'dilated': choose one of sliding_window, sliding_window_global"),
    ({"window": 5}, "no name: choose one of sliding_window, sliding_window_global"),
    ({"name": "sliding_window", "window": 5, "width": 2}, "unknown parameter(s) width: sliding_window takes window"),
    ({"name": "sliding_window_global", "window": 5}, "missing globals: sliding_window_global takes window, globals"),
    ({"name": "sliding_window", "window": 0}, "window must be a positive integer, got 0"),
    ({"name": "sliding_window_global", "window": 4, "globals": 1.5}, "globals must be a positive integer, got 1.5"),
])
def test_bad_masks_are_refused_naming_the_problem_and_the_choices(section, message):
    with pytest.raises(MaskError) as info:
        MaskSpec.parse(section)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize("pattern", [Pattern("dense", 4), Pattern("strided", 4, integration="multihead")],
                         ids=lambda p: p.describe())
def test_the_layout_is_the_patterns_pairs_the_mask_allows_built_once(pattern):
    spec = MaskSpec.parse({"name": "sliding_window_global", "window": 6, "globals": 2})
    heads = 2
    layout = spec.layout(pattern, N, heads, layer=0, device="cpu")
    assert spec.layout(pattern, N, heads, layer=0, device=torch.device("cpu")) is layout
    rows = torch.arange(N)
    element = layout.element_mask(rows, rows)  # (1, LH, N, N)
    named = grid(spec.mask_mod())
    for head in range(heads):
        assert torch.equal(element[0, head if layout.heads else 0], pattern.mask(N, 0, head) & named)
    assert (layout.heads is not None) == pattern.depends_on_head()
