"""`sparse-transformer prepare [--config params.yaml] --experiment NAME [--set data.FIELD=VALUE]`
(what DVC and Snakemake run), or `sparse-transformer prepare DATASET --input PATH --output FILE.h5`.

Both forms give a `DataConfig` to `data.prepare`: the experiment's data section, or one
built from the flags. `--fetch-only` (with a configuration) only makes sure the raw input
is there: the workflows' `download` stage.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import DATASETS
from . import add_config_arguments

#: the flags of the DATASET form and their defaults (with a configuration, its data section sets these)
FLAGS = dict(input=None, output=None, download=False, split_fractions=(0.9, 0.05, 0.05), seed=0, sample_rate=12_000,
             skip_undecodable=False)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    parser.description = "Raw data -> the HDF5 file training reads (docs/hdf5.md); kept when already made from the same inputs."
    parser.add_argument("dataset", choices=DATASETS, metavar="DATASET", nargs="?",
                        help=f"the source: {', '.join(DATASETS)} (digits needs no --input); "
                             "not with --config, whose data section names it")
    parser.add_argument("--input", type=Path, metavar="PATH",
                        help="the raw input: enwik8.zip / cifar-10-python.tar.gz or the folder that holds it; "
                             "the ImageNet64 folder; a folder of recordings (audio) or images (images); "
                             "any file or folder (bytes)")
    parser.add_argument("--output", type=Path, metavar="FILE.h5", help="the HDF5 file to write (required with DATASET)")
    parser.add_argument("--download", action="store_true", default=FLAGS["download"],
                        help="fetch the archive into --input if it is missing (enwik8, cifar10)")
    parser.add_argument("--split-fractions", type=float, nargs=3, default=FLAGS["split_fractions"],
                        metavar=("TRAIN", "VALID", "TEST"),
                        help="for bytes (contiguous parts), images, audio (whole recordings) and digits")
    parser.add_argument("--seed", type=int, default=FLAGS["seed"],
                        help="draws the valid images of cifar10 and the splits of images, audio and digits")
    parser.add_argument("--sample-rate", type=int, default=FLAGS["sample_rate"], help="audio: resample to this rate (Hz)")
    parser.add_argument("--skip-undecodable", action="store_true", default=FLAGS["skip_undecodable"],
                        help="audio: skip files that fail to decode (reporting how many) instead of stopping")
    parser.add_argument("--skip-checksum", action="store_true",
                        help="cifar10: accept an archive whose md5 differs from the published one (a re-packed copy)")
    parser.add_argument("--force", action="store_true", help="rebuild even if the output is up to date")
    workflow = parser.add_argument_group(
        "from a configuration file (what dvc.yaml and the Snakefile run)",
        "take the source, input, output and options from the data section of one experiment; "
        "the flags above other than --skip-checksum and --force are then refused",
    )
    add_config_arguments(workflow, example="data.seed=1", config_default=None)
    workflow.add_argument("--fetch-only", action="store_true",
                          help="only make sure the raw input exists: download it (enwik8, cifar10 with "
                               "data.download: true) or stop saying where to put it; write no HDF5")


def _data_section(args: argparse.Namespace):
    """The DataConfig this call prepares: the experiment's data section, or the flags'."""
    from ..config import ConfigError, DataConfig, load_experiment

    if args.dataset is None or args.config is not None:
        config = args.config or Path("params.yaml")
        given = ["DATASET"] if args.dataset is not None else []
        for name, default in FLAGS.items():
            value = getattr(args, name)
            if (tuple(value) if isinstance(value, list) else value) != default:  # nargs=3 gives a list
                given.append(f"--{name.replace('_', '-')}")
        if given:
            raise ConfigError(f"{', '.join(given)}: the data section of {config} sets these: change them there or with "
                              "--set data.FIELD=VALUE (DATASET and these flags prepare without a configuration)")
        return load_experiment(config, args.experiment, tuple(args.overrides)).data
    if args.experiment is not None or args.overrides or args.fetch_only:
        raise ConfigError("--experiment, --set and --fetch-only take the data section of a configuration "
                          "(--config, default params.yaml), not DATASET")
    if args.output is None:
        raise ConfigError("give DATASET and --output FILE.h5, or no DATASET to use a configuration's data section")
    return DataConfig(dataset=args.dataset, input=None if args.input is None else str(args.input), hdf5=str(args.output),
                      download=args.download, split_fractions=tuple(args.split_fractions), seed=args.seed,
                      sample_rate=args.sample_rate, skip_undecodable=args.skip_undecodable)


def run(args: argparse.Namespace) -> int:
    from ..data.prepare import fetch, prepare

    data = _data_section(args)
    if args.fetch_only:
        found = fetch(data, skip_checksum=args.skip_checksum)
        print(f"{found} is in place" if found is not None else f"{data.dataset} needs no raw files")
        return 0
    built = prepare(data, force=args.force, skip_checksum=args.skip_checksum)
    print(f"wrote {data.hdf5}" if built else f"{data.hdf5} is up to date (same inputs and parameters): kept")
    return 0
