"""Test-session set-up shared by every test module.

Without a CUDA GPU the Triton kernels run under Triton's interpreter on CPU tensors.
Triton decides interpreter or compiler when a kernel is defined (at import), so the
variable must be set before anything imports triton - hence here, at the very top.
"""

import os
import shutil
import tempfile

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    # Each xdist worker gets its share of the cores, for its own ops and the processes it
    # starts (OMP_NUM_THREADS): PyTorch's default of a thread per core in every worker
    # oversubscribes the CI machine, and small CPU ops then run many times slower (a
    # 2-layer model's 150 steps took 80 s beside another worker instead of 6 s).
    _THREADS = str(max(1, (os.cpu_count() or 1) // _WORKERS))
    os.environ["OMP_NUM_THREADS"] = _THREADS
    torch.set_num_threads(int(_THREADS))
if torch.cuda.is_available() and _WORKERS > 1 and "TRITON_CACHE_DIR" not in os.environ:
    # The kernels' autotuner keeps its picks in Triton's cache (cache_results). Workers
    # sharing one GPU time each other's candidates, so their picks are not the card's
    # best; a private cache keeps them out of the one later training and benchmarks read
    # (an H200 run of fixed merged once took 4.99 ms with such picks against 3.78 ms).
    os.environ["TRITON_CACHE_DIR"] = _TRITON_CACHE = tempfile.mkdtemp(prefix="triton-cache-test-worker-")

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


def pytest_unconfigure(config):
    if "_TRITON_CACHE" in globals():
        shutil.rmtree(_TRITON_CACHE, ignore_errors=True)
