"""The checkpoint folder of an experiment (train.checkpoint_dir): how it is written,
read, guarded and told apart from another run's, and the trained model read back.

- Every checkpoint is written whole or not at all (`training.AtomicCheckpointIO`, the
  writer Lightning is given; this module does not import Lightning).
- One run at a time (`checkpoint_lock`): `<folder>.lock`, held by global rank 0 while
  it trains; a second run stops at once, naming the host and process of the first
  (written beside the lock in `<folder>.lock.owner`).
- A checkpoint is resumed only by a run of the same model, optimization and data
  (`changed_settings`); settings that only extend or pace a run (max_steps, validation,
  logging and checkpoint cadence, devices, compilation...) may differ. Another run's
  folder is set aside - renamed, never deleted (`set_aside`).
- `finished.json` in the folder is written when training reaches its end and only
  then: a stopped run has none, so a workflow that waits for it (the Snakefile) never
  takes a stopped run for a finished one.
- Evaluation and sampling rebuild the model from a checkpoint's own saved model section
  (`model_from_checkpoint`) and check that it fits the prepared data
  (`check_data_fits_model`), without Lightning or a DataModule.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from . import outputs
from .config import ConfigError, ModelConfig, flatten, from_dict, stored_model_section
from .errors import UserError, cut, shown
from .model import SparseTransformer

LAST_CHECKPOINT = "last.ckpt"
FINISHED = "finished.json"
#: model settings of the machine, not of the weights: a checkpoint resumes under others
MACHINE_SETTINGS = frozenset({"attention", "recompute"})
#: train settings that only extend or pace a run: a checkpoint resumes under others
PACE_SETTINGS = frozenset({
    "max_steps", "max_epochs", "checkpoint_dir", "checkpoint_every_steps", "resume", "val_every_steps",
    "val_batches", "log_every_steps", "curve_file", "compile", "compile_mode", "precision", "accelerator",
    "devices", "num_nodes", "strategy",
})


class CheckpointError(UserError):
    """A checkpoint is missing, unreadable, damaged or in use."""


def read_checkpoint(path: str | Path, what_to_do: str = "train again or choose another") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist: train first (`sparse-transformer train`) or set its path")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # mmap: read what is used
    except Exception as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise CheckpointError(f"checkpoint {path} cannot be read ({cut(reason)}): {what_to_do}") from None
    stored = checkpoint.get("hyper_parameters", {}) if isinstance(checkpoint, dict) else {}
    if isinstance(stored.get("model"), dict):
        stored["model"] = stored_model_section(stored["model"])
    return checkpoint


def check_finite_weights(checkpoint: dict, path: str | Path, what_to_do: str) -> None:
    """Refuses a checkpoint whose weights hold NaN or infinity (a damaged file, or a run
    that diverged before non-finite losses were stopped)."""
    for name, tensor in checkpoint.get("state_dict", {}).items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"checkpoint {path} holds non-finite weights (first in {name}): it is damaged; {what_to_do}")


# ---------------------------------------------------------------------- one run at a time
def _lock_paths(folder: Path) -> tuple[Path, Path]:
    return folder.with_name(f"{folder.name}.lock"), folder.with_name(f"{folder.name}.lock.owner")


@contextmanager
def checkpoint_lock(folder: str | Path) -> Iterator[None]:
    """Holds the lock of a checkpoint folder; CheckpointError at once if another run holds it."""
    from filelock import FileLock, Timeout

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    lock_path, owner_path = _lock_paths(folder)
    lock = FileLock(lock_path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        try:
            owner = json.loads(owner_path.read_text())
            holder = f"process {owner['pid']} on host {owner['host']}, started {owner['started']}"
        except (OSError, ValueError, KeyError, TypeError):
            holder = "its host and process are not recorded"
        raise CheckpointError(
            f"another `train` is writing {folder} ({holder}): wait for it to end or stop it "
            "(kill -TERM saves its checkpoint), then run this again"
        ) from None
    try:
        outputs.write_text(owner_path, json.dumps({
            "host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }) + "\n")
        yield
    finally:
        owner_path.unlink(missing_ok=True)
        lock.release()


# ---------------------------------------------------------------------- whose checkpoint
def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value  # a tuple of the config, a list of YAML or JSON


def changed_settings(stored: dict, current: dict) -> list[str]:
    """"section.field old -> new" for each setting of `current` ({"model": ..., "train": ...,
    "data": ...}) that differs from the checkpoint's `stored` hyper-parameters in a way that
    makes it another run's. A section the checkpoint does not record is not compared."""
    ignored = {"model": MACHINE_SETTINGS, "train": PACE_SETTINGS}
    changes = []
    for section, settings in current.items():
        if not isinstance(stored.get(section), dict):
            continue
        old, new = flatten(stored[section]), flatten(settings)
        for key in sorted(old.keys() | new.keys()):
            if key.split(".")[0] not in ignored.get(section, ()) and _plain(old.get(key)) != _plain(new.get(key)):
                changes.append(f"{section}.{key} {shown(old.get(key))} -> {shown(new.get(key))}")
    return changes


