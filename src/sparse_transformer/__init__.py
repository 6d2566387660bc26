"""Sparse Transformer (Child et al. 2019): factorized attention patterns, fused Triton
kernels, and the model built on them.

    from sparse_transformer import Pattern, SparseLayout, sparse_attention, SparseTransformer, ModelConfig, attend

Everything but `Pattern` is imported on first use, so that `import sparse_transformer`
(and the command line) stays light: Triton is loaded with the attention module.
"""

from importlib import import_module

from .patterns import Pattern

_LAZY = {
    "sparse_attention": ".attention",
    "attend": ".attention",
    "SparseLayout": ".layouts",
    "SparseTransformer": ".model",
    "ModelConfig": ".config",
}

__all__ = ["Pattern", *_LAZY]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
