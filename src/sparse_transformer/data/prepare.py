"""`sparse-transformer prepare DATASET --input PATH --output FILE.h5`: raw files -> the
HDF5 layout of docs/hdf5.md. An existing output made from the same inputs with the same
parameters is reused; otherwise it is rebuilt (atomically: never a half-written file)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import DATASETS, DataConfig

DOWNLOADABLE = ("enwik8", "cifar10")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    parser.add_argument("dataset", choices=DATASETS, metavar="DATASET",
                        help=f"the source: {', '.join(DATASETS)} (digits needs no --input)")
    parser.add_argument("--input", type=Path, metavar="PATH",
                        help="the raw input: enwik8.zip / cifar-10-python.tar.gz or the folder that holds it; "
                             "the ImageNet64 folder; a folder of recordings (audio) or images (images); "
                             "any file or folder (bytes)")
    parser.add_argument("--output", type=Path, required=True, metavar="FILE.h5", help="the HDF5 file to write")
    parser.add_argument("--download", action="store_true",
                        help=f"fetch the archive into --input if it is missing ({', '.join(DOWNLOADABLE)})")
    parser.add_argument("--split-fractions", type=float, nargs=3, default=(0.9, 0.05, 0.05),
                        metavar=("TRAIN", "VALID", "TEST"),
                        help="for bytes (contiguous parts), images, audio (whole recordings) and digits")
    parser.add_argument("--seed", type=int, default=0,
                        help="draws the valid images of cifar10 and the splits of images, audio and digits")
    parser.add_argument("--sample-rate", type=int, default=12_000, help="audio: resample to this rate (Hz)")
    parser.add_argument("--skip-undecodable", action="store_true",
                        help="audio: skip files that fail to decode (reporting how many) instead of stopping")
    parser.add_argument("--skip-checksum", action="store_true",
                        help="cifar10: accept an archive whose md5 differs from the published one (a re-packed copy)")
    parser.add_argument("--force", action="store_true", help="rebuild even if the output is up to date")


def prepare(dataset: str, input_path: Path | None, output: Path, *, download: bool = False,
            split_fractions=(0.9, 0.05, 0.05), seed: int = 0, sample_rate: int = 12_000,
            skip_undecodable: bool = False, skip_checksum: bool = False, force: bool = False) -> bool:
    """Prepare one dataset; True if the file was (re)built, False if it was up to date."""
    from . import audio, cifar10, digits, enwik8, image_folder, imagenet64, raw_bytes
    from .errors import DataError

    if download and dataset not in DOWNLOADABLE:
        raise DataError(f"--download works for {', '.join(DOWNLOADABLE)} only; {dataset} needs its files in --input")
    if dataset == "enwik8":
        return enwik8.prepare(input_path, output, download=download, force=force)
    if dataset == "cifar10":
        return cifar10.prepare(input_path, output, download=download, force=force, seed=seed,
                               md5=None if skip_checksum else cifar10.MD5)
    if dataset == "imagenet64":
        return imagenet64.prepare(input_path, output, force=force)
    if dataset == "audio":
        return audio.prepare(input_path, output, sample_rate=sample_rate, fractions=tuple(split_fractions),
                             seed=seed, skip_undecodable=skip_undecodable, force=force)
    if dataset == "bytes":
        return raw_bytes.prepare(input_path, output, fractions=tuple(split_fractions), force=force)
    if dataset == "images":
        return image_folder.prepare(input_path, output, fractions=tuple(split_fractions), seed=seed, force=force)
    if dataset == "digits":
        return digits.prepare(output, fractions=tuple(split_fractions), seed=seed, force=force)
    raise ValueError(f"unknown dataset {dataset!r}")


def prepare_config(cfg: DataConfig, force: bool = False) -> bool:
    """`prepare` driven by a params.yaml data section (already loaded and validated)."""
    return prepare(
        cfg.dataset, None if cfg.input is None else Path(cfg.input), Path(cfg.hdf5), download=cfg.download,
        split_fractions=cfg.split_fractions, seed=cfg.seed, sample_rate=cfg.sample_rate,
        skip_undecodable=cfg.skip_undecodable, force=force,
    )


def run(args: argparse.Namespace) -> int:
    built = prepare(
        args.dataset, args.input, args.output, download=args.download, split_fractions=args.split_fractions,
        seed=args.seed, sample_rate=args.sample_rate, skip_undecodable=args.skip_undecodable,
        skip_checksum=args.skip_checksum, force=args.force,
    )
    print(f"wrote {args.output}" if built else f"{args.output} is up to date (same inputs and parameters): kept")
    return 0
