"""The prepared-data file: one HDF5 layout for every source (docs/hdf5.md).

Writing: `build(output, recipe, write)` runs `write(h5file)` on a temporary file in the
output's directory and renames it over `output` only when complete, so a failed or
interrupted run leaves no partial file (outputs.replacing). The sha256 of each split's
bytes is recorded with it. A finished file whose recorded recipe (format version,
dataset, parameters, input checksums) equals the new one, and whose splits still match
their checksums, is reused instead of rebuilt.

Reading: `open_split` memory-maps a split (`numpy.memmap` at the dataset's file offset),
which works because every split is written contiguous and uncompressed; `check_intact`
compares splits with their recorded checksums before they are trusted.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import h5py
import numpy as np

from ..outputs import replacing
from .errors import DataError

FORMAT_VERSION = 1
#: root attribute: JSON {dataset name: sha256 of its bytes} for the splits and their boundaries
CHECKSUMS = "split_sha256"
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_HASH_BLOCK = 1 << 26  # bytes hashed at a time
SPLITS = ("train", "valid", "test")
MODALITIES = ("text", "bytes", "image", "audio")
VOCAB_SIZE = 256


@dataclass(frozen=True)
class Recipe:
    """What a prepared file is made of; two files with equal recipes hold the same data.

    dataset: the source's name (enwik8, cifar10, ...); modality: text, bytes, image or
    audio; example_shape: (H, W, C) for images, () for byte streams; parameters: every
    setting that changes the output (split sizes, seed, sample rate...); sources: input
    name -> sha256.
    """

    dataset: str
    modality: str
    example_shape: tuple[int, ...]
    parameters: dict = field(default_factory=dict)
    sources: dict = field(default_factory=dict)
    sample_rate: int | None = None

    def attributes(self) -> dict:
        attrs = {
            "format_version": FORMAT_VERSION,
            "dataset": self.dataset,
            "modality": self.modality,
            "example_shape": np.asarray(self.example_shape, dtype=np.int64),
            "vocab_size": VOCAB_SIZE,
            "parameters": json.dumps(self.parameters, sort_keys=True),
            "source_sha256": json.dumps(self.sources, sort_keys=True),
        }
        if self.sample_rate is not None:
            attrs["sample_rate"] = self.sample_rate
        return attrs


def _same_recipe(path: Path, recipe: Recipe) -> bool:
    try:
        with h5py.File(path, "r") as fh:
            stored = {key: value for key, value in fh.attrs.items() if key != CHECKSUMS}
            complete = all(name in fh for name in SPLITS)
    except (OSError, ValueError):
        return False  # unreadable: rebuild it
    wanted = recipe.attributes()
    if not complete or set(stored) != set(wanted):
        return False
    return all(np.array_equal(np.asarray(stored[k]), np.asarray(v)) for k, v in wanted.items())


def _checksummed(fh: h5py.File) -> list[str]:
    """The datasets whose bytes are checksummed: the splits and their boundaries."""
    return [name for split in SPLITS for name in (split, f"{split}_boundaries") if name in fh]


def _sha256(array) -> str:
    """sha256 of an array's bytes in C order (an h5py dataset or a memory map), a block of rows at a time."""
    hasher = hashlib.sha256()
    row_bytes = max(1, int(np.prod(array.shape[1:], dtype=np.int64)) * array.dtype.itemsize)
    rows = max(1, _HASH_BLOCK // row_bytes)
    for start in range(0, array.shape[0], rows):
        hasher.update(np.ascontiguousarray(array[start:start + rows]).data)
    return hasher.hexdigest()


def _checksums(fh: h5py.File) -> dict[str, str]:
    return {name: _sha256(fh[name]) for name in _checksummed(fh)}


def damaged_splits(path: Path, names: list[str] | None = None) -> list[str]:
    """The datasets among `names` (default: all checksummed ones) whose bytes no longer
    match the checksums recorded when the file was written. A file written before
    checksums were recorded has its checksums recorded now (it cannot be checked)."""
    with h5py.File(path, "r") as fh:
        recorded = json.loads(fh.attrs[CHECKSUMS]) if CHECKSUMS in fh.attrs else None
        present = _checksummed(fh)
    if recorded is None:
        try:
            with h5py.File(path, "r+") as fh:
                fh.attrs[CHECKSUMS] = json.dumps(_checksums(fh), sort_keys=True)
        except OSError:
            pass  # a read-only file stays unchecked
        return []
    wanted = present if names is None else [name for name in names if name in present]
    return [name for name in wanted if name in recorded and _sha256(open_split(path, name)) != recorded[name]]


def check_intact(path: Path, *splits: str) -> None:
    """Raises DataError if a split (or its boundaries) differs from its recorded checksum."""
    damaged = damaged_splits(Path(path), [name for split in splits for name in (split, f"{split}_boundaries")])
    if damaged:
        raise DataError(f"{path}: {', '.join(damaged)} no longer match(es) the checksum recorded when the file was "
                        "written: the file is damaged; prepare it again (`sparse-transformer prepare ... --force`)")


def is_prepared(path: Path) -> bool:
    """Whether `path` is a prepared-data file (an output of `build`), from its header."""
    try:
        with open(path, "rb") as fh:
            if fh.read(len(HDF5_SIGNATURE)) != HDF5_SIGNATURE:
                return False
        with h5py.File(path, "r") as fh:
            return "format_version" in fh.attrs and "modality" in fh.attrs
    except OSError:
        return False


def build(output: Path, recipe: Recipe, write: Callable[[h5py.File], None], force: bool = False) -> bool:
    """Write `output` with `write(h5file)` unless an identical, intact one exists; True if built."""
    output = Path(output)
    if recipe.modality not in MODALITIES:
        raise ValueError(f"unknown modality {recipe.modality!r}")
    if not force and output.is_file() and _same_recipe(output, recipe):
        damaged = damaged_splits(output)
        if not damaged:
            return False
        print(f"{output}: {', '.join(damaged)} no longer match(es) the checksum recorded when it was written: "
              "rebuilding it", file=sys.stderr)
    with replacing(output) as temporary:
        with h5py.File(temporary, "w") as fh:
            write(fh)
            missing = [name for name in SPLITS if name not in fh]
            if missing:
                raise RuntimeError(f"the writer for {recipe.dataset} did not write split(s) {missing}")
            fh.attrs.update(recipe.attributes())
            fh.attrs[CHECKSUMS] = json.dumps(_checksums(fh), sort_keys=True)
    return True


def create_split(fh: h5py.File, name: str, shape: tuple[int, ...]) -> h5py.Dataset:
    """An empty uint8 split, contiguous and uncompressed so that readers can memory-map it."""
    return fh.create_dataset(name, shape=shape, dtype=np.uint8)


def write_split(fh: h5py.File, name: str, data: np.ndarray) -> None:
    data = np.ascontiguousarray(data, dtype=np.uint8)
    dataset = create_split(fh, name, data.shape)
    if data.size:
        dataset.write_direct(data)


def write_boundaries(fh: h5py.File, split: str, lengths: list[int], names: list[str]) -> None:
    """Record where each recording starts in a concatenated stream: `{split}_boundaries`
    holds the len(lengths)+1 cumulative offsets (0 first, the split's length last) and
    `{split}_files` the source file of each piece."""
    fh.create_dataset(f"{split}_boundaries", data=np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64))
    fh.create_dataset(f"{split}_files", data=np.array(names, dtype=object), dtype=h5py.string_dtype())


