"""Training: the loss falls on real text, a killed run resumes exactly, the optimizer and
schedule are as documented."""

from __future__ import annotations

import csv
import re

import pytest
import torch
from mlflow import MlflowClient
from PIL import Image
from training_setup import digits_h5, experiment, text_h5  # noqa: F401 (fixtures)

from sparse_transformer.config import ConfigError, ModelConfig
from sparse_transformer.patterns import Pattern
from sparse_transformer.model import SparseTransformer
from sparse_transformer.training import (
    SparseTransformerModule, parameter_groups, read_checkpoint, train, warmup_cosine,
)


def history(cfg, run_id: str, key: str) -> list[tuple[int, float]]:
    client = MlflowClient(cfg.tracking.tracking_uri)
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_warmup_is_linear_then_cosine_to_zero():
    factors = [warmup_cosine(step, warmup_steps=4, total_steps=14) for step in range(15)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4] == 1.0 and factors[9] == pytest.approx(0.5) and factors[14] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(factors[4:], factors[5:]))


def test_only_linear_weight_matrices_are_decayed():
    model = SparseTransformer(ModelConfig(context=16, pattern=Pattern("strided", 4)))
    decayed, not_decayed = parameter_groups(model, 0.01)
    names = {id(p): name for name, p in model.named_parameters()}
    decayed_names = {names[id(p)] for p in decayed["params"]}
    assert decayed["weight_decay"] == 0.01 and not_decayed["weight_decay"] == 0.0
    assert decayed_names == {name for name in names.values() if name.endswith("weight") and (
        ".attn." in name or ".ff." in name or name == "out.weight")}
    assert len(decayed["params"]) + len(not_decayed["params"]) == len(list(model.parameters()))


@pytest.mark.slow
def test_loss_falls_on_shakespeare_and_the_last_checkpoint_is_the_last_step(tmp_path, text_h5):
    cfg = experiment(tmp_path, text_h5, train={"max_steps": 45, "checkpoint_every_steps": 20})
    last = train(cfg)
    checkpoint = read_checkpoint(last)
    assert checkpoint["global_step"] == 45  # not 40, the last interval checkpoint
    losses = [value for _, value in history(cfg, checkpoint["mlflow_run_id"], "train/bpd")]
    assert len(losses) == 45
    assert losses[0] == pytest.approx(8.0, abs=0.01)  # W_out = 0: uniform over 256 bytes
    assert sum(losses[-5:]) / 5 < 5.5  # tinyshakespeare's unigram entropy is about 4.8 bits
    valid = history(cfg, checkpoint["mlflow_run_id"], "valid/bpd")
    assert valid[-1][1] < valid[0][1] < 8.0


@pytest.mark.slow
@pytest.mark.parametrize("accumulate", [1, 2])
def test_a_killed_run_resumes_with_the_same_losses(tmp_path, text_h5, monkeypatch, accumulate):
    """Train N + 2 steps with a checkpoint at N, die, resume to 2N: every step's loss equals
    the uninterrupted run's, each step logged once (N + 1 and N + 2 are trained twice), in
    the same MLflow run and training curve, which keeps its rows up to N although no
    validation wrote it (dropout on)."""
    n = 6
    settings = dict(model={"dropout": 0.1}, train={"max_steps": 2 * n, "checkpoint_every_steps": n,
                                                   "val_every_steps": 2 * n, "accumulate_grad_batches": accumulate})
    whole = experiment(tmp_path / "whole", text_h5, **settings)
    whole_run = read_checkpoint(train(whole))["mlflow_run_id"]

    killed = experiment(tmp_path / "killed", text_h5, **settings)
    step = SparseTransformerModule.training_step

    def dies_after_n_plus_2_steps(self, batch, batch_idx):
        if self.global_step == n + 2:
            raise RuntimeError("killed")
        return step(self, batch, batch_idx)

    with monkeypatch.context() as patch:
        patch.setattr(SparseTransformerModule, "training_step", dies_after_n_plus_2_steps)
        with pytest.raises(RuntimeError, match="killed"):
            train(killed)
    assert read_checkpoint(tmp_path / "killed/checkpoints/last.ckpt")["global_step"] == n
    final = read_checkpoint(train(killed))
    assert final["global_step"] == 2 * n

    expected = history(whole, whole_run, "train/bpd")
    assert [s for s, _ in expected] == list(range(1, 2 * n + 1))  # one loss per optimizer step, counted from 1
    assert history(killed, final["mlflow_run_id"], "train/bpd") == expected
    curve = (tmp_path / "whole/curve.csv").read_text()
    assert curve.count("\n") == 2 * n + 1 and (tmp_path / "killed/curve.csv").read_text() == curve
    weights = read_checkpoint(tmp_path / "whole/checkpoints/last.ckpt")["state_dict"]
    for name, value in final["state_dict"].items():
        assert torch.equal(value, weights[name]), name


