"""The workflows: params.yaml, dvc.yaml + paper/dvc.yaml and the Snakefile.

Both tools must drive the same stages of the same experiments through the package's
CLI, with params.yaml as the one source of settings. The end-to-end tests run the text
quickstart (shrunk to a tiny model and a few steps by editing params.yaml in a
temporary clone of the working tree) through `dvc repro` and through `snakemake`, and
check its outputs, the MLflow run, that nothing reruns when nothing changed, that a
changed parameter reruns only what depends on it, that a broken input stops the
pipeline with the stage's own error, leaving the other outputs intact, and that a
SIGTERM'd train stops the pipeline without being recorded as done, its rerun resuming.

Checked with DVC 3.67 and Snakemake 9.27.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from training_setup import experiment, text_h5  # noqa: F401 (fixture)

from sparse_transformer import cli
from sparse_transformer.config import load_experiment
from sparse_transformer.training import read_checkpoint

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DVC = shutil.which("dvc", path=str(BIN)) or shutil.which("dvc")
SNAKEMAKE = shutil.which("snakemake", path=str(BIN)) or shutil.which("snakemake")
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
QUICKSTARTS = list(PARAMS["workflow"]["quickstarts"])
PAPER = list(PARAMS["workflow"]["paper"])
STAGES = ("prepare", "train", "evaluate", "sample")

needs_dvc = pytest.mark.skipif(DVC is None, reason="dvc is not installed (pip install '.[workflow]')")
needs_snakemake = pytest.mark.skipif(SNAKEMAKE is None, reason="snakemake is not installed (pip install '.[workflow]')")

# What a shrunk text quickstart changes in params.yaml: a tiny model, a few steps.
TINY_TEXT = {
    "data": {"split_fractions": [0.98, 0.01, 0.01], "batch_size": 4},
    "model": {"context": 64, "layers": 1, "d_model": 32, "heads": 2, "pattern": {"kind": "strided", "stride": 8}},
    "train": {"max_steps": 6, "warmup_steps": 2, "checkpoint_every_steps": 3, "val_every_steps": 3,
              "val_batches": 1, "log_every_steps": 1},
    "evaluate": {"min_context": 32, "batch_size": 256},
    "sample": {"count": 2, "length": 32},
    "tracking": {"system_metrics": False},
}
TEXT = "quickstart-text"


# ---------------------------------------------------------------------- helpers
def env() -> dict[str, str]:
    """The venv's tools first on PATH (the stages call `sparse-transformer`); no MLflow
    URI from outside, so runs go to mlflow.db in the working directory."""
    environ = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    environ["PATH"] = f"{BIN}{os.pathsep}{environ.get('PATH', '')}"
    environ.setdefault("GIT_AUTHOR_NAME", "test")
    environ.setdefault("GIT_AUTHOR_EMAIL", "test@example.com")
    environ.setdefault("GIT_COMMITTER_NAME", "test")
    environ.setdefault("GIT_COMMITTER_EMAIL", "test@example.com")
    environ["DVC_NO_ANALYTICS"] = "1"
    return environ


def run(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=env(), capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited with {result.returncode}\n"
                             f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}")
    return result


def working_tree_files() -> list[str]:
    """The files of the working tree that git would commit (tracked or new, not ignored)."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout
    return [name for name in listed.split("\0") if name and (ROOT / name).is_file()]


