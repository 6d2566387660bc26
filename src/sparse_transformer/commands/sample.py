"""`sparse-transformer sample --config params.yaml [--experiment NAME] [--set ...]`."""

from __future__ import annotations

import argparse

from . import add_config_arguments, experiment_from_args


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Unconditional samples of the trained model (sample.checkpoint, default train.checkpoint_dir/last.ckpt) "
        "at sample.temperature, written to sample.output_dir: images as samples.png (a grid), audio as "
        "sample_NNN.wav, text as sample_NNN.txt; logged to the training run in MLflow (the grid as an image, "
        "audio and text as artifacts)."
    )
    add_config_arguments(parser, example="sample.count=4")


def run(args: argparse.Namespace) -> int:
    from ..sampling import sample

    files = sample(experiment_from_args(args))
    print(f"wrote {len(files)} file(s): {', '.join(map(str, files))}")
    return 0