# ---------------------------------------------------------------------- reading
def read_attributes(path: Path) -> dict:
    """The root attributes, with JSON ones decoded and example_shape as a tuple."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist: create it with `sparse-transformer prepare`")
    try:
        with h5py.File(path, "r") as fh:
            attrs = dict(fh.attrs)
    except OSError as err:
        raise DataError(f"{path} is not a readable HDF5 file ({err}): prepare it again") from None
    version = attrs.get("format_version")
    if version != FORMAT_VERSION:
        raise DataError(
            f"{path} has format version {version}, this release reads version {FORMAT_VERSION}: "
            "prepare it again with this release"
        )
    attrs["example_shape"] = tuple(int(v) for v in attrs["example_shape"])
    attrs["parameters"] = json.loads(attrs["parameters"])
    attrs["source_sha256"] = json.loads(attrs["source_sha256"])
    attrs[CHECKSUMS] = json.loads(attrs[CHECKSUMS]) if CHECKSUMS in attrs else {}
    for key in ("dataset", "modality"):
        attrs[key] = str(attrs[key])
    for key in ("format_version", "vocab_size", "sample_rate"):
        if key in attrs:
            attrs[key] = int(attrs[key])
    return attrs


def read_prepared(path: Path, dataset: str | None = None) -> dict:
    """`read_attributes` of a prepared file, refusing one prepared from another source
    than `dataset` (data.dataset) when given."""
    attributes = read_attributes(path)
    if dataset is not None and attributes["dataset"] != dataset:
        raise DataError(f"data.dataset is {dataset!r} but {path} was prepared from {attributes['dataset']!r} data: "
                        f"set data.dataset to {attributes['dataset']}, or prepare {path} again from this data section")
    return attributes


def split_boundaries(path: Path, split: str) -> np.ndarray:
    """Offsets where a stream split's pieces (audio recordings) start, and its length last:
    windows must not cross them. [0, length] for a split of one piece (text, bytes)."""
    with h5py.File(path, "r") as fh:
        if f"{split}_boundaries" in fh:
            return fh[f"{split}_boundaries"][:]
        return np.array([0, fh[split].shape[0]], dtype=np.int64)


def open_split(path: Path, name: str) -> np.ndarray:
    """A read-only view of split `name` (train, valid, test, or a `*_boundaries` index)
    straight from the file: memory-mapped, so it costs no memory and no reading up front."""
    with h5py.File(path, "r") as fh:
        if name not in fh:
            raise DataError(f"{path} has no dataset {name!r}; it has {sorted(fh)}")
        dataset = fh[name]
        shape, dtype, offset = dataset.shape, dataset.dtype, dataset.id.get_offset()
        if dataset.chunks is not None or dataset.compression is not None:
            raise DataError(f"{path}: dataset {name!r} is chunked or compressed and cannot be memory-mapped: prepare it again")
        if offset is None:  # nothing was ever written: an empty split
            return np.zeros(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)
