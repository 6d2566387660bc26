"""Where an eager training step's host time goes: per pattern, the step time (CUDA events),
the GPU-busy share, kernel count and the operators' CPU time, for variants of recomputation."""
import json, sys, time, os, collections
import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.checkpoint import checkpoint
sys.path.insert(0, "benchmarks")
from train_step import model_config, training_step
from sparse_transformer.config import load_experiment
from sparse_transformer.model import SparseTransformer
from sparse_transformer.acceleration import for_training

out = os.environ["OUT"]
experiment_name, batch_size = sys.argv[1], int(sys.argv[2])
patterns = sys.argv[3].split(",")
variants = sys.argv[4].split(",")
exp = load_experiment("params.yaml", experiment_name, ())
device = torch.device("cuda")
g = torch.Generator().manual_seed(0)
batch = torch.randint(0, 256, (batch_size, exp.model.context + (exp.model.image_shape is None)), generator=g).to(device)
rows = []

def timed(step, n=10):
    ts = []
    for _ in range(n):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); step(); b.record(); torch.cuda.synchronize(); ts.append(a.elapsed_time(b))
    return sorted(ts)[n // 2], ts

for kind in patterns:
    for variant in variants:
        cfg = model_config(exp.model, kind)
        torch.manual_seed(0)
        model = SparseTransformer(cfg).to(device)
        if variant == "reentrant":
            model.run_block = lambda block, h: checkpoint(block, h, use_reentrant=True) if torch.is_grad_enabled() else block(h)
        elif variant == "norecompute":
            pass
        else:
            for_training(model, recompute=True)
        step = training_step(model, batch, device)
        for _ in range(3):
            step()
        torch.cuda.synchronize()
        med, ts = timed(step)
        # host time: enqueue one step while the GPU is held busy ahead of it
        torch.cuda._sleep(int(2e9))  # ~1 s of GPU spin at ~2 GHz
        t0 = time.perf_counter(); step(); host_ms = (time.perf_counter() - t0) * 1000
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            t0 = time.perf_counter(); step(); torch.cuda.synchronize(); wall = time.perf_counter() - t0
        events = prof.events()
        kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
        kernel_ms = sum(e.device_time for e in kernels) / 1000
        cpu_ops = [e for e in events if e.device_type == torch.autograd.DeviceType.CPU]
        per_thread = collections.Counter()
        for e in cpu_ops:
            per_thread[e.thread] += 1
        ka = prof.key_averages()
        name = f"{experiment_name}_{kind}_{variant}"
        with open(f"{out}/prof_{name}.txt", "w") as f:
            f.write(ka.table(sort_by="self_cpu_time_total", row_limit=45))
            f.write("\n\n")
            f.write(ka.table(sort_by="self_device_time_total", row_limit=25))
        row = dict(experiment=experiment_name, pattern=kind, variant=variant, step_ms=med, steps_ms=ts,
                   host_enqueue_ms=host_ms, profiled_wall_ms=wall * 1000, kernel_ms=kernel_ms,
                   kernels=len(kernels), cpu_events=len(cpu_ops), cpu_events_per_thread=dict(per_thread))
        rows.append(row)
        print(f"{name:32s} step {med:7.1f} ms  host {host_ms:7.1f} ms  GPU kernels {kernel_ms:7.1f} ms ({len(kernels)} kernels, {len(cpu_ops)} CPU events)", flush=True)
        del model, step
        torch.cuda.empty_cache()
        json.dump(rows, open(f"{out}/profile_{experiment_name}.json", "w"), indent=1)
