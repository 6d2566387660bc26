"""`bytes`: any file, or every file of a folder concatenated in path order, as one byte
stream cut into contiguous train, valid and test parts by fractions (default 0.9, 0.05,
0.05: enwik8's proportions). The quickstart text uses it."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from . import hdf5
from .checksums import sha256_of_files
from .errors import DataError
from .splits import DEFAULT_FRACTIONS, split_sizes

_BLOCK = 1 << 26


def list_files(input_path: Path | None, what: str) -> tuple[list[Path], Path]:
    """The files under `input_path` (itself if a file), sorted by path; and the root their
    names are relative to. Hidden files (temporaries among them) and prepared-data files
    (this project's outputs, which must not become its inputs) are skipped."""
    if input_path is None:
        raise DataError(f"give --input: the {what} file or folder")
    path = Path(input_path)
    if path.is_file():
        return [path], path.parent
    if not path.is_dir():
        raise DataError(f"{path} does not exist: give the {what} file or folder as --input")
    visible = sorted(
        p for p in path.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    prepared = {p for p in visible if hdf5.is_prepared(p)}
    if prepared:
        print(f"{path}: skipped {len(prepared)} prepared-data file(s), first {min(prepared)}: "
              "they are outputs of `prepare`, not raw data", file=sys.stderr)
    return [p for p in visible if p not in prepared], path


def prepare(input_path: Path | None, output: Path, fractions=DEFAULT_FRACTIONS, force: bool = False) -> bool:
    files, root = list_files(input_path, "input")
    total = sum(p.stat().st_size for p in files)
    if total == 0:
        raise DataError(f"{input_path} holds no bytes (no non-empty, non-hidden files): give a file or a folder with data")
    sizes = split_sizes(total, tuple(fractions))
    recipe = hdf5.Recipe(
        dataset="bytes", modality="bytes", example_shape=(),
        parameters={"split_fractions": list(fractions)},
        sources={Path(input_path).name: sha256_of_files(files, root)},
    )

    def write(fh) -> None:
        bounds = np.cumsum([0, *sizes])
        splits = [hdf5.create_split(fh, name, (size,)) for name, size in zip(hdf5.SPLITS, sizes)]
        offset = 0  # position of the next byte in the concatenated stream
        for path in files:
            with path.open("rb") as src:
                while block := src.read(_BLOCK):
                    data = np.frombuffer(block, dtype=np.uint8)
                    for k, dataset in enumerate(splits):
                        lo, hi = max(offset, bounds[k]), min(offset + len(data), bounds[k + 1])
                        if lo < hi:
                            dataset[lo - bounds[k]:hi - bounds[k]] = data[lo - offset:hi - offset]
                    offset += len(data)
        if offset != total:
            raise DataError(f"{input_path} changed while it was read ({offset} bytes instead of {total}): run again")

    return hdf5.build(output, recipe, write, force)
