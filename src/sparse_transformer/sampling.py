"""Samples and completions of a trained model (`sparse-transformer sample`).

A prompt is read in one forward pass through the attention kernels
(`SparseTransformer.prefill`), which fills a `DecodingCache`; decoding then goes on one
position at a time (`decode_step`): each new position computes its own keys and values
and reads only the cached keys its pattern allows, so a step costs about l + n/l keys
rather than n, and gives the same next-byte distribution as a full forward pass over the
prefix. A whole batch decodes together, and on a GPU each step is replayed as one CUDA
graph. Each byte is drawn at a temperature, optionally from the top k bytes and the
nucleus of probability top p (`draw`). A stream longer than the model's context is
sampled with a sliding window: when the context is full, its last half is read again as
a new prompt, and decoding continues from there.

Unconditional images start from the start symbol and are written as one PNG grid.
Streams have no start symbol (training windows begin anywhere), so their first byte is
drawn from the byte frequencies of the training split; audio is written as WAV (mu-law
decoded, at the data's sample rate), text as .txt. Completions (sample.prompt, prompts.py)
continue the top rows of test images (completions.png, each beside its original), or
the start of a text or audio file or of the test split (completion_NNN.txt / .wav, the
prompt included). The files go to the training run in MLflow (images through log_image).
The sampler records the files it wrote (`.sampled.json` in the folder) and replaces only
those the next time: other files in the folder are never touched.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from . import acceleration, outputs, prompts, tracking
from .checkpoints import check_data_fits_model, model_from_checkpoint
from .config import ExperimentConfig, SampleConfig
from .data import hdf5, mulaw
from .errors import memory_errors_explained
from .evaluation import autocast, precision_for, resolve_device
from .model import DecodingCache, SparseTransformer

GRID_FILE = "samples.png"
COMPLETIONS_FILE = "completions.png"
WRITTEN = ".sampled.json"  # the names of the files the last run wrote
GRID_MIN_WIDTH = 256  # pixels: small images (8x8 digits) are enlarged to be visible
GRID_GUTTER = 128  # mid-grey between the images: apart from black backgrounds (digits) and white strokes alike


class CUDAGraphDecoder:
    """`model.decode_step` captured once as a CUDA graph and replayed at every position.

    A step of a deep model is thousands of small kernels (a few dozen per layer); launched
    one by one from Python they take far longer than they run, so eager decoding is
    bound by host time. A replay launches them all at once: the same kernels in the same
    order, so the logits are the eager step's. The step reads its position from the
    cache's device tensor, which the graph advances; `decoding_keys` keeps every shape fixed.
    """

    def __init__(self, model: SparseTransformer, cache: DecodingCache, tokens: torch.Tensor):
        """Capture with `tokens` (B,) as the example input; the caller's autocast is
        captured too, with its cast cache off (a cast cached before capture is not
        recorded in the graph, and its memory would be reused under it)."""
        self.cache = cache
        self.tokens = tokens.clone()  # (B,): the graph's input, written before each replay
        autocast = torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"),
                                  enabled=torch.is_autocast_enabled("cuda"), cache_enabled=False)
        # One eager step first, on a side stream as capture requires: it initializes what
        # cannot be captured (cuBLAS workspaces). It writes position 0, which the first
        # replay writes again.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), autocast:
            model.decode_step(self.tokens, cache)
        torch.cuda.current_stream().wait_stream(side)
        cache.rewind()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), autocast:
            self.logits = model.decode_step(self.tokens, cache)  # (B, vocab), rewritten by each replay
        cache.rewind()  # capture records the step without running it

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B,) at the cache's position -> logits (B, vocab), valid until the next call."""
        self.cache.check_room()
        self.tokens.copy_(tokens)
        self.graph.replay()
        self.cache.step += 1  # the graph advanced cache.position; the host count follows
        return self.logits


