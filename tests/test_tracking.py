"""MLflow: the default store, what a run records, and failing fast without a server."""

from __future__ import annotations

import dataclasses
import http.server
import json
import os
import re
import subprocess
import threading

import pytest
from local_server import LocalServer
from mlflow import MlflowClient
from training_setup import SHAKESPEARE, digits_h5, experiment, text_h5  # noqa: F401 (fixtures)

from sparse_transformer import cli
from sparse_transformer.config import TrackingConfig
from sparse_transformer.evaluation import evaluate
from sparse_transformer.model import SparseTransformer
from sparse_transformer.sampling import sample
from sparse_transformer.tracking import (TrackingError, artifact_location, compact_count, connect, describe_run,
                                         log_config, tracking_uri, training_experiment)
from sparse_transformer.training import read_checkpoint, train


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """The tests' working directory, with no tracking server configured in the environment."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def test_the_default_store_is_sqlite_in_the_working_directory(workdir, monkeypatch):
    uri = tracking_uri(TrackingConfig())
    assert uri == f"sqlite:///{workdir / 'mlflow.db'}"
    assert artifact_location(uri) == (workdir / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert tracking_uri(TrackingConfig()) == "http://tracking.example:5000"
    assert artifact_location("http://tracking.example:5000") is None  # the server decides
    assert tracking_uri(TrackingConfig(tracking_uri="sqlite:///other.db")) == "sqlite:///other.db"


def test_a_run_records_config_metrics_test_results_and_samples(workdir, text_h5, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING", "1")
    cfg = experiment(workdir, text_h5, train={"max_steps": 40}, tracking={"tracking_uri": None, "system_metrics": True},
                     evaluate={"split": "valid"}, sample={"count": 2, "length": 32})
    run_id = read_checkpoint(train(cfg))["mlflow_run_id"]
    metrics = evaluate(cfg, progress=False)
    files = sample(cfg, progress=False)

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")  # the default store
    run = client.get_run(run_id)
    mlflow_experiment = client.get_experiment(run.info.experiment_id)
    assert mlflow_experiment.name == "text"  # one experiment per dataset
    assert mlflow_experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # not a GenAI one
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert (tags["dataset"], tags["pattern"]) == ("text", "strided, l=8, merged")
    assert tags["parameters"] == compact_count(SparseTransformer(cfg.model).num_params())
    assert tags["mlflow.note.content"].startswith(f"text: bytes from {SHAKESPEARE}. Model: 2 layers, d=32, 2 heads")
    params = run.data.params
    assert params["model.d_model"] == "32" and params["train.learning_rate"] == "0.003"
    assert params["data.hdf5"] == str(text_h5) and params["model.pattern.kind"] == "strided"
    assert len(client.get_metric_history(run_id, "train/bpd")) == 40
    # step N: the N-th optimizer step, as curve.csv and the checkpoints count them
    assert [m.step for m in client.get_metric_history(run_id, "valid/bpd")] == [10, 20, 30, 40]
    assert sorted(m.step for m in client.get_metric_history(run_id, "train/bpd")) == list(range(1, 41))
    for key in ("lr/decayed", "tokens_per_s"):
        assert len(client.get_metric_history(run_id, key)) >= 39, key
    assert any(key.startswith("system/") for key in run.data.metrics), sorted(run.data.metrics)
    evaluated = client.get_metric_history(run_id, "eval/valid/bpd")  # the whole split, not a few batches
    assert [(m.step, m.value) for m in evaluated] == [(40, metrics["bits_per_dim"])]
    artifacts = {a.path for a in client.list_artifacts(run_id, "samples")}
    assert artifacts == {f"samples/{f.name}" for f in files} == {"samples/sample_000.txt", "samples/sample_001.txt"}
    assert {a.path for a in client.list_artifacts(run_id, "metrics")} == {"metrics/metrics.json"}
    assert (workdir / "mlruns").is_dir()  # artifacts beside the database


def artifact_files(client: MlflowClient, run_id: str, folder: str | None = None) -> list[str]:
    """Every artifact file of a run, recursively."""
    files = []
    for artifact in client.list_artifacts(run_id, folder):
        files.extend(artifact_files(client, run_id, artifact.path) if artifact.is_dir else [artifact.path])
    return files


def test_image_samples_are_logged_once_as_images(workdir, digits_h5):
    cfg = experiment(workdir, digits_h5, train={"max_steps": 2, "val_every_steps": None}, sample={"count": 4})
    run_id = read_checkpoint(train(cfg))["mlflow_run_id"]
    sample(cfg, progress=False)
    client = MlflowClient(cfg.tracking.tracking_uri)
    pngs = [path for path in artifact_files(client, run_id) if path.endswith(".png")]
    # through mlflow.log_image, whose step images the UI shows (beside MLflow's own .webp preview)
    assert len(pngs) == 1 and pngs[0].startswith("images/samples+step+2+"), pngs


def test_runs_are_tagged_and_described_once(workdir, text_h5):
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "a commit"], check=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    cfg = experiment(workdir, text_h5)
    client = MlflowClient(cfg.tracking.tracking_uri)
    run_id = client.create_run(training_experiment(client, cfg)).info.run_id
    describe_run(client, run_id, cfg, parameters=94_949_888)
    tags = client.get_run(run_id).data.tags
    assert tags["parameters"] == "94.9M" and tags["mlflow.source.git.commit"] == commit  # the UI's version column
    assert tags["mlflow.note.content"].endswith(f"94.9M parameters; attention strided, l=8, merged. "
                                                f"Training: 20 steps, batch 8, learning rate 0.003. Code: commit {commit[:10]}.")
    client.set_tag(run_id, "mlflow.note.content", "written in the UI")
    describe_run(client, run_id, cfg, parameters=94_949_888)  # as a resumed run does
    assert client.get_run(run_id).data.tags["mlflow.note.content"] == "written in the UI"
    client.set_experiment_tag(client.get_run(run_id).info.experiment_id, "mlflow.experimentKind", "forecasting")
    training_experiment(client, cfg)
    assert client.get_experiment_by_name("text").tags["mlflow.experimentKind"] == "forecasting"  # a choice is kept


def test_an_unreachable_tracking_server_fails_fast_before_training(workdir, text_h5, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    cfg = experiment(workdir, text_h5, tracking={"tracking_uri": None})
    with pytest.raises(TrackingError, match="http://127.0.0.1:9 does not answer") as info:
        train(cfg)
    assert "MLFLOW_TRACKING_URI" in str(info.value) and "tracking.enabled: false" in str(info.value)
    assert not (workdir / "checkpoints").exists()
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ  # the check's settings do not leak

    (workdir / "params.yaml").write_text(json.dumps(dataclasses.asdict(cfg)))  # JSON is YAML
    assert cli.main(["train", "--config", "params.yaml"]) == 2
    assert "sparse-transformer train: error: the MLflow tracking store http://127.0.0.1:9" in capsys.readouterr().err


class UnavailableServer(LocalServer):
    """A tracking server on 127.0.0.1 that answers every request with 503 and counts them."""

    def __init__(self):
        self.requests = 0
        super().__init__(_Unavailable)


class _Unavailable(http.server.BaseHTTPRequestHandler):
    def _answer(self):
        self.server.requests += 1
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = _answer

    def log_message(self, *args):
        pass


def test_stages_starting_together_open_a_new_sqlite_store_one_at_a_time(workdir):
    """Snakemake runs two jobs at once: the first to open a new sqlite store creates its
    tables, the other waits for it (a lock file beside the database) instead of creating
    them too and failing ("table ... already exists")."""
    from filelock import FileLock

    database = workdir / "mlflow.db"
    cfg = TrackingConfig(tracking_uri=f"sqlite:///{database}")
    opened = {}
    other_stage = FileLock(f"{database}.lock")
    with other_stage:
        waiting = threading.Thread(target=lambda: opened.update(client=connect(cfg)))
        waiting.start()
        waiting.join(15)  # opening a new store takes a few seconds: without the lock it would be done
        assert waiting.is_alive() and not database.exists()  # it waits; nothing was created
    waiting.join(120)
    assert "client" in opened and database.exists()
    assert opened["client"].search_experiments(max_results=1)  # the store is whole: the Default experiment


def test_the_store_check_asks_once(workdir, text_h5):
    """Fast without a clock: MLflow's client retries a failing server for minutes by
    default; the check before training asks it once."""
    with UnavailableServer() as server:
        uri = server.address
        with pytest.raises(TrackingError, match=f"{uri} does not answer"):
            train(experiment(workdir, text_h5, tracking={"tracking_uri": uri}))
    assert server.requests == 1


def test_a_resumed_run_keeps_its_parameters(workdir, text_h5):
    cfg = experiment(workdir, text_h5)
    client = MlflowClient(cfg.tracking.tracking_uri)
    run_id = client.create_run(client.create_experiment("resume")).info.run_id
    log_config(client, run_id, cfg)
    longer = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_steps=99))
    log_config(client, run_id, longer)  # MLflow refuses to change a parameter; this must not fail
    assert client.get_run(run_id).data.params["train.max_steps"] == "20"


def not_a_database(workdir) -> str:
    (workdir / "notes.db").write_text("notes, not a database")
    return f"sqlite:///{workdir / 'notes.db'}"


def damaged_database(workdir) -> str:
    MlflowClient(f"sqlite:///{workdir / 'whole.db'}").search_experiments()  # created and migrated
    (workdir / "cut.db").write_bytes((workdir / "whole.db").read_bytes()[:4096])  # its first page only
    return f"sqlite:///{workdir / 'cut.db'}"  # (MLflow caches the store of a URI it has opened)


def read_only_store(workdir) -> str:
    """A store MLflow reads but cannot write (SQLite's read-only mode: root ignores file modes)."""
    MlflowClient(f"sqlite:///{workdir / 'ro.db'}").search_experiments()
    return f"sqlite:///file:{workdir / 'ro.db'}?mode=ro&uri=true"


@pytest.mark.parametrize(("store", "problem"), [
    (not_a_database, r"does not answer \(.*file is not a database"),
    (damaged_database, r"does not answer \(.*database disk image is malformed"),
    (read_only_store, r"cannot be written \(.*readonly database.*\): make it writable"),
])
def test_a_store_that_cannot_be_used_is_refused_before_training_in_one_line(workdir, text_h5, capsys, store, problem):
    cfg = experiment(workdir, text_h5, tracking={"tracking_uri": store(workdir)})
    (workdir / "params.yaml").write_text(json.dumps(dataclasses.asdict(cfg)))
    assert cli.main(["train", "--config", "params.yaml"]) == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert error.startswith("sparse-transformer train: error: the MLflow tracking store sqlite:///")
    assert re.search(problem, error), error
    assert not (workdir / "checkpoints").exists()


def test_a_store_that_fails_while_training_does_not_stop_it(workdir, text_h5, monkeypatch, capsys):
    from mlflow.exceptions import MlflowException

    calls = {"count": 0}
    log_batch = MlflowClient.log_batch

    def fails_after_five_batches(self, *args, **kwargs):
        calls["count"] += 1
        if calls["count"] > 5:
            raise MlflowException("database is locked")
        return log_batch(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", fails_after_five_batches)
    cfg = experiment(workdir, text_h5, train={"max_steps": 12, "val_every_steps": 6, "checkpoint_every_steps": 6})
    assert read_checkpoint(train(cfg))["global_step"] == 12  # trained and checkpointed to the end
    err = capsys.readouterr().err
    assert err.count("warning: the MLflow store") == 1
    assert re.search(r"failed \(at step \d: database is locked\); training goes on without it", err), err
    assert "warning: MLflow did not record epoch, lr/decayed, lr/not_decayed, tokens_per_s, train/bpd, valid/bpd after its store failed (at step" in err
    assert len((workdir / "curve.csv").read_text().splitlines()) == 13

