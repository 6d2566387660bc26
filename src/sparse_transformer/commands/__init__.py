"""The subcommands that run an experiment of params.yaml: train, evaluate, sample.

Each module here only parses arguments and loads the configuration; the work is in
training.py, evaluation.py and sampling.py, imported inside `run` so that the command
line starts without importing Lightning.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import ExperimentConfig, load_experiment


def add_config_arguments(parser: argparse.ArgumentParser, example: str) -> None:
    """--config, --experiment and --set, shared by train, evaluate and sample; `example`
    is a setting of the command's own section, for --set's help."""
    parser.add_argument("--config", type=Path, default=Path("params.yaml"), metavar="FILE.yaml",
                        help="the YAML configuration (default: params.yaml)")
    parser.add_argument("--experiment", metavar="NAME",
                        help="the top-level section of the file to use (default: the whole file is one experiment)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help=f"override a setting, e.g. --set {example} (repeatable; VALUE is YAML)")


def experiment_from_args(args: argparse.Namespace) -> ExperimentConfig:
    return load_experiment(args.config, args.experiment, tuple(args.overrides))