def clone(dest: Path, experiment_changes: dict[str, dict] | None = None) -> Path:
    """The working tree as a fresh git repository at `dest` (one commit), with
    params.yaml sections updated by `experiment_changes` before the commit."""
    for name in working_tree_files():
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    if experiment_changes:
        edit_params(dest, experiment_changes)
    run(["git", "init", "-q"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-q", "-m", "snapshot of the working tree"], dest)
    return dest


def merge(base: dict, changes: dict) -> None:
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value


def edit_params(repo: Path, experiment_changes: dict[str, dict]) -> None:
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    merge(params, experiment_changes)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def ran_stages(output: str) -> set[str]:
    """The DVC stages `dvc repro` ran, from its output."""
    return set(re.findall(r"Running stage '([^']+)'", output))


def snakemake_jobs(output: str) -> list[tuple[str, str | None]]:
    """(rule, exp wildcard) of each job a `snakemake -n` printed."""
    jobs = []
    for block in re.split(r"\n(?=\S*\s*rule \S+:|\[\w{3} \w{3})", output):
        rule = re.search(r"^\s*(?:localrule|rule) (\S+):", block, re.M)
        if rule:
            exp = re.search(r"wildcards: exp=(\S+)", block)
            jobs.append((rule.group(1), exp.group(1) if exp else None))
    return jobs


def workflow_files(dest: Path) -> None:
    """What a Snakemake dry run needs: the Snakefile, its rules, params.yaml and the shipped data."""
    for name in ("Snakefile", "params.yaml", "workflow", "data/quickstart"):
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, dest / name)


def snakemake_dry_run(repo: Path, *targets: str) -> list[tuple[str, str | None]]:
    result = run([SNAKEMAKE, "-n", "--cores", "2", *targets], repo)
    return snakemake_jobs(result.stdout + result.stderr)


def stage_jobs(jobs: list[tuple[str, str | None]]) -> set[str]:
    """The stage jobs among snakemake's, named as DVC names its stages (train@exp)."""
    return {f"{rule}@{exp}" for rule, exp in jobs if exp is not None}


def dvc_stages(repo: Path) -> tuple[set[str], set[str]]:
    """(quickstart stages of dvc.yaml, paper stages of paper/dvc.yaml) as names like train@exp."""
    listed = run([DVC, "stage", "list", "--all", "--name-only"], repo).stdout.split()
    paper = {name.removeprefix("paper/dvc.yaml:") for name in listed if name.startswith("paper/dvc.yaml:")}
    return {name for name in listed if ":" not in name}, paper


def mlflow_runs(repo: Path, experiment: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment!r} in {repo / 'mlflow.db'}"
    return client.search_runs([found.experiment_id])


def stop_training(command: list[str], repo: Path) -> tuple[int, str]:
    """Runs a workflow `command` and sends SIGTERM (a cluster's time limit) to its
    `sparse-transformer train` once that has written a checkpoint; returns the workflow's
    exit status and output."""
    import psutil

    log = repo / "workflow-output.txt"
    with log.open("w") as out:
        workflow = subprocess.Popen(command, cwd=repo, env=env(), stdout=out, stderr=subprocess.STDOUT)
        checkpoint = repo / "runs" / TEXT / "checkpoints" / "last.ckpt"
        while not checkpoint.is_file():
            assert workflow.poll() is None, log.read_text()[-4000:]
            time.sleep(0.05)
        (train,) = [p for p in psutil.Process(workflow.pid).children(recursive=True)
                    if "train" in p.cmdline() and any(part.endswith("sparse-transformer") for part in p.cmdline())]
        train.send_signal(signal.SIGTERM)
        status = workflow.wait(timeout=300)
    return status, log.read_text()


def resumed_step(output: str) -> int:
    found = re.search(r"resuming from \S+last\.ckpt \(step (\d+)\)", output)
    assert found, output[-4000:]
    return int(found[1])


# A text quickstart that trains until it is stopped
ENDLESS_TEXT = {**TINY_TEXT, "train": {**TINY_TEXT["train"], "max_steps": 1_000_000}}


def check_text_outputs(repo: Path) -> None:
    """Everything the text quickstart leaves: HDF5, checkpoints, curve, metrics, samples, MLflow run."""
    assert (repo / "data/prepared/quickstart-text.h5").is_file()
    assert (repo / "runs/quickstart-text/checkpoints/last.ckpt").is_file()
    with (repo / "runs/quickstart-text/curve.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == list(range(1, 7))
    assert all(float(r["train_bpd"]) > 0 for r in rows)
    assert [int(r["step"]) for r in rows if r["valid_bpd"]] == [3, 6]
    assert (repo / "runs/quickstart-text/curve.png").read_bytes().startswith(b"\x89PNG")  # drawn by train
    metrics = json.loads((repo / "runs/quickstart-text/metrics.json").read_text())
    assert metrics["split"] == "test" and 0 < metrics["bits_per_dim"] < 9 and metrics["step"] == 6
    samples = sorted((repo / "runs/quickstart-text/samples").glob("sample_*"))  # Snakemake adds a hidden timestamp
    assert [p.name for p in samples] == ["sample_000.txt", "sample_001.txt"]
    assert all(len(p.read_bytes()) == 32 for p in samples)
    (mlflow_run,) = mlflow_runs(repo, TEXT)
    assert mlflow_run.data.params["model.d_model"] == "32"
    assert "train/bpd" in mlflow_run.data.metrics and "eval/test/bpd" in mlflow_run.data.metrics
    assert abs(mlflow_run.data.metrics["eval/test/bpd"] - metrics["bits_per_dim"]) < 1e-9


# ---------------------------------------------------------------------- params.yaml
def test_every_experiment_loads_and_follows_the_path_convention():
    """dvc.yaml and the Snakefile derive paths from the experiment's name, as the config
    loader does; params.yaml states none of them (it would only depart from them)."""
    assert set(QUICKSTARTS).isdisjoint(PAPER)
    paths = {"data": {"hdf5"}, "train": {"checkpoint_dir", "curve_file"}, "evaluate": {"metrics_file"},
             "sample": {"output_dir"}}
    for name in QUICKSTARTS + PAPER:
        for section, fields in paths.items():
            assert not fields & set(PARAMS[name].get(section) or {}), (name, section)
        cfg = load_experiment(ROOT / "params.yaml", name)
        assert cfg.data.hdf5 == f"data/prepared/{name}.h5"
        assert cfg.train.checkpoint_dir == f"runs/{name}/checkpoints"
        assert cfg.train.curve_file == f"runs/{name}/curve.csv"
        assert cfg.evaluate.metrics_file == f"runs/{name}/metrics.json"
        assert cfg.sample.output_dir == f"runs/{name}/samples"
        assert cfg.evaluate.checkpoint is None and cfg.sample.checkpoint is None
        if name in PAPER:
            assert cfg.data.input == f"data/raw/{name}"
        elif cfg.data.input is not None:
            assert (ROOT / cfg.data.input).exists() and cfg.data.input.startswith("data/quickstart/")


def test_the_paper_experiments_are_those_of_the_spec():
    def section(name):
        return load_experiment(ROOT / "params.yaml", name)

    cifar, enwik8, imagenet, audio = (section(n) for n in ("cifar10", "enwik8", "imagenet64", "audio"))
    assert (cifar.model.layers, cifar.model.d_model, cifar.model.heads, cifar.model.ff_mult, cifar.model.half_qk) == (128, 256, 2, 2, True)
    assert cifar.model.pattern.kind == "strided" and cifar.model.pattern.integration == "multihead"
    assert (cifar.model.dropout, cifar.train.learning_rate, cifar.train.max_epochs) == (0.25, 3.5e-4, 120)
    assert (enwik8.model.context, enwik8.model.layers, enwik8.model.d_model, enwik8.model.heads) == (12288, 30, 512, 8)
    pattern = enwik8.model.pattern
    assert (pattern.kind, pattern.stride, pattern.summary, pattern.integration) == ("fixed", 128, 32, "merged")
    assert (enwik8.model.dropout, enwik8.train.max_epochs) == (0.4, 80)
    assert (imagenet.model.layers, imagenet.model.d_model, imagenet.model.heads, imagenet.model.dropout) == (48, 512, 16, 0.01)
    assert (imagenet.model.pattern.kind, imagenet.model.pattern.stride, imagenet.train.max_epochs) == ("strided", 128, 70)
    assert (audio.model.context, audio.model.pattern.kind, audio.data.sample_rate) == (65536, "strided", 12000)
    for cfg in (cifar, enwik8, imagenet, audio):
        assert cfg.train.warmup_steps == 5000 and cfg.train.gradient_clip == 1.0 and cfg.train.weight_decay == 0.01


@pytest.mark.parametrize("kind", ["dense", "strided", "fixed"])
def test_table_2_patterns_are_one_override_away(kind):
    overrides = [f"model.pattern.kind={kind}", f"model.pattern.summary={32 if kind == 'fixed' else 'null'}"]
    for name in ("enwik8", "cifar10"):
        assert load_experiment(ROOT / "params.yaml", name, tuple(overrides)).model.pattern.kind == kind


# ---------------------------------------------------------------------- prepare --config
@pytest.fixture
def prepare_main(monkeypatch):
    monkeypatch.setattr(cli, "COMMANDS", {"prepare": cli.COMMANDS["prepare"]})
    return cli.main


def test_prepare_reads_its_data_section(tmp_path, prepare_main, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"digits": {"data": {"dataset": "digits", "hdf5": str(tmp_path / "d.h5"), "seed": 3}}}))
    assert prepare_main(["prepare", "--config", str(params), "--experiment", "digits", "--set", "data.seed=5"]) == 0
    from sparse_transformer.data import hdf5

    assert hdf5.read_attributes(tmp_path / "d.h5")["parameters"]["seed"] == 5
    # --config defaults to params.yaml, as for train, evaluate and sample
    assert prepare_main(["prepare", "--experiment", "digits", "--set", "data.seed=5"]) == 0
    assert "is up to date" in capsys.readouterr().out
    assert prepare_main(["prepare", "bytes", "--config", str(params), "--experiment", "digits"]) == 2
    assert f"DATASET: the data section of {params} sets these" in capsys.readouterr().err
    assert prepare_main(["prepare", "--output", str(tmp_path / "x.h5")]) == 2
    assert "--output: the data section of params.yaml sets these" in capsys.readouterr().err
    assert prepare_main(["prepare", "bytes", "--input", str(params)]) == 2
    assert "give DATASET and --output FILE.h5, or no DATASET" in capsys.readouterr().err


