"""`digits`: scikit-learn's 1,797 real 8x8 grey scans of handwritten digits (UCI, CC BY
4.0), shipped in its wheel, so the image pipeline runs with no download. Grey levels
0..16 are scaled to 0..255 and stored as (N, 8, 8, 1), split by a seeded shuffle."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from . import hdf5
from .splits import DEFAULT_FRACTIONS, shuffled_split


def load_digit_images() -> np.ndarray:
    from sklearn.datasets import load_digits  # heavy: only when this source is used

    levels = load_digits().images  # (1797, 8, 8) floats 0..16
    return np.rint(levels * (255 / 16)).astype(np.uint8)[..., None]


def prepare(output: Path, fractions=DEFAULT_FRACTIONS, seed: int = 0, force: bool = False) -> bool:
    images = load_digit_images()
    indices = shuffled_split(len(images), tuple(fractions), seed)
    recipe = hdf5.Recipe(
        dataset="digits", modality="image", example_shape=images.shape[1:],
        parameters={"split_fractions": list(fractions), "seed": seed},
        sources={"sklearn.datasets.load_digits": hashlib.sha256(images.tobytes()).hexdigest()},
    )

    def write(fh) -> None:
        for name, index in zip(hdf5.SPLITS, indices):
            hdf5.write_split(fh, name, images[index])

    return hdf5.build(output, recipe, write, force)
