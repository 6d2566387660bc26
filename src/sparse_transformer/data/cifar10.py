"""CIFAR-10: 60,000 32x32 colour images as (N, 32, 32, 3) bytes.

Splits (the paper's section 7.1): 2,000 of the 50,000 training images, drawn with a fixed seed,
are held out as valid, the other 48,000 train; the official 10,000 test images are test.
The pickled rows are channel-planar, R(1024) G(1024) B(1024); they are stored
interleaved, (H, W, C), the raster order the model reads.
"""

from __future__ import annotations

import pickle
import tarfile
import zlib
from pathlib import Path

import numpy as np

from . import hdf5
from .checksums import verify_file
from .download import locate_archive
from .errors import DataError

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
FILENAME = "cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"
FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{k}" for k in range(1, 6))
TEST_BATCH = "test_batch"
VALID_IMAGES = 2_000
SHAPE = (32, 32, 3)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles the batches' dicts of numpy arrays and refuses anything else, so a
    tampered archive cannot run code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name}")
        return super().find_class(module, name)


def planar_to_interleaved(rows: np.ndarray, height: int, width: int) -> np.ndarray:
    """(N, C*H*W) channel-planar rows -> (N, H, W, C)."""
    channels = rows.shape[1] // (height * width)
    return np.ascontiguousarray(rows.reshape(-1, channels, height, width).transpose(0, 2, 3, 1))


def read_batches(archive: Path) -> dict[str, np.ndarray]:
    """The `data` rows of every batch in the tarball, by batch name."""
    what_to_do = f"download {URL} again and put it at {archive}"
    wanted = {f"{FOLDER}/{name}": name for name in (*TRAIN_BATCHES, TEST_BATCH)}
    batches: dict[str, np.ndarray] = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                if member.name not in wanted:
                    continue
                with tar.extractfile(member) as fh:
                    batch = _ArrayUnpickler(fh, encoding="bytes").load()
                data = batch.get(b"data") if isinstance(batch, dict) else None
                if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
                    raise DataError(f"{archive}: {member.name} has no uint8 b'data' array of rows of 3072 bytes: {what_to_do}")
                batches[wanted[member.name]] = data
    except (tarfile.TarError, EOFError, zlib.error, OSError, pickle.UnpicklingError, ValueError) as err:
        raise DataError(f"{archive} cannot be read ({type(err).__name__}: {err}): it is corrupt or truncated; {what_to_do}") from None
    missing = [name for name in wanted.values() if name not in batches]
    if missing:
        raise DataError(f"{archive} lacks {', '.join(f'{FOLDER}/{m}' for m in missing)}: {what_to_do}")
    return batches


def prepare(input_path: Path | None, output: Path, download: bool = False, force: bool = False,
            seed: int = 0, md5: str | None = MD5, valid_images: int = VALID_IMAGES) -> bool:
    """The CIFAR-10 tarball -> HDF5 images. md5=None skips the published checksum (for a
    re-packed or synthetic copy); the sha256 is recorded either way. valid_images differs
    from the paper's 2,000 only in tests with small archives."""
    expected = {"md5": md5} if md5 else {}
    what_to_do = f"delete it and download {URL} again (or pass --skip-checksum for a re-packed copy)"

    def verify(path: Path) -> str:
        return verify_file(path, expected, what_to_do)

    archive = locate_archive(input_path, FILENAME, URL, download, verify)
    recipe = hdf5.Recipe(
        dataset="cifar10", modality="image", example_shape=SHAPE,
        parameters={"seed": seed, "valid_images": valid_images},
        sources={FILENAME: verify(archive)},
    )

    def write(fh) -> None:
        batches = read_batches(archive)
        train_rows = np.concatenate([batches[name] for name in TRAIN_BATCHES])
        if not 0 < valid_images < len(train_rows):
            raise DataError(f"{archive}: cannot hold out {valid_images} of {len(train_rows)} training images")
        order = np.random.default_rng(seed).permutation(len(train_rows))
        valid, train = np.sort(order[:valid_images]), np.sort(order[valid_images:])
        hdf5.write_split(fh, "train", planar_to_interleaved(train_rows[train], 32, 32))
        hdf5.write_split(fh, "valid", planar_to_interleaved(train_rows[valid], 32, 32))
        hdf5.write_split(fh, "test", planar_to_interleaved(batches[TEST_BATCH], 32, 32))

    return hdf5.build(output, recipe, write, force)
