"""Writing outputs so that nothing is lost or half-written.

Every output (HDF5 files, checkpoints, curves, metrics, samples) is written under a
temporary name beside it, `.NAME.HOST-PID.tmp`, and renamed over it only when complete:
a rename within one folder is atomic, so a reader sees the old file or the new one,
never a part. A process killed while writing leaves its temporary behind; the next
write of the same output removes the temporaries of processes of this host that no
longer run (never those of a live process, nor of another host sharing the folder).

`check_file` and `check_folder` try an output's place before any work, so that a path
that cannot be written (under /proc, through a file, a folder where a file belongs)
stops a stage at once with one line instead of failing after hours.
"""

from __future__ import annotations

import glob
import os
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import UserError


class OutputError(UserError):
    """An output path cannot be written."""


def temporary_path(path: Path) -> Path:
    """Where `path` is written before it is renamed into place."""
    return path.with_name(f".{path.name}.{socket.gethostname()}-{os.getpid()}.tmp")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Removes the temporaries of `path` left by processes of this host that have ended."""
    host, removed = socket.gethostname(), []
    prefix = f".{path.name}."
    for candidate in path.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        owner_host, _, pid = candidate.name[len(prefix):-len(".tmp")].rpartition("-")
        if owner_host == host and pid.isdigit() and not _running(int(pid)):
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """`with replacing(out) as temporary: write(temporary)`: the temporary is renamed over
    `out` when the block ends, or removed if it raises (an older `out` stays as it was)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    temporary = temporary_path(path)
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    """Writes a text file whole or not at all."""
    with replacing(path) as temporary:
        temporary.write_text(text)


def _check_writable(folder: Path, field: str) -> None:
    """Files can be made in `folder`, or in the folder that would hold it once created."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"{field}: {existing} is a file, not a folder: choose another path")
    try:
        with tempfile.TemporaryFile(dir=existing):  # the one sure test: make a file there
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise OutputError(f"{field}: cannot write in {existing} ({reason}): choose another path") from None


def check_file(path: str | Path, field: str) -> Path:
    """An output file's path, after checking (creating nothing) that it can be written and
    is not a folder; `field` names the setting that gave it (e.g. "evaluate.metrics_file")."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{field}: {path} is a folder; give the path of a file")
    _check_writable(path.parent, field)
    return path


def check_folder(path: str | Path, field: str) -> Path:
    """An output folder's path, after checking (creating nothing) that files can be made in it."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{field}: {path} is a file; give the path of a folder")
    _check_writable(path, field)
    return path
