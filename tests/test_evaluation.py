"""Evaluation: every byte scored once with the minimum context, and the total equals a
plain sum of log-probabilities."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from tiny_model import tiny_model
from training_setup import experiment, text_h5  # noqa: F401 (fixtures)

from sparse_transformer import evaluation
from sparse_transformer.config import ConfigError
from sparse_transformer.data.errors import DataError
from sparse_transformer.errors import UserError
from sparse_transformer.evaluation import _nats as nats_of
from sparse_transformer.evaluation import evaluate, score_images, score_stream, stream_windows
from sparse_transformer.training import read_checkpoint, train

CPU = torch.device("cpu")


@pytest.mark.parametrize(("lo", "hi", "context", "min_context"),
                         [(0, 100, 16, 8), (5, 200, 16, 0), (0, 97, 16, 15), (3, 12, 16, 8), (0, 17, 16, 8), (4, 5, 16, 8)])
def test_windows_score_every_byte_once_with_at_least_min_context(lo, hi, context, min_context):
    windows = stream_windows(lo, hi, context, min_context)
    scored = []
    for k, w in enumerate(windows):
        assert lo <= w.start and w.start + w.length + 1 <= hi  # inside the recording
        assert w.length == min(context, hi - lo - 1)
        targets = range(w.start + 1 + w.length - w.scored, w.start + 1 + w.length)
        if k > 0:
            assert all(t - w.start >= min_context for t in targets)  # bytes of context before each target
            assert w.scored <= context - min_context
        scored.extend(targets)
    assert scored == list(range(lo + 1, hi))


def test_stream_score_is_the_sum_of_log_probabilities_of_its_windows():
    model = tiny_model()
    data = np.random.default_rng(0).integers(0, 256, 150, dtype=np.uint8)
    boundaries = [0, 70, 80, 150]  # three recordings, one shorter than a window
    context, min_context = 16, 6
    expected, count = 0.0, 0
    with torch.no_grad():
        for lo, hi in zip(boundaries[:-1], boundaries[1:]):
            for w in stream_windows(lo, hi, context, min_context):
                window = torch.tensor(data[w.start:w.start + w.length + 1], dtype=torch.long)
                log_p = torch.log_softmax(model(window[None, :-1])[0], dim=-1)  # (length, 256)
                for position in range(w.length - w.scored, w.length):
                    expected -= log_p[position, window[position + 1]].item()
                    count += 1
    nats, scored = score_stream(model, data, boundaries, context, min_context, batch_size=3, device=CPU, progress=False)
    assert scored == count == 150 - 3
    assert nats == pytest.approx(expected, rel=1e-6)


def test_image_score_covers_every_byte_from_the_start_symbol(monkeypatch):
    model = tiny_model(context=12, image_shape=(2, 2, 3))
    images = np.random.default_rng(1).integers(0, 256, (5, 2, 2, 3), dtype=np.uint8)
    images.flags.writeable = False  # as a split of the HDF5 file arrives (memory-mapped)
    given_to_torch = []  # torch.from_numpy warns (once a process) about read-only arrays
    monkeypatch.setattr(evaluation, "_nats", lambda model, examples, device: given_to_torch.append(
        examples.flags.writeable) or nats_of(model, examples, device))
    expected = 0.0
    with torch.no_grad():
        for image in images:
            flat = torch.tensor(image.reshape(-1), dtype=torch.long)
            inputs = torch.cat([torch.tensor([256]), flat[:-1]])  # the start symbol, then bytes 0..n-2
            log_p = torch.log_softmax(model(inputs[None])[0], dim=-1)
            expected -= log_p[torch.arange(12), flat].sum().item()
    nats, scored = score_images(model, images, batch_size=2, device=CPU, progress=False)
    assert scored == 5 * 12
    assert nats == pytest.approx(expected, rel=1e-6)
    assert given_to_torch == [True] * 3  # copies, not views of the read-only split


def test_more_context_scores_the_same_bytes(tmp_path, text_h5):
    """evaluate() end to end: the metrics JSON, and Table 3's knob: a longer minimum context
    scores the same bytes of the trained model."""
    cfg = experiment(tmp_path, text_h5, train={"max_steps": 30, "val_every_steps": None}, tracking={"enabled": False})
    train(cfg)
    results = {}
    for min_context in (0, 48):
        ev = experiment(tmp_path, text_h5, evaluate={"min_context": min_context, "split": "valid"},
                        tracking={"enabled": False}).evaluate
        metrics = evaluate(dataclasses.replace(cfg, evaluate=ev), progress=False)
        assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
        results[min_context] = metrics
    assert results[0]["bytes"] == results[48]["bytes"] == 55_770 - 1
    assert results[0]["step"] == read_checkpoint(tmp_path / "checkpoints/last.ckpt")["global_step"] == 30
    assert 3.0 < results[48]["bits_per_dim"] < 6.5 and math.isfinite(results[0]["bits_per_dim"])
    assert results[48]["bits_per_dim"] != results[0]["bits_per_dim"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, text_h5):
    """A tiny model trained 2 steps, on a copy of the data that a test may damage."""
    import shutil

    workdir = tmp_path_factory.mktemp("trained")
    shutil.copy(text_h5, workdir / "text.h5")
    cfg = experiment(workdir, workdir / "text.h5", tracking={"enabled": False},
                     train={"max_steps": 2, "val_every_steps": None}, evaluate={"split": "valid"})
    train(cfg)
    return cfg


def test_a_damaged_split_is_refused_not_scored(trained, tmp_path):
    import shutil

    import h5py

    damaged = tmp_path / "text.h5"
    shutil.copy(trained.data.hdf5, damaged)
    with h5py.File(damaged, "r") as fh:
        offset = fh["valid"].id.get_offset()
    with open(damaged, "r+b") as fh:
        fh.seek(offset + 1000)
        fh.write(bytes(20_000))  # 20 kB of garbage in the valid split
    cfg = dataclasses.replace(trained, data=dataclasses.replace(trained.data, hdf5=str(damaged)),
                              evaluate=dataclasses.replace(trained.evaluate, metrics_file=str(tmp_path / "m.json")))
    with pytest.raises(DataError, match="valid no longer match.* the file is damaged; prepare it again"):
        evaluate(cfg, progress=False)
    assert not (tmp_path / "m.json").exists()


def test_a_non_finite_result_is_refused_not_written(trained, tmp_path):
    checkpoint = torch.load(last_checkpoint(trained), weights_only=True)
    checkpoint["state_dict"]["model.out.weight"].fill_(3e38)  # finite weights whose logits overflow
    torch.save(checkpoint, tmp_path / "overflow.ckpt")
    cfg = dataclasses.replace(trained, evaluate=dataclasses.replace(
        trained.evaluate, checkpoint=str(tmp_path / "overflow.ckpt"), metrics_file=str(tmp_path / "m.json")))
    with pytest.raises(UserError, match=r"overflow.ckpt on the valid split is not finite \(nan\): .* left as it was"):
        evaluate(cfg, progress=False)
    assert not (tmp_path / "m.json").exists()


def test_a_checkpoint_of_another_model_is_evaluated_with_a_note(trained, tmp_path, capsys):
    cfg = dataclasses.replace(trained, model=dataclasses.replace(trained.model, layers=3, d_model=64),
                              evaluate=dataclasses.replace(trained.evaluate, metrics_file=str(tmp_path / "m.json")))
    assert evaluate(cfg, progress=False)["step"] == 2
    note = capsys.readouterr().err.strip().splitlines()
    assert [line for line in note if line.startswith("note:")] == [
        f"note: using the model stored in {last_checkpoint(trained)}, whose settings differ from the "
        "experiment's model section (model.d_model 32 -> 64; model.layers 2 -> 3)"]


def test_outputs_and_devices_are_checked_before_any_work(trained, tmp_path):
    from sparse_transformer.outputs import OutputError

    (tmp_path / "metrics.json").mkdir()
    cfg = dataclasses.replace(trained, evaluate=dataclasses.replace(trained.evaluate, metrics_file=str(tmp_path / "metrics.json")))
    with pytest.raises(OutputError, match="evaluate.metrics_file: .*metrics.json is a folder; give the path of a file"):
        evaluate(cfg, progress=False)
    if not torch.cuda.is_available():
        cfg = dataclasses.replace(trained, evaluate=dataclasses.replace(trained.evaluate, device="cuda"))
        with pytest.raises(ConfigError, match="evaluate.device: cuda is not available on this machine .*: set auto or cpu"):
            evaluate(cfg, progress=False)


def last_checkpoint(cfg) -> str:
    return f"{cfg.train.checkpoint_dir}/last.ckpt"


def test_evaluation_and_sampling_run_without_lightning():
    """The CLI, evaluation and sampling import no Lightning: they read the checkpoint and
    the HDF5 splits themselves (checkpoints.model_from_checkpoint, data.hdf5)."""
    code = ("import sys\n"
            "from sparse_transformer.cli import build_parser\n"
            "import sparse_transformer.evaluation, sparse_transformer.sampling\n"
            "build_parser()\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning', 'lightning_fabric')))")
    imported = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert imported.strip() == "[]"