def test_images_train_on_every_byte_from_the_start_symbol(tmp_path, digits_h5):
    cfg = experiment(tmp_path, digits_h5, train={"max_steps": 3, "val_every_steps": None}, tracking={"enabled": False})
    checkpoint = read_checkpoint(train(cfg))
    assert checkpoint["global_step"] == 3 and checkpoint["mlflow_run_id"] is None
    torch.manual_seed(cfg.train.seed)  # train() initializes the model from this seed
    initial = SparseTransformer(cfg.model).token_embedding.weight
    trained = checkpoint["state_dict"]["model.token_embedding.weight"]
    assert trained.shape == (257, 32)
    assert torch.equal(trained[1], initial[1])  # digits have 17 grey levels: byte 1 never occurs, never learns
    assert not torch.allclose(trained[256], initial[256])  # the start symbol, input of every image's first byte, learns


def test_the_progress_bar_counts_steps_of_max_steps(tmp_path, digits_h5, capsys):
    # 3 batches an epoch: Lightning's own bar would count them, epoch by epoch ("Epoch 1/-2")
    cfg = experiment(tmp_path, digits_h5, data={"batch_size": 512}, train={"max_steps": 6, "val_every_steps": None},
                     tracking={"enabled": False})
    train(cfg)
    shown = capsys.readouterr().out
    assert "Training: 100%" in shown and "6/6" in shown and "step/s" in shown and "Epoch" not in shown


def test_stream_data_with_an_image_model_is_refused(tmp_path, text_h5):
    cfg = experiment(tmp_path, text_h5, model={"image_shape": [8, 8, 1]}, tracking={"enabled": False})
    with pytest.raises(ConfigError, match="model.image_shape: .* set image_shape to null"):
        train(cfg)
    assert not (tmp_path / "checkpoints").exists()


def test_trainer_settings_come_from_the_config(tmp_path):
    from sparse_transformer.config import TrainConfig
    from sparse_transformer.training import build_trainer

    cfg = TrainConfig(max_steps=7, accumulate_grad_batches=3, gradient_clip=0.5, val_every_steps=4,
                      checkpoint_dir=str(tmp_path), accelerator="cpu", devices=1)
    trainer = build_trainer(cfg)
    assert trainer.max_steps == 7 and trainer.accumulate_grad_batches == 3
    assert trainer.gradient_clip_val == 0.5 and trainer.val_check_interval == 12  # batches, not steps
    assert trainer.precision == "32-true"  # the default on a CPU
    assert trainer.max_epochs == -1  # max_steps alone ends training


def test_fsdp_shards_the_model_block_by_block_into_full_checkpoints():
    from sparse_transformer.config import TrainConfig
    from sparse_transformer.model import ResidualBlock
    from sparse_transformer.training import strategy

    fsdp = strategy(TrainConfig(strategy="fsdp"))
    assert fsdp.kwargs["auto_wrap_policy"]._module_classes == {ResidualBlock}
    assert fsdp._state_dict_type == "full"  # one file that evaluate and sample can read
    assert strategy(TrainConfig(strategy="ddp")) == "ddp"


def test_the_command_line_trains_evaluates_and_samples_an_experiment_of_params_yaml(tmp_path, text_h5, capsys):
    import dataclasses
    import json

    from sparse_transformer import cli

    cfg = experiment(tmp_path, text_h5, tracking={"enabled": False})
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps({"shakespeare": dataclasses.asdict(cfg)}))  # JSON is YAML
    common = ["--config", str(params), "--experiment", "shakespeare", "--set", "train.max_steps=3"]
    assert cli.main(["train", *common]) == 0
    assert read_checkpoint(tmp_path / "checkpoints/last.ckpt")["global_step"] == 3
    assert Image.open(tmp_path / "curve.png").size == (640, 400)  # the curve, drawn beside curve.csv
    capsys.readouterr()
    assert cli.main(["train", *common, "--set", "train.max_steps=2"]) == 0  # nothing failed: nothing to do
    said = capsys.readouterr().out
    assert f"the run is already complete: {tmp_path}/checkpoints/last.ckpt is at step 3, and train.max_steps is 2" in said
    assert "--set train.resume=false" in said and "resuming" not in said
    assert read_checkpoint(tmp_path / "checkpoints/last.ckpt")["global_step"] == 3
    assert cli.main(["evaluate", *common, "--set", "evaluate.split=valid"]) == 0
    assert json.loads((tmp_path / "metrics.json").read_text())["split"] == "valid"
    assert cli.main(["sample", *common, "--set", "sample.count=2", "--set", "sample.length=16"]) == 0
    assert [len(p.read_bytes()) for p in sorted((tmp_path / "samples").glob("sample_*"))] == [16, 16]
    assert cli.main(["train", *common, "--set", "train.max_stepz=3"]) == 2
    assert "shakespeare.train: unknown field(s) max_stepz" in capsys.readouterr().err


