"""The small models the model-level tests build (test_model.py, test_sampling.py,
test_evaluation.py): seeded, on the reference backend, in eval mode."""

from __future__ import annotations

import torch

from sparse_transformer.config import ModelConfig
from sparse_transformer.model import SparseTransformer
from sparse_transformer.patterns import Pattern


def tiny_model(pattern: Pattern = Pattern("strided", 4), out_std: float = 0.3, **settings) -> SparseTransformer:
    """A two-layer model of width 32 (ModelConfig fields in `settings` override these),
    with W_out drawn at `out_std`: it starts at 0, which would make every distribution
    uniform and the logits independent of the input."""
    config = dict(context=16, layers=2, d_model=32, heads=2, attention="reference", pattern=pattern) | settings
    torch.manual_seed(0)
    model = SparseTransformer(ModelConfig(**config))
    torch.nn.init.normal_(model.out.weight, std=out_std)
    return model.eval()
