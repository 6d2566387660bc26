"""Feeding prepared HDF5 files to Lightning.

Batches are torch.uint8 tensors of shape (batch, length); call `.long()` on the device
(a quarter of the host-to-device traffic of int64):
- streams (text, bytes, audio): length = context + 1, a window of consecutive bytes; the
  model reads window[:, :-1] and predicts window[:, 1:];
- images: length = H*W*C, one whole image in raster order with channels interleaved.

Training draws batches by index b = 0, 1, 2, ... counted across epochs. Batch b of rank r
is a pure function of (seed, b, r): random windows from a generator seeded with
(seed, b * world_size + r), or images b*world_size + r of a shuffle redrawn each
epoch from (seed, epoch). So the order does not depend on how many workers load it,
ranks never share an index, and a run continues where it stopped: under Lightning the
loader starts each pass at the trainer's count of batches already trained on, which
Lightning restores from checkpoints; outside Lightning each pass continues where the
previous one stopped (`ResumableLoader.next_batch` sets it).

Evaluation is deterministic: valid and test are read in full, in order (streams as
consecutive windows that overlap by one byte, so every byte after a recording's first
is predicted exactly once; the tail shorter than a window is left out — the raw split is
available from `split_array` for exact scoring). Under DDP rank r takes windows or images
r, r + world_size, ...

Each DataLoader worker memory-maps the file itself (h5py objects cannot be pickled).
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Callable, Iterator

import h5py
import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..config import DataConfig
from . import hdf5
from .errors import DataError


class _SplitBatches(IterableDataset):
    """Whole batches of one split, b = first_batch .. first_batch + len - 1, spread over
    DataLoader workers round-robin (which the DataLoader undoes, keeping the order)."""

    def __init__(self, path: Path, split: str, batch_size: int, rank: int = 0, world_size: int = 1):
        self.path, self.split = Path(path), split
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.first_batch = 0
        self._data: np.ndarray | None = None  # opened in the process that iterates

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_data": None}

    @property
    def data(self) -> np.ndarray:
        if self._data is None:
            self._data = hdf5.open_split(self.path, self.split)
        return self._data

    def __len__(self) -> int:
        raise NotImplementedError

    def batch(self, index: int) -> np.ndarray:
        raise NotImplementedError

    def __iter__(self) -> Iterator[torch.Tensor]:
        worker = get_worker_info()
        worker_id, workers = (worker.id, worker.num_workers) if worker else (0, 1)
        for b in range(self.first_batch + worker_id, self.first_batch + len(self), workers):
            yield torch.from_numpy(self.batch(b))


class RandomWindows(_SplitBatches):
    """Training batches of `window` consecutive bytes at uniformly random positions
    inside one recording; an epoch is as many windows as the split has non-overlapping
    ones, shared among ranks."""

    def __init__(self, path: Path, split: str, window: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        super().__init__(path, split, batch_size, rank, world_size)
        self.window, self.seed = window, seed
        bounds = hdf5.split_boundaries(self.path, split)
        starts = np.maximum(np.diff(bounds) - window + 1, 0)  # valid start positions per piece
        if starts.sum() == 0:
            raise DataError(f"{path}: no piece of the {split} split is {window} bytes long: choose a shorter context")
        self._piece_first = bounds[:-1]
        self._cumulative = np.cumsum(starts)
        context = window - 1
        self._batches = max(1, int(bounds[-1]) // context // (batch_size * world_size))

    def __len__(self) -> int:
        return self._batches

    def batch(self, index: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, index * self.world_size + self.rank])
        draws = rng.integers(0, self._cumulative[-1], self.batch_size)
        pieces = np.searchsorted(self._cumulative, draws, side="right")
        starts = self._piece_first[pieces] + draws - np.concatenate([[0], self._cumulative])[pieces]
        data, out = self.data, np.empty((self.batch_size, self.window), dtype=np.uint8)
        for row, start in enumerate(starts):
            out[row] = data[start:start + self.window]
        return out


class ConsecutiveWindows(_SplitBatches):
    """Every window of `window` bytes starting at multiples of window - 1 inside each
    recording, in order; rank r takes windows r, r + world_size, ..."""

    def __init__(self, path: Path, split: str, window: int, batch_size: int, rank: int = 0, world_size: int = 1):
        super().__init__(path, split, batch_size, rank, world_size)
        self.window = window
        bounds = hdf5.split_boundaries(self.path, split)
        step = window - 1
        starts = [np.arange(lo, hi - step, step) for lo, hi in zip(bounds[:-1], bounds[1:])]
        self.starts = np.concatenate(starts or [np.zeros(0, np.int64)])[rank::world_size]

    def __len__(self) -> int:
        return -(-len(self.starts) // self.batch_size)

    def batch(self, index: int) -> np.ndarray:
        starts = self.starts[index * self.batch_size:(index + 1) * self.batch_size]
        data, out = self.data, np.empty((len(starts), self.window), dtype=np.uint8)
        for row, start in enumerate(starts):
            out[row] = data[start:start + self.window]
        return out


class ShuffledImages(_SplitBatches):
    """Training batches of whole images, flattened (H*W*C); each epoch a new seeded
    shuffle of the split, rank r taking positions r, r + world_size, ... of it."""

    def __init__(self, path: Path, split: str, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        super().__init__(path, split, batch_size, rank, world_size)
        self.seed = seed
        with h5py.File(self.path, "r") as fh:
            self.count = fh[split].shape[0]
        if self.count == 0:
            raise DataError(f"{path}: the {split} split holds no images")
        self._batches = max(1, self.count // (batch_size * world_size))
        self._order: tuple[int, np.ndarray] | None = None  # (epoch, permutation), the latest used

    def __len__(self) -> int:
        return self._batches

    def _permutation(self, epoch: int) -> np.ndarray:
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.count))
        return self._order[1]

    def batch(self, index: int) -> np.ndarray:
        positions = (index * self.world_size * self.batch_size + self.rank
                     + self.world_size * np.arange(self.batch_size))
        images = np.array([self._permutation(p // self.count)[p % self.count] for p in positions])
        order = np.argsort(images)  # read the memory map in file order
        out = np.empty((self.batch_size, int(np.prod(self.data.shape[1:]))), dtype=np.uint8)
        out[order] = self.data[images[order]].reshape(self.batch_size, -1)
        return out


class OrderedImages(_SplitBatches):
    """Every image of the split in order, flattened; rank r takes images r, r + world_size, ..."""

    def __init__(self, path: Path, split: str, batch_size: int, rank: int = 0, world_size: int = 1):
        super().__init__(path, split, batch_size, rank, world_size)
        with h5py.File(self.path, "r") as fh:
            self.indices = np.arange(fh[split].shape[0])[rank::world_size]

    def __len__(self) -> int:
        return -(-len(self.indices) // self.batch_size)

    def batch(self, index: int) -> np.ndarray:
        chosen = self.indices[index * self.batch_size:(index + 1) * self.batch_size]
        return self.data[chosen].reshape(len(chosen), -1)


def _leave_stops_to_main(worker_id: int) -> None:
    """DataLoader workers ignore SIGTERM and SIGINT, which reach a whole process group
    (Ctrl-C, a cluster's time limit): the main process stops training after the batch in
    hand with a checkpoint, and then ends its workers itself. A worker ended by the signal
    would break that batch. (Workers draw nothing at random: no seeding is lost.)"""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class ResumableLoader(DataLoader):
    """A DataLoader over a `_SplitBatches` that starts each pass at batch `next_batch`
    (or at what `position()` reports, when it reports anything) and advances it by the
    batches handed out.

    Under Lightning `position()` is the trainer's own count of batches trained on, which
    excludes batches fetched ahead and is restored from checkpoints; `state_dict` serves
    loops that have no such count (and tells Lightning that the loader resumes).
    """

    def __init__(self, dataset: _SplitBatches, position: Callable[[], int | None] = lambda: None, **kwargs):
        super().__init__(dataset, batch_size=None, **kwargs)
        self._position = position
        self.next_batch = 0

    def __iter__(self):
        known = self._position()
        if known is not None:
            self.next_batch = known
        self.dataset.first_batch = self.next_batch
        for batch in super().__iter__():
            self.next_batch += 1
            yield batch

    def state_dict(self) -> dict:
        return {"next_batch": self.next_batch}

    def load_state_dict(self, state: dict) -> None:
        self.next_batch = int(state["next_batch"])


class _HDF5DataModule(L.LightningDataModule):
    modality: tuple[str, ...] = ()

    def __init__(self, path: str | Path, batch_size: int, eval_batch_size: int | None = None,
                 seed: int = 0, num_workers: int = 1):
        super().__init__()
        self.path = Path(path)
        self.attributes = hdf5.read_attributes(self.path)
        if self.attributes["modality"] not in self.modality:
            raise DataError(
                f"{self.path} holds {self.attributes['modality']} data; {type(self).__name__} reads "
                f"{', '.join(self.modality)}: use `data_module_for`"
            )
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.seed, self.num_workers = seed, num_workers

    def _rank_world(self) -> tuple[int, int]:
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def _trained_batches(self) -> int | None:
        """Batches the trainer has trained on (restored with a checkpoint); None outside Lightning."""
        if self.trainer is None:
            return None
        return self.trainer.fit_loop.total_batch_idx + 1

    def _loader(self, dataset: _SplitBatches, training: bool) -> ResumableLoader:
        return ResumableLoader(
            dataset, self._trained_batches if training else (lambda: 0),
            num_workers=self.num_workers, pin_memory=torch.cuda.is_available(), worker_init_fn=_leave_stops_to_main,
        )

    def split_array(self, split: str) -> np.ndarray:
        """The whole split, memory-mapped: (length,) for streams, (N, H, W, C) for images."""
        return hdf5.open_split(self.path, split)

    @property
    def example_shape(self) -> tuple[int, ...]:
        return self.attributes["example_shape"]

    def train_dataloader(self) -> ResumableLoader:
        return self._loader(self._dataset("train", training=True), training=True)

    def val_dataloader(self) -> ResumableLoader:
        return self._loader(self._dataset("valid", training=False), training=False)

    def test_dataloader(self) -> ResumableLoader:
        return self._loader(self._dataset("test", training=False), training=False)

    def _dataset(self, split: str, training: bool) -> _SplitBatches:
        raise NotImplementedError


class StreamDataModule(_HDF5DataModule):
    """Text, bytes and audio: windows of context + 1 bytes."""

    modality = ("text", "bytes", "audio")

    def __init__(self, path: str | Path, context: int, batch_size: int, eval_batch_size: int | None = None,
                 seed: int = 0, num_workers: int = 1):
        super().__init__(path, batch_size, eval_batch_size, seed, num_workers)
        if context < 1:
            raise DataError(f"context must be a positive number of bytes, got {context}")
        self.context = context

    @property
    def example_length(self) -> int:
        return self.context + 1

    @property
    def sample_rate(self) -> int | None:
        return self.attributes.get("sample_rate")

    def split_boundaries(self, split: str) -> np.ndarray:
        """Offsets where the split's recordings start, and its length last ([0, length]
        for text and bytes)."""
        return hdf5.split_boundaries(self.path, split)

    def _dataset(self, split: str, training: bool) -> _SplitBatches:
        rank, world = self._rank_world()
        if training:
            return RandomWindows(self.path, split, self.example_length, self.batch_size, self.seed, rank, world)
        return ConsecutiveWindows(self.path, split, self.example_length, self.eval_batch_size, rank, world)


class ImageDataModule(_HDF5DataModule):
    """Images: whole images of H*W*C bytes."""

    modality = ("image",)

    @property
    def example_length(self) -> int:
        return int(np.prod(self.example_shape))

    def _dataset(self, split: str, training: bool) -> _SplitBatches:
        rank, world = self._rank_world()
        if training:
            return ShuffledImages(self.path, split, self.batch_size, self.seed, rank, world)
        return OrderedImages(self.path, split, self.eval_batch_size, rank, world)


def data_module_for(path: str | Path, batch_size: int, context: int | None = None,
                    eval_batch_size: int | None = None, seed: int = 0, num_workers: int = 1,
                    dataset: str | None = None) -> _HDF5DataModule:
    """The DataModule for the file's modality; `context` is needed for streams only.
    `dataset` (data.dataset) must be the source the file was prepared from."""
    attributes = hdf5.read_prepared(Path(path), dataset)
    modality = attributes["modality"]
    if modality in ImageDataModule.modality:
        return ImageDataModule(path, batch_size, eval_batch_size, seed, num_workers)
    if context is None:
        raise DataError(f"{path} holds a {modality} stream: give the context (window length) to read it")
    return StreamDataModule(path, context, batch_size, eval_batch_size, seed, num_workers)


def data_module_from_config(cfg: DataConfig, model_context: int) -> _HDF5DataModule:
    """The DataModule for a params.yaml data section; streams use `cfg.context` or else
    the model's, and images must have exactly `model_context` bytes."""
    module = data_module_for(cfg.hdf5, cfg.batch_size, cfg.context or model_context, cfg.eval_batch_size,
                             cfg.seed, cfg.num_workers, dataset=cfg.dataset)
    if isinstance(module, ImageDataModule) and module.example_length != model_context:
        raise DataError(
            f"{cfg.hdf5} holds images of shape {list(module.example_shape)}, {module.example_length} bytes each, "
            f"but the model's context is {model_context}: set model.context to {module.example_length}"
        )
    return module
