"""ImageNet 64x64 (van den Oord et al. 2016), as (N, 64, 64, 3) bytes, from either release:

- PNG folders (van den Oord et al.): `train_64x64/` and `valid_64x64/` under --input;
- npz batches (Chrabaszcz et al. 2017): `train_data_batch_1` .. `train_data_batch_10` and
  `val_data` (with or without `.npz`, unzipped anywhere under --input), each holding
  `data` [N, 12288] channel-planar rows.

Both need the user to obtain the files (image-net.org, after accepting its terms).
Splits: train = the official training set; valid = the official validation set, on which
the paper reports; test = the same validation images (an HDF5 soft link, no copy).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import h5py
import numpy as np

from . import hdf5
from .checksums import sha256_of_files
from .cifar10 import planar_to_interleaved
from .errors import DataError
from .image_folder import check_images, image_files, write_images

SHAPE = (64, 64, 3)
ROW_BYTES = 64 * 64 * 3
TRAIN_BATCHES = tuple(f"train_data_batch_{k}" for k in range(1, 11))
VALID_BATCH = "val_data"
HOW_TO_GET = (
    "download ImageNet 64x64 from https://image-net.org/download-images (after accepting its terms), "
    "either the npz batches (Imagenet64_train_part1.zip, Imagenet64_train_part2.zip, Imagenet64_val.zip) "
    "unzipped under {root}, or the PNG release with folders {root}/train_64x64 and {root}/valid_64x64"
)


def _npz_rows(path: Path) -> int:
    """Rows of `data` in an npz batch, from the array header alone."""
    try:
        with zipfile.ZipFile(path) as zf, zf.open("data.npy") as fh:
            major, _ = np.lib.format.read_magic(fh)
            read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(fh)
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as err:
        raise DataError(f"{path} is not an npz batch with a `data` array ({err}): it is corrupt or truncated; obtain it again") from None
    if len(shape) != 2 or shape[1] != ROW_BYTES or dtype != np.uint8:
        raise DataError(f"{path}: `data` is {dtype} {shape}, expected uint8 rows of {ROW_BYTES} bytes (64x64x3)")
    return shape[0]


def _npz_data(path: Path) -> np.ndarray:
    try:
        with np.load(path) as batch:
            return batch["data"]
    except (zipfile.BadZipFile, KeyError, ValueError, OSError, EOFError) as err:
        raise DataError(f"{path} cannot be read ({err}): it is corrupt or truncated; obtain it again") from None


def _locate(root: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """Under `root`, in one walk: the release's npz batches by name, and its PNG folders
    by name (the first found in path order)."""
    batch_names = {name: name for name in (*TRAIN_BATCHES, VALID_BATCH)}
    batch_names.update({f"{name}.npz": name for name in (*TRAIN_BATCHES, VALID_BATCH)})
    batches: dict[str, Path] = {}
    folders: dict[str, Path] = {}
    for here, dirs, files in os.walk(root):
        dirs.sort()
        for name in dirs:
            if name in ("train_64x64", "valid_64x64"):
                folders.setdefault(name, Path(here) / name)
        for name in sorted(files):
            if name in batch_names:
                batches.setdefault(batch_names[name], Path(here) / name)
    return batches, folders


def prepare(input_path: Path | None, output: Path, force: bool = False) -> bool:
    if input_path is None or not Path(input_path).is_dir():
        raise DataError(f"{input_path} is not a folder: " + HOW_TO_GET.format(root=input_path or "FOLDER"))
    root = Path(input_path)
    batches, folders = _locate(root)
    names = (*TRAIN_BATCHES, VALID_BATCH)
    if all(name in batches for name in names):
        return _prepare_npz(root, output, [batches[n] for n in TRAIN_BATCHES], batches[VALID_BATCH], force)
    if len(folders) == 2:
        return _prepare_png(root, output, folders["train_64x64"], folders["valid_64x64"], force)
    if batches:
        missing = [name for name in names if name not in batches]
        raise DataError(f"{root} has some npz batches but lacks {', '.join(missing)}: " + HOW_TO_GET.format(root=root))
    raise DataError(f"{root} holds neither ImageNet64 release: " + HOW_TO_GET.format(root=root))


def _write_test_as_valid(fh) -> None:
    fh["test"] = h5py.SoftLink("/valid")


def _prepare_npz(root: Path, output: Path, train: list[Path], valid: Path, force: bool) -> bool:
    recipe = hdf5.Recipe(
        dataset="imagenet64", modality="image", example_shape=SHAPE,
        parameters={"release": "npz", "test": "valid"},
        sources={root.name: sha256_of_files([*train, valid], root)},
    )

    def write(fh) -> None:
        for split, files in (("train", train), ("valid", [valid])):
            dataset = hdf5.create_split(fh, split, (sum(_npz_rows(p) for p in files), *SHAPE))
            start = 0
            for path in files:
                images = planar_to_interleaved(_npz_data(path), 64, 64)
                dataset[start:start + len(images)] = images
                start += len(images)
        _write_test_as_valid(fh)

    return hdf5.build(output, recipe, write, force)


def _prepare_png(root: Path, output: Path, train_dir: Path, valid_dir: Path, force: bool) -> bool:
    splits = {"train": image_files(train_dir), "valid": image_files(valid_dir)}
    for files in splits.values():
        shape, mode = check_images(files)
        if shape != SHAPE:
            raise DataError(f"{files[0]} is {shape[1]}x{shape[0]} {mode}, expected 64x64 RGB: is this the 64x64 release?")
    recipe = hdf5.Recipe(
        dataset="imagenet64", modality="image", example_shape=SHAPE,
        parameters={"release": "png", "test": "valid"},
        sources={root.name: sha256_of_files([*splits["train"], *splits["valid"]], root)},
    )

    def write(fh) -> None:
        for split, files in splits.items():
            write_images(hdf5.create_split(fh, split, (len(files), *SHAPE)), files)
        _write_test_as_valid(fh)

    return hdf5.build(output, recipe, write, force)
