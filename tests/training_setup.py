"""Shared by the training, evaluation, sampling and tracking tests: real quickstart data
prepared through the data package, and tiny experiments (d=32, 2 layers, context 64)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sparse_transformer.config import ExperimentConfig, load_experiment_config
from sparse_transformer.data import digits, raw_bytes

SHAKESPEARE = Path(__file__).resolve().parents[1] / "data" / "quickstart" / "text" / "tinyshakespeare.txt"


@pytest.fixture(scope="session")
def text_h5(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "text.h5"
    raw_bytes.prepare(SHAKESPEARE, path)
    return path


@pytest.fixture(scope="session")
def digits_h5(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "digits.h5"
    digits.prepare(path)
    return path


def experiment(workdir: Path, hdf5: Path, **sections: dict) -> ExperimentConfig:
    """A tiny experiment writing everything under `workdir`; `sections` update the defaults."""
    images = "digits" in hdf5.name
    config = {
        "data": {"dataset": "digits" if images else "bytes", "input": None if images else str(SHAKESPEARE),
                 "hdf5": str(hdf5), "batch_size": 8, "num_workers": 0},
        "model": {"context": 64, "layers": 2, "d_model": 32, "heads": 2, "attention": "reference",
                  "image_shape": [8, 8, 1] if images else None, "pattern": {"kind": "strided", "stride": 8}},
        "train": {"max_steps": 20, "warmup_steps": 5, "learning_rate": 3e-3, "checkpoint_dir": str(workdir / "checkpoints"),
                  "checkpoint_every_steps": 10, "val_every_steps": 10, "val_batches": 2, "log_every_steps": 1,
                  "curve_file": str(workdir / "curve.csv")},
        "evaluate": {"metrics_file": str(workdir / "metrics.json"), "batch_size": 64},
        "sample": {"count": 4, "output_dir": str(workdir / "samples")},
        "tracking": {"tracking_uri": f"sqlite:///{workdir / 'mlflow.db'}", "system_metrics": False},
    }
    for name, changes in sections.items():
        config[name].update(changes)
    return load_experiment_config(config, "test")
