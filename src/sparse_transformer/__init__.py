"""Sparse Transformer (Child et al. 2019): factorized attention patterns, fused Triton
kernels, and the model built on them."""

from .patterns import Pattern

__all__ = ["Pattern"]
__version__ = "0.1.0"
