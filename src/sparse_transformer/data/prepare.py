"""Raw files -> the HDF5 layout of docs/hdf5.md, from a `DataConfig` (the data section of
an experiment; `sparse-transformer prepare`, commands/prepare.py, builds one from its
flags too). An existing output made from the same inputs with the same parameters is
reused; otherwise it is rebuilt (atomically: never a half-written file). `fetch` only
makes sure the raw input is there - downloading it (enwik8, CIFAR-10, with
data.download: true) or stopping with where to put it - which is the workflows'
`download` stage.

Each source is one entry of `SOURCES`: how it is prepared and how its raw input is
checked; the source modules are imported only when used, so the command line's help
stays light.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..config import DataConfig


@dataclass(frozen=True)
class Source:
    """One dataset: `build(cfg, input, output, force, skip_checksum)` prepares it (True if
    the file was (re)built), `locate(cfg, input, skip_checksum)` checks its raw input
    (returns it, or None when there is none) and raises DataError saying what to put where."""

    build: Callable[[DataConfig, Path | None, Path, bool, bool], bool]
    locate: Callable[[DataConfig, Path | None, bool], Path | None]
    downloadable: bool = False  # data.download fetches the archive
    whole_folder: bool = False  # reads every file of its input folder


def _enwik8_build(cfg, where, output, force, skip_checksum):
    from . import enwik8
    return enwik8.prepare(where, output, download=cfg.download, force=force)


def _enwik8_locate(cfg, where, skip_checksum):
    from . import enwik8
    from .download import locate_archive
    return locate_archive(where, enwik8.FILENAME, enwik8.URL, cfg.download,
                          lambda path: enwik8.read_enwik8(path, sum(enwik8.SPLIT_BYTES)))


def _cifar10_build(cfg, where, output, force, skip_checksum):
    from . import cifar10
    return cifar10.prepare(where, output, download=cfg.download, force=force, seed=cfg.seed,
                           md5=None if skip_checksum else cifar10.MD5)


def _cifar10_locate(cfg, where, skip_checksum):
    from . import cifar10
    from .checksums import verify_file
    from .download import locate_archive
    expected = {} if skip_checksum else {"md5": cifar10.MD5}
    hint = f"delete it and download {cifar10.URL} again"
    return locate_archive(where, cifar10.FILENAME, cifar10.URL, cfg.download, lambda path: verify_file(path, expected, hint))


def _imagenet64_build(cfg, where, output, force, skip_checksum):
    from . import imagenet64
    return imagenet64.prepare(where, output, force=force)


def _imagenet64_locate(cfg, where, skip_checksum):
    from . import imagenet64
    from .errors import DataError
    if where is None or not where.is_dir():
        raise DataError(f"{where} is not a folder: " + imagenet64.HOW_TO_GET.format(root=where or "FOLDER"))
    batches, folders = imagenet64._locate(where)
    if not (all(name in batches for name in (*imagenet64.TRAIN_BATCHES, imagenet64.VALID_BATCH)) or len(folders) == 2):
        raise DataError(f"{where} holds neither ImageNet64 release completely: " + imagenet64.HOW_TO_GET.format(root=where))
    return where


def _audio_build(cfg, where, output, force, skip_checksum):
    from . import audio
    return audio.prepare(where, output, sample_rate=cfg.sample_rate, fractions=tuple(cfg.split_fractions),
                         seed=cfg.seed, skip_undecodable=cfg.skip_undecodable, force=force)


def _audio_locate(cfg, where, skip_checksum):
    from . import audio
    from .errors import DataError
    if where is None or not where.is_dir():
        raise DataError(f"{where} is not a folder: put your recordings (WAV, FLAC, OGG or MP3) in {where or 'a folder'} "
                        "and set data.input to it (the paper's classical-music set is not public; MAESTRO is a "
                        "public choice)")
    audio.audio_files(where)
    return where


def _bytes_build(cfg, where, output, force, skip_checksum):
    from . import raw_bytes
    return raw_bytes.prepare(where, output, fractions=tuple(cfg.split_fractions), force=force)


def _images_build(cfg, where, output, force, skip_checksum):
    from . import image_folder
    return image_folder.prepare(where, output, fractions=tuple(cfg.split_fractions), seed=cfg.seed, force=force)


def _files_locate(cfg, where, skip_checksum):
    from . import raw_bytes
    raw_bytes.list_files(where, "input")
    return where


def _digits_build(cfg, where, output, force, skip_checksum):
    from . import digits
    return digits.prepare(output, fractions=tuple(cfg.split_fractions), seed=cfg.seed, force=force)


SOURCES: dict[str, Source] = {
    "enwik8": Source(_enwik8_build, _enwik8_locate, downloadable=True),
    "cifar10": Source(_cifar10_build, _cifar10_locate, downloadable=True),
    "imagenet64": Source(_imagenet64_build, _imagenet64_locate),
    "audio": Source(_audio_build, _audio_locate, whole_folder=True),
    "bytes": Source(_bytes_build, _files_locate, whole_folder=True),
    "images": Source(_images_build, _files_locate, whole_folder=True),
    "digits": Source(_digits_build, lambda cfg, where, skip_checksum: None),  # in scikit-learn's wheel: no raw files
}
DOWNLOADABLE = tuple(name for name, source in SOURCES.items() if source.downloadable)


def check_not_input(dataset: str, output: Path, input_path: Path | None) -> None:
    """Refuses an output that is the input, or lies inside an input folder that is read
    whole: it would replace the raw data, or be read as raw data by the next run."""
    from .errors import DataError

    if input_path is None:
        return
    raw, out = Path(input_path).resolve(), Path(output).resolve()
    if out == raw:
        raise DataError(f"the output {output} is the input itself: write the HDF5 file elsewhere, e.g. data/prepared/")
    if SOURCES[dataset].whole_folder and raw in out.parents:
        raise DataError(f"the output {output} lies inside the input folder {input_path}: write the HDF5 file "
                        "elsewhere, e.g. data/prepared/ (inside, it would be read as raw data)")


def _source(cfg: DataConfig) -> tuple[Source, Path | None]:
    from .errors import DataError

    source = SOURCES[cfg.dataset]
    where = None if cfg.input is None else Path(cfg.input)
    if cfg.download and not source.downloadable:
        raise DataError(f"downloading (--download, data.download) works for {', '.join(DOWNLOADABLE)} only; "
                        f"{cfg.dataset} needs its files in its input ({where})")
    return source, where


def prepare(cfg: DataConfig, force: bool = False, skip_checksum: bool = False) -> bool:
    """Prepare the data section's dataset into cfg.hdf5; True if the file was (re)built,
    False if it was up to date. skip_checksum: cifar10 accepts a re-packed archive."""
    from ..outputs import check_file

    source, where = _source(cfg)
    output = Path(cfg.hdf5)
    check_not_input(cfg.dataset, output, where)
    check_file(output, "the output")
    return source.build(cfg, where, output, force, skip_checksum)


def fetch(cfg: DataConfig, skip_checksum: bool = False) -> Path | None:
    """Make sure the raw input of a data section is there, without preparing it: download
    the archive (enwik8, cifar10 with download: true; verified as `prepare` verifies it),
    or check that the file or folder holds what `prepare` needs. Raises DataError saying
    which file to put where. Returns the raw input (None for digits, which has none)."""
    source, where = _source(cfg)
    return source.locate(cfg, where, skip_checksum)
