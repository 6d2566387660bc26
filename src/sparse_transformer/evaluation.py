"""Bits per dim of a trained model over a whole split (`sparse-transformer evaluate`).

Images are scored whole: every byte, the first predicted from the start symbol.
Streams (text, audio) are scored recording by recording, every byte after a recording's
first exactly once, in windows of `context` bytes that advance by context - min_context:
the first window scores all its positions, every later one only its last
context - min_context, so each byte is predicted from at least min_context bytes before
it (Table 3 of the paper: more context, fewer bits). The split is first checked against
the checksum recorded when it was prepared. The result goes to a metrics JSON (for DVC)
and to the training run in MLflow; a non-finite result is refused, not written.
"""

from __future__ import annotations

import json
import math
from contextlib import nullcontext
from dataclasses import dataclass
from itertools import groupby
from typing import Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import outputs, tracking
from .checkpoints import check_data_fits_model, model_from_checkpoint
from .config import ConfigError, ExperimentConfig
from .data import hdf5
from .data.errors import DataError
from .errors import UserError, cut, memory_errors_explained
from .model import SparseTransformer


@dataclass(frozen=True)
class Window:
    """Input bytes [start, start + length) predict targets [start + 1, start + length + 1),
    of which the last `scored` count."""

    start: int
    length: int
    scored: int


def stream_windows(lo: int, hi: int, context: int, min_context: int) -> list[Window]:
    """The windows that score bytes lo+1 .. hi-1 of one recording [lo, hi) once each."""
    targets = hi - lo - 1
    if targets <= context:
        return [Window(lo, targets, targets)] if targets > 0 else []
    advance = context - min_context
    windows = [Window(lo, context, context)]
    scored_until = lo + 1 + context  # the first target not yet scored
    while scored_until < hi:
        end = min(scored_until + advance, hi)  # the window's targets end here
        windows.append(Window(end - 1 - context, context, end - scored_until))
        scored_until = end
    return windows


def precision_for(device: torch.device, precision: str | None) -> str:
    """A configured precision, or (null) the default: bf16-mixed on CUDA, 32-true elsewhere."""
    return precision or ("bf16-mixed" if device.type == "cuda" else "32-true")


def autocast(device: torch.device, precision: str):
    """The autocast context of a Lightning precision name ("bf16-mixed", "16-mixed"; others: none)."""
    dtypes = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
    if precision not in dtypes:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtypes[precision])


def _nats(model: SparseTransformer, examples: np.ndarray, device: torch.device) -> torch.Tensor:
    """(B, L) uint8 examples -> (B, n) fp32 cross-entropy of each target, in nats."""
    inputs, targets = model.inputs_and_targets(torch.from_numpy(examples).to(device))
    logits = model(inputs)  # (B, n, 256)
    return F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")


@torch.no_grad()
def score_stream(model: SparseTransformer, data: np.ndarray, boundaries: Iterable[int], context: int,
                 min_context: int, batch_size: int, device: torch.device, progress: bool = True) -> tuple[float, int]:
    """(total nats, bytes scored) over a stream whose recordings start at `boundaries` (its length last)."""
    bounds = list(boundaries)
    windows = [w for lo, hi in zip(bounds[:-1], bounds[1:]) for w in stream_windows(lo, hi, context, min_context)]
    total, count = 0.0, 0
    with tqdm(total=len(windows), desc="windows", unit="window", disable=not progress) as bar:
        for batch in _batches(windows, batch_size):  # windows of one length each
            examples = np.stack([data[w.start:w.start + w.length + 1] for w in batch])  # (B, length + 1)
            nats = _nats(model, examples, device)  # (B, length)
            scored = torch.tensor([w.scored for w in batch], device=device)
            positions = torch.arange(nats.shape[1], device=device)
            keep = positions[None, :] >= nats.shape[1] - scored[:, None]  # (B, length): the last `scored`
            total += nats[keep].double().sum().item()
            count += int(scored.sum())
            bar.update(len(batch))
    return total, count


def _batches(windows: list[Window], batch_size: int) -> Iterator[list[Window]]:
    """Consecutive windows of equal length, batch_size at a time (only short recordings make other lengths)."""
    for _, same_length in groupby(windows, key=lambda w: w.length):
        group = list(same_length)
        for start in range(0, len(group), batch_size):
            yield group[start:start + batch_size]


