"""`audio`: a folder of recordings (WAV, FLAC, OGG, MP3, anything libsndfile decodes)
-> mono -> resampled (soxr, default 12 kHz as in the paper) -> 8-bit mu-law bytes.

Each split is the concatenation of whole recordings; `{split}_boundaries` records where
each starts, so that training windows can stay inside one recording. Recordings are
assigned to splits by a seeded shuffle and the split fractions (default 0.9, 0.05, 0.05;
each split with a non-zero fraction gets at least one recording), never cut.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

from . import hdf5, mulaw
from .checksums import sha256_of_files
from .errors import DataError
from .raw_bytes import list_files
from .splits import DEFAULT_FRACTIONS, shuffled_split

SAMPLE_RATE = 12_000
EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".aif", ".aiff")
OGG_EXTENSIONS = (".ogg", ".oga")
_OGG_PAGE_MAX = 27 + 255 + 255 * 255  # header, segment table, payload
_COPY_BLOCK = 1 << 26


def audio_files(folder: Path | None) -> list[Path]:
    files, _ = list_files(folder, "audio")
    found = [p for p in files if p.suffix.lower() in EXTENSIONS]
    if not found:
        raise DataError(f"{folder} holds no audio files ({', '.join(EXTENSIONS)}): give a folder of recordings")
    return found


def ogg_ends_whole(path: Path) -> bool:
    """Whether an Ogg file ends with a whole page that closes its stream (the
    end-of-stream flag). libsndfile decodes a cut file up to the cut without an error."""
    with open(path, "rb") as fh:
        size = fh.seek(0, 2)
        fh.seek(max(0, size - _OGG_PAGE_MAX))
        tail = fh.read()
    start = tail.rfind(b"OggS")
    while start >= 0:  # the last page that ends exactly where the file does
        header = tail[start:start + 27]
        table = tail[start + 27:start + 27 + header[26]] if len(header) == 27 else b""
        if len(header) == 27 and len(table) == header[26] and start + 27 + len(table) + sum(table) == len(tail):
            return bool(header[5] & 0x04)
        start = tail.rfind(b"OggS", 0, start)
    return False


def load_mulaw(path: Path, sample_rate: int) -> np.ndarray:
    """One recording as mu-law bytes at `sample_rate`, mono (the mean of its channels)."""
    import soundfile
    import soxr

    try:
        samples, rate = soundfile.read(path, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, OSError) as err:
        raise DataError(f"{path} cannot be decoded as audio ({err})") from None
    if path.suffix.lower() in OGG_EXTENSIONS and not ogg_ends_whole(path):
        raise DataError(f"{path} is truncated (its Ogg stream stops before its last page)")
    mono = samples.mean(axis=1)
    if rate != sample_rate and len(mono):
        mono = soxr.resample(mono, rate, sample_rate, quality="HQ")
    return mulaw.encode(mono)


def prepare(input_path: Path | None, output: Path, sample_rate: int = SAMPLE_RATE, fractions=DEFAULT_FRACTIONS,
            seed: int = 0, skip_undecodable: bool = False, force: bool = False) -> bool:
    if input_path is not None and Path(input_path).is_file():
        raise DataError(f"{input_path} is a file: `audio` needs a folder of recordings")
    if sample_rate < 1:
        raise DataError(f"the sample rate must be a positive number of Hz, got {sample_rate}")
    files = audio_files(input_path)
    root = Path(input_path)
    recipe = hdf5.Recipe(
        dataset="audio", modality="audio", example_shape=(), sample_rate=sample_rate,
        parameters={"sample_rate": sample_rate, "split_fractions": list(fractions), "seed": seed,
                    "skip_undecodable": skip_undecodable},
        sources={root.name: sha256_of_files(files, root)},
    )

    def write(fh) -> None:
        # Decode everything once into a spool file: the split sizes (needed to lay out
        # contiguous datasets) are known only after decoding, and skipped files change them.
        with tempfile.TemporaryFile(dir=Path(output).parent) as spool:
            decoded: list[tuple[Path, int, int]] = []  # file, offset in spool, length
            skipped = []
            for path in files:
                try:
                    codes = load_mulaw(path, sample_rate)
                except DataError as err:
                    if not skip_undecodable:
                        raise DataError(f"{err}: remove it or pass --skip-undecodable") from None
                    skipped.append(path)
                    continue
                decoded.append((path, spool.tell(), len(codes)))
                spool.write(codes.tobytes())
            if skipped:
                print(f"skipped {len(skipped)} undecodable file(s), first {skipped[0]}", file=sys.stderr)
            if not decoded:
                raise DataError(f"{root}: none of its {len(files)} audio files could be decoded")
            spool.flush()
            spooled = np.memmap(spool, dtype=np.uint8, mode="r") if spool.tell() else np.zeros(0, np.uint8)
            for name, index in zip(hdf5.SPLITS, shuffled_split(len(decoded), tuple(fractions), seed, at_least_one=True)):
                chosen = [decoded[i] for i in index]
                dataset = hdf5.create_split(fh, name, (sum(length for _, _, length in chosen),))
                start = 0
                for _, offset, length in chosen:
                    for lo in range(0, length, _COPY_BLOCK):
                        hi = min(length, lo + _COPY_BLOCK)
                        dataset[start + lo:start + hi] = spooled[offset + lo:offset + hi]
                    start += length
                hdf5.write_boundaries(fh, name, [length for _, _, length in chosen],
                                      [path.relative_to(root).as_posix() for path, _, _ in chosen])
            del spooled

    return hdf5.build(output, recipe, write, force)
