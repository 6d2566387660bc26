"""`sparse-transformer`: the one command line of the project.

    sparse-transformer pattern ...    draw an attention pattern (Figure 3 of the paper)
    sparse-transformer prepare ...    raw files -> HDF5
    sparse-transformer train ...      train (or resume) a model: checkpoints, MLflow run
    sparse-transformer evaluate ...   bits per dim over a split: metrics JSON, MLflow
    sparse-transformer sample ...     unconditional samples: PNG / WAV / TXT, MLflow
    ...

Each subcommand lives in its own module, which provides
``configure(parser: argparse.ArgumentParser) -> None`` and ``run(args) -> int``;
the table below maps names to modules (keep their top-level imports light: heavy
libraries are imported inside `run`). Every error a user can cause derives from `UserError`
(configuration, data, checkpoints): it is printed as one line and exits with status 2.
A run stopped by a signal (`Stopped`: SIGTERM, Ctrl-C) prints one line saying how to
resume and exits with 128 + the signal's number (143, 130), never 0.
The commands read params.yaml through `config.load_experiment` (as the benchmarks do);
nothing else reads it.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import Stopped, UserError

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "pattern": ("sparse_transformer.commands.pattern", "draw which keys each query attends to, as a PNG"),
    "prepare": ("sparse_transformer.commands.prepare", "raw data (enwik8, CIFAR-10, ImageNet64, audio, bytes, images, digits) -> HDF5"),
    "train": ("sparse_transformer.commands.train", "train a model on prepared data (resumes from its last checkpoint)"),
    "evaluate": ("sparse_transformer.commands.evaluate", "bits per dim of a trained model over a whole split -> metrics JSON"),
    "sample": ("sparse_transformer.commands.sample", "unconditional samples of a trained model -> PNG / WAV / TXT"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparse-transformer",
        description="Sparse Transformer (Child et al. 2019): data, training, evaluation and sampling.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        command.set_defaults(_module=module)
        importlib.import_module(module).configure(command)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except UserError as err:
        print(f"sparse-transformer {args.command}: error: {err}", file=sys.stderr)
        return 2
    except Stopped as stop:
        print(f"sparse-transformer {args.command}: {stop}", file=sys.stderr)
        return stop.exit_code


if __name__ == "__main__":
    sys.exit(main())
