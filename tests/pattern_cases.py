"""The paper's patterns as the model-level tests take them (test_model.py,
test_sampling.py, test_attention.py): one of each kind under each integration, fixed with
shared and with distinct summaries."""

from __future__ import annotations

from typing import Callable, TypeVar

from sparse_transformer.patterns import INTEGRATIONS

P = TypeVar("P")


def paper_patterns(make: Callable[..., P], stride: int = 6, fixed_stride: int = 8, summary: int = 2) -> list[P]:
    """`make` (Pattern or PatternConfig) of: dense, local, strided merged, interleaved and
    multihead, fixed merged, fixed merged with distinct summaries, fixed interleaved with
    distinct summaries, fixed multihead with distinct summaries (in that order)."""
    return [
        make("dense", stride),
        make("local", stride),
        *(make("strided", stride, integration=integration) for integration in INTEGRATIONS),
        make("fixed", fixed_stride, summary, integration="merged"),
        make("fixed", fixed_stride, summary, integration="merged", distinct_summaries=True),
        make("fixed", fixed_stride, summary, integration="interleaved", distinct_summaries=True),
        make("fixed", fixed_stride, summary, integration="multihead", distinct_summaries=True),
    ]
