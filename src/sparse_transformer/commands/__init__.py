"""The subcommands of `sparse-transformer` (cli.COMMANDS lists them): prepare, train,
evaluate, sample and pattern.

Each module here only parses arguments and loads the configuration (`experiment_from_args`:
`config.load_experiment`, which is what reads params.yaml); the work is in data/prepare.py,
training.py, evaluation.py, sampling.py and pattern_figure.py, imported inside `run` so
that the command line starts without importing PyTorch or Lightning.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import ExperimentConfig, load_experiment


def add_config_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, example: str,
                         config_default: Path | None = Path("params.yaml")) -> None:
    """--config, --experiment and --set, shared by every command that runs an experiment
    of params.yaml; `example` is a setting of the command's own section, for --set's
    help. config_default None: prepare, which tells a --config given from none (and
    then reads params.yaml unless DATASET is given)."""
    parser.add_argument("--config", type=Path, default=config_default, metavar="FILE.yaml",
                        help="the YAML configuration (default: params.yaml)")
    parser.add_argument("--experiment", metavar="NAME",
                        help="the top-level section of the file to use (default: the whole file is one experiment)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help=f"override a setting, e.g. --set {example} (repeatable; VALUE is YAML)")


def configure_stage(doc: str | None, example: str):
    """The `configure(parser)` of a stage that runs one experiment of params.yaml (train,
    evaluate, sample): its description, the module docstring `doc` after its usage line
    (none under `python -OO`, which drops docstrings), and the shared arguments with
    `example` for --set."""
    description = " ".join(doc.split("\n\n", 1)[-1].split()) if doc else None

    def configure(parser: argparse.ArgumentParser) -> None:
        parser.description = description
        add_config_arguments(parser, example=example)

    return configure


def experiment_from_args(args: argparse.Namespace) -> ExperimentConfig:
    return load_experiment(args.config, args.experiment, tuple(args.overrides))
