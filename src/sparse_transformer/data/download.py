"""Fetching a raw archive: resumable (HTTP Range into `<file>.part`), with a progress
bar, verified before it takes its final name."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from .errors import DataError

_BLOCK = 1 << 20


def download(url: str, destination: Path, verify: Callable[[Path], object] | None = None,
             progress: bool = True, timeout: float = 60.0) -> Path:
    """Download `url` to `destination` unless it is already there.

    Bytes arrive in `destination.part`; a run that was cut off resumes from the part's
    length. `verify(path)` (raising DataError on a bad file) checks the completed part
    before it is renamed; a part that fails is deleted so that the next try starts clean.
    """
    destination = Path(destination)
    if destination.is_file():
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    part = destination.with_name(destination.name + ".part")
    offline_hint = (
        f"if this machine is offline, download {url} elsewhere and put it at {destination}"
    )
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code != 416:  # 416: the part already holds the whole file
            raise DataError(f"downloading {url} failed: HTTP {err.code} {err.reason}; {offline_hint}") from None
        response = None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise DataError(f"cannot reach {url} ({reason}); {offline_hint}") from None
    if response is not None:
        with response:
            resumed = response.status == 206
            if not resumed:
                have = 0  # the server ignored the Range header: start over
            length = response.headers.get("Content-Length")
            total = have + int(length) if length is not None else None
            try:
                with part.open("ab" if resumed else "wb") as out, tqdm(
                    total=total, initial=have, unit="B", unit_scale=True,
                    desc=destination.name, disable=not progress,
                ) as bar:
                    while block := response.read(_BLOCK):
                        out.write(block)
                        bar.update(len(block))
            except OSError as err:
                raise DataError(
                    f"downloading {url} broke off after {part.stat().st_size} bytes ({err}); "
                    f"run again to resume from {part}"
                ) from None
        if total is not None and part.stat().st_size != total:
            raise DataError(
                f"downloading {url} ended after {part.stat().st_size} of {total} bytes; run again to resume from {part}"
            )
    if verify is not None:
        try:
            verify(part)
        except DataError as err:
            part.unlink()
            raise DataError(f"the download of {url} is not the expected file ({err}); it was deleted, run again") from None
    os.replace(part, destination)
    return destination


def locate_archive(input_path: Path | None, filename: str, url: str | None,
                   fetch: bool, verify: Callable[[Path], object] | None = None) -> Path:
    """The raw archive `filename`: `input_path` itself, or `input_path/filename` when it
    is a folder; downloaded from `url` there when `fetch` is set and it is missing."""
    if input_path is None:
        raise DataError(f"give --input: the path of {filename} or of the folder that holds it")
    path = Path(input_path)
    if path.is_dir() or not path.suffix:
        path = path / filename
    if path.is_file():
        return path
    if fetch and url is not None:
        return download(url, path, verify)
    where = f"download {url} and put it at {path}" if url else f"put {filename} at {path}"
    fetch_hint = " or pass --download to fetch it" if url else ""
    raise DataError(f"{path} does not exist: {where}{fetch_hint}")