@pytest.mark.parametrize("name, message", [
    ("imagenet64", "data/raw/imagenet64 is not a folder: download ImageNet 64x64 from https://image-net.org"),
    ("audio", "data/raw/audio is not a folder: put your recordings (WAV, FLAC, OGG or MP3) in data/raw/audio"),
    ("enwik8", "data/raw/enwik8/enwik8.zip does not exist: download http://mattmahoney.net/dc/enwik8.zip"),
    ("cifar10", "data/raw/cifar10/cifar-10-python.tar.gz does not exist: download https://www.cs.toronto.edu/"),
])
def test_download_stage_says_which_file_to_put_where(tmp_path, prepare_main, capsys, monkeypatch, name, message):
    monkeypatch.chdir(tmp_path)  # no data/raw here; no network either: download switched off
    assert prepare_main(["prepare", "--config", str(ROOT / "params.yaml"), "--experiment", name, "--fetch-only",
                         "--set", "data.download=false"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sparse-transformer prepare: error: ") and message in err
    assert not (tmp_path / "data/prepared").exists()


def test_download_stage_accepts_data_in_place(tmp_path, prepare_main, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data/raw/audio").mkdir(parents=True)
    shutil.copy(ROOT / "data/quickstart/audio/nunc_dimittis.ogg", tmp_path / "data/raw/audio")
    assert prepare_main(["prepare", "--config", str(ROOT / "params.yaml"), "--experiment", "audio", "--fetch-only"]) == 0
    assert "data/raw/audio is in place" in capsys.readouterr().out


# ---------------------------------------------------------------------- the training curve (DVC's plot)
def test_training_curve_is_written_and_continued_on_resume(tmp_path, text_h5):
    from sparse_transformer.training import train

    curve = tmp_path / "curve.csv"
    sections = dict(train={"max_steps": 4, "val_every_steps": 2, "log_every_steps": 2, "curve_file": str(curve)},
                    tracking={"enabled": False})
    train(experiment(tmp_path, text_h5, **sections))
    with curve.open() as fh:
        first = list(csv.DictReader(fh))
    assert [(r["step"], bool(r["train_bpd"]), bool(r["valid_bpd"])) for r in first] == [("2", True, True), ("4", True, True)]
    sections["train"]["max_steps"] = 6  # resumes from last.ckpt at step 4
    train(experiment(tmp_path, text_h5, **sections))
    with curve.open() as fh:
        rows = list(csv.DictReader(fh))
    assert rows[:2] == first and [r["step"] for r in rows] == ["2", "4", "6"]


# ---------------------------------------------------------------------- the two tools agree
@needs_dvc
@needs_snakemake
def test_dvc_and_snakemake_have_the_same_stages(tmp_path):
    repo = clone(tmp_path / "repo")
    quick, paper = dvc_stages(repo)
    assert quick == {f"{stage}@{exp}" for stage in STAGES for exp in QUICKSTARTS}
    assert paper == {f"{stage}@{exp}" for stage in ("download", *STAGES) for exp in PAPER}
    # the default targets: `dvc repro` = dvc.yaml = the quickstarts; `snakemake` = rule quickstarts
    assert stage_jobs(snakemake_dry_run(repo)) == quick
    paper_jobs = set()
    for exp in PAPER:
        jobs = stage_jobs(snakemake_dry_run(repo, exp))
        assert jobs == {stage for stage in paper if stage.endswith(f"@{exp}")}
        paper_jobs |= jobs
    assert paper_jobs == paper
    rules = set(run([SNAKEMAKE, "--list-rules"], repo).stdout.split())
    assert {"download", *STAGES, "quickstarts"} <= rules
    assert {exp.replace("-", "_") for exp in QUICKSTARTS + PAPER} <= rules


@needs_snakemake
@pytest.mark.parametrize("target, expected", [
    (None, {f"{s}@{e}" for s in STAGES for e in QUICKSTARTS}),
    ("quickstart_text", {f"{s}@quickstart-text" for s in STAGES}),
    ("quickstart_images", {f"{s}@quickstart-images" for s in STAGES}),
    ("enwik8", {f"{s}@enwik8" for s in ("download", *STAGES)}),
    ("runs/quickstart-audio/metrics.json", {f"{s}@quickstart-audio" for s in ("prepare", "train", "evaluate")}),
])
def test_snakemake_dry_run_lists_the_jobs_of_each_target(tmp_path, target, expected):
    workflow_files(tmp_path)
    jobs = snakemake_dry_run(tmp_path, *([target] if target else []))
    assert stage_jobs(jobs) == expected
    gpu_rules = {rule for rule, exp in jobs if exp in PAPER and rule in ("train", "evaluate", "sample")}
    if gpu_rules:  # paper jobs declare a GPU
        output = run([SNAKEMAKE, "-n", "--cores", "2", target], tmp_path).stdout
        assert re.search(r"rule train:.*?resources: [^\n]*gpu=1", output, re.S)


@needs_snakemake
def test_snakemake_gpu_jobs_respect_the_gpu_resource(tmp_path):
    workflow_files(tmp_path)
    edit_params(tmp_path, {"enwik8": {"train": {"devices": 4}}})
    output = run([SNAKEMAKE, "-n", "--cores", "2", "enwik8"], tmp_path).stdout
    assert re.search(r"rule train:.*?resources: [^\n]*gpu=4", output, re.S)


@needs_dvc
@needs_snakemake
def test_a_paper_experiment_without_its_data_stops_at_download(tmp_path):
    repo = clone(tmp_path / "repo")
    dvc = run([DVC, "repro", "--glob", "paper/dvc.yaml:*@imagenet64"], repo, check=False)
    assert dvc.returncode != 0
    assert ran_stages(dvc.stdout) == {"paper/dvc.yaml:download@imagenet64"}
    assert "data/raw/imagenet64 is not a folder: download ImageNet 64x64 from" in dvc.stderr
    smk = run([SNAKEMAKE, "--cores", "1", "imagenet64"], repo, check=False)
    assert smk.returncode != 0
    assert "data/raw/imagenet64 is not a folder: download ImageNet 64x64 from" in smk.stdout + smk.stderr
    assert not (repo / "data/raw/imagenet64").exists() and not (repo / "data/prepared").exists()


# ---------------------------------------------------------------------- end to end
@pytest.mark.slow
@needs_dvc
def test_dvc_repro_runs_the_text_quickstart_end_to_end(tmp_path):
    repo = clone(tmp_path / "repo", {TEXT: TINY_TEXT})
    targets = [f"evaluate@{TEXT}", f"sample@{TEXT}"]
    first = run([DVC, "repro", *targets], repo)
    assert ran_stages(first.stdout) == {f"{s}@{TEXT}" for s in STAGES}
    check_text_outputs(repo)
    shown = json.loads(run([DVC, "metrics", "show", "--json"], repo).stdout)
    metrics = shown[""]["data"]["runs/quickstart-text/metrics.json"]["data"]
    assert metrics["bits_per_dim"] > 0
    # README's commands, scoped to the quickstart: quiet
    quiet = [run([DVC, "metrics", "show", "runs/quickstart-text/metrics.json"], repo),
             run([DVC, "plots", "show", "runs/quickstart-text/curve.csv", "runs/quickstart-text/curve.png"], repo),
             run([DVC, "status", "dvc.yaml"], repo)]
    assert not any(result.stderr.strip() for result in quiet), [result.stderr for result in quiet]
    status = quiet[2].stdout  # the stages of dvc.yaml alone; this test ran the text ones only
    assert "paper/dvc.yaml" not in status and "@quickstart-text" not in status and "@quickstart-images" in status
    # the plots page needs no network: Vega inline (workflow/plots/page.html), the PNG beside it
    page = (repo / "dvc_plots/index.html").read_text()
    assert "vegaEmbed('#runs_quickstart-text_curve_csv', spec)" in page and "bi.vegaLite" in page
    assert not re.search(r"<script[^>]*\bsrc=", page) and "cdn.jsdelivr" not in page
    assert '<img src="static/workspace_runs_quickstart-text_curve.png">' in page

    # nothing changed: nothing runs
    again = run([DVC, "repro", *targets], repo)
    assert ran_stages(again.stdout) == set()
    assert "didn't change, skipping" in again.stdout

    # an evaluation setting: only evaluate reruns (into the same MLflow run)
    edit_params(repo, {TEXT: {"evaluate": {"min_context": 16}}})
    changed = run([DVC, "repro", *targets], repo)
    assert ran_stages(changed.stdout) == {f"evaluate@{TEXT}"}
    assert json.loads((repo / "runs/quickstart-text/metrics.json").read_text())["min_context"] == 16
    assert len(mlflow_runs(repo, TEXT)) == 1

    # a training setting: train, evaluate and sample rerun, prepare does not
    edit_params(repo, {TEXT: {"train": {"learning_rate": 1.0e-3}}})
    retrained = run([DVC, "repro", *targets], repo)
    assert ran_stages(retrained.stdout) == {f"{s}@{TEXT}" for s in ("train", "evaluate", "sample")}

    # the raw text missing: prepare stops with its own message; later outputs stay
    checkpoint = (repo / "runs/quickstart-text/checkpoints/last.ckpt").read_bytes()
    (repo / "data/quickstart/text/tinyshakespeare.txt").unlink()
    broken = run([DVC, "repro", *targets], repo, check=False)
    assert broken.returncode != 0
    assert "data/quickstart/text/tinyshakespeare.txt does not exist" in broken.stderr
    assert f"failed to reproduce 'prepare@{TEXT}'" in broken.stderr
    assert ran_stages(broken.stdout) == {f"prepare@{TEXT}"}
    assert (repo / "runs/quickstart-text/checkpoints/last.ckpt").read_bytes() == checkpoint
    assert (repo / "runs/quickstart-text/metrics.json").is_file()


@pytest.mark.slow
@needs_dvc
def test_dvc_does_not_record_a_stopped_train_and_its_rerun_resumes(tmp_path):
    repo = clone(tmp_path / "repo", {TEXT: ENDLESS_TEXT})
    status, output = stop_training([DVC, "repro", f"evaluate@{TEXT}"], repo)
    assert status != 0 and "stopped by SIGTERM at step" in output
    assert not (repo / "runs/quickstart-text/metrics.json").exists()  # evaluate did not run
    stopped_at = read_checkpoint(repo / "runs/quickstart-text/checkpoints/last.ckpt")["global_step"]
    assert f"stopped by SIGTERM at step {stopped_at} of 1000000" in output
    assert f"train@{TEXT}" in run([DVC, "status", f"train@{TEXT}"], repo).stdout  # not recorded as done

    # running on: the checkpoint survived (persist), and a longer or shorter run only paces it
    edit_params(repo, {TEXT: {"train": {"max_steps": stopped_at + 2}}})
    rerun = run([DVC, "repro", f"train@{TEXT}"], repo)
    assert resumed_step(rerun.stdout + rerun.stderr) == stopped_at
    assert read_checkpoint(repo / "runs/quickstart-text/checkpoints/last.ckpt")["global_step"] == stopped_at + 2
    assert "changed" not in run([DVC, "status", f"train@{TEXT}"], repo).stdout


@pytest.mark.slow
@needs_snakemake
def test_snakemake_does_not_take_a_stopped_train_for_done_and_its_rerun_resumes(tmp_path):
    repo = clone(tmp_path / "repo", {TEXT: ENDLESS_TEXT})
    status, output = stop_training([SNAKEMAKE, "--cores", "1", "runs/quickstart-text/metrics.json"], repo)
    assert status != 0 and "stopped by SIGTERM at step" in output
    assert not (repo / "runs/quickstart-text/metrics.json").exists()
    assert not (repo / "runs/quickstart-text/checkpoints/finished.json").exists()
    stopped_at = read_checkpoint(repo / "runs/quickstart-text/checkpoints/last.ckpt")["global_step"]

    edit_params(repo, {TEXT: {"train": {"max_steps": stopped_at + 2}}})
    rerun = run([SNAKEMAKE, "--cores", "1", "runs/quickstart-text/checkpoints/finished.json"], repo)
    assert resumed_step(rerun.stdout + rerun.stderr) == stopped_at
    finished = json.loads((repo / "runs/quickstart-text/checkpoints/finished.json").read_text())
    assert finished["step"] == stopped_at + 2


@pytest.mark.slow
@needs_dvc
def test_dvc_stops_at_a_corrupt_recording(tmp_path):
    repo = clone(tmp_path / "repo")
    recording = repo / "data/quickstart/audio/elvish-theme.ogg"
    recording.write_bytes(recording.read_bytes()[:2000])  # truncated
    broken = run([DVC, "repro", "prepare@quickstart-audio"], repo, check=False)
    assert broken.returncode != 0
    assert "elvish-theme.ogg cannot be decoded as audio" in broken.stderr
    assert not (repo / "data/prepared/quickstart-audio.h5").exists()
    assert not list((repo / "data/prepared").glob(".*.tmp")) if (repo / "data/prepared").exists() else True


@pytest.mark.slow
@needs_snakemake
def test_snakemake_runs_the_text_quickstart_end_to_end(tmp_path):
    repo = clone(tmp_path / "repo", {TEXT: TINY_TEXT})
    target = "quickstart_text"
    run([SNAKEMAKE, "--cores", "2", target], repo)
    check_text_outputs(repo)

    # nothing changed: nothing to do
    assert stage_jobs(snakemake_dry_run(repo, target)) == set()
    rerun = run([SNAKEMAKE, "--cores", "2", target], repo)
    assert "Nothing to be done" in rerun.stdout + rerun.stderr

    # a sampling setting: only sample reruns
    edit_params(repo, {TEXT: {"sample": {"count": 3}}})
    assert stage_jobs(snakemake_dry_run(repo, target)) == {f"sample@{TEXT}"}
    run([SNAKEMAKE, "--cores", "2", target], repo)
    assert len(list((repo / "runs/quickstart-text/samples").glob("sample_*.txt"))) == 3
    assert len(mlflow_runs(repo, TEXT)) == 1

    # the raw text emptied: prepare reruns and stops with its own message; later outputs stay
    checkpoint = (repo / "runs/quickstart-text/checkpoints/last.ckpt").read_bytes()
    raw = repo / "data/quickstart/text/tinyshakespeare.txt"
    raw.write_bytes(b"")
    broken = run([SNAKEMAKE, "--cores", "2", target], repo, check=False)
    assert broken.returncode != 0
    assert "tinyshakespeare.txt holds no bytes" in broken.stdout + broken.stderr
    assert (repo / "runs/quickstart-text/checkpoints/last.ckpt").read_bytes() == checkpoint
    assert (repo / "runs/quickstart-text/metrics.json").is_file()


@pytest.mark.slow
@needs_dvc
def test_dvc_runs_a_paper_experiment_on_data_placed_by_hand(tmp_path):
    """The paper pipeline (download -> ... -> sample) for `audio`, shrunk to a tiny model on
    one shipped recording placed in data/raw/audio: DVC neither deletes nor caches it."""
    tiny = {
        "data": {"split_fractions": [0.9, 0.1, 0.0], "batch_size": 2, "num_workers": 0},
        "model": {"context": 64, "layers": 1, "d_model": 32, "heads": 2, "recompute": False,
                  "pattern": {"kind": "strided", "stride": 8}},
        "train": {"max_steps": 2, "warmup_steps": 1, "val_every_steps": None, "log_every_steps": 1},
        "evaluate": {"split": "valid", "min_context": 0, "batch_size": 512},
        "sample": {"count": 1, "length": 16, "prompt": {"count": 0}},  # no test split to take prompts from
        "tracking": {"system_metrics": False},
    }
    repo = clone(tmp_path / "repo", {"audio": tiny})
    raw = repo / "data/raw/audio"
    raw.mkdir(parents=True)
    for name in ("nunc_dimittis.ogg", "elvish-theme.ogg"):
        shutil.copy(ROOT / "data/quickstart/audio" / name, raw)
    result = run([DVC, "repro", "--glob", "paper/dvc.yaml:*@audio"], repo)
    assert ran_stages(result.stdout) == {f"paper/dvc.yaml:{s}@audio" for s in ("download", *STAGES)}
    assert sorted(p.name for p in raw.iterdir()) == ["elvish-theme.ogg", "nunc_dimittis.ogg"]
    assert json.loads((repo / "runs/audio/metrics.json").read_text())["split"] == "valid"
    assert len(list((repo / "runs/audio/samples").glob("sample_*.wav"))) == 1
    assert ran_stages(run([DVC, "repro", "--glob", "paper/dvc.yaml:*@audio"], repo).stdout) == set()


def test_slurm_profile_names_existing_rules():
    """workflow/profiles/slurm/config.yaml (checked by hand with snakemake-executor-plugin-slurm 2.8:
    `snakemake --profile workflow/profiles/slurm -n enwik8` gives train gpu=1 on the gpu partition)."""
    profile = yaml.safe_load((ROOT / "workflow/profiles/slurm/config.yaml").read_text())
    assert profile["executor"] == "slurm"
    rules = set(re.findall(r"^rule (\w+):", "".join(p.read_text() for p in (ROOT / "workflow/rules").glob("*.smk")), re.M))
    assert set(profile["set-resources"]) <= rules
