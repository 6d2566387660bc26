"""`images`: a folder of images that all share one size and mode, as (N, H, W, C) bytes
(C = 1 for grey, 3 for RGB, 4 for RGBA), split by a seeded shuffle into fractions
(default 0.9, 0.05, 0.05). ImageNet64's PNG release is read with the same functions."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
from PIL import Image, UnidentifiedImageError

from . import hdf5
from .checksums import sha256_of_files
from .errors import DataError
from .raw_bytes import list_files
from .splits import DEFAULT_FRACTIONS, shuffled_split

CHANNELS = {"L": 1, "RGB": 3, "RGBA": 4}
_CHUNK = 4096  # images decoded per write


def image_files(folder: Path) -> list[Path]:
    """The image files of `folder` (by extension, any Pillow can read), sorted."""
    files, _ = list_files(folder, "image")
    extensions = set(Image.registered_extensions())
    images = [p for p in files if p.suffix.lower() in extensions]
    if not images:
        raise DataError(f"{folder} holds no image files: give a folder of PNG/JPEG/... images")
    return images


def _open(path: Path, decode: bool) -> Image.Image:
    try:
        image = Image.open(path)
        if decode:
            image.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DataError(f"{path} cannot be decoded as an image ({err}): remove or replace it") from None
    return image


def check_images(files: list[Path]) -> tuple[tuple[int, int, int], str]:
    """(H, W, C) and Pillow mode shared by all `files`, from their headers; DataError
    names the first file that differs from the first one."""
    with _open(files[0], decode=False) as first:
        mode, size = first.mode, first.size
    if mode not in CHANNELS:
        raise DataError(f"{files[0]} has mode {mode}; supported modes are {', '.join(CHANNELS)}: convert the images")
    for path in files[1:]:
        with _open(path, decode=False) as image:
            if image.mode != mode or image.size != size:
                raise DataError(
                    f"{path} is {image.width}x{image.height} {image.mode} but {files[0]} is "
                    f"{size[0]}x{size[1]} {mode}: every image must have the same size and mode"
                )
    return (size[1], size[0], CHANNELS[mode]), mode


def write_images(dataset: h5py.Dataset, files: list[Path]) -> None:
    """Decode `files` (already checked to share the dataset's shape) into `dataset`."""
    shape = dataset.shape[1:]
    for start in range(0, len(files), _CHUNK):
        chunk = files[start:start + _CHUNK]
        block = np.empty((len(chunk), *shape), dtype=np.uint8)
        for k, path in enumerate(chunk):
            with _open(path, decode=True) as image:
                block[k] = np.asarray(image).reshape(shape)
        dataset[start:start + len(chunk)] = block


def prepare(input_path: Path | None, output: Path, fractions=DEFAULT_FRACTIONS, seed: int = 0, force: bool = False) -> bool:
    if input_path is not None and Path(input_path).is_file():
        raise DataError(f"{input_path} is a file: `images` needs a folder of images")
    files = image_files(input_path)
    shape, _ = check_images(files)
    indices = shuffled_split(len(files), tuple(fractions), seed)
    recipe = hdf5.Recipe(
        dataset="images", modality="image", example_shape=shape,
        parameters={"split_fractions": list(fractions), "seed": seed},
        sources={Path(input_path).name: sha256_of_files(files, Path(input_path))},
    )

    def write(fh) -> None:
        for name, index in zip(hdf5.SPLITS, indices):
            dataset = hdf5.create_split(fh, name, (len(index), *shape))
            write_images(dataset, [files[i] for i in index])

    return hdf5.build(output, recipe, write, force)
