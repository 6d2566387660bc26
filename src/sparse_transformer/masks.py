"""Named mask functions: sparsity a params.yaml experiment can train with by name.

    model:
      pattern: {kind: dense, stride: 16}
      mask: {name: sliding_window_global, window: 64, globals: 8}

Each entry of `MASKS` is a factory, called with the mask's parameters as keywords, that
returns a predicate in FlexAttention's convention, mask_mod(b, h, q_idx, kv_idx) -> bool
(the index arguments broadcast against each other; operators only, so the predicate
serves ints and tensors alike and can be traced). The predicates say nothing about
causality: the model intersects the mask with its (causal) pattern, so `kind: dense`
gives the mask alone and another kind the pairs both allow.

    sliding_window         window w: |i - j| < w (causal: the last w positions, i included)
    sliding_window_global  window w plus g global tokens, as Longformer: the window, and
                           every pair where the query or the key is one of the first g
                           positions (they read and are read by everything)

torch and the kernels are imported only when a layout is built (`MaskSpec.layout`):
config.py validates a mask without loading PyTorch.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import torch

    from .layouts import SparseLayout
    from .patterns import Pattern

MaskMod = Callable[[Any, Any, Any, Any], Any]

# The layout block of a model's mask: the largest the kernels take (fewest lists to walk).
LAYOUT_BLOCK = 128


class MaskError(ValueError):
    """An unknown mask name or bad parameters; the message says what to change."""


def _positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise MaskError(f"{name} must be a positive integer, got {value!r}")


def sliding_window(window: int) -> MaskMod:
    """Query i reads key j when |i - j| < window."""
    _positive("window", window)

    def mask_mod(b, h, q_idx, kv_idx):
        return abs(q_idx - kv_idx) < window

    return mask_mod


def sliding_window_global(window: int, globals: int) -> MaskMod:
    """Longformer's: the sliding window, plus every pair whose query or key is one of the
    first `globals` positions."""
    _positive("window", window)
    _positive("globals", globals)

    def mask_mod(b, h, q_idx, kv_idx):
        return (abs(q_idx - kv_idx) < window) | (q_idx < globals) | (kv_idx < globals)

    return mask_mod


MASKS: dict[str, Callable[..., MaskMod]] = {
    "sliding_window": sliding_window,
    "sliding_window_global": sliding_window_global,
}


@dataclass(frozen=True)
class MaskSpec:
    """A named mask with its parameters, checked: what a model's pattern config names.
    Hashable, so the model's layouts can be cached on it."""

    name: str
    params: tuple[tuple[str, Any], ...]

    @classmethod
    def parse(cls, section: dict[str, Any]) -> MaskSpec:
        """{name: ..., <parameters>} -> the spec; MaskError names an unknown mask or
        parameter, a missing one or a bad value, and the choices."""
        params = dict(section)
        name = params.pop("name", None)
        if name not in MASKS:
            given = "no name" if name is None else f"unknown name {name!r}"
            raise MaskError(f"{given}: choose one of {', '.join(MASKS)} (e.g. {{name: sliding_window, window: 64}})")
        expected = list(inspect.signature(MASKS[name]).parameters)
        unknown = sorted(str(key) for key in set(params) - set(expected))
        missing = [key for key in expected if key not in params]
        if unknown or missing:
            problem = f"unknown parameter(s) {', '.join(unknown)}" if unknown else f"missing {', '.join(missing)}"
            raise MaskError(f"{problem}: {name} takes {', '.join(expected)}")
        spec = cls(name, tuple((key, params[key]) for key in expected))
        spec.mask_mod()  # the factory checks the values
        return spec

    def mask_mod(self) -> MaskMod:
        return MASKS[self.name](**dict(self.params))

    def describe(self) -> str:
        return ", ".join([self.name, *(f"{key}={value}" for key, value in self.params)])

    def layout(self, pattern: Pattern, n: int, heads: int, layer: int, device: torch.device | str) -> SparseLayout:
        """What attention of `layer` under the pattern and this mask runs at length n on
        `device`: the pairs both allow, as block lists. Built once per (pattern, mask, n,
        heads it tells apart, layer class, device) and kept."""
        import torch

        heads_apart = heads if pattern.depends_on_head() else None
        return _layout(pattern, self, n, heads_apart, pattern.layer_class(layer), torch.device(device))


@functools.lru_cache(maxsize=64)
def _layout(pattern: Pattern, spec: MaskSpec, n: int, heads: int | None, layer: int, device: torch.device) -> SparseLayout:
    from .layouts import SparseLayout

    allowed, masked = pattern.mask_mod(layer), spec.mask_mod()

    def mask_mod(b, h, q_idx, kv_idx):
        return allowed(b, h, q_idx, kv_idx) & masked(b, h, q_idx, kv_idx)

    return SparseLayout.from_mask_mod(mask_mod, n, heads=heads, block=LAYOUT_BLOCK, device=device)
