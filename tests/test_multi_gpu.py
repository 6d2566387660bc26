"""Training on two GPUs through Lightning's DDP and FSDP strategies (issue 7).

    python -m pytest tests/test_multi_gpu.py -rs

Each test runs `sparse-transformer train` as `python -m sparse_transformer.cli train` in a
subprocess - the command line Lightning's launcher runs again for the second rank - on
the quickstart-text model (2 layers, d_model 64, context 256, Triton kernels, bf16-mixed)
with the quickstart text prepared into a temporary directory: a few steps whose loss is
finite and falls, a last.ckpt that is one file (FSDP gathers the full state dict on rank
0) and that model_from_checkpoint loads with weights that predict held-out text, then a
second run that resumes from it. About 20-40 s a run on H200s, the first paying for
compiling and autotuning the kernels.
"""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from training_setup import text_h5  # noqa: F401 (fixture)

from sparse_transformer.data.hdf5 import open_split
from sparse_transformer.checkpoints import model_from_checkpoint, read_checkpoint

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
GPUS = 2

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(torch.cuda.device_count() < GPUS, reason=f"needs {GPUS} CUDA GPUs, this machine has "
                       f"{torch.cuda.device_count()}: run on a multi-GPU host"),
]


def subprocess_env() -> dict[str, str]:
    """This environment with PYTHONPATH made absolute: the runs work in tmp_path, and a GPU
    host may run the package uninstalled (PYTHONPATH=src plus a folder linking sparse_kernels)."""
    paths = [str(Path(p).absolute()) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def train(workdir: Path, hdf5: Path, strategy: str, max_steps: int) -> str:
    """`sparse-transformer train` of quickstart-text on 2 GPUs; its output."""
    overrides = [
        f"data.hdf5={hdf5}", f"train.devices={GPUS}", f"train.strategy={strategy}", "train.accelerator=gpu",
        f"train.max_steps={max_steps}", "train.warmup_steps=2", "train.checkpoint_every_steps=5",
        "train.val_every_steps=5", "train.val_batches=2", "train.log_every_steps=1",
        f"train.checkpoint_dir={workdir / 'checkpoints'}", f"train.curve_file={workdir / 'curve.csv'}",
        "tracking.enabled=false",
    ]
    command = [sys.executable, "-m", "sparse_transformer.cli", "train", "--config", str(PARAMS),
               "--experiment", "quickstart-text", *(f"--set={o}" for o in overrides)]
    result = subprocess.run(command, cwd=workdir, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{strategy} training failed ({result.returncode}):\n{output[-6000:]}"
    return output


def curve(path: Path) -> dict[int, dict[str, float]]:
    """The training curve's rows: step -> {train_bpd, valid_bpd} (those present)."""
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {int(row["step"]): {k: float(v) for k, v in row.items() if k != "step" and v} for row in rows}


def heldout_bpd(model: torch.nn.Module, hdf5: Path, windows: int = 8) -> float:
    """Bits per byte of `model` on the first windows of the valid split."""
    length = model.config.context + 1
    data = np.array(open_split(hdf5, "valid")[:windows * length]).reshape(windows, length)
    with torch.no_grad():
        return float(model.loss(*model.inputs_and_targets(torch.from_numpy(data))))


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_gpus_train_save_load_and_resume(tmp_path, text_h5, strategy):  # noqa: F811 (fixture)
    train(tmp_path, text_h5, strategy, max_steps=10)
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert last.is_file(), f"{last} is not one file (a sharded FSDP checkpoint is a folder)"
    assert read_checkpoint(last)["global_step"] == 10

    rows = curve(tmp_path / "curve.csv")
    losses = [rows[step]["train_bpd"] for step in range(1, 11)]
    assert all(math.isfinite(loss) for loss in losses + [rows[5]["valid_bpd"]])
    assert losses[0] == pytest.approx(8.0, abs=0.05)  # W_out = 0: uniform over 256 bytes
    assert losses[-1] < losses[0] - 0.2

    # The full weights, loadable without Lightning or FSDP (evaluate and sample read them so).
    model, _ = model_from_checkpoint(last, attention="reference")
    assert heldout_bpd(model, text_h5) < 7.8

    output = train(tmp_path, text_h5, strategy, max_steps=16)
    assert f"resuming from {last}" in output
    assert read_checkpoint(last)["global_step"] == 16
    assert sorted(curve(tmp_path / "curve.csv")) == list(range(1, 17))
