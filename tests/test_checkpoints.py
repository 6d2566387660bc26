"""The checkpoint folder: written whole, one run at a time, resumed only by a run of the same
settings (another run's checkpoint is set aside, never deleted), and damaged or
unreadable checkpoints refused in one line."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from training_setup import experiment, text_h5  # noqa: F401 (fixture)

from sparse_transformer import cli
from sparse_transformer.checkpoints import CheckpointError
from sparse_transformer.evaluation import evaluate
from sparse_transformer.training import AtomicCheckpointIO, read_checkpoint, train


def test_a_checkpoint_from_before_model_mask_loads_with_its_mask(tmp_path):
    """Checkpoints written before 2026-11-30 stored the named mask as model.pattern.mask."""
    from dataclasses import asdict

    from sparse_transformer.checkpoints import model_from_checkpoint
    from sparse_transformer.config import ModelConfig
    from sparse_transformer.model import SparseTransformer
    from sparse_transformer.patterns import Pattern

    mask = {"name": "sliding_window", "window": 3}
    config = ModelConfig(context=8, pattern=Pattern("dense", 4), mask=mask, attention="reference")
    old_section = asdict(config)
    old_section["pattern"]["mask"] = old_section.pop("mask")
    model = SparseTransformer(config)
    path = tmp_path / "old.ckpt"
    torch.save({"hyper_parameters": {"model": old_section},
                "state_dict": {f"model.{name}": value for name, value in model.state_dict().items()}}, path)
    loaded, _ = model_from_checkpoint(path)
    assert loaded.config == config
    tokens = torch.randint(0, 256, (1, 8))
    with torch.no_grad():
        assert torch.equal(loaded(tokens), model.eval()(tokens))


def test_a_checkpoint_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1}, path)

    def dies_half_way(obj, f, *args, **kwargs):
        open(f, "wb").write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"global_step": 2}, path)
    assert read_checkpoint(path)["global_step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_a_second_run_of_an_experiment_stops_at_once_naming_the_first(tmp_path, text_h5):
    cfg = experiment(tmp_path, text_h5, tracking={"enabled": False})
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from sparse_transformer.checkpoints import checkpoint_lock\n"
         f"with checkpoint_lock({str(tmp_path / 'checkpoints')!r}):\n    print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(CheckpointError, match=rf"another `train` is writing .*checkpoints \(process {holder.pid} "
                                                  r"on host \S+, started .*\): wait for it to end or stop it"):
            train(cfg)
    finally:
        holder.communicate("")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints.lock"]  # nothing written, the owner gone
    assert read_checkpoint(train(cfg))["global_step"] == 20  # free again


def test_another_runs_checkpoint_is_set_aside_and_a_longer_run_resumes(tmp_path, text_h5, capsys):
    settings = dict(tracking={"enabled": False}, train={"max_steps": 2, "val_every_steps": None})
    train(experiment(tmp_path, text_h5, **settings))
    longer = dict(settings, train={"max_steps": 3, "val_every_steps": 1, "log_every_steps": 2, "checkpoint_every_steps": 1})
    assert read_checkpoint(train(experiment(tmp_path, text_h5, **longer)))["global_step"] == 3
    assert "resuming from" in capsys.readouterr().out

    wider = experiment(tmp_path, text_h5, model={"d_model": 64}, **settings)
    assert read_checkpoint(train(wider))["global_step"] == 2  # afresh
    err = capsys.readouterr().err
    assert (f"{tmp_path}/checkpoints/last.ckpt was trained with other settings (model.d_model 32 -> 64): set aside "
            f"as {tmp_path}/checkpoints.set-aside-1 (kept, not deleted); training starts afresh") in err
    aside = tmp_path / "checkpoints.set-aside-1"
    assert read_checkpoint(aside / "last.ckpt")["hyper_parameters"]["model"]["d_model"] == 32
    assert (aside / "curve.csv").is_file() and (aside / "step=3.ckpt").is_file()


@pytest.mark.parametrize("tracking", [True, False])
def test_a_corrupt_checkpoint_is_one_line_with_tracking_on_or_off(tmp_path, text_h5, capsys, tracking):
    import dataclasses
    import json

    cfg = experiment(tmp_path, text_h5, tracking={"enabled": tracking}, train={"max_steps": 2, "val_every_steps": None})
    train(cfg)
    last = tmp_path / "checkpoints/last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps(dataclasses.asdict(cfg)))
    assert cli.main(["train", "--config", str(params)]) == 2
    error = capsys.readouterr().err.splitlines()[-1]  # (MLflow may log its own lines before)
    assert error.startswith(f"sparse-transformer train: error: checkpoint {last} cannot be read (")
    assert f"rename {tmp_path}/checkpoints to train afresh, or copy a good step=N.ckpt over it" in error


def test_non_finite_weights_are_refused_for_resuming_and_evaluating(tmp_path, text_h5):
    cfg = experiment(tmp_path, text_h5, tracking={"enabled": False}, train={"max_steps": 2, "val_every_steps": None})
    last = train(cfg)
    checkpoint = torch.load(last, weights_only=True)
    checkpoint["state_dict"]["model.out.weight"][0, 0] = float("nan")
    torch.save(checkpoint, last)
    with pytest.raises(CheckpointError, match=f"checkpoint {last} holds non-finite weights .first in model.out.weight.: "
                                              "it is damaged; rename"):
        train(cfg)
    with pytest.raises(CheckpointError, match="holds non-finite weights .* train again, or point to an earlier checkpoint"):
        evaluate(cfg, progress=False)
