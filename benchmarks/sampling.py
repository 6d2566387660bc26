"""Sampling speed: cached incremental decoding against recomputing the full forward pass
at every step, for a batch of CIFAR-10 images (the `cifar10` experiment of params.yaml:
128 layers, d_model 256, 2 heads, 3,072 bytes per 32x32x3 image), on one GPU.

    python benchmarks/sampling.py --experiment cifar10 --batch 16 --json out/sampling_cifar10.json

Cached: `sampling.generate` (`SparseTransformer.decode_step` with a `DecodingCache`
pruned by the pattern, in bf16 with the weights cast once, the fused decode kernel,
what surrounds it compiled (`acceleration.for_decoding`; `--no-compile` leaves it eager), each
step replayed as a CUDA graph) samples the whole batch of images, all 3,072 positions,
for real. The one-time compilation and graph capture (one eager step and the capture of
one step, measured on its own beforehand) is reported beside the decoding time and
subtracted from it.

With `--data FILE.h5` (any file `sparse-transformer prepare` wrote, small enough to carry
to a GPU machine: 10,000 CIFAR-10-sized images are 30 MB) the model takes the file's
image shape (row, column and channel embeddings, a context of one image), or reads it as
a byte stream, and the cached decoder completes real examples: the top half of each of
the first --batch test images is read in one forward pass (prefill), the bottom half
sampled; streams continue test windows of half the context. The same decoder without the graph
(`--eager-positions`, default 64) is timed on the first positions only: it is bound by
host time and would take minutes for a whole image. Full recompute: each
step runs the model's forward pass over the whole prefix and keeps the last position's
logits. Running that for every position is too slow, so its forward pass is timed at
prefix lengths 1, 256, 512, ..., 3072 (`--prefix-step`) and the times are interpolated
linearly at every position and summed (the trapezoid rule over positions): its total is
an estimate, and it leaves out the per-step softmax and draw, which favours it slightly.

`--positions` decodes fewer bytes than a whole context (or, for a stream, more: the
sliding window goes on past it), for models whose context takes minutes to fill (Enwik8,
audio), and reports bytes per second; `--prefix-step 0` skips the full-recompute estimate.

Before timing, a check that the two compute the same thing: on a short random prefix
(`--check-length`), the next-byte probabilities of the cached steps and of one forward
pass over the prefix are compared, in fp32 and (on CUDA) under the bf16 autocast that is
timed, and their largest absolute difference printed.

The weights are random, as initialized, except W_out, which is drawn instead of left at
zero so that the checked distributions are not all uniform: the time of a step depends
on the shapes, never on the weights' values. Both decoders run in eval mode without
gradients, under bf16 autocast on CUDA (fp32 on CPU); the forward pass uses the
experiment's attention backend (auto: the Triton kernels on CUDA). `--set` overrides
the experiment as on the command line. A smoke run on CPU with a tiny model:

    python benchmarks/sampling.py --device cpu --batch 2 --set model.layers=2 --set model.d_model=64 \
        --set model.context=256 --set 'model.image_shape=[8,8,4]'
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch

from sparse_transformer import acceleration
from sparse_transformer.config import ModelConfig, load_experiment
from sparse_transformer.data.hdf5 import open_split, read_attributes
from sparse_transformer.model import DecodingCache, SparseTransformer
from sparse_transformer.sampling import CUDAGraphDecoder, generate, matmul_weights_cast
from common import autocast, data_overrides, device_or_exit, environment, run_benchmark, synchronize, write_json


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="params.yaml")
    parser.add_argument("--experiment", default="cifar10")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    parser.add_argument("--batch", type=int, default=16, help="samples decoded together")
    parser.add_argument("--eager-positions", type=int, default=64,
                        help="positions decoded without the CUDA graph, to time that decoder (0: skip)")
    parser.add_argument("--positions", type=int,
                        help="bytes per sample, the given ones included (default: the context; a stream may go past it)")
    parser.add_argument("--prefix-step", type=int, default=256,
                        help="time the full forward every so many positions (0: skip the full-recompute estimate)")
    parser.add_argument("--repeats", type=int, default=3, help="timed forward passes per prefix length (median)")
    parser.add_argument("--check-length", type=int, default=64, help="prefix on which cached and full forward are compared")
    parser.add_argument("--no-compile", dest="compile", action="store_false",
                        help="decode without acceleration.for_decoding (CUDA only compiles)")
    parser.add_argument("--data", metavar="FILE.h5", help="complete the test examples of this prepared file (see above)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu for a smoke run")
    parser.add_argument("--json", help="write the measurements here")
    return parser.parse_args(argv)


def build_model(config: ModelConfig, device: torch.device, seed: int) -> SparseTransformer:
    """The model at its initialization, with W_out drawn: a zero W_out (the usual start)
    makes every next-byte distribution uniform, and the check would compare nothing."""
    torch.manual_seed(seed)
    model = SparseTransformer(config)
    # Logits of unit standard deviation: LayerNorm outputs have unit variance per feature.
    torch.nn.init.normal_(model.out.weight, std=config.d_model ** -0.5)
    return model.to(device).eval()


def random_inputs(model: SparseTransformer, batch: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """(batch, length) model inputs of random bytes (an image model's begin with its start symbol)."""
    is_stream = model.config.image_shape is None
    example = torch.randint(0, 256, (batch, length + is_stream), generator=generator)
    return model.inputs_and_targets(example)[0]


@torch.no_grad()
def cached_matches_forward(model: SparseTransformer, inputs: torch.Tensor, bf16: bool) -> float:
    """Max |p_cached - p_forward| over the next-byte probabilities of every prefix of `inputs`
    (B, P); under bf16 autocast (on CUDA) when `bf16`, else in fp32."""
    device = inputs.device
    cache = DecodingCache(model, len(inputs), device)
    with autocast(device, enabled=bf16):
        cached = torch.stack([model.decode_step(inputs[:, i], cache) for i in range(inputs.shape[1])], dim=1)
        full = model(inputs)  # (B, P, vocab)
    return (torch.softmax(cached.float(), -1) - torch.softmax(full.float(), -1)).abs().max().item()


def unconditional_prompts(model: SparseTransformer, batch: int, device: torch.device, generator: torch.Generator) -> torch.Tensor:
    """(batch, 1): the start symbol (images) or a random first byte (streams: any does for timing)."""
    if model.config.image_shape is not None:
        return torch.full((batch, 1), model.start_token, device=device)
    return torch.randint(0, 256, (batch, 1), generator=generator).to(device)


def completion_prompts(model: SparseTransformer, path: str, batch: int, device: torch.device) -> torch.Tensor:
    """(batch, m): the top halves of the first test images (after the start symbol), or the
    first half-context windows of the test split."""
    test = open_split(path, "test")
    if model.config.image_shape is not None:
        height = model.config.image_shape[0]
        given = np.asarray(test[:batch, :height // 2]).reshape(min(batch, len(test)), -1)
        prompts = np.concatenate([np.full((len(given), 1), model.start_token), given], axis=1)
    else:
        half = model.config.context // 2
        prompts = np.stack([np.asarray(test[k * half:(k + 1) * half]) for k in range(batch)])
    return torch.from_numpy(prompts.astype(np.int64)).to(device)


def capture_seconds(model: SparseTransformer, prompts: torch.Tensor) -> float:
    """Seconds of the decoder's one-time set-up on CUDA, as `generate` runs it: an eager step
    (which compiles, after acceleration.for_decoding) and the capture of one step."""
    synchronize(prompts.device)
    start = time.perf_counter()
    with autocast(prompts.device), matmul_weights_cast(model, torch.bfloat16):
        cache = DecodingCache(model, len(prompts), prompts.device, torch.bfloat16)
        CUDAGraphDecoder(model, cache, prompts[:, -1])
    synchronize(prompts.device)
    return time.perf_counter() - start


def time_cached(model: SparseTransformer, prompts: torch.Tensor, length: int, seed: int, graph: bool = True) -> float:
    """Seconds to continue `prompts` (B, m) to `length` bytes with the cache (a prefill, then
    one step a position), each step replayed as a CUDA graph (on CUDA) when `graph`."""
    device = prompts.device
    draws = torch.Generator(device).manual_seed(seed)
    synchronize(device)
    start = time.perf_counter()
    with autocast(device):
        # The progress bar (stderr) shows the rate so far, even in a log of a run that is cut short.
        generate(model, prompts, length, generator=draws, progress=True, graph=graph)
    synchronize(device)
    return time.perf_counter() - start


@torch.no_grad()
def time_forward(model: SparseTransformer, inputs: torch.Tensor, repeats: int) -> float:
    """Median seconds of one forward pass over `inputs` (B, L), after one untimed pass
    (which compiles the kernels for this length)."""
    device = inputs.device
    times = []
    with autocast(device):
        for k in range(repeats + 1):
            synchronize(device)
            start = time.perf_counter()
            model(inputs)
            synchronize(device)
            if k:
                times.append(time.perf_counter() - start)
    return float(np.median(times))


def prefix_lengths(context: int, step: int) -> list[int]:
    """1, step, 2 step, ..., context: the prefix lengths at which the full forward is timed."""
    return sorted({1, *range(step, context, step), context})


def full_recompute_seconds(lengths: list[int], seconds: list[float], context: int, given: int = 0) -> float:
    """Estimated total of decoding the positions after the `given` ones by full forward
    passes: the forward at step i reads a prefix of i positions; times between the
    measured lengths are interpolated linearly (the trapezoid rule over positions)."""
    return float(np.interp(np.arange(given + 1, context + 1), lengths, seconds).sum())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    fitted = data_overrides(read_attributes(args.data)) if args.data else ()
    experiment = load_experiment(args.config, args.experiment, (*args.overrides, *fitted))
    device = device_or_exit(args.device, experiment.model.attention)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
    model = build_model(experiment.model, device, args.seed)
    context, batch = model.config.context, args.batch
    length = args.positions or context
    generator = torch.Generator().manual_seed(args.seed)
    print(f"{args.experiment}: {model.num_params() / 1e6:.1f}M parameters (random weights), context {context}, "
          f"{model.config.pattern.describe()}, attention {model.config.attention}, batch {batch}, {device}",
          flush=True)

    check_length = min(args.check_length, context)
    prefix = random_inputs(model, batch, check_length, generator).to(device)
    # fp32 shows that the two compute the same function; bf16 (CUDA) is what is timed, with its rounding.
    differences = {"fp32": cached_matches_forward(model, prefix, bf16=False)}
    if device.type == "cuda":
        differences["bf16"] = cached_matches_forward(model, prefix, bf16=True)
    for precision, difference in differences.items():
        print(f"check ({precision}): cached vs full-forward next-byte probabilities over a {check_length}-position "
              f"prefix: max abs diff {difference:.2e}", flush=True)

    first = unconditional_prompts(model, batch, device, generator)
    eager_positions = min(args.eager_positions, context)
    eager_ms = None
    if eager_positions:
        print(f"cached decoding without a CUDA graph, {batch} x {eager_positions} positions ...", flush=True)
        eager_ms = time_cached(model, first, eager_positions, args.seed, graph=False) / eager_positions * 1000
    prompts = completion_prompts(model, args.data, batch, device) if args.data else first
    if device.type == "cuda" and args.compile:
        acceleration.for_decoding(model)
    given = prompts.shape[1] - (model.config.image_shape is not None)
    # The first set-up compiles (acceleration.for_decoding) and captures; generate repeats only the capture.
    first_setup_s, capture_s = (capture_seconds(model, prompts), capture_seconds(model, prompts)) \
        if device.type == "cuda" else (0.0, 0.0)
    compile_s = first_setup_s - capture_s
    what = f"completion of {given} given bytes" if args.data else "sampling"
    print(f"cached decoding ({what}) of {batch} x {length} positions ...", flush=True)
    cached_s = time_cached(model, prompts, length, args.seed) - capture_s

    lengths = prefix_lengths(min(length, context), args.prefix_step) if args.prefix_step else []
    forward_s = []
    for prefix in lengths:
        forward_s.append(time_forward(model, random_inputs(model, batch, prefix, generator).to(device), args.repeats))
        print(f"  full forward, prefix {prefix:6d}: {forward_s[-1] * 1000:9.2f} ms", flush=True)
    full_s = full_recompute_seconds(lengths, forward_s, min(length, context), given) if lengths else None

    per_token_ms = cached_s / (length - given) * 1000
    bytes_per_s = batch * (length - given) / cached_s
    eager_text = f"{eager_ms:.2f}" if eager_ms is not None else "-"
    full_text, speedup = (f"{full_s:.1f}", f"{full_s / cached_s:.2f}x") if full_s else ("-", "-")
    print(f"\n{'batch':>5}  {'cached total s':>14}  {'compile s':>9}  {'capture s':>9}  {'per-token ms':>12}  "
          f"{'bytes/s':>9}  {'eager per-token ms':>18}  {'full-recompute est. s':>21}  {'speed-up':>8}")
    print(f"{batch:>5}  {cached_s:>14.1f}  {compile_s:>9.1f}  {capture_s:>9.2f}  {per_token_ms:>12.2f}  "
          f"{bytes_per_s:>9.0f}  {eager_text:>18}  {full_text:>21}  {speedup:>8}")
    print("(cached total: without the one-time compilation and capture, shown beside it; per-token: one decoding step of the whole "
          f"batch; eager: the same decoder without the CUDA graph, over the first {eager_positions} positions; full "
          "recompute: estimated from the timed prefix lengths, for the same positions)")

    if args.json:
        result = dict(
            meta=dict(environment(device), args=vars(args),
                      model=dataclasses.asdict(model.config), params=model.num_params(),
                      weights="random (time does not depend on the weights' values)"),
            check=dict(prefix=check_length, max_abs_probability_diff=differences),
            cached=dict(batch=batch, positions=length, given=given, data=args.data, compiled=args.compile, total_s=cached_s,
                        compile_s=compile_s, capture_s=capture_s, per_token_ms=per_token_ms, bytes_per_s=bytes_per_s,
                        cuda_graph=device.type == "cuda"),
            cached_without_graph=dict(positions=eager_positions, per_token_ms=eager_ms),
            full_recompute=dict(estimate=True, prefix_lengths=lengths, forward_s=forward_s, estimated_total_s=full_s),
            speedup=full_s / cached_s if full_s else None,
        )
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    run_benchmark(main)
