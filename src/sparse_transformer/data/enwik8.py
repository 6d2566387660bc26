"""Enwik8: the first 10^8 bytes of an English Wikipedia dump (Hutter Prize), as bytes.

Splits (the paper's section 7.2): first 90,000,000 bytes train, next 5,000,000 valid, last
5,000,000 test. No checksum of enwik8.zip is recorded here because none could be
confirmed; instead the zip's own CRC-32 is checked while reading and the unzipped
member must be exactly 100,000,000 bytes.
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np

from . import hdf5
from .checksums import file_digests
from .download import locate_archive
from .errors import DataError

URL = "http://mattmahoney.net/dc/enwik8.zip"
FILENAME = "enwik8.zip"
MEMBER = "enwik8"
SPLIT_BYTES = (90_000_000, 5_000_000, 5_000_000)


def read_enwik8(archive: Path, expected_size: int) -> np.ndarray:
    """The unzipped bytes of `archive`'s `enwik8` member, checked for size and CRC."""
    what_to_do = f"download {URL} again and put it at {archive}"
    try:
        with zipfile.ZipFile(archive) as zf:
            try:
                info = zf.getinfo(MEMBER)
            except KeyError:
                raise DataError(f"{archive} has no member {MEMBER!r} (it has {zf.namelist()[:5]}): {what_to_do}") from None
            if info.file_size != expected_size:
                raise DataError(f"{archive}: {MEMBER} is {info.file_size:,} bytes, expected {expected_size:,}: {what_to_do}")
            data = zf.read(MEMBER)  # checks the CRC-32 at the end
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as err:
        raise DataError(f"{archive} is not a readable zip archive ({err}): it is corrupt or truncated; {what_to_do}") from None
    return np.frombuffer(data, dtype=np.uint8)


def _check_unzipped_size(expected_size: int):
    def verify(path: Path) -> None:
        read_enwik8(path, expected_size)
    return verify


def prepare(input_path: Path | None, output: Path, download: bool = False, force: bool = False,
            split_bytes: tuple[int, int, int] = SPLIT_BYTES) -> bool:
    """enwik8.zip -> HDF5 byte streams. `split_bytes` differs from the paper's only in tests."""
    total = sum(split_bytes)
    archive = locate_archive(input_path, FILENAME, URL, download, _check_unzipped_size(total))
    recipe = hdf5.Recipe(
        dataset="enwik8", modality="text", example_shape=(),
        parameters={"split_bytes": list(split_bytes)},
        sources={FILENAME: file_digests(archive)["sha256"]},
    )

    def write(fh) -> None:
        data = read_enwik8(archive, total)
        bounds = np.cumsum([0, *split_bytes])
        for k, split in enumerate(hdf5.SPLITS):
            hdf5.write_split(fh, split, data[bounds[k]:bounds[k + 1]])

    return hdf5.build(output, recipe, write, force)