@contextmanager
def matmul_weights_cast(model: SparseTransformer, dtype: torch.dtype) -> Iterator[None]:
    """The model's Linear weights and biases held in `dtype` (autocast's) while decoding,
    then restored: autocast would cast them again at every matrix product of every step (a
    decoding step of the CIFAR-10 model spent 2.8 of its 13.8 ms in 2,178 such copies).
    The products are the same: autocast casts to that dtype, and takes a tensor already in
    it as it is. Embeddings and norms keep their own dtype."""
    linears = [module for module in model.modules() if isinstance(module, torch.nn.Linear)]
    kept = [(linear.weight.data, None if linear.bias is None else linear.bias.data) for linear in linears]
    try:
        for linear in linears:
            for parameter in (linear.weight, linear.bias):
                if parameter is not None:
                    parameter.data = parameter.data.to(dtype)
        yield
    finally:
        for linear, (weight, bias) in zip(linears, kept):
            linear.weight.data = weight
            if bias is not None:
                linear.bias.data = bias


def draw(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
         generator: torch.Generator | None = None) -> torch.Tensor:
    """Next tokens (B,) from logits (B, V): the softmax at `temperature`, restricted to the
    `top_k` most likely tokens and to the smallest set of them whose probability reaches
    `top_p` (nucleus sampling; the most likely token always stays). Nothing is read back to
    the host."""
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        ordered, order = torch.sort(logits, dim=-1, descending=True)
        probabilities = torch.softmax(ordered, dim=-1)
        before = probabilities.cumsum(dim=-1) - probabilities  # the mass of the more likely tokens
        ordered = ordered.masked_fill(before >= top_p, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, ordered)
    return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)[:, 0]


@torch.no_grad()
def generate(model: SparseTransformer, prompt: torch.Tensor, length: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, generator: torch.Generator | None = None,
             progress: bool = True, graph: bool = True) -> torch.Tensor:
    """Continue `prompt` to (B, length) uint8 bytes, drawing each next byte with `draw`.

    prompt (B, m): for images the start symbol, then the given bytes; for streams the
    given bytes (at least one). It is read in one pass (prefill; a stream prompt longer
    than the context only by its last half context) and the output begins with its bytes
    (not the start symbol). Images end with the context; a longer stream continues with a
    sliding window (the last half of the context read again). On a CUDA device each
    decoding step is replayed as a CUDA graph (`CUDAGraphDecoder`) unless `graph` is False.
    Under the caller's autocast the cache holds keys and values in its dtype (what the
    attention of a forward pass reads) and the weights are cast once (`matmul_weights_cast`).
    """
    device_type = prompt.device.type
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else torch.float32
    with matmul_weights_cast(model, dtype):
        return _generate(model, prompt, length, temperature, top_k, top_p, generator, progress, graph, dtype)


