"""The paper's patterns as the model-level tests take them (test_model.py,
test_sampling.py, test_attention.py): one of each kind under each integration, fixed with
shared and with distinct summaries; and the names pytest gives their cases."""

from __future__ import annotations

from typing import Any

from sparse_transformer.patterns import INTEGRATIONS, Pattern


def paper_patterns(stride: int = 6, fixed_stride: int = 8, summary: int = 2) -> list[Pattern]:
    """dense, local, strided merged, interleaved and multihead, fixed merged, fixed merged
    with distinct summaries, fixed interleaved with distinct summaries, fixed multihead
    with distinct summaries (in that order)."""
    return [
        Pattern("dense", stride),
        Pattern("local", stride),
        *(Pattern("strided", stride, integration=integration) for integration in INTEGRATIONS),
        Pattern("fixed", fixed_stride, summary, integration="merged"),
        Pattern("fixed", fixed_stride, summary, integration="merged", distinct_summaries=True),
        Pattern("fixed", fixed_stride, summary, integration="interleaved", distinct_summaries=True),
        Pattern("fixed", fixed_stride, summary, integration="multihead", distinct_summaries=True),
    ]


def case_id(value: Any) -> str:
    """A test case's name for a Pattern, a named mask ({name: ..., ...}; None: no mask) or a plain value."""
    if isinstance(value, Pattern):
        return value.describe()
    if isinstance(value, dict):
        return ", ".join(f"{key}={item}" for key, item in value.items() if key != "name") + f" {value['name']}"
    return "no mask" if value is None else str(value)