def set_aside(folder: str | Path, *also: Path) -> Path:
    """Renames `folder` to the first free `<folder>.set-aside-N` and moves the files `also`
    (e.g. the run's training curve) into it; returns the new name."""
    folder = Path(folder)
    number = 1
    while (aside := folder.with_name(f"{folder.name}.set-aside-{number}")).exists():
        number += 1
    os.replace(folder, aside)
    for path in also:
        if path.is_file():
            os.replace(path, aside / path.name)
    return aside


# ---------------------------------------------------------------------- the end of training
def clear_finished(folder: str | Path) -> None:
    """Training is about to change the folder: until it ends, it is not finished."""
    (Path(folder) / FINISHED).unlink(missing_ok=True)


def mark_finished(folder: str | Path, record: dict) -> None:
    outputs.write_text(Path(folder) / FINISHED, json.dumps(record, indent=2) + "\n")


# ---------------------------------------------------------------------- the trained model
def model_from_checkpoint(path: str | Path, attention: str | None = None,
                          expected: ModelConfig | None = None) -> tuple[SparseTransformer, dict]:
    """The trained model (eval mode) and the checkpoint it came from. `attention` replaces the
    stored backend: the backend belongs to the machine, not to the weights. When the stored
    model differs from `expected` (the experiment's model section), one line says so."""
    checkpoint = read_checkpoint(path)
    check_finite_weights(checkpoint, path, "train again, or point to an earlier checkpoint")
    model_section = dict(checkpoint["hyper_parameters"]["model"])
    if expected is not None:
        differences = changed_settings({"model": model_section}, {"model": dataclasses.asdict(expected)})
        if differences:
            print(f"note: using the model stored in {path}, whose settings differ from the experiment's model "
                  f"section ({'; '.join(differences)})", file=sys.stderr)
    if attention is not None:
        model_section["attention"] = attention
    model = SparseTransformer(from_dict(ModelConfig, model_section, "checkpoint.model"))
    prefix = "model."
    model.load_state_dict({k.removeprefix(prefix): v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)})
    return model.eval(), checkpoint


def check_data_fits_model(attributes: dict, model_cfg: ModelConfig, data_path: str) -> None:
    """Images need a model with their image_shape (row/column/channel embeddings, start
    symbol); streams a model without one. attributes: the prepared file's
    (`data.hdf5.read_attributes`)."""
    if attributes["modality"] == "image":
        if model_cfg.image_shape != tuple(attributes["example_shape"]):
            raise ConfigError(f"model.image_shape: {data_path} holds images of shape {list(attributes['example_shape'])}: "
                              f"set image_shape to that, got {model_cfg.image_shape}")
    elif model_cfg.image_shape is not None:
        raise ConfigError(f"model.image_shape: {data_path} holds a byte stream, not images: set image_shape to null")
