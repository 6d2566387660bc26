"""Eager Enwik8 training step, batch 1, as trained (checkpointed blocks): median step ms of
rounds of 10 steps per pattern, for the tree on PYTHONPATH; prints one JSON line per pattern."""
import json, os, sys, time
import torch
from train_step import model_config, training_step
from sparse_transformer.config import load_experiment
from sparse_transformer.model import SparseTransformer
from sparse_transformer.acceleration import for_training

tag = sys.argv[1]
exp = load_experiment("params.yaml", "enwik8", ())
device = torch.device("cuda")
g = torch.Generator().manual_seed(0)
batch = torch.randint(0, 256, (1, exp.model.context + 1), generator=g).to(device)
models = {}
for kind in ("dense", "strided"):
    torch.manual_seed(0)
    model = for_training(SparseTransformer(model_config(exp.model, kind)).to(device), recompute=True)
    models[kind] = training_step(model, batch, device)
    for _ in range(3):
        models[kind]()
torch.cuda.synchronize()
times = {k: [] for k in models}
cpu = {k: [] for k in models}
for _ in range(4):  # interleaved rounds: the host's drift falls on both patterns alike
    for kind, step in models.items():
        for _ in range(10):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            t0 = time.perf_counter(); a.record(); step(); b.record(); t1 = time.perf_counter()
            torch.cuda.synchronize()
            times[kind].append(a.elapsed_time(b)); cpu[kind].append((t1 - t0) * 1e3)
for kind in models:
    ts, cs = sorted(times[kind]), sorted(cpu[kind])
    row = dict(tag=tag, env=os.environ.get("DISABLE_ADDMM_CUDA_LT", ""), pattern=kind,
               median_ms=ts[len(ts) // 2], min_ms=ts[0], host_median_ms=cs[len(cs) // 2], steps_ms=[round(t, 1) for t in times[kind]])
    print(json.dumps(row), flush=True)
