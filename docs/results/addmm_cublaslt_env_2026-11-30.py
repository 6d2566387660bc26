"""Does setting DISABLE_ADDMM_CUDA_LT from Python, after importing torch, switch addmm off cuBLASLt?
Prints kernels per addmm and host us per call."""
import os, sys, time
import torch
if sys.argv[1] == "set":
    os.environ.setdefault("DISABLE_ADDMM_CUDA_LT", "1")
x = torch.randn(12288, 512, device="cuda", dtype=torch.bfloat16)
w = torch.randn(1536, 512, device="cuda", dtype=torch.bfloat16)
b = torch.randn(1536, device="cuda", dtype=torch.bfloat16)
for _ in range(20):
    torch.nn.functional.linear(x, w, b)
torch.cuda.synchronize()
from torch.profiler import profile, ProfilerActivity
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
    for _ in range(10):
        torch.nn.functional.linear(x, w, b)
    torch.cuda.synchronize()
names = sorted({e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA})
kernels = sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
torch.cuda._sleep(int(5e8))  # keep the GPU busy so that the host's cost shows alone
t0 = time.perf_counter()
for _ in range(200):
    torch.nn.functional.linear(x, w, b)
host = (time.perf_counter() - t0) / 200 * 1e6
torch.cuda.synchronize()
print(f"{sys.argv[1]:6s} env={os.environ.get('DISABLE_ADDMM_CUDA_LT')} kernels/addmm={kernels / 10:.1f} host={host:.1f} us/call kernels={names}")
