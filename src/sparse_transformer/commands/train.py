"""`sparse-transformer train --config params.yaml [--experiment NAME] [--set ...]`.

Train the experiment's model on its prepared data (data.hdf5), writing checkpoints to
train.checkpoint_dir and logging to MLflow. Resumes from train.checkpoint_dir/last.ckpt
when it exists (train.resume); says so and stops when that checkpoint has already
reached the end of training. Draws train.curve_file as a PNG beside it. For several GPUs
of one machine set train.devices and train.strategy (Lightning starts one process per
device); for several nodes, start the command on each with torchrun or SLURM.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import configure_stage, experiment_from_args

configure = configure_stage(__doc__, example="train.max_steps=100")


def run(args: argparse.Namespace) -> int:
    from lightning.pytorch.utilities import rank_zero_only

    from ..figures import write_curve_figure
    from ..training import train

    cfg = experiment_from_args(args)
    print(f"last checkpoint: {train(cfg)}")
    curve = cfg.train.curve_file
    if curve is not None and Path(curve).is_file() and rank_zero_only.rank == 0:
        print(f"training curve: {write_curve_figure(curve, f'{args.experiment or args.config.stem}: bits per dim')}")
    return 0
