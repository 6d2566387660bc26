"""Stopping before the end: SIGTERM and SIGINT save a checkpoint and exit non-zero (a stopped
run never counts as finished), and a non-finite loss stops training before any
checkpoint holds it."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from training_setup import experiment, text_h5  # noqa: F401 (fixture)

from sparse_transformer.errors import Stopped
from sparse_transformer.stopping import FiniteLoss, LossNotFinite
from sparse_transformer.training import SparseTransformerModule, read_checkpoint, train


def curve_steps(path: Path) -> list[int]:
    with path.open() as fh:
        return [int(row["step"]) for row in csv.DictReader(fh)]


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signalled_train_saves_its_step_and_exits_non_zero(tmp_path, text_h5, signum, status):
    """The command as a cluster or a terminal stops it: the signal reaches the whole process
    group (DataLoader workers too) at any moment after the first checkpoint."""
    cfg = experiment(tmp_path, text_h5, data={"num_workers": 1}, tracking={"enabled": False},
                     train={"max_steps": 1_000_000, "checkpoint_every_steps": 3, "val_every_steps": None})
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps(dataclasses.asdict(cfg)))  # JSON is YAML
    process = subprocess.Popen([sys.executable, "-m", "sparse_transformer.cli", "train", "--config", str(params)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    while not (tmp_path / "checkpoints/last.ckpt").is_file():
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.05)
    os.killpg(process.pid, signum)
    _, err = process.communicate(timeout=300)
    assert process.returncode == status, err[-3000:]
    step = read_checkpoint(tmp_path / "checkpoints/last.ckpt")["global_step"]
    assert err.splitlines()[-1] == (
        f"sparse-transformer train: stopped by {signal.Signals(signum).name} at step {step} of 1000000: saved "
        f"{tmp_path}/checkpoints/last.ckpt; run the same command (or the workflow's stage) again to resume from it")
    assert curve_steps(tmp_path / "curve.csv") == list(range(1, step + 1))  # written with the checkpoint
    assert not (tmp_path / "checkpoints/finished.json").exists()


def test_a_sigterm_at_any_step_resumes_to_the_uninterrupted_weights(tmp_path, text_h5, monkeypatch):
    settings = dict(tracking={"enabled": False}, train={"max_steps": 8, "checkpoint_every_steps": 3,
                                                         "val_every_steps": 4})
    whole = read_checkpoint(train(experiment(tmp_path / "whole", text_h5, **settings)))
    stopped = experiment(tmp_path / "stopped", text_h5, **settings)
    step = SparseTransformerModule.training_step

    def sigterm_during_step_5(self, batch, batch_idx):
        if self.global_step == 4:
            os.kill(os.getpid(), signal.SIGTERM)  # handled by Lightning: the step goes on to its end
        return step(self, batch, batch_idx)

    with monkeypatch.context() as patch:
        patch.setattr(SparseTransformerModule, "training_step", sigterm_during_step_5)
        with pytest.raises(Stopped, match="stopped by SIGTERM at step 5 of 8") as info:
            train(stopped)
    assert info.value.exit_code == 143
    assert read_checkpoint(tmp_path / "stopped/checkpoints/last.ckpt")["global_step"] == 5  # not 3, the interval's
    assert not (tmp_path / "stopped/checkpoints/finished.json").exists()

    resumed = read_checkpoint(train(stopped))
    assert resumed["global_step"] == 8
    for name, value in resumed["state_dict"].items():
        assert torch.equal(value, whole["state_dict"][name]), name
    assert (tmp_path / "stopped/curve.csv").read_text() == (tmp_path / "whole/curve.csv").read_text()
    assert json.loads((tmp_path / "stopped/checkpoints/finished.json").read_text())["step"] == 8


def test_a_non_finite_loss_stops_training_before_a_checkpoint_holds_it(tmp_path, text_h5, monkeypatch):
    cfg = experiment(tmp_path, text_h5, tracking={"enabled": False},
                     train={"max_steps": 12, "checkpoint_every_steps": 3, "log_every_steps": 2, "val_every_steps": None})
    step = SparseTransformerModule.training_step

    def diverges_at_step_5(self, batch, batch_idx):
        loss = step(self, batch, batch_idx)
        return loss * float("nan") if self.global_step >= 4 else loss

    monkeypatch.setattr(SparseTransformerModule, "training_step", diverges_at_step_5)
    with pytest.raises(LossNotFinite, match=rf"the training loss was not finite between steps 5 and 6 "
                                            rf"\({tmp_path}/checkpoints/last.ckpt holds step 3, before it\)"):
        train(cfg)
    last = read_checkpoint(tmp_path / "checkpoints/last.ckpt")
    assert last["global_step"] == 3
    assert all(bool(torch.isfinite(value).all()) for value in last["state_dict"].values())
    assert curve_steps(tmp_path / "curve.csv") == [2]  # no non-finite row


def test_the_loss_check_reads_nothing_on_the_host_between_logging_steps():
    """A read of a device value is a host sync (and breaks a CUDA graph): only logging steps read."""
    from test_sampling import HostReads

    trainer = SimpleNamespace(global_step=3, strategy=SimpleNamespace(reduce_boolean_decision=lambda ok, all: ok))
    check = FiniteLoss(every=5, last=Path("last.ckpt"))
    with HostReads() as reads:
        for step, loss in ((3, 1.0), (4, float("inf"))):
            trainer.global_step = step
            check.on_train_batch_end(trainer, None, {"loss": torch.tensor(loss)}, None, 0)
    assert reads.ops == []
    trainer.global_step = 5
    with pytest.raises(LossNotFinite, match="between steps 1 and 5 .no checkpoint was written"):
        check.on_train_batch_end(trainer, None, {"loss": torch.tensor(1.0)}, None, 0)