@torch.no_grad()
def score_images(model: SparseTransformer, images: np.ndarray, batch_size: int, device: torch.device,
                 progress: bool = True) -> tuple[float, int]:
    """(total nats, bytes scored) over images (N, H, W, C), every byte of each."""
    total, count = 0.0, 0
    for start in tqdm(range(0, len(images), batch_size), desc="images", unit="batch", disable=not progress):
        # a copy: the split is a read-only memory map, which torch.from_numpy warns about
        batch = np.array(images[start:start + batch_size]).reshape(-1, model.config.context)  # (B, H*W*C)
        nats = _nats(model, batch, device)
        total += nats.double().sum().item()
        count += nats.numel()
    return total, count


def resolve_device(name: str, where: str) -> torch.device:
    """The device of a stage's `device` setting ("auto": a GPU if there is one), after
    checking that this machine has it; `where` names the section (evaluate, sample)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as err:  # no such GPU, or torch built without CUDA
        reason = " ".join(str(err).split())
        raise ConfigError(f"{where}.device: {name} is not available on this machine ({cut(reason)}): "
                          "set auto or cpu") from None
    return device


def evaluate(cfg: ExperimentConfig, progress: bool = True) -> dict:
    """Score the configured split with the trained model; write the metrics JSON, log to MLflow."""
    ev = cfg.evaluate
    path = outputs.check_file(ev.metrics_file, "evaluate.metrics_file")
    client = tracking.connect(cfg.tracking) if cfg.tracking.enabled else None  # fail before any work
    device = resolve_device(ev.device, "evaluate")
    checkpoint_path = cfg.checkpoint(ev)
    model, checkpoint = model_from_checkpoint(checkpoint_path, attention=cfg.model.attention, expected=cfg.model)
    model.to(device)
    context = min(cfg.data.context or model.config.context, model.config.context)  # the training windows
    attributes = hdf5.read_prepared(cfg.data.hdf5, cfg.data.dataset)
    check_data_fits_model(attributes, model.config, cfg.data.hdf5)
    hdf5.check_intact(cfg.data.hdf5, ev.split)
    batch_size = ev.batch_size or cfg.data.eval_batch_size or cfg.data.batch_size
    min_context = context // 2 if ev.min_context is None else ev.min_context
    precision = precision_for(device, ev.precision)
    is_stream = attributes["modality"] != "image"
    if is_stream and min_context >= context:
        raise ConfigError(f"evaluate.min_context: must be below the context {context} (data.context), got {min_context}")
    with memory_errors_explained("scoring a batch", "lower evaluate.batch_size"), autocast(device, precision):
        if is_stream:
            nats, count = score_stream(model, hdf5.open_split(cfg.data.hdf5, ev.split),
                                       hdf5.split_boundaries(cfg.data.hdf5, ev.split), context, min_context, batch_size,
                                       device, progress)
        else:
            nats, count = score_images(model, hdf5.open_split(cfg.data.hdf5, ev.split), batch_size, device, progress)
    if count == 0:
        raise DataError(f"{cfg.data.hdf5}: the {ev.split} split has nothing to score")
    if not math.isfinite(nats):
        raise UserError(f"the bits per dim of {checkpoint_path} on the {ev.split} split is not finite ({nats}): "
                        f"the weights or the data are damaged; {path} is left as it was")
    metrics = {
        "split": ev.split, "bits_per_dim": nats / math.log(2) / count, "bytes": count,
        "context": context, "min_context": min_context if is_stream else None,
        "checkpoint": str(checkpoint_path), "step": checkpoint["global_step"], "precision": precision,
    }
    outputs.write_text(path, json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    if client is not None:
        run_id = tracking.stage_run(cfg, client, checkpoint.get("mlflow_run_id"))
        tracking.log_metrics(client, run_id, {f"eval/{ev.split}/bpd": metrics["bits_per_dim"]}, step=checkpoint["global_step"])
        client.log_artifact(run_id, str(path), artifact_path="metrics")
    return metrics