def _generate(model: SparseTransformer, prompt: torch.Tensor, length: int, temperature: float, top_k: int | None,
              top_p: float | None, generator: torch.Generator | None, progress: bool, graph: bool,
              dtype: torch.dtype) -> torch.Tensor:
    model.eval()
    context, is_image = model.config.context, model.config.image_shape is not None
    prompt = prompt.long()
    given = prompt[:, 1:] if is_image else prompt
    if not 0 < prompt.shape[1] <= (context if is_image else length) or (is_image and length > context):
        raise ValueError(f"a prompt of {prompt.shape[1]} inputs cannot continue to {length} bytes with a context of {context}")
    cache = DecodingCache(model, len(prompt), prompt.device, dtype)
    if graph and prompt.device.type == "cuda":
        step = CUDAGraphDecoder(model, cache, prompt[:, -1])
    else:
        def step(tokens: torch.Tensor) -> torch.Tensor:
            return model.decode_step(tokens, cache)
    produced, count = [given], given.shape[1]
    logits = model.prefill(prompt if prompt.shape[1] <= context else prompt[:, -(context // 2):], cache)[:, -1]
    with tqdm(total=length - count, desc="decoding", unit="byte", disable=not progress) as bar:
        while count < length:
            tokens = draw(logits, temperature, top_k, top_p, generator)  # (B,)
            produced.append(tokens[:, None])
            count += 1
            bar.update()
            if count == length:
                break
            if cache.step == context:  # a stream past the context: slide by half of it
                cache.rewind()
                logits = model.prefill(torch.cat(produced, dim=1)[:, -(context // 2):], cache)[:, -1]
            else:
                logits = step(tokens)  # (B, vocab)
    return torch.cat(produced, dim=1).to(torch.uint8)  # (B, length)


def byte_frequencies(data: np.ndarray) -> torch.Tensor:
    """(256,) float64 counts of each byte value in a stream."""
    return torch.from_numpy(np.bincount(np.asarray(data), minlength=256).astype(np.float64))


def image_grid(images: np.ndarray, columns: int | None = None) -> Image.Image:
    """(N, H, W, C) uint8 -> one image, `columns` per row (default ceil(sqrt(N))), 1-pixel
    mid-grey gutters (and empty cells), enlarged if tiny."""
    count, height, width, channels = images.shape
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[channels]
    columns = columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    grid = np.full((rows * (height + 1) - 1, columns * (width + 1) - 1, channels), GRID_GUTTER, dtype=np.uint8)
    if mode == "RGBA":
        grid[..., 3] = 255  # opaque gutters
    for k, image in enumerate(images):
        top, left = k // columns * (height + 1), k % columns * (width + 1)
        grid[top:top + height, left:left + width] = image
    picture = Image.fromarray(grid[..., 0] if channels == 1 else grid, mode)
    scale = max(1, GRID_MIN_WIDTH // picture.width)
    return picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)


def _written_before(output_dir: Path) -> list[str]:
    """The files an earlier run wrote into output_dir, by its record (plain names only)."""
    try:
        names = json.loads((output_dir / WRITTEN).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [name for name in names if isinstance(name, str) and name == Path(name).name and not name.startswith(".")]


def _write_stream(path: Path, data: np.ndarray, attributes: dict) -> Path:
    """A stream written whole: audio as WAV (mu-law decoded), text and bytes as they are."""
    with outputs.replacing(path) as temporary:
        if attributes["modality"] == "audio":
            import soundfile  # here, not at the top: the GPU machines that only time decoding lack it

            soundfile.write(temporary, mulaw.decode(data), attributes["sample_rate"], format="WAV")
        else:
            temporary.write_bytes(data.tobytes())
    return path


def _write_grid(path: Path, images: np.ndarray, columns: int | None = None) -> Image.Image:
    grid = image_grid(images, columns)
    with outputs.replacing(path) as temporary:
        grid.save(temporary, format="PNG")
    return grid


def write_samples(samples: np.ndarray, attributes: dict, output_dir: Path, completions: np.ndarray | None = None,
                  originals: np.ndarray | None = None) -> tuple[list[Path], dict[Path, Image.Image]]:
    """Samples (N, length) and completions (M, length') uint8 -> files in output_dir (each
    written whole, replacing the files of the previous run and nothing else), and the
    image written to each image file (to be shown as an image, not as a file). Image
    completions are drawn each beside its original (`originals` (M, H, W, C))."""
    output_dir.mkdir(parents=True, exist_ok=True)
    suffix = ".wav" if attributes["modality"] == "audio" else ".txt"
    files, images = [], {}
    if attributes["modality"] == "image":
        shape = attributes["example_shape"]
        images[output_dir / GRID_FILE] = _write_grid(output_dir / GRID_FILE, samples.reshape(len(samples), *shape))
        if completions is not None:
            pairs = np.stack([originals, completions.reshape(len(completions), *shape)], axis=1)  # (M, 2, H, W, C)
            columns = 2 * math.ceil(math.sqrt(len(completions) / 2))  # an original and its completion side by side
            images[output_dir / COMPLETIONS_FILE] = _write_grid(output_dir / COMPLETIONS_FILE,
                                                                pairs.reshape(-1, *shape), columns)
        files = list(images)
    else:
        files = [_write_stream(output_dir / f"sample_{k:03d}{suffix}", sample, attributes)
                 for k, sample in enumerate(samples)]
        files += [_write_stream(output_dir / f"completion_{k:03d}{suffix}", completion, attributes)
                  for k, completion in enumerate([] if completions is None else completions)]
    earlier = _written_before(output_dir)
    outputs.write_text(output_dir / WRITTEN, json.dumps({"files": [path.name for path in files]}) + "\n")
    for name in set(earlier) - {path.name for path in files}:
        (output_dir / name).unlink(missing_ok=True)
    return files, images


def _in_batches(sc: SampleConfig, model: SparseTransformer, prompts: torch.Tensor, length: int,
                generator: torch.Generator, progress: bool) -> np.ndarray:
    """generate() over `prompts` (N, m), sample.batch_size at a time -> (N, length) uint8."""
    size = sc.batch_size or len(prompts)
    precision = precision_for(prompts.device, sc.precision)
    done = []
    for batch in prompts.split(size):
        with memory_errors_explained("decoding a batch of samples", "lower sample.batch_size"), \
                autocast(prompts.device, precision):
            done.append(generate(model, batch, length, sc.temperature, sc.top_k, sc.top_p, generator, progress).cpu().numpy())
    return np.concatenate(done)


def sample(cfg: ExperimentConfig, progress: bool = True) -> list[Path]:
    """Draw cfg.sample.count samples from the trained model; write them and log them to MLflow."""
    sc = cfg.sample
    output_dir = outputs.check_folder(sc.output_dir, "sample.output_dir")
    client = tracking.connect(cfg.tracking) if cfg.tracking.enabled else None  # fail before any work
    device = resolve_device(sc.device, "sample")
    model, checkpoint = model_from_checkpoint(cfg.checkpoint(sc), attention=cfg.model.attention, expected=cfg.model)
    model.to(device)
    if device.type == "cuda":
        acceleration.for_decoding(model)  # fuses what surrounds each block's attention in a step (about 1 min to compile)
    attributes = hdf5.read_prepared(cfg.data.hdf5, cfg.data.dataset)
    check_data_fits_model(attributes, model.config, cfg.data.hdf5)
    generator = torch.Generator(device).manual_seed(sc.seed)
    context = model.config.context
    is_image = model.config.image_shape is not None
    length = context if is_image else (sc.length or context)
    if is_image:
        first = torch.full((sc.count, 1), model.start_token, device=device)
    else:
        frequencies = byte_frequencies(hdf5.open_split(cfg.data.hdf5, "train")).to(device)
        first = torch.multinomial(frequencies, sc.count, replacement=True, generator=generator)[:, None]
    samples = _in_batches(sc, model, first, length, generator, progress)
    completions = originals = None
    if sc.prompt.count:
        if is_image:
            given, originals = prompts.image_prompts(sc.prompt, hdf5.open_split(cfg.data.hdf5, "test"))
            starts = np.full((len(given), 1), model.start_token)
            completions = _in_batches(sc, model, torch.from_numpy(np.concatenate([starts, given], axis=1)).to(device),
                                      length, generator, progress)
        else:
            given = prompts.stream_prompts(sc.prompt, attributes["modality"], attributes.get("sample_rate"),
                                           hdf5.open_split(cfg.data.hdf5, "test"), hdf5.split_boundaries(cfg.data.hdf5, "test"))
            completions = _in_batches(sc, model, torch.from_numpy(given).to(device), given.shape[1] + length,
                                      generator, progress)
    files, images = write_samples(samples, attributes, output_dir, completions, originals)
    if client is not None:
        run_id = tracking.stage_run(cfg, client, checkpoint.get("mlflow_run_id"))
        tracking.log_samples(client, run_id, files, images, step=checkpoint["global_step"])
    return files
