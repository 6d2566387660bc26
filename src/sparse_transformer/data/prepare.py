"""`sparse-transformer prepare DATASET --input PATH --output FILE.h5`: raw files -> the
HDF5 layout of docs/hdf5.md. An existing output made from the same inputs with the same
parameters is reused; otherwise it is rebuilt (atomically: never a half-written file).

`sparse-transformer prepare [--config params.yaml] --experiment NAME [--set data.FIELD=VALUE]`
takes everything from the experiment's `data` section instead (what DVC and Snakemake
run; without DATASET, --config defaults to params.yaml as for the other commands); `--fetch-only` then only makes sure the raw input is there - downloading it
(enwik8, CIFAR-10, with data.download: true) or stopping with where to put it - which
is the workflows' `download` stage.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import DATASETS, DataConfig, load_experiment

DOWNLOADABLE = ("enwik8", "cifar10")
#: the sources that read every file of their input folder
WHOLE_FOLDER_SOURCES = ("bytes", "images", "audio")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    parser.add_argument("dataset", choices=DATASETS, metavar="DATASET", nargs="?",
                        help=f"the source: {', '.join(DATASETS)} (digits needs no --input); "
                             "not with --config, whose data section names it")
    parser.add_argument("--input", type=Path, metavar="PATH",
                        help="the raw input: enwik8.zip / cifar-10-python.tar.gz or the folder that holds it; "
                             "the ImageNet64 folder; a folder of recordings (audio) or images (images); "
                             "any file or folder (bytes)")
    parser.add_argument("--output", type=Path, metavar="FILE.h5", help="the HDF5 file to write (required with DATASET)")
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
    workflow = parser.add_argument_group(
        "from a configuration file (what dvc.yaml and the Snakefile run)",
        "take the source, input, output and options from the data section of one experiment; "
        "the flags above other than --skip-checksum and --force are then refused",
    )
    workflow.add_argument("--config", type=Path, metavar="FILE.yaml", default=argparse.SUPPRESS,  # absent: None
                          help="the YAML configuration (default: params.yaml, when no DATASET is given)")
    workflow.add_argument("--experiment", metavar="NAME",
                          help="the top-level section of the file to use (none given: the whole file is one experiment)")
    workflow.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                          help="override a setting, e.g. --set data.seed=1 (repeatable; VALUE is YAML)")
    workflow.add_argument("--fetch-only", action="store_true",
                          help="only make sure the raw input exists: download it (enwik8, cifar10 with "
                               "data.download: true) or stop saying where to put it; write no HDF5")


def check_not_input(dataset: str, output: Path, input_path: Path | None) -> None:
    """Refuses an output that is the input, or lies inside an input folder that is read
    whole: it would replace the raw data, or be read as raw data by the next run."""
    from .errors import DataError

    if input_path is None:
        return
    raw, out = Path(input_path).resolve(), Path(output).resolve()
    if out == raw:
        raise DataError(f"the output {output} is the input itself: write the HDF5 file elsewhere, e.g. data/prepared/")
    if dataset in WHOLE_FOLDER_SOURCES and raw in out.parents:
        raise DataError(f"the output {output} lies inside the input folder {input_path}: write the HDF5 file "
                        "elsewhere, e.g. data/prepared/ (inside, it would be read as raw data)")


def prepare(dataset: str, input_path: Path | None, output: Path, *, download: bool = False,
            split_fractions=(0.9, 0.05, 0.05), seed: int = 0, sample_rate: int = 12_000,
            skip_undecodable: bool = False, skip_checksum: bool = False, force: bool = False) -> bool:
    """Prepare one dataset; True if the file was (re)built, False if it was up to date."""
    from ..outputs import check_file
    from . import audio, cifar10, digits, enwik8, image_folder, imagenet64, raw_bytes
    from .errors import DataError

    if download and dataset not in DOWNLOADABLE:
        raise DataError(f"--download works for {', '.join(DOWNLOADABLE)} only; {dataset} needs its files in --input")
    check_not_input(dataset, output, input_path)
    check_file(output, "the output")
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


def prepare_config(cfg: DataConfig, force: bool = False, skip_checksum: bool = False) -> bool:
    """`prepare` driven by a params.yaml data section (already loaded and validated)."""
    return prepare(
        cfg.dataset, None if cfg.input is None else Path(cfg.input), Path(cfg.hdf5), download=cfg.download,
        split_fractions=cfg.split_fractions, seed=cfg.seed, sample_rate=cfg.sample_rate,
        skip_undecodable=cfg.skip_undecodable, skip_checksum=skip_checksum, force=force,
    )


def fetch(cfg: DataConfig, skip_checksum: bool = False) -> Path | None:
    """Make sure the raw input of a data section is there, without preparing it: download
    the archive (enwik8, cifar10 with download: true; verified as `prepare` verifies it),
    or check that the file or folder holds what `prepare` needs. Raises DataError saying
    which file to put where. Returns the raw input (None for digits, which has none)."""
    from . import audio, cifar10, enwik8, imagenet64, raw_bytes
    from .checksums import verify_file
    from .download import locate_archive
    from .errors import DataError

    where = None if cfg.input is None else Path(cfg.input)
    if cfg.download and cfg.dataset not in DOWNLOADABLE:
        raise DataError(f"data.download works for {', '.join(DOWNLOADABLE)} only; {cfg.dataset} needs its files "
                        f"in data.input ({where})")
    if cfg.dataset == "enwik8":
        return locate_archive(where, enwik8.FILENAME, enwik8.URL, cfg.download,
                              lambda path: enwik8.read_enwik8(path, sum(enwik8.SPLIT_BYTES)))
    if cfg.dataset == "cifar10":
        expected = {} if skip_checksum else {"md5": cifar10.MD5}
        hint = f"delete it and download {cifar10.URL} again"
        return locate_archive(where, cifar10.FILENAME, cifar10.URL, cfg.download,
                              lambda path: verify_file(path, expected, hint))
    if cfg.dataset == "imagenet64":
        if where is None or not where.is_dir():
            raise DataError(f"{where} is not a folder: " + imagenet64.HOW_TO_GET.format(root=where or "FOLDER"))
        batches, folders = imagenet64._locate(where)
        if not (all(name in batches for name in (*imagenet64.TRAIN_BATCHES, imagenet64.VALID_BATCH)) or len(folders) == 2):
            raise DataError(f"{where} holds neither ImageNet64 release completely: "
                            + imagenet64.HOW_TO_GET.format(root=where))
        return where
    if cfg.dataset == "audio":
        if where is None or not where.is_dir():
            raise DataError(f"{where} is not a folder: put your recordings (WAV, FLAC, OGG or MP3) in {where or 'a folder'} "
                            "and set data.input to it (the paper's classical-music set is not public; MAESTRO is a "
                            "public choice)")
        audio.audio_files(where)
        return where
    if cfg.dataset in ("bytes", "images"):
        raw_bytes.list_files(where, "input")
        return where
    return None  # digits: in scikit-learn's wheel


def run_config(args: argparse.Namespace, config: Path) -> int:
    """`prepare [--config FILE] [--experiment NAME]`: the experiment's data section."""
    from ..config import ConfigError

    given = [flag for flag, value, default in (
        ("DATASET", args.dataset, None), ("--input", args.input, None), ("--output", args.output, None),
        ("--download", args.download, False), ("--split-fractions", tuple(args.split_fractions), (0.9, 0.05, 0.05)),
        ("--seed", args.seed, 0), ("--sample-rate", args.sample_rate, 12_000),
        ("--skip-undecodable", args.skip_undecodable, False),
    ) if value != default]
    if given:
        raise ConfigError(f"{', '.join(given)}: the data section of {config} sets these: change them there or with "
                          "--set data.FIELD=VALUE (DATASET and these flags prepare without a configuration)")
    data = load_experiment(config, args.experiment, tuple(args.overrides)).data
    if args.fetch_only:
        found = fetch(data, skip_checksum=args.skip_checksum)
        print(f"{found} is in place" if found is not None else f"{data.dataset} needs no raw files")
        return 0
    built = prepare_config(data, force=args.force, skip_checksum=args.skip_checksum)
    print(f"wrote {data.hdf5}" if built else f"{data.hdf5} is up to date (same inputs and parameters): kept")
    return 0


def run(args: argparse.Namespace) -> int:
    from ..config import ConfigError

    config = getattr(args, "config", None)
    if args.dataset is None or config is not None:
        return run_config(args, config or Path("params.yaml"))
    if args.experiment is not None or args.overrides or args.fetch_only:
        raise ConfigError("--experiment, --set and --fetch-only take the data section of a configuration "
                          "(--config, default params.yaml), not DATASET")
    if args.output is None:
        raise ConfigError("give DATASET and --output FILE.h5, or no DATASET to use a configuration's data section")
    built = prepare(
        args.dataset, args.input, args.output, download=args.download, split_fractions=args.split_fractions,
        seed=args.seed, sample_rate=args.sample_rate, skip_undecodable=args.skip_undecodable,
        skip_checksum=args.skip_checksum, force=args.force,
    )
    print(f"wrote {args.output}" if built else f"{args.output} is up to date (same inputs and parameters): kept")
    return 0
