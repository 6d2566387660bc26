"""`sparse-transformer train --config params.yaml [--experiment NAME] [--set ...]`."""

from __future__ import annotations

import argparse

from . import add_config_arguments, experiment_from_args


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Train the experiment's model on its prepared data (data.hdf5), writing checkpoints to "
        "train.checkpoint_dir and logging to MLflow. Resumes from train.checkpoint_dir/last.ckpt when it exists "
        "(train.resume). For several GPUs or nodes, start one process per device with torchrun or SLURM."
    )
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from ..training import train

    print(f"last checkpoint: {train(experiment_from_args(args))}")
    return 0
