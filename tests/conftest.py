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
from hypothesis import settings  # noqa: E402

# No time limit per example (Hypothesis' default is 200 ms): on a loaded 2-core machine a
# descheduled process overruns it, and Hypothesis then reports a flaky failure of a test
# whose property holds. Slow code is the benchmarks' business, not the property tests'.
settings.register_profile("no_deadline", deadline=None)
settings.load_profile("no_deadline")


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU: this machine has none (CI is CPU-only); run on a GPU to check")
    skip_interpreted = pytest.mark.skip(
        reason="runs the kernels on CPU tensors under Triton's interpreter, which is off on this GPU machine; "
        "the gpu tests check the compiled kernels"
    )
    interpreting = os.environ.get("TRITON_INTERPRET") == "1"
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
        if "interpreter" in item.keywords and not interpreting:
            item.add_marker(skip_interpreted)
