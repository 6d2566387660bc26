"""Digests of raw inputs: verified against published checksums and recorded in the HDF5
file so that a prepared file is reused only when its inputs are the same."""

from __future__ import annotations

import hashlib
from pathlib import Path

from .errors import DataError

_BLOCK = 1 << 22


def file_digests(path: Path, algorithms: tuple[str, ...] = ("sha256",)) -> dict[str, str]:
    """Hex digests of one file for several algorithms, read once."""
    hashers = {name: hashlib.new(name) for name in algorithms}
    with Path(path).open("rb") as fh:
        while block := fh.read(_BLOCK):
            for hasher in hashers.values():
                hasher.update(block)
    return {name: hasher.hexdigest() for name, hasher in hashers.items()}


def sha256_of_files(files: list[Path], root: Path) -> str:
    """One digest for a set of files: sha256 over the sorted lines "relative/path sha256".

    Renaming, adding, removing or changing any file changes it; a folder of a million
    images still gives one short attribute.
    """
    manifest = hashlib.sha256()
    for path in sorted(files, key=lambda p: p.relative_to(root).as_posix()):
        line = f"{path.relative_to(root).as_posix()} {file_digests(path)['sha256']}\n"
        manifest.update(line.encode())
    return manifest.hexdigest()


def verify_file(path: Path, expected: dict[str, str], what_to_do: str) -> str:
    """Check `path` against expected digests ({"md5": hex}); return its sha256.

    Raises DataError naming the file, both digests and `what_to_do`.
    """
    digests = file_digests(path, tuple(dict.fromkeys(["sha256", *expected])))
    for name, want in expected.items():
        if digests[name] != want.lower():
            raise DataError(
                f"{path}: {name} is {digests[name]} but the published file has {want}: "
                f"the file is corrupt, truncated or a different release; {what_to_do}"
            )
    return digests["sha256"]