@pytest.mark.parametrize(("changes", "message"), [
    ({"train": {"max_steps": None}}, "test.train.max_steps: give max_steps or max_epochs"),
    ({"train": {"precision": "bf17"}}, "test.train.precision: unknown precision 'bf17'"),
    ({"train": {"devices": "all"}}, "test.train.devices: a number of devices or 'auto'"),
    ({"evaluate": {"min_context": 64}}, "test.evaluate.min_context: must be below model.context=64"),
    ({"evaluate": {"split": "dev"}}, "test.evaluate.split: unknown split 'dev'"),
    ({"sample": {"temperature": 0}}, "test.sample.temperature: must be positive"),
    ({"sample": {"top_p": 1.5}}, "test.sample.top_p: must be in (0, 1]"),
    ({"sample": {"top_k": 0}}, "test.sample.top_k: must be a positive integer or null"),
    ({"sample": {"prompt": {"count": -1}}}, "test.sample.prompt.count: must be 0 (no completions) or more"),
    ({"sample": {"prompt": {"seconds": 0}}}, "test.sample.prompt.seconds: must be positive"),
    ({"data": {"context": 65}}, "test.data.context: at most model.context=64"),
])
def test_configuration_errors_name_the_field(tmp_path, text_h5, changes, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        experiment(tmp_path, text_h5, **changes)


def test_a_file_of_several_experiments_needs_one_named(tmp_path):
    from sparse_transformer.config import load_experiment

    params = tmp_path / "params.yaml"
    params.write_text("workflow: {paper: [enwik8]}\nenwik8: {data: {input: enwik8.zip}}\ncifar10: {data: {input: cifar.tar.gz}}\n")
    with pytest.raises(ConfigError, match="choose one of its experiments with --experiment: enwik8, cifar10$"):
        load_experiment(params)  # workflow is not an experiment
    cfg = load_experiment(params, "cifar10", ("train.max_steps=5", "model.pattern.kind=dense"))
    assert cfg.data.input == "cifar.tar.gz" and cfg.train.max_steps == 5 and cfg.model.pattern.kind == "dense"
    with pytest.raises(ConfigError, match="write SECTION.FIELD=VALUE"):
        load_experiment(params, "cifar10", ("train.max_steps",))


def test_compile_mode_is_checked_against_torch_compile_modes():
    from sparse_transformer.config import TrainConfig

    TrainConfig(compile=True, compile_mode="reduce-overhead").validate()
    with pytest.raises(ConfigError, match="train.compile_mode: unknown compile_mode 'fast': choose one of default, reduce-overhead"):
        TrainConfig(compile=True, compile_mode="fast").validate()


@pytest.mark.slow
def test_compiled_blocks_train_under_lightning_with_the_eager_losses(tmp_path, text_h5):
    """train.compile with CUDA graphs asked for (skipped on the CPU, the rest compiled):
    the same per-step losses as the eager run, logged and checkpointed as usual."""
    losses = {}
    for compiled in (False, True):
        cfg = experiment(tmp_path / str(compiled), text_h5, tracking={"enabled": False},
                         train={"max_steps": 6, "val_every_steps": None, "compile": compiled,
                                "compile_mode": "reduce-overhead"})
        checkpoint = read_checkpoint(train(cfg))
        assert checkpoint["global_step"] == 6
        with open(cfg.train.curve_file) as curve:
            losses[compiled] = [float(row["train_bpd"]) for row in csv.DictReader(curve)]
    assert len(losses[True]) == 6
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)


def test_a_damaged_curve_does_not_stop_a_resume(tmp_path, text_h5, capsys):
    sections = dict(tracking={"enabled": False}, train={"max_steps": 3, "val_every_steps": None})
    train(experiment(tmp_path, text_h5, **sections))
    curve = tmp_path / "curve.csv"
    header, one, _, three = curve.read_text().splitlines()
    curve.write_text("\n".join([header, one, "two,7.9,", three, "\x00garbage,,"]) + "\n")  # two rows damaged
    sections["train"]["max_steps"] = 4
    assert read_checkpoint(train(experiment(tmp_path, text_h5, **sections)))["global_step"] == 4
    assert f"warning: {curve}: skipped 2 damaged row(s); the others are kept" in capsys.readouterr().err
    with curve.open() as fh:
        assert [row["step"] for row in csv.DictReader(fh)] == ["1", "3", "4"]


def test_a_step_that_cannot_be_allocated_is_one_line_saying_what_it_asked_for(tmp_path, text_h5, monkeypatch):
    from sparse_transformer.errors import UserError

    def enormous_forward(self, tokens):
        return torch.empty(2**50, dtype=torch.uint8)  # a real allocation failure, of 1 PiB

    monkeypatch.setattr(SparseTransformer, "forward", enormous_forward)
    cfg = experiment(tmp_path, text_h5, tracking={"enabled": False}, train={"max_steps": 2})
    with pytest.raises(UserError, match=r"a training step needs more memory than the device has \(one allocation of "
                                        r"1,048,576.0 GiB\): lower data.batch_size or the context"):
        train(cfg)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the setting is valid here")
def test_a_gpu_accelerator_without_one_is_a_config_error(tmp_path):
    from sparse_transformer.config import TrainConfig
    from sparse_transformer.training import build_trainer

    with pytest.raises(ConfigError, match="train .accelerator, devices, strategy.: `CUDAAccelerator` can not run on your system"):
        build_trainer(TrainConfig(accelerator="cuda", checkpoint_dir=str(tmp_path)))
