"""Unconditional samples of a trained model (`sparse-transformer sample`).

Decoding is incremental (`SparseTransformer.decode_step` with a `DecodingCache`): each
new position computes its own keys and values and reads only the cached keys its pattern
allows, so a step costs about l + n/l keys rather than n, and gives the same next-byte
distribution as a full forward pass over the prefix. A whole batch decodes together,
and on a GPU each step is replayed as one CUDA graph.

Images start from the start symbol and are written as one PNG grid. Streams have no
start symbol (training windows begin anywhere), so their first byte is drawn from the
byte frequencies of the training split; audio is written as WAV (mu-law decoded, at the
data's sample rate), text as .txt. The files and the image grid go to the training run
in MLflow. The sampler records the files it wrote (`.sampled.json` in the folder) and
replaces only those the next time: other files in the folder are never touched.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from . import outputs, tracking
from .config import ExperimentConfig
from .data import mulaw
from .data.datamodule import data_module_for
from .errors import memory_errors_explained
from .evaluation import resolve_device
from .model import DecodingCache, SparseTransformer
from .training import check_data_fits_model, model_from_checkpoint

GRID_FILE = "samples.png"
WRITTEN = ".sampled.json"  # the names of the files the last run wrote
GRID_MIN_WIDTH = 256  # pixels: small images (8x8 digits) are enlarged to be visible
GRID_GUTTER = 128  # mid-grey between the images: apart from black backgrounds (digits) and white strokes alike


class CUDAGraphDecoder:
    """`model.decode_step` captured once as a CUDA graph and replayed at every position.

    A step of a deep model is thousands of small kernels (about 35 per layer); launched
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


@torch.no_grad()
def generate(model: SparseTransformer, first: torch.Tensor, length: int, temperature: float = 1.0,
             generator: torch.Generator | None = None, progress: bool = True, graph: bool = True) -> torch.Tensor:
    """Continue `first` (B,) tokens to (B, length) uint8 bytes by sampling at `temperature`.

    `first` is the start symbol (images: it is not part of the output) or a first byte
    (streams: it is the output's first byte). On a CUDA device each step is replayed as
    a CUDA graph (`CUDAGraphDecoder`) unless `graph` is False.
    """
    model.eval()
    cache = DecodingCache(model, len(first), first.device)
    if graph and first.device.type == "cuda":
        step = CUDAGraphDecoder(model, cache, first)
    else:
        def step(tokens: torch.Tensor) -> torch.Tensor:
            return model.decode_step(tokens, cache)
    outputs = [] if model.config.image_shape is not None else [first]
    tokens = first
    with tqdm(total=length - len(outputs), desc="decoding", unit="byte", disable=not progress) as bar:
        while len(outputs) < length:
            logits = step(tokens)  # (B, 256)
            probabilities = torch.softmax(logits.float() / temperature, dim=-1)
            tokens = torch.multinomial(probabilities, 1, generator=generator)[:, 0]  # (B,)
            outputs.append(tokens)
            bar.update()
    return torch.stack(outputs, dim=1).to(torch.uint8)  # (B, length)


def byte_frequencies(data: np.ndarray) -> torch.Tensor:
    """(256,) float64 counts of each byte value in a stream."""
    return torch.from_numpy(np.bincount(np.asarray(data), minlength=256).astype(np.float64))


def image_grid(images: np.ndarray) -> Image.Image:
    """(N, H, W, C) uint8 -> one image, ceil(sqrt(N)) per row, 1-pixel mid-grey gutters
    (and empty cells), enlarged if tiny."""
    count, height, width, channels = images.shape
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[channels]
    columns = math.ceil(math.sqrt(count))
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


def _write_stream_sample(sample: np.ndarray, k: int, attributes: dict, output_dir: Path) -> Path:
    """One stream sample as sample_NNN.wav (audio) or sample_NNN.txt (the bytes as they are)."""
    if attributes["modality"] == "audio":
        import soundfile  # here, not at the top: the GPU machines that only time decoding lack it

        path = output_dir / f"sample_{k:03d}.wav"
        with outputs.replacing(path) as temporary:
            soundfile.write(temporary, mulaw.decode(sample), attributes["sample_rate"], format="WAV")
    else:
        path = output_dir / f"sample_{k:03d}.txt"
        with outputs.replacing(path) as temporary:
            temporary.write_bytes(sample.tobytes())
    return path


def write_samples(samples: np.ndarray, attributes: dict, output_dir: Path) -> tuple[list[Path], dict[Path, Image.Image]]:
    """Samples (N, length) uint8 -> files in output_dir (each written whole, replacing the
    files of the previous run and nothing else), and the image written to each image file
    (to be shown as an image, not as a file)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    if attributes["modality"] == "image":
        grid = image_grid(samples.reshape(len(samples), *attributes["example_shape"]))
        with outputs.replacing(output_dir / GRID_FILE) as temporary:
            grid.save(temporary, format="PNG")
        files, images = [output_dir / GRID_FILE], {output_dir / GRID_FILE: grid}
    else:
        files, images = [_write_stream_sample(sample, k, attributes, output_dir) for k, sample in enumerate(samples)], {}
    earlier = _written_before(output_dir)
    outputs.write_text(output_dir / WRITTEN, json.dumps({"files": [path.name for path in files]}) + "\n")
    for name in set(earlier) - {path.name for path in files}:
        (output_dir / name).unlink(missing_ok=True)
    return files, images


def sample(cfg: ExperimentConfig, progress: bool = True) -> list[Path]:
    """Draw cfg.sample.count samples from the trained model; write them and log them to MLflow."""
    sc = cfg.sample
    output_dir = outputs.check_folder(sc.output_dir, "sample.output_dir")
    client = tracking.connect(cfg.tracking) if cfg.tracking.enabled else None  # fail before any work
    device = resolve_device(sc.device, "sample")
    model, checkpoint = model_from_checkpoint(cfg.checkpoint(sc), attention=cfg.model.attention, expected=cfg.model)
    model.to(device)
    datamodule = data_module_for(cfg.data.hdf5, batch_size=1, context=model.config.context, dataset=cfg.data.dataset)
    check_data_fits_model(datamodule, model.config, cfg.data.hdf5)
    generator = torch.Generator(device).manual_seed(sc.seed)
    is_image = model.config.image_shape is not None
    length = model.config.context if is_image else (sc.length or model.config.context)
    if not is_image:
        frequencies = byte_frequencies(datamodule.split_array("train")).to(device)
    batches = []
    for start in range(0, sc.count, sc.batch_size or sc.count):
        size = min(sc.batch_size or sc.count, sc.count - start)
        if is_image:
            first = torch.full((size,), model.start_token, device=device)
        else:
            first = torch.multinomial(frequencies, size, replacement=True, generator=generator)
        with memory_errors_explained("decoding a batch of samples", "lower sample.batch_size"):
            batches.append(generate(model, first, length, sc.temperature, generator, progress).cpu().numpy())
    files, images = write_samples(np.concatenate(batches), datamodule.attributes, output_dir)
    if client is not None:
        run_id = tracking.stage_run(cfg, client, checkpoint.get("mlflow_run_id"))
        tracking.log_samples(client, run_id, files, images, step=checkpoint["global_step"])
    return files
