"""The kernels compile for Hopper (sm_90) on a machine without a GPU.

The interpreter runs kernels as Python and misses what only the compiler checks
(constexpr globals, types across if/else branches, shared-memory limits, how deep
the loops are pipelined); compiling ahead of time with the ptxas that ships in the triton
wheel catches those in CI.
The test session runs kernels interpreted (tests/conftest.py), so the compilation
happens in a child process with the interpreter off.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

COMPILE_ALL = r'''
import json, re, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from sparse_kernels.backward import attention_dkdv_kernel, attention_dq_kernel
from sparse_kernels.block_sparse import (block_combine_kernel, block_dkdv_kernel, block_dq_kernel, block_forward_kernel,
                                        block_sum_kernel)
from sparse_kernels.decode import decode_attention_kernel, decode_combine_kernel
from sparse_kernels.forward import attention_forward_kernel
from sparse_kernels.geometry import MODES

SCALARS = {"H", "GROUP", "HEAD_FIRST", "HEADS", "L", "G", "C", "n", "N_BUCKET", "SUMMARY_GROUPS", "SUMMARY_HEAD_DIV",
           "KEYS", "KEYS_PER_SPLIT", "SPLITS", "NB", "NW", "NS", "NSLOTS", "LIST_SB", "LIST_SH", "KV_WIDTH",
           "Q_WIDTH"}
FLOATS = {"qk_scale", "sm_scale"}
STATS = {"LSE", "DELTA", "PARTIAL_M", "PARTIAL_L", "PARTIAL_ACC", "O_PART", "LSE_PART", "DQ_PART", "DK_PART", "DV_PART",
         "PART"}
POINTERS = {"SLOTS": "*i64", "VALID": "*u8", "MASKS": "*u8", **{f"{side}_{field}": "*i32" for side in ("KV", "Q")
                                                                for field in ("COUNT", "PARTIAL", "WORK", "SPLIT", "INDEX", "MASK")},
            "SPLIT": "*i32"}

def signature(kernel, constexprs):
    sig = {}
    for name in kernel.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in FLOATS:
            sig[name] = "fp32"
        elif name in SCALARS or name.startswith("stride_"):
            sig[name] = "i32"
        else:
            sig[name] = POINTERS.get(name, "*fp32" if name in STATS else "*bf16")
    return sig

def compile_sm90(kernel, constexprs, num_stages=3, aligned=False):
    """aligned: the 16-divisibility of pointers, strides and n that the JIT sees on a GPU
    (without it Triton cannot copy tiles asynchronously, so there is no pipeline to see)."""
    sig = signature(kernel, constexprs)
    attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(kernel.arg_names)
             if aligned and (sig[name].startswith("*") or name.startswith("stride_") or name == "n")}
    compiled = triton.compile(ASTSource(kernel, sig, constexprs, attrs),
                              target=GPUTarget("cuda", 90, 32), options=dict(num_warps=4, num_stages=num_stages))
    # copies a wait leaves in flight: > 0 inside a loop whose next steps' tiles load during this one's products
    waits = [int(x) for x in re.findall(r"ttg\.async_wait [^{]*\{num = (\d+)", compiled.asm["ttgir"])]
    return dict(cubin=len(compiled.asm["cubin"]), shared=compiled.metadata.shared, waits=waits)

report = {}
for kname, kernel in [("forward", attention_forward_kernel), ("dkdv", attention_dkdv_kernel), ("dq", attention_dq_kernel)]:
    for even, odd, cont in [("dense", "dense", False), ("band", "strided", False), ("strided", "strided", True),
                            ("chunk", "summary", False), ("summary", "summary", True)]:
        constexprs = dict(MODE_EVEN=MODES[even], MODE_ODD=MODES[odd], CONTINUE=cont,
                          BLOCK_M=64, BLOCK_N=64, QK_DIM=64, V_DIM=128, QK_PAD=64, V_PAD=128)
        if "WRITE_DELTA" in kernel.arg_names:  # dq: the first pass computes delta
            constexprs["WRITE_DELTA"] = not cont
        if "ACCUMULATE" in kernel.arg_names:  # dkdv: later passes and launches add to the stored gradients
            constexprs["ACCUMULATE"] = cont
        report[f"{kname} {even}/{odd} continue={cont}"] = compile_sm90(kernel, constexprs)
# The block-sparse kernels, and the largest tiles the autotuner may pick at padded head dims 192 and 256
# (ops.shared_bytes's estimate must keep every candidate it accepts within shared memory).
from sparse_kernels import ops
for kname, kernel in [("forward", block_forward_kernel), ("dkdv", block_dkdv_kernel), ("dq", block_dq_kernel)]:
    for even_n in (False, True):  # n not filling the blocks (masked rows), and filling them (no row masks)
        report[f"block {kname} even_n={even_n}"] = compile_sm90(kernel, dict(
            BLOCK=128, BLOCK_M=64, BLOCK_N=64, QK_DIM=96, V_DIM=96, QK_PAD=128, V_PAD=128, EVEN_N=even_n))
    for dim in (192, 256):
        fitting = [c for c in ops._configs(kname)
                   if ops.shared_bytes(kname, c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_stages, 256, 256, 2)
                   <= ops.SHARED_MEMORY]
        largest = max(fitting, key=lambda c: (ops.shared_bytes(kname, c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"],
                                                                c.num_stages, 256, 256, 2), c.num_stages))
        constexprs = dict(BLOCK=128, QK_DIM=dim, V_DIM=dim, QK_PAD=256, V_PAD=256, EVEN_N=True, **largest.kwargs)
        report[f"block {kname} d={dim} {largest}"] = compile_sm90(kernel, constexprs, largest.num_stages)
# Pipeline depth of the block kernels' step loops (docs/benchmarks.md, "Carried addresses"):
# a step's tile addresses are carried from the step before, so its loads do not wait on a
# list read of their own and the loops keep tiles in flight; a list read inside the step
# left every wait at 0.
for kname, kernel in [("forward", block_forward_kernel), ("dkdv", block_dkdv_kernel), ("dq", block_dq_kernel)]:
    report[f"block {kname} pipelined"] = compile_sm90(kernel, dict(
        BLOCK=128, BLOCK_M=64, BLOCK_N=64, QK_DIM=64, V_DIM=64, QK_PAD=64, V_PAD=64, EVEN_N=True), aligned=True)
# the launches that add up the pieces of split lists, at the largest head dims
report["block combine"] = compile_sm90(block_combine_kernel, dict(BLOCK=128, BLOCK_M=64, V_DIM=192, V_PAD=256))
report["block sum"] = compile_sm90(block_sum_kernel, dict(BLOCK=128, BLOCK_M=64, DIM=256, PAD=256))
for split in (False, True):  # the decoding kernel at the largest head dims it takes, and its combine step
    constexprs = dict(QK_DIM=256, V_DIM=192, QK_BLOCK=256, V_BLOCK=256, BLOCK_N=32, SPLIT=split)
    report[f"decode split={split}"] = compile_sm90(decode_attention_kernel, constexprs)
report["decode combine"] = compile_sm90(decode_combine_kernel, dict(V_DIM=192, V_BLOCK=256, SPLIT_BLOCK=32))
print(json.dumps(report))
'''


@pytest.mark.slow
def test_every_kernel_and_mode_compiles_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", COMPILE_ALL], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(report) == 35
    for name, info in report.items():
        assert info["cubin"] > 0, f"{name}: no machine code"
        assert info["shared"] <= 227 * 1024, f"{name}: {info['shared']} bytes of shared memory exceed Hopper's limit"
    for kind in ("forward", "dkdv", "dq"):  # both step loops (partial blocks, full blocks) keep tiles in flight
        waits = report[f"block {kind} pipelined"]["waits"]
        assert sum(w > 0 for w in waits) >= 2, f"block {kind}: the step loops wait for every copy ({waits})"
