"""`sparse-transformer sample --config params.yaml [--experiment NAME] [--set ...]`.

Samples of the trained model (sample.checkpoint, default
train.checkpoint_dir/last.ckpt), each byte drawn at sample.temperature from the
sample.top_k most likely and the sample.top_p nucleus, and completions of given starts
(sample.prompt: the top rows of test images, or the start of a text or audio file or of
the test split), written to sample.output_dir: images as samples.png and completions.png
(each completion beside its original), audio as sample_NNN.wav and completion_NNN.wav,
text as sample_NNN.txt and completion_NNN.txt; streams longer than the context with a
sliding window. Logged to the training run in MLflow (grids as images, audio and text as
artifacts).
"""

from __future__ import annotations

import argparse

from . import configure_stage, experiment_from_args

configure = configure_stage(__doc__, example="sample.prompt.count=4")


def run(args: argparse.Namespace) -> int:
    from ..sampling import sample

    files = sample(experiment_from_args(args))
    print(f"wrote {len(files)} file(s): {', '.join(map(str, files))}")
    return 0
