"""Test-session set-up shared by every test module.

Without a CUDA GPU the Triton kernels run under Triton's interpreter on CPU tensors.
Triton decides interpreter or compiler when a kernel is defined (at import), so the
variable must be set before anything imports triton - hence here, at the very top.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU: this machine has none (CI is CPU-only); run on a GPU to check")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
