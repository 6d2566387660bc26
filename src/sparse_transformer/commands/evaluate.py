"""`sparse-transformer evaluate --config params.yaml [--experiment NAME] [--set ...]`.

Bits per dim of the trained model (evaluate.checkpoint, default
train.checkpoint_dir/last.ckpt) over the whole evaluate.split of data.hdf5: images
whole, streams with at least evaluate.min_context bytes of context per byte (default
half the context). Writes evaluate.metrics_file (JSON) and logs to the training run in
MLflow.
"""

from __future__ import annotations

import argparse

from . import configure_stage, experiment_from_args

configure = configure_stage(__doc__, example="evaluate.split=valid")


def run(args: argparse.Namespace) -> int:
    from ..evaluation import evaluate

    cfg = experiment_from_args(args)
    metrics = evaluate(cfg)
    print(f"{metrics['split']}: {metrics['bits_per_dim']:.4f} bits per dim over {metrics['bytes']:,} bytes "
          f"-> {cfg.evaluate.metrics_file}")
    return 0
