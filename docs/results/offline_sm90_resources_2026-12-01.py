"""Registers, stack and shared memory of a block kernel compiled for sm_90 on a machine
without a GPU (2026-12-01). Run with the Triton to check (the H200 image has 3.6.0:
`python -m venv t36 && t36/bin/pip install triton==3.6.0`):

    TRITON_DEFAULT_FP_FUSION=1 python offline_sm90_resources_2026-12-01.py TREE KERNEL BLOCK_M BLOCK_N WARPS STAGES D

TREE holds the kernels package as `sparse_kernels` (a link to this repo's kernels/).
Pointers, strides, n and NB get the 16-divisibility hint the JIT gives them on a GPU;
without it the loads are not vectorized and the stack is several times larger (1,368
against 296 bytes for dK/dV at D = 128 under Triton 3.9). Prints cuobjdump's resource
line; with DUMP=prefix also writes the TTGIR and PTX (the pipeline depth is in the TTGIR's
`ttg.async_wait ... {num = N}` and `ttg.local_alloc ... <SxROWSxCOLS>`)."""
import importlib
import os
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, sys.argv[1])
kernel = getattr(importlib.import_module("sparse_kernels.block_sparse"), sys.argv[2])
block_m, block_n, warps, stages, d = (int(x) for x in sys.argv[3:8])
# GROUP = 1 as the JIT sees it on a GPU without GQA: Triton specializes an integer argument
# equal to 1 into a constant (the GPU runs' compiled metadata list it among the constants).
values = dict(BLOCK=128, BLOCK_M=block_m, BLOCK_N=block_n, QK_DIM=d, V_DIM=d, QK_PAD=d, V_PAD=d, EVEN_N=True, GROUP=1)
names = kernel.arg_names
fp32 = {"LSE", "DELTA", "O_PART", "LSE_PART", "DQ_PART", "DK_PART", "DV_PART"}
scalars = {"H", "GROUP", "NB", "NW", "NSLOTS", "LIST_SB", "LIST_SH", "KV_WIDTH", "Q_WIDTH", "N_BUCKET", "n"}
sig, constexprs = {}, {}
for p in kernel.params:
    if p.is_constexpr or p.name == "GROUP":
        sig[p.name] = "constexpr"
        constexprs[(names.index(p.name),)] = values[p.name]
    elif p.name in ("qk_scale", "sm_scale"):
        sig[p.name] = "fp32"
    elif p.name in scalars or p.name.startswith("stride"):
        sig[p.name] = "i32"
    elif p.name == "MASKS":
        sig[p.name] = "*u8"
    elif p.name in fp32:
        sig[p.name] = "*fp32"
    elif any(x in p.name for x in ("COUNT", "PARTIAL", "WORK", "INDEX", "MASK")):
        sig[p.name] = "*i32"
    else:
        sig[p.name] = "*bf16"
attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(names)
         if sig[name].startswith("*") or name.startswith("stride") or name in ("n", "NB")}
compiled = triton.compile(ASTSource(kernel, sig, constexprs=constexprs, attrs=attrs),
                          target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps, num_stages=stages))
if os.environ.get("DUMP"):
    open(os.environ["DUMP"] + ".ttgir", "w").write(compiled.asm["ttgir"])
    open(os.environ["DUMP"] + ".ptx", "w").write(compiled.asm["ptx"])
with tempfile.NamedTemporaryFile("wb", suffix=".cubin", delete=False) as f:
    f.write(compiled.asm["cubin"])
tool = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/cuobjdump")
usage = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
line = " ".join(x.strip() for x in usage.splitlines() if "REG" in x)
print(sys.argv[2], block_m, block_n, warps, stages, d, "|", re.sub(r"\s+", " ", line), "| shared", compiled.metadata.shared)
